// CPU kernels of tdds::update_ext / tdds::epoch_step_ext.
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <atomic>

#include "../kernel_args.h"
#include "../ops.h"

namespace tdds {
namespace {

// The widest variant this CPU (or ATEN_CPU_CAPABILITY) allows, chosen once.
template <typename Fn>
Fn pick(Fn avx512, Fn avx2, Fn fallback) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  const std::string cap = at::get_cpu_capability();
  if (cap == "AVX512") return avx512;
  if (cap == "AVX2") return avx2;
#endif
  return fallback;
}
UpdateRowsFn pick_update_rows() {
  return pick(&cpu::update_rows_AVX512, &cpu::update_rows_AVX2, &cpu::update_rows_DEFAULT);
}
StepRowsFn pick_step_rows() {
  return pick(&cpu::epoch_step_rows_AVX512, &cpu::epoch_step_rows_AVX2, &cpu::epoch_step_rows_DEFAULT);
}

Dt dt_of(at::ScalarType t) {
  return t == at::kFloat ? Dt::f32 : t == at::kHalf ? Dt::f16 : Dt::bf16;
}

void update_cpu(const at::Tensor& logits, const at::Tensor& index, const at::Tensor& prev, const at::Tensor& seen,
                const at::Tensor& ring, const at::Tensor& counters) {
  check_update(logits, index, prev, seen, ring, counters);
  const int64_t B = logits.size(0), C = logits.size(1);
  if (B == 0) return;
  int64_t* ctr = counters.data_ptr<int64_t>();
  const int64_t epoch = ctr[kEpoch];
  TORCH_CHECK(epoch >= 0 && epoch < INT32_MAX, "update_ext: counters[EPOCH] must be in [0, 2^31 - 1), got ", epoch);
  static const UpdateRowsFn rows_fn = pick_update_rows();
  const UpdateArgs args{logits.data_ptr(), index.data_ptr(), prev.data_ptr(), seen.data_ptr<int32_t>(),
                        ring.data_ptr<float>(), B, C, prev.size(0), ring.size(1), epoch, ring_slot(epoch, ring.size(1)),
                        dt_of(logits.scalar_type()), dt_of(prev.scalar_type()), index.scalar_type() == at::kLong};
  std::atomic<int64_t> dup{0}, nonfinite{0}, oor{0};
  // Rows are independent except for the seen[] claim, which the kernel does atomically.
  // Grain: about 32k elements per task, so small batches don't pay for threads.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    UpdateCounts c;
    rows_fn(args, begin, end, c);
    dup += c.duplicates;
    nonfinite += c.nonfinite;
    oor += c.out_of_range;
  });
  ctr[kDuplicates] += dup.load();
  ctr[kNonfinite] += nonfinite.load();
  ctr[kOutOfRange] += oor.load();
}

void epoch_step_cpu(const at::Tensor& seen, const at::Tensor& ring, const at::Tensor& score, const at::Tensor& counters,
                    double decay) {
  check_epoch_step(seen, ring, score, counters);
  static const StepRowsFn rows_fn = pick_step_rows();
  int64_t* ctr = counters.data_ptr<int64_t>();
  const int64_t epoch = ctr[kEpoch], W1 = ring.size(1);
  // float like the reference: (1 - decay) * S + decay * R
  const StepArgs args{seen.data_ptr<int32_t>(), ring.data_ptr<float>(), score.data_ptr<float>(), seen.size(0), W1,
                      epoch, ring_slot(epoch, W1), static_cast<float>(1.0 - decay), static_cast<float>(decay)};
  std::atomic<int64_t> missing{0};
  at::parallel_for(0, args.N, 4096, [&](int64_t begin, int64_t end) { missing += rows_fn(args, begin, end); });
  ctr[kMissing] += missing.load();
  ctr[kEpoch] += 1;
}

}  // namespace
}  // namespace tdds

TORCH_LIBRARY_IMPL(tdds, CPU, m) {
  m.impl("update_ext", &tdds::update_cpu);
  m.impl("epoch_step_ext", &tdds::epoch_step_cpu);
}
