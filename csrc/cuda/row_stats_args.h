// The update kernels' targets / row_stats arguments (op_contract.h RowStat), shared by
// ops_cuda.cu and update_topk_cuda.cu: one place builds them from the op's optional tensors and
// reads and writes them on the device. Included by the CUDA sources only (nvcc): the CPU build
// never sees it.
#pragma once
#include <cmath>
#include <cstdint>

#include "../op_contract.h"

namespace tdds {

// The targets' dtype is a runtime flag: it is read once per row, and a template parameter would
// double the kernels' instantiations. stats == nullptr: no targets (the kernels are instantiated
// without the stats code then, so the plain update keeps its registers).
struct RowStatsArgs {
  const void* targets = nullptr;
  bool targets_long = false;
  float* stats = nullptr;
};

// From the op's arguments, already checked (check_targets: both or neither, int64/int32, float32).
inline RowStatsArgs row_stats_args(const OptTensor& targets, const OptTensor& row_stats) {
  RowStatsArgs rs;
  if (targets.has_value()) {
    rs.targets = targets->data_ptr();
    rs.targets_long = targets->scalar_type() == at::kLong;
    rs.stats = row_stats->data_ptr<float>();
  }
  return rs;
}

__device__ __forceinline__ int64_t target_of(const RowStatsArgs& a, int64_t row) {
  return a.targets_long ? static_cast<const int64_t*>(a.targets)[row]
                        : static_cast<int64_t>(static_cast<const int32_t*>(a.targets)[row]);
}

__device__ __forceinline__ void store_row_stats(float* stats, int64_t row, float correct, float el2n,
                                                float margin, float target_prob) {
  float* out = stats + row * kNumRowStats;
  out[kCorrect] = correct;
  out[kEl2n] = el2n;
  out[kMargin] = margin;
  out[kTargetProb] = target_prob;
}

// A row not applied (skipped, duplicate, out of range, or a target outside [0, C)).
__device__ __forceinline__ void store_nan_row(float* stats, int64_t row) {
  store_row_stats(stats, row, NAN, NAN, NAN, NAN);
}

}  // namespace tdds
