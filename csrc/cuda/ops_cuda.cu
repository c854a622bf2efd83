// CUDA kernels of tdds::update_ext / tdds::epoch_step_ext.
//
// Only the headers the kernels need: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE
// headers, which a bare toolkit (and the CPU torch wheel's compile check) lacks. at::sort and
// at::empty come from their per-op headers, not from ATen/ATen.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "../op_contract.h"

namespace tdds {
namespace {

constexpr int kWarp = 32;
// One warp per row (rows are 1e2..1e4 classes), two warps per block: at B <= 1024 a block of
// eight warps left most SMs idle (B / 8 blocks for 132 SMs); with two, B / 2 blocks spread the
// rows over every SM, and 32 blocks of two still fill an SM (64 warps) at large B.
constexpr int kWarpsPerBlock = 2;

// A hint that the line at p will be read soon (an L2 prefetch: no register, no fault, no wait).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ int64_t warp_min(int64_t v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ void count(int64_t* counters, int slot, int64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(counters + slot), static_cast<unsigned long long>(v));
}

// targets / row_stats (op_contract.h RowStat), used by the kernel instantiated with kStats (the
// one without keeps its registers: 46-48 per thread on sm_90). The targets' dtype is a runtime
// flag: it is read once per row, and a template parameter would add instantiations.
struct RowStatsArgs {
  const void* targets = nullptr;
  bool targets_long = false;
  float* stats = nullptr;
};

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

__device__ __forceinline__ void store_nan_row(float* stats, int64_t row) {
  store_row_stats(stats, row, NAN, NAN, NAN, NAN);
}

// One warp per position of the batch sorted by sample index (sorted: the indices, stably
// sorted, so equal indices keep batch order; order: their batch positions). The warp at the
// first position of a run of equal indices processes the whole run in batch order: the first
// usable (finite) row is applied if the sample was not recorded yet this epoch, every other
// usable row is a duplicate; warps inside a run exit at once. So the applied row is the lowest
// batch position among the usable rows whatever order the warps run in, and seen/prev/ring of a
// sample are touched by one warp only (no atomics on them). The epoch is read from
// counters[kEpoch] on the device (no host sync); bad indices are skipped and counted (the
// tracker raises at end_epoch). With targets, the head warp writes row_stats for every row of
// its run: the stats of the applied row if its target is in [0, C), NaN for every other row.
template <typename T, typename S, typename I, bool kStats>
__global__ void update_kernel(const T* __restrict__ logits, const I* __restrict__ sorted,
                              const int64_t* __restrict__ order, S* __restrict__ prev,
                              int32_t* __restrict__ seen, float* __restrict__ ring,
                              int64_t* __restrict__ counters, int64_t B, int64_t C, int64_t N, int64_t W1,
                              RowStatsArgs rs) {
  const int lane = threadIdx.x % kWarp;
  const int64_t pos = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (pos >= B) return;  // whole warps exit together
  const int64_t n = static_cast<int64_t>(sorted[pos]);
  if (pos > 0 && static_cast<int64_t>(sorted[pos - 1]) == n) return;  // the run's head handles it
  int64_t end = pos + 1;                                              // the run is [pos, end)
  while (end < B && static_cast<int64_t>(sorted[end]) == n) ++end;
  if (n < 0 || n >= N) {
    if (lane == 0) count(counters, kOutOfRange, end - pos);
    if (kStats)
      for (int64_t k = pos + lane; k < end; k += kWarp) store_nan_row(rs.stats, order[k]);
    return;
  }
  const int32_t epoch = static_cast<int32_t>(counters[kEpoch]);
  const int32_t old = seen[n];
  bool fresh = old != epoch;                           // no row of n applied yet this epoch
  const bool with_d = epoch >= 1 && old == epoch - 1;  // d_{e-1} needs a record in epoch e - 1
  int64_t duplicates = 0, nonfinite = 0;
  for (int64_t k = pos; k < end; ++k) {
    const int64_t row = order[k];
    const T* x = logits + row * C;
    // The previous row is read in pass 4 if this row is applied and n was recorded in e - 1;
    // a fresh n is the only case where it can be, so its lines are prefetched now, during the
    // passes over the logits, instead of waiting for them (a skipped row wastes the hint).
    if (fresh && with_d) {
      const char* q0 = reinterpret_cast<const char*>(prev + n * C);
      const int64_t bytes = C * static_cast<int64_t>(sizeof(S));
      for (int64_t off = static_cast<int64_t>(lane) * 128; off < bytes; off += kWarp * 128)
        prefetch_l2(q0 + off);
    }

    // 1. row max; x - x is NaN exactly for inf/NaN, so `bad` flags a non-finite row
    float m = -INFINITY, bad = 0.f;
    for (int64_t c = lane; c < C; c += kWarp) {
      const float v = static_cast<float>(x[c]);
      m = fmaxf(m, v);
      bad += v - v;
    }
    m = warp_max(m);
    if (isnan(warp_sum(bad))) {  // skipped: the sample stays unrecorded by this row
      ++nonfinite;
      if (kStats && lane == 0) store_nan_row(rs.stats, row);
      continue;
    }
    // 2. the first usable row of the sample in the epoch wins (values are warp-uniform)
    if (!fresh) {
      ++duplicates;
      if (kStats && lane == 0) store_nan_row(rs.stats, row);
      continue;
    }
    fresh = false;
    // with targets: the row's stats are computed if its target y is a class (warp-uniform)
    int64_t y = -1;
    if (kStats) {
      const int64_t t = target_of(rs, row);
      if (t >= 0 && t < C) y = t;
    }
    const bool want = y >= 0;

    // 3. softmax denominator
    float s = 0.f;
    for (int64_t c = lane; c < C; c += kWarp) s += expf(static_cast<float>(x[c]) - m);
    const float inv = 1.f / warp_sum(s);

    // 4. p, log(p + eps), d against the cached log, and the new cached log (re-reading x and
    // recomputing exp is cheaper than staging the row: the kernel is memory-bound)
    // With targets, from the same values: the lowest class whose z is the row max (each lane
    // visits its classes in increasing order, so its first hit is its lowest; exact, since m is
    // the max of these very values), max_{c != y} z, and sum_{c != y} p_c^2, to which
    // (1 - p_y)^2 is added (not sum p^2 - 2 p_y + 1: that cancels when p_y ~ 1).
    S* q = prev + n * C;
    float d = 0.f, other = -INFINITY, e2 = 0.f;
    int64_t first = C;
    for (int64_t c = lane; c < C; c += kWarp) {
      const float z = static_cast<float>(x[c]);
      const float p = expf(z - m) * inv;
      const float lp = logf(p + kEps);
      if (with_d) d += fabsf(p * (lp - static_cast<float>(q[c])));
      q[c] = static_cast<S>(lp);
      if (want) {
        if (z == m && first == C) first = c;
        if (c != y) {
          other = fmaxf(other, z);
          e2 += p * p;
        }
      }
    }
    d = warp_sum(d);
    if (want) {
      first = warp_min(first);
      other = warp_max(other);
      e2 = warp_sum(e2);
    }
    if (lane == 0) {
      ring[n * W1 + ring_slot(epoch, W1)] = with_d ? d : NAN;
      seen[n] = epoch;
      if (want) {
        // p_y as every p_c above: exactly the term left out of e2. margin: +inf when C = 1.
        const float zy = static_cast<float>(x[y]);
        const float py = expf(zy - m) * inv;
        store_row_stats(rs.stats, row, first == y ? 1.f : 0.f, sqrtf(e2 + (1.f - py) * (1.f - py)),
                        zy - other, py);
      } else if (kStats) {
        store_nan_row(rs.stats, row);
      }
    }
  }
  if (lane == 0) {  // integer sums: the same whatever order the warps add them in
    if (duplicates) count(counters, kDuplicates, duplicates);
    if (nonfinite) count(counters, kNonfinite, nonfinite);
  }
}

// One thread per sample: mark a missing sample's transition undefined, fold the window.
__global__ void epoch_step_kernel(const int32_t* __restrict__ seen, float* __restrict__ ring,
                                  float* __restrict__ score, int64_t* __restrict__ counters, int64_t N,
                                  int64_t W1, float keep, float add) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t epoch = counters[kEpoch];
  int missing = 0;
  if (n < N) {
    float* r = ring + n * W1;
    if (seen[n] != epoch) {
      missing = 1;
      r[ring_slot(epoch, W1)] = NAN;
    }
    if (epoch >= W1) {  // R over the defined values of the window, 0 with fewer than two
      float sum = 0.f;
      int defined = 0;
      for (int64_t j = 0; j < W1; ++j)
        if (!isnan(r[j])) sum += r[j], ++defined;
      float R = 0.f;
      if (defined >= 2) {
        const float mean = sum / defined;
        float ss = 0.f;
        for (int64_t j = 0; j < W1; ++j)
          if (!isnan(r[j])) ss += (r[j] - mean) * (r[j] - mean);
        R = sqrtf(ss);
      }
      score[n] = keep * score[n] + add * R;
    }
  }
  // one atomic per warp instead of per sample
  const int warp_missing = __popc(__ballot_sync(0xffffffffu, missing));
  if (threadIdx.x % kWarp == 0 && warp_missing) count(counters, kMissing, warp_missing);
}

// A separate launch on the same stream: every block above has read the epoch before it moves.
__global__ void advance_epoch_kernel(int64_t* counters) {
  counters[kEpoch] += 1;
}

// The sort keys (ops/triton/update.py sort_rows states the same): the index where it lies in
// [0, N), N + b for an out-of-range row b; int32 when N + B < 2^31. A stable sort of 32-bit keys
// takes half the radix passes of 64-bit ones, and it is a fixed cost per update whatever C is.
// In-range keys are the samples, so the runs and their heads (the first-usable-row rule) are
// the 64-bit sort's; each out-of-range row is a run of its own, still skipped and counted.
template <typename I>
__global__ void sort_keys_kernel(const I* __restrict__ index, int32_t* __restrict__ keys, int64_t B,
                                 int64_t N) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const int64_t n = static_cast<int64_t>(index[b]);
  keys[b] = static_cast<int32_t>(n >= 0 && n < N ? n : N + b);
}

template <typename T, typename S, typename K>
void launch_sorted(const at::Tensor& logits, const at::Tensor& keys, const at::Tensor& prev,
                   const at::Tensor& seen, const at::Tensor& ring, const at::Tensor& counters,
                   const RowStatsArgs& rs, cudaStream_t stream) {
  const int64_t B = logits.size(0);
  // Stable sort on the current stream: equal keys keep batch order, so the head of each run
  // is its first row. Device-side, no host sync; the temporaries go back to the caching
  // allocator, which keeps them reserved until the kernel below has run on this stream.
  const auto [sorted, order] =
      at::sort(keys, /*stable=*/std::optional<bool>(true), /*dim=*/0, /*descending=*/false);
  const unsigned blocks = static_cast<unsigned>((B + kWarpsPerBlock - 1) / kWarpsPerBlock);
  auto* kernel = rs.stats != nullptr ? update_kernel<T, S, K, true> : update_kernel<T, S, K, false>;
  kernel<<<blocks, kWarpsPerBlock * kWarp, 0, stream>>>(
      static_cast<const T*>(logits.data_ptr()), static_cast<const K*>(sorted.data_ptr()),
      order.data_ptr<int64_t>(), static_cast<S*>(prev.data_ptr()), seen.data_ptr<int32_t>(),
      ring.data_ptr<float>(), counters.data_ptr<int64_t>(), B, logits.size(1), prev.size(0), ring.size(1),
      rs);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename S, typename I>
void launch_update(const at::Tensor& logits, const at::Tensor& index, const at::Tensor& prev,
                   const at::Tensor& seen, const at::Tensor& ring, const at::Tensor& counters,
                   const RowStatsArgs& rs, cudaStream_t stream) {
  const int64_t B = logits.size(0), N = prev.size(0);
  if (N + B >= (int64_t{1} << 31)) {  // keys N + b would not fit: sort the index itself
    launch_sorted<T, S, I>(logits, index, prev, seen, ring, counters, rs, stream);
    return;
  }
  const at::Tensor keys = at::empty({B}, index.options().dtype(at::kInt));
  constexpr int kThreads = 256;
  sort_keys_kernel<I><<<static_cast<unsigned>((B + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      index.data_ptr<I>(), keys.data_ptr<int32_t>(), B, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_sorted<T, S, int32_t>(logits, keys, prev, seen, ring, counters, rs, stream);
}

template <typename T, typename S>
void by_index(const at::Tensor& l, const at::Tensor& i, const at::Tensor& p, const at::Tensor& s,
              const at::Tensor& r, const at::Tensor& c, const RowStatsArgs& rs, cudaStream_t st) {
  if (i.scalar_type() == at::kLong)
    launch_update<T, S, int64_t>(l, i, p, s, r, c, rs, st);
  else
    launch_update<T, S, int32_t>(l, i, p, s, r, c, rs, st);
}
template <typename T>
void by_storage(const at::Tensor& l, const at::Tensor& i, const at::Tensor& p, const at::Tensor& s,
                const at::Tensor& r, const at::Tensor& c, const RowStatsArgs& rs, cudaStream_t st) {
  switch (p.scalar_type()) {
    case at::kFloat:
      return by_index<T, float>(l, i, p, s, r, c, rs, st);
    case at::kHalf:
      return by_index<T, c10::Half>(l, i, p, s, r, c, rs, st);
    default:
      return by_index<T, c10::BFloat16>(l, i, p, s, r, c, rs, st);
  }
}

void update_cuda(const at::Tensor& logits, const at::Tensor& index, const at::Tensor& prev,
                 const at::Tensor& seen, const at::Tensor& ring, const at::Tensor& counters,
                 const OptTensor& targets, const OptTensor& row_stats) {
  check_update(logits, index, prev, seen, ring, counters);
  check_targets("update_ext", logits, targets, row_stats);
  if (logits.size(0) == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t st = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  RowStatsArgs rs;
  if (targets.has_value()) {
    rs.targets = targets->data_ptr();
    rs.targets_long = targets->scalar_type() == at::kLong;
    rs.stats = row_stats->data_ptr<float>();
  }
  switch (logits.scalar_type()) {
    case at::kFloat:
      return by_storage<float>(logits, index, prev, seen, ring, counters, rs, st);
    case at::kHalf:
      return by_storage<c10::Half>(logits, index, prev, seen, ring, counters, rs, st);
    default:
      return by_storage<c10::BFloat16>(logits, index, prev, seen, ring, counters, rs, st);
  }
}

void epoch_step_cuda(const at::Tensor& seen, const at::Tensor& ring, const at::Tensor& score,
                     const at::Tensor& counters, double decay) {
  check_epoch_step(seen, ring, score, counters);
  const c10::cuda::CUDAGuard guard(seen.device());
  const cudaStream_t st = c10::cuda::getCurrentCUDAStream(seen.device().index()).stream();
  const int64_t N = seen.size(0);
  constexpr int kThreads = 256;
  if (N > 0) {
    epoch_step_kernel<<<static_cast<unsigned>((N + kThreads - 1) / kThreads), kThreads, 0, st>>>(
        seen.data_ptr<int32_t>(), ring.data_ptr<float>(), score.data_ptr<float>(),
        counters.data_ptr<int64_t>(), N, ring.size(1), static_cast<float>(1.0 - decay),
        static_cast<float>(decay));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  advance_epoch_kernel<<<1, 1, 0, st>>>(counters.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace tdds

TORCH_LIBRARY_IMPL(tdds, CUDA, m) {
  m.impl("update_ext", &tdds::update_cuda);
  m.impl("epoch_step_ext", &tdds::epoch_step_cuda);
}
