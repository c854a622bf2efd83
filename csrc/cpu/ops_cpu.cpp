// CPU kernels of tdds::update_ext, tdds::update_topk_ext and tdds::epoch_step_ext.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "cpu_isa.h"
#include "kernel_args.h"
#include "../op_contract.h"

namespace tdds {
namespace {

// The variant cpu_isa.cpp selects: what the CPU supports, narrowed by ATEN_CPU_CAPABILITY.
template <typename Fn>
Fn pick(Fn avx512, Fn avx2, Fn fallback) {
  switch (cpu::selected_isa()) {
    case cpu::Isa::kAvx512:
      return avx512;
    case cpu::Isa::kAvx2:
      return avx2;
    default:
      return fallback;
  }
}
UpdateRowsFn pick_update_rows() {
  return pick(&cpu::update_rows_AVX512, &cpu::update_rows_AVX2, &cpu::update_rows_DEFAULT);
}
StepRowsFn pick_step_rows() {
  return pick(&cpu::epoch_step_rows_AVX512, &cpu::epoch_step_rows_AVX2, &cpu::epoch_step_rows_DEFAULT);
}

// Task in [0, tasks) of sample n: Fibonacci hashing (the high bits of n times 2^64 / golden
// ratio, scaled to tasks) rather than n % tasks, because strided index sets are common (rank r
// of a DistributedSampler over W ranks sees only n = r mod W) and n % tasks would put all of
// them in one task. The same multiplier hashes samples into the occurrence table below.
inline int64_t task_of(int64_t n, int64_t tasks) {
  const uint64_t h = (static_cast<uint64_t>(n) * 0x9E3779B97F4A7C15ull) >> 32;
  return static_cast<int64_t>((h * static_cast<uint64_t>(tasks)) >> 32);
}

void add_counts(int64_t* ctr, const UpdateCounts& c) {
  ctr[kDuplicates] += c.duplicates;
  ctr[kNonfinite] += c.nonfinite;
  ctr[kOutOfRange] += c.out_of_range;
}

Dt dt_of(at::ScalarType t) {
  return t == at::kFloat ? Dt::f32 : t == at::kHalf ? Dt::f16 : Dt::bf16;
}

// The one update driver of update_ext and update_topk_ext (args say which row is kept).
void run_update(const UpdateArgs& args, const at::Tensor& index, int64_t* ctr) {
  const int64_t B = args.B, C = args.C;
  static const UpdateRowsFn rows_fn = pick_update_rows();
  // Rows of one sample must be visited by one thread, in batch order: then the first finite
  // row wins and the kernel needs no atomics on seen[] (nor on prev/ring). Tasks: one per
  // thread, fewer for small batches (about 32k elements each, so small batches don't pay for
  // threads), in two phases:
  //   1. the rows of samples that occur once in the batch (the common case), split into
  //      contiguous row ranges as a plain parallel loop would: the logits stream in order;
  //   2. the rows of samples that occur more than once, split by sample (task_of), each
  //      task's rows in batch order.
  // The phases touch disjoint samples. Splitting every row by sample would scatter each
  // task's logits rows over the batch: measured 15-25% slower at B = 4096, C = 1000 (2 threads).
  // Task t's counts go to its own UpdateCounts, summed in order: the same on every run.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1));
  const int64_t tasks = std::min<int64_t>(at::get_num_threads(), (B + grain - 1) / grain);
  if (tasks <= 1 || at::in_parallel_region()) {
    UpdateCounts c;
    rows_fn(args, nullptr, B, c);
    add_counts(ctr, c);
    return;
  }
  // How often each in-range sample occurs: open addressing over a power-of-two table of at
  // least 2B slots (row b's slot in slot_of[b]; out-of-range rows: -1).
  int64_t size = 1;
  while (size < 2 * B) size *= 2;
  std::vector<int64_t> keys(size, -1);
  std::vector<int32_t> occurs(size, 0), slot_of(B);
  const int64_t N = args.N;
  auto tally = [&](const auto* idx) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = static_cast<int64_t>(idx[b]);
      if (n < 0 || n >= N) {
        slot_of[b] = -1;
        continue;
      }
      int64_t h = static_cast<int64_t>((static_cast<uint64_t>(n) * 0x9E3779B97F4A7C15ull) >> 32) & (size - 1);
      while (keys[h] != -1 && keys[h] != n) h = (h + 1) & (size - 1);
      keys[h] = n;
      ++occurs[h];
      slot_of[b] = static_cast<int32_t>(h);
    }
  };
  if (args.index_i64)
    tally(index.data_ptr<int64_t>());
  else
    tally(index.data_ptr<int32_t>());

  // Task of each row: 0..tasks-1 in phase 1, tasks..2*tasks-1 in phase 2; then a stable
  // counting sort of the row positions by task (batch order within each task).
  std::vector<int32_t> owner(B);
  std::vector<int64_t> start(2 * tasks + 1, 0), rows(B);
  for (int64_t b = 0; b < B; ++b) {
    const int32_t h = slot_of[b];
    owner[b] =
        static_cast<int32_t>(h >= 0 && occurs[h] > 1 ? tasks + task_of(keys[h], tasks) : b * tasks / B);
    ++start[owner[b] + 1];
  }
  for (int64_t t = 0; t < 2 * tasks; ++t) start[t + 1] += start[t];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t b = 0; b < B; ++b) rows[fill[owner[b]]++] = b;

  std::vector<UpdateCounts> counts(2 * tasks);
  for (int64_t phase = 0; phase < 2; ++phase) {
    const int64_t first = phase * tasks;
    if (start[first + tasks] == start[first]) continue;  // no rows in this phase
    at::parallel_for(first, first + tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t)
        rows_fn(args, rows.data() + start[t], start[t + 1] - start[t], counts[t]);
    });
  }
  for (const UpdateCounts& c : counts) add_counts(ctr, c);
}

// Points args at targets / row_stats when given (checked by check_targets).
void set_targets(UpdateArgs& args, const OptTensor& targets, const OptTensor& row_stats) {
  if (!targets.has_value()) return;
  args.targets = targets->data_ptr();
  args.targets_i64 = targets->scalar_type() == at::kLong;
  args.row_stats = row_stats->data_ptr<float>();
}

void update_cpu(const at::Tensor& logits, const at::Tensor& index, const at::Tensor& prev,
                const at::Tensor& seen, const at::Tensor& ring, const at::Tensor& counters,
                const OptTensor& targets, const OptTensor& row_stats) {
  check_update(logits, index, prev, seen, ring, counters);
  check_targets("update_ext", logits, targets, row_stats);
  const int64_t epoch = checked_epoch("update_ext", counters);
  if (logits.size(0) == 0) return;
  int64_t* ctr = counters.data_ptr<int64_t>();
  UpdateArgs args{logits.data_ptr(),
                  index.data_ptr(),
                  prev.data_ptr(),
                  seen.data_ptr<int32_t>(),
                  ring.data_ptr<float>(),
                  logits.size(0),
                  logits.size(1),
                  prev.size(0),
                  ring.size(1),
                  epoch,
                  ring_slot(epoch, ring.size(1)),
                  dt_of(logits.scalar_type()),
                  dt_of(prev.scalar_type()),
                  index.scalar_type() == at::kLong};
  set_targets(args, targets, row_stats);
  run_update(args, index, ctr);
}

void update_topk_cpu(const at::Tensor& logits, const at::Tensor& index, const at::Tensor& prev_val,
                     const at::Tensor& prev_idx, const at::Tensor& prev_rest, const at::Tensor& seen,
                     const at::Tensor& ring, const at::Tensor& counters, const OptTensor& targets,
                     const OptTensor& row_stats) {
  check_update_topk(logits, index, prev_val, prev_idx, prev_rest, seen, ring, counters);
  check_targets("update_topk_ext", logits, targets, row_stats);
  const int64_t epoch = checked_epoch("update_topk_ext", counters);
  if (logits.size(0) == 0) return;
  int64_t* ctr = counters.data_ptr<int64_t>();
  UpdateArgs args{logits.data_ptr(),
                  index.data_ptr(),
                  nullptr,
                  seen.data_ptr<int32_t>(),
                  ring.data_ptr<float>(),
                  logits.size(0),
                  logits.size(1),
                  prev_val.size(0),
                  ring.size(1),
                  epoch,
                  ring_slot(epoch, ring.size(1)),
                  dt_of(logits.scalar_type()),
                  dt_of(prev_val.scalar_type()),
                  index.scalar_type() == at::kLong};
  args.K = prev_val.size(1);
  args.prev_val = prev_val.data_ptr();
  args.prev_idx = prev_idx.data_ptr();
  args.prev_rest = prev_rest.data_ptr();
  args.idx_i32 = prev_idx.scalar_type() == at::kInt;
  set_targets(args, targets, row_stats);
  run_update(args, index, ctr);
}

void epoch_step_cpu(const at::Tensor& seen, const at::Tensor& ring, const at::Tensor& score,
                    const at::Tensor& counters, double decay) {
  check_epoch_step(seen, ring, score, counters);
  const int64_t epoch = checked_epoch("epoch_step_ext", counters), W1 = ring.size(1);
  static const StepRowsFn rows_fn = pick_step_rows();
  int64_t* ctr = counters.data_ptr<int64_t>();
  // float like the reference: (1 - decay) * S + decay * R
  const StepArgs args{seen.data_ptr<int32_t>(),
                      ring.data_ptr<float>(),
                      score.data_ptr<float>(),
                      seen.size(0),
                      W1,
                      epoch,
                      ring_slot(epoch, W1),
                      static_cast<float>(1.0 - decay),
                      static_cast<float>(decay)};
  std::atomic<int64_t> missing{0};
  at::parallel_for(0, args.N, 4096,
                   [&](int64_t begin, int64_t end) { missing += rows_fn(args, begin, end); });
  ctr[kMissing] += missing.load();
  ctr[kEpoch] += 1;
}

}  // namespace
}  // namespace tdds

TORCH_LIBRARY_IMPL(tdds, CPU, m) {
  m.impl("update_ext", &tdds::update_cpu);
  m.impl("update_topk_ext", &tdds::update_topk_cpu);
  m.impl("epoch_step_ext", &tdds::epoch_step_cpu);
}
