// Plain-data arguments of the CPU update kernel. Kept free of torch headers because it is
// included by the per-ISA translation units (cpu/update_*.cpp), which should contain as little
// shared inline code as possible (see cpu/kernels_isa.h).
#pragma once
#include <cstdint>

#include "../row_stats.h"

namespace tdds {

enum class Dt : int32_t { f32, f16, bf16 };

struct UpdateArgs {
  const void* logits;  // (B, C) contiguous, logits_dt
  const void* index;   // (B,) int64 if index_i64 else int32
  void* prev;          // (N, C) contiguous, prev_dt: log(p + 1e-8) of the last recorded row
  int32_t* seen;       // (N,)
  float* ring;         // (N, W1) contiguous
  int64_t B, C, N, W1;
  int64_t epoch;  // counters[EPOCH], read by the host wrapper
  int64_t slot;   // ring slot of d_{epoch-1} (ring_slot in op_contract.h)
  Dt logits_dt, prev_dt;
  bool index_i64;
  // The compressed previous row (update_topk, docs/design.md §2.1), used where K > 0 in place
  // of prev: prev_val (N, K) and prev_rest (N,) in prev_dt, prev_idx (N, K) int32 or int16.
  int64_t K = 0;
  void* prev_val = nullptr;
  void* prev_idx = nullptr;
  void* prev_rest = nullptr;
  bool idx_i32 = false;
  // With targets (B,) int64 if targets_i64 else int32: row_stats (B, kNumRowStats) float32,
  // written for every row the call is given (op_contract.h RowStat; NaN unless applied).
  const void* targets = nullptr;
  float* row_stats = nullptr;
  bool targets_i64 = false;
};

struct UpdateCounts {
  int64_t duplicates = 0, nonfinite = 0, out_of_range = 0;
};

struct StepArgs {
  const int32_t* seen;  // (N,)
  float* ring;          // (N, W1) contiguous
  float* score;         // (N,)
  int64_t N, W1, epoch, slot;
  float keep, add;  // score = keep * score + add * R
};

// The update of the batch rows rows[0..count) (rows == nullptr: rows 0..count-1), visited in
// that order; one definition per ISA (DEFAULT, AVX2, AVX512). Every row of a sample that
// appears in the list must appear in batch order, and no other call running at the same time
// may hold a row of that sample (ops_cpu.cpp partitions the batch by sample).
using UpdateRowsFn = void (*)(const UpdateArgs&, const int64_t* rows, int64_t count, UpdateCounts&);
using StepRowsFn = int64_t (*)(const StepArgs&, int64_t begin, int64_t end);  // returns # missing

namespace cpu {
void update_rows_DEFAULT(const UpdateArgs&, const int64_t*, int64_t, UpdateCounts&);
void update_rows_AVX2(const UpdateArgs&, const int64_t*, int64_t, UpdateCounts&);
void update_rows_AVX512(const UpdateArgs&, const int64_t*, int64_t, UpdateCounts&);
int64_t epoch_step_rows_DEFAULT(const StepArgs&, int64_t, int64_t);
int64_t epoch_step_rows_AVX2(const StepArgs&, int64_t, int64_t);
int64_t epoch_step_rows_AVX512(const StepArgs&, int64_t, int64_t);
}  // namespace cpu

}  // namespace tdds
