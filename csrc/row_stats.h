// Columns of the update ops' row_stats output (tdds_kernels/ops/schema.py ROW_STATS, same
// order): per row with target y, [argmax z == y], ||p - onehot(y)||_2, z_y - max_{c != y} z_c and
// p_y; NaN for rows not applied. Free of torch headers: the per-ISA CPU kernels include it.
#pragma once
#include <cstdint>

namespace tdds {
enum RowStat : int64_t { kCorrect = 0, kEl2n = 1, kMargin = 2, kTargetProb = 3, kNumRowStats = 4 };

// Columns of the baselines' packed per-sample state (tdds_kernels/ops/schema.py
// BASELINE_COLUMNS), then the Dyn-Unc ring from kRingCol on.
enum BaselineCol : int64_t {
  kCount = 0,
  kForgetting = 1,
  kLastCorrect = 2,
  kLearned = 3,
  kEl2nCol = 4,
  kMarginSum = 5,
  kRingCol = 6
};
}  // namespace tdds
