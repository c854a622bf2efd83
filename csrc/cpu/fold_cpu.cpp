// CPU kernel of tdds::fold_baselines_ext: the baselines' per-sample fold of an update's
// row_stats into their packed state (tdds_kernels/ops/reference_fold.py is the statement).
//
// One serial pass over the batch: each row with stats updates its sample's packed row in place.
// The packed rows sit at random in a table the update has just streamed its large state past,
// so each is a cache miss; fetching the row a few positions ahead hides that, which the torch
// statement's gather and scatter cannot (measured in the tracker's loop at B = 4096 on the
// 2-core sandbox: about 0.07 ms against 0.2-0.3 ms).
// Rows without stats (NaN) change nothing; each sample has at most one row with stats per epoch
// (the update's first-occurrence rule), so the result does not depend on order.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>

#include "../op_contract.h"

namespace tdds {
namespace {

constexpr int64_t kFoldAhead = 8;  // rows fetched ahead

template <typename I>
void fold_rows(const float* stats, const I* index, double* packed, int64_t B, int64_t N, int64_t width,
               int64_t epoch, int64_t el2n_epoch) {
  const int64_t slot = kRingCol + epoch % (width - kRingCol);
  const bool take_el2n = el2n_epoch < 0 || el2n_epoch == epoch;
  for (int64_t b = 0; b < B; ++b) {
    if (b + kFoldAhead < B) {
      const int64_t m = static_cast<int64_t>(index[b + kFoldAhead]);
      if (m >= 0 && m < N) __builtin_prefetch(packed + m * width, /*rw=*/1, /*locality=*/3);
    }
    const float* r = stats + b * kNumRowStats;
    const int64_t n = static_cast<int64_t>(index[b]);
    if (std::isnan(r[kCorrect]) || n < 0 || n >= N) continue;  // (n: stats rows are in range)
    double* row = packed + n * width;
    const double correct = r[kCorrect] == 1.f ? 1.0 : 0.0;
    if (row[kCount] > 0 && row[kLastCorrect] > correct) row[kForgetting] += 1.0;  // correct -> wrong
    row[kLearned] = std::max(row[kLearned], correct);
    row[kLastCorrect] = correct;
    if (take_el2n) row[kEl2nCol] = r[kEl2n];
    row[kMarginSum] += static_cast<double>(r[kMargin]);
    row[kCount] += 1.0;
    row[slot] = r[kTargetProb];
  }
}

void fold_baselines_cpu(const at::Tensor& row_stats, const at::Tensor& index, const at::Tensor& packed,
                        const at::Tensor& epoch, int64_t el2n_epoch) {
  // The op contract (op_contract.h; ops/checks.py fold states it for the reference).
  TORCH_CHECK_VALUE(row_stats.dim() == 2 && row_stats.size(1) == kNumRowStats &&
                        row_stats.scalar_type() == at::kFloat && row_stats.is_contiguous(),
                    "fold_baselines_ext: row_stats must be a contiguous (B, 4) float32 tensor, got ",
                    row_stats.sizes(), " ", row_stats.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 1 && index.size(0) == row_stats.size(0) && index.is_contiguous() &&
                        (index.scalar_type() == at::kLong || index.scalar_type() == at::kInt),
                    "fold_baselines_ext: index must be a contiguous (B,) int64/int32 tensor, got ",
                    index.sizes(), " ", index.scalar_type());
  TORCH_CHECK_VALUE(
      packed.dim() == 2 && packed.size(0) >= 1 && packed.size(1) > kRingCol &&
          packed.scalar_type() == at::kDouble && packed.is_contiguous(),
      "fold_baselines_ext: packed must be a contiguous (N + 1, 6 + window) float64 tensor, got ",
      packed.sizes(), " ", packed.scalar_type());
  TORCH_CHECK_VALUE(epoch.dim() == 0 && epoch.scalar_type() == at::kLong,
                    "fold_baselines_ext: epoch must be a 0-d int64 tensor, got ", epoch.sizes(), " ",
                    epoch.scalar_type());
  for (const at::Tensor* t : {&index, &packed, &epoch})
    TORCH_CHECK_VALUE(t->device() == row_stats.device(), "fold_baselines_ext: all tensors must be on ",
                      row_stats.device(), ", got one on ", t->device());
  const int64_t e = epoch.item<int64_t>();
  TORCH_CHECK_VALUE(e >= 0 && e < INT32_MAX, "fold_baselines_ext: epoch must be in [0, 2^31 - 1), got ", e);
  const int64_t B = row_stats.size(0), N = packed.size(0) - 1, width = packed.size(1);
  if (index.scalar_type() == at::kLong)
    fold_rows(row_stats.data_ptr<float>(), index.data_ptr<int64_t>(), packed.data_ptr<double>(), B, N, width,
              e, el2n_epoch);
  else
    fold_rows(row_stats.data_ptr<float>(), index.data_ptr<int32_t>(), packed.data_ptr<double>(), B, N, width,
              e, el2n_epoch);
}

}  // namespace
}  // namespace tdds

TORCH_LIBRARY_IMPL(tdds, CPU, m) {
  m.impl("fold_baselines_ext", &tdds::fold_baselines_cpu);
}
