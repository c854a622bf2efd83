// Shared declarations of the tdds extension ops: schemas, counter slots, argument checks.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "row_stats.h"

namespace tdds {

// Identical text to tdds_kernels/ops/schema.py UPDATE_SCHEMA / EPOCH_STEP_SCHEMA (a test compares them).
// targets / row_stats: the baselines' per-row quantities, computed in the same pass (ROW_STATS).
#define TDDS_TARGETS_ARGS "Tensor? targets=None, Tensor(z!)? row_stats=None"
#define TDDS_UPDATE_SCHEMA                                                            \
  "(Tensor logits, Tensor index, Tensor(a!) prev, Tensor(b!) seen, Tensor(c!) ring, " \
  "Tensor(d!) counters, " TDDS_TARGETS_ARGS ") -> ()"
// ... and UPDATE_TOPK_SCHEMA: the compressed previous row (docs/design.md §2.1).
#define TDDS_UPDATE_TOPK_SCHEMA                                                                    \
  "(Tensor logits, Tensor index, Tensor(a!) prev_val, Tensor(b!) prev_idx, Tensor(c!) prev_rest, " \
  "Tensor(d!) seen, Tensor(e!) ring, Tensor(f!) counters, " TDDS_TARGETS_ARGS ") -> ()"
// ... FOLD_SCHEMA: the baselines' per-sample fold of row_stats.
#define TDDS_FOLD_SCHEMA \
  "(Tensor row_stats, Tensor index, Tensor(a!) packed, Tensor epoch, int el2n_epoch) -> ()"
#define TDDS_EPOCH_STEP_SCHEMA \
  "(Tensor seen, Tensor(a!) ring, Tensor(b!) score, Tensor(c!) counters, float decay) -> ()"

// Slots of the counters tensor (tdds_kernels/ops/schema.py COUNTERS, then EPOCH): cumulative counts,
// then the epoch being recorded, which lives on the device so that no kernel needs a host sync
// and a captured/compiled step stays valid across epochs; epoch_step advances it.
enum Slot : int64_t {
  kDuplicates = 0,
  kMissing = 1,
  kNonfinite = 2,
  kOutOfRange = 3,
  kEpoch = 4,
  kNumSlots = 5
};

constexpr float kEps = 1e-8f;  // the release's epsilon inside log(p + eps)

// Ring slot of transition d_{e-1}: (e - 1) mod (W - 1), non-negative like Python's %. At e = 0
// it is the last slot, which gets NaN there and is overwritten before any window reads it
// (the reference does the same, so every backend leaves identical state).
C10_HOST_DEVICE inline int64_t ring_slot(int64_t epoch, int64_t w1) {
  return ((epoch - 1) % w1 + w1) % w1;
}

inline bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// The op contract (tdds_kernels/ops/checks.py states the same for the Python backends, and
// tests/ops/test_op_fuzz.py holds every backend to it): shapes, dtypes, contiguity and one device
// for all tensors, and on CPU the recorded epoch, checked before anything is read or written.
// A violation raises a one-line ValueError naming the op and the argument; nothing changes.
// The ops are internal (the tracker validates user input), so values it owns (indices, labels,
// logits) are not errors here: the kernels skip and count them.
// What update and update_topk share: the batch, seen, ring and counters of n samples.
inline void check_batch_and_state(const char* op, const at::Tensor& logits, const at::Tensor& index,
                                  int64_t n, const at::Tensor& seen, const at::Tensor& ring,
                                  const at::Tensor& counters) {
  // C >= 1: a row of no classes has no softmax (the kernels would read past it).
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) >= 1 && is_float_type(logits.scalar_type()) &&
                        logits.is_contiguous(),
                    op,
                    ": logits must be a contiguous (B, C) float32/float16/bfloat16 tensor with C >= 1, got ",
                    logits.sizes(), " ", logits.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 1 && index.size(0) == logits.size(0) && index.is_contiguous() &&
                        (index.scalar_type() == at::kLong || index.scalar_type() == at::kInt),
                    op, ": index must be a contiguous (B,) int64/int32 tensor, got ", index.sizes(), " ",
                    index.scalar_type());
  TORCH_CHECK_VALUE(
      seen.dim() == 1 && seen.size(0) == n && seen.scalar_type() == at::kInt && seen.is_contiguous(), op,
      ": seen must be a contiguous (N,) int32 tensor, got ", seen.sizes(), " ", seen.scalar_type());
  TORCH_CHECK_VALUE(ring.dim() == 2 && ring.size(0) == n && ring.size(1) >= 1 &&
                        ring.scalar_type() == at::kFloat && ring.is_contiguous(),
                    op, ": ring must be a contiguous (N, W-1) float32 tensor, got ", ring.sizes(), " ",
                    ring.scalar_type());
  TORCH_CHECK_VALUE(counters.dim() == 1 && counters.size(0) == kNumSlots &&
                        counters.scalar_type() == at::kLong && counters.is_contiguous(),
                    op, ": counters must be a contiguous (5,) int64 tensor, got ", counters.sizes(), " ",
                    counters.scalar_type());
  for (const at::Tensor* t : {&index, &seen, &ring, &counters})
    TORCH_CHECK_VALUE(t->device() == logits.device(), op, ": all tensors must be on ", logits.device(),
                      ", got one on ", t->device());
}

// targets (B,) int64/int32 and row_stats (B, 4) float32, both or neither, on the logits' device.
using OptTensor = std::optional<at::Tensor>;
inline void check_targets(const char* op, const at::Tensor& logits, const OptTensor& targets,
                          const OptTensor& row_stats) {
  TORCH_CHECK_VALUE(targets.has_value() == row_stats.has_value(), op,
                    ": targets and row_stats must be given together");
  if (!targets.has_value()) return;
  const at::Tensor& t = *targets;
  const at::Tensor& r = *row_stats;
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == logits.size(0) && t.is_contiguous() &&
                        (t.scalar_type() == at::kLong || t.scalar_type() == at::kInt),
                    op, ": targets must be a contiguous (B,) int64/int32 tensor, got ", t.sizes(), " ",
                    t.scalar_type());
  TORCH_CHECK_VALUE(r.dim() == 2 && r.size(0) == logits.size(0) && r.size(1) == kNumRowStats &&
                        r.scalar_type() == at::kFloat && r.is_contiguous(),
                    op, ": row_stats must be a contiguous (B, 4) float32 tensor, got ", r.sizes(), " ",
                    r.scalar_type());
  for (const at::Tensor* x : {&t, &r})
    TORCH_CHECK_VALUE(x->device() == logits.device(), op, ": all tensors must be on ", logits.device(),
                      ", got one on ", x->device());
}

inline void check_update(const at::Tensor& logits, const at::Tensor& index, const at::Tensor& prev,
                         const at::Tensor& seen, const at::Tensor& ring, const at::Tensor& counters) {
  TORCH_CHECK_VALUE(prev.dim() == 2 && logits.dim() == 2 && prev.size(1) == logits.size(1) &&
                        is_float_type(prev.scalar_type()) && prev.is_contiguous(),
                    "update_ext: prev must be a contiguous (N, C) float tensor with C = logits.size(1), got ",
                    prev.sizes(), " ", prev.scalar_type());
  TORCH_CHECK_VALUE(prev.device() == logits.device(), "update_ext: all tensors must be on ", logits.device(),
                    ", got one on ", prev.device());
  check_batch_and_state("update_ext", logits, index, prev.size(0), seen, ring, counters);
}

// update_topk: check_update's checks with the full row replaced by the compressed one.
inline void check_update_topk(const at::Tensor& logits, const at::Tensor& index, const at::Tensor& prev_val,
                              const at::Tensor& prev_idx, const at::Tensor& prev_rest, const at::Tensor& seen,
                              const at::Tensor& ring, const at::Tensor& counters) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "update_topk_ext: logits must be a (B, C) tensor, got ",
                    logits.sizes());
  TORCH_CHECK_VALUE(
      prev_val.dim() == 2 && prev_val.size(1) >= 1 && prev_val.size(1) <= logits.size(1) &&
          is_float_type(prev_val.scalar_type()) && prev_val.is_contiguous(),
      "update_topk_ext: prev_val must be a contiguous (N, K) float tensor with 1 <= K <= C, got ",
      prev_val.sizes(), " ", prev_val.scalar_type());
  const int64_t n = prev_val.size(0);
  TORCH_CHECK_VALUE(
      prev_idx.sizes() == prev_val.sizes() && prev_idx.is_contiguous() &&
          (prev_idx.scalar_type() == at::kShort || prev_idx.scalar_type() == at::kInt),
      "update_topk_ext: prev_idx must be a contiguous int16/int32 tensor shaped like prev_val, got ",
      prev_idx.sizes(), " ", prev_idx.scalar_type());
  TORCH_CHECK_VALUE(prev_idx.scalar_type() == at::kInt || logits.size(1) <= 32768,
                    "update_topk_ext: prev_idx must be int32 for more than 32768 classes");
  TORCH_CHECK_VALUE(prev_rest.dim() == 1 && prev_rest.size(0) == n &&
                        prev_rest.scalar_type() == prev_val.scalar_type() && prev_rest.is_contiguous(),
                    "update_topk_ext: prev_rest must be a contiguous (N,) tensor of prev_val's dtype, got ",
                    prev_rest.sizes(), " ", prev_rest.scalar_type());
  for (const at::Tensor* t : {&prev_val, &prev_idx, &prev_rest})
    TORCH_CHECK_VALUE(t->device() == logits.device(), "update_topk_ext: all tensors must be on ",
                      logits.device(), ", got one on ", t->device());
  check_batch_and_state("update_topk_ext", logits, index, n, seen, ring, counters);
}

// counters[EPOCH] in [0, 2^31 - 1) (seen holds it as int32), read only where it costs no host
// sync: on CPU. On CUDA the kernels take it as it is.
inline int64_t checked_epoch(const char* op, const at::Tensor& counters) {
  if (!counters.device().is_cpu()) return -1;
  const int64_t epoch = counters.data_ptr<int64_t>()[kEpoch];
  TORCH_CHECK_VALUE(epoch >= 0 && epoch < INT32_MAX, op, ": counters[EPOCH] must be in [0, 2^31 - 1), got ",
                    epoch);
  return epoch;
}

inline void check_epoch_step(const at::Tensor& seen, const at::Tensor& ring, const at::Tensor& score,
                             const at::Tensor& counters) {
  TORCH_CHECK_VALUE(seen.dim() == 1 && seen.scalar_type() == at::kInt && seen.is_contiguous(),
                    "epoch_step_ext: seen must be a contiguous (N,) int32 tensor, got ", seen.sizes(), " ",
                    seen.scalar_type());
  const int64_t n = seen.size(0);
  TORCH_CHECK_VALUE(ring.dim() == 2 && ring.size(0) == n && ring.size(1) >= 1 &&
                        ring.scalar_type() == at::kFloat && ring.is_contiguous(),
                    "epoch_step_ext: ring must be a contiguous (N, W-1) float32 tensor, got ", ring.sizes(),
                    " ", ring.scalar_type());
  TORCH_CHECK_VALUE(
      score.dim() == 1 && score.size(0) == n && score.scalar_type() == at::kFloat && score.is_contiguous(),
      "epoch_step_ext: score must be a contiguous (N,) float32 tensor, got ", score.sizes(), " ",
      score.scalar_type());
  TORCH_CHECK_VALUE(counters.dim() == 1 && counters.size(0) == kNumSlots &&
                        counters.scalar_type() == at::kLong && counters.is_contiguous(),
                    "epoch_step_ext: counters must be a contiguous (5,) int64 tensor, got ", counters.sizes(),
                    " ", counters.scalar_type());
  for (const at::Tensor* t : {&ring, &score, &counters})
    TORCH_CHECK_VALUE(t->device() == seen.device(), "epoch_step_ext: all tensors must be on ", seen.device(),
                      ", got one on ", t->device());
}

}  // namespace tdds
