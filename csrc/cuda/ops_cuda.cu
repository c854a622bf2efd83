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
#include "reduce_ops.h"
#include "row_stats_args.h"

namespace tdds {
namespace {

constexpr int kWarp = 32;

// Threads per row (a "row group"): a warp, or a block of up to kMaxWarpsPerRow warps for wide
// rows. At small B (<= 1024 rows for 132 SMs) every row is in flight at once, and the update's
// time is one row's latency: the number of dependent global round trips per pass, about
// C / (threads per row * 16 values per round trip, see kUnroll). A warp per row streams C = 1,000
// in two of them but C = 21,841 in 43; eight warps cut that to six. Several rows per warp would
// do the opposite (fewer threads per row), so a row gets more threads instead. The count comes
// from C only, never from B: it fixes which lane sums which classes, so the bits of d and of
// the row stats depend on the row's values and C alone (not on the batch, nor on the order the
// groups run in). At large B the choice costs nothing: the blocks fill the SMs either way.
constexpr int kMaxWarpsPerRow = 8;
constexpr int kMaxValuesPerThread = 32;  // two round trips of 16 values per pass, then more warps
// A warp-wide row group runs two per 64-thread block: 32 such blocks (the per-SM block limit)
// still fill an SM with 64 warps at large B.
constexpr int kWarpRowsPerBlock = 2;

int warps_per_row(int64_t C) {
  int w = 1;
  while (w < kMaxWarpsPerRow && C > static_cast<int64_t>(w) * kWarp * kMaxValuesPerThread) w *= 2;
  return w;
}

// A hint that the line at p will be read soon (an L2 prefetch: no register, no fault, no wait).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// A reduction over the row group, the result in every thread: the warp's butterfly, then (a
// block per row) the warps' values combined in warp order by every thread. A fixed tree and a
// fixed order: the same bits whatever the timing. wpr is block-uniform (a kernel argument) and
// a block holds one row when wpr > 1, so the barriers are reached by the whole block.
template <typename V, typename Op>
__device__ __forceinline__ V row_reduce(V v, Op op, V* scratch, int wpr) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (wpr == 1) return v;
  __syncthreads();  // the scratch may still be read by the previous reduction
  if (threadIdx.x % kWarp == 0) scratch[threadIdx.x / kWarp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < wpr; ++w) v = op(v, scratch[w]);
  return v;
}

__device__ __forceinline__ void count(int64_t* counters, int slot, int64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(counters + slot), static_cast<unsigned long long>(v));
}

// A group: kVec<T> consecutive classes, 16 bytes of logits (4 fp32 or 8 fp16/bf16 values), the
// unit each thread loads. Thread t of a row group of nt threads takes groups t, t + nt, ... and
// folds its values in class order. Where the row is 16-byte aligned a group is one 16-byte load;
// elsewhere (C * sizeof(T) not a multiple of 16 leaves some rows unaligned, e.g. C = 21,841) its
// values are loaded one by one into the same lanes, in the same order, so the sums (and so d)
// are the same bits either way: aligning each row's start instead would move classes between
// lanes and make a row's d depend on where it lies in the batch. The last group of a row may be
// partial: only its classes below C are loaded.
template <typename T>
constexpr int kVec = static_cast<int>(16 / sizeof(T));
// kUnroll groups per thread are loaded before any is used: 16 values in flight per thread.
template <typename T>
constexpr int kUnroll = static_cast<int>(sizeof(T));

template <typename U, int G>
struct alignas(G * sizeof(U) < 16 ? G * sizeof(U) : 16) Pack {
  U v[G];
};

template <typename U, int G>
__device__ __forceinline__ bool aligned(const U* p) {
  return reinterpret_cast<uintptr_t>(p) % alignof(Pack<U, G>) == 0;
}

// The classes of group g below C (0 to G).
template <int G>
__device__ __forceinline__ int in_row(int64_t g, int64_t C) {
  const int64_t left = C - g * G;
  return left <= 0 ? 0 : left >= G ? G : static_cast<int>(left);
}

template <int G, typename U>
__device__ __forceinline__ void load_group(const U* p, int valid, bool vec, float (&out)[G]) {
  if (vec && valid == G) {
    const Pack<U, G> pk = *reinterpret_cast<const Pack<U, G>*>(p);
#pragma unroll
    for (int e = 0; e < G; ++e) out[e] = static_cast<float>(pk.v[e]);
  } else {
#pragma unroll
    for (int e = 0; e < G; ++e) out[e] = e < valid ? static_cast<float>(p[e]) : 0.f;
  }
}

// Passes 1 and 3: f(z) for each of this thread's classes of the row x, in the thread's fixed
// order (so every sum is the same whatever the row's batch position); the U groups of a round
// trip are all loaded before any is used.
template <int G, int U, typename T, typename F>
__device__ __forceinline__ void for_each_class(const T* x, int64_t C, int t, int nt, bool xvec, F f) {
  for (int64_t g0 = t; g0 * G < C; g0 += static_cast<int64_t>(nt) * U) {
    float v[U][G];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t g = g0 + static_cast<int64_t>(u) * nt;
      load_group<G>(x + g * G, in_row<G>(g, C), xvec, v[u]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int valid = in_row<G>(g0 + static_cast<int64_t>(u) * nt, C);
#pragma unroll
      for (int e = 0; e < G; ++e)
        if (e < valid) f(v[u][e]);
    }
  }
}

template <int G, typename U>
__device__ __forceinline__ void store_group(U* p, int valid, bool vec, const float (&in)[G]) {
  if (vec && valid == G) {
    Pack<U, G> pk;
#pragma unroll
    for (int e = 0; e < G; ++e) pk.v[e] = static_cast<U>(in[e]);
    *reinterpret_cast<Pack<U, G>*>(p) = pk;
  } else {
#pragma unroll
    for (int e = 0; e < G; ++e)
      if (e < valid) p[e] = static_cast<U>(in[e]);
  }
}

// One row group per position of the batch sorted by sample index (sorted: the indices, stably
// sorted, so equal indices keep batch order; order: their batch positions). The group at the
// first position of a run of equal indices processes the whole run in batch order: the first
// usable (finite) row is applied if the sample was not recorded yet this epoch, every other
// usable row is a duplicate; groups inside a run exit at once. So the applied row is the lowest
// batch position among the usable rows whatever order the groups run in, and seen/prev/ring of
// a sample are touched by one group only (no atomics on them). The epoch is read from
// counters[kEpoch] on the device (no host sync); bad indices are skipped and counted (the
// tracker raises at end_epoch). With targets, the head group writes row_stats for every row of
// its run: the stats of the applied row if its target is in [0, C), NaN for every other row.
// wpr: warps per row (warps_per_row(C)); a block holds kWarpRowsPerBlock rows when wpr == 1,
// one otherwise. Launch bounds (256 threads, at least 1 block per SM): without the minimum, sm_80's
// ptxas held the plain kernel to 80 registers and spilled 12 bytes (ptxas -v); with it, 87-96
// and no spill. That still leaves 21+ warps per SM, each thread with 64 bytes of loads in flight.
template <typename T, typename S, typename I, bool kStats>
__global__ void __launch_bounds__(kMaxWarpsPerRow* kWarp, 1)
    update_kernel(const T* __restrict__ logits, const I* __restrict__ sorted,
                  const int64_t* __restrict__ order, S* __restrict__ prev, int32_t* __restrict__ seen,
                  float* __restrict__ ring, int64_t* __restrict__ counters, int64_t B, int64_t C, int64_t N,
                  int64_t W1, int wpr, RowStatsArgs rs) {
  constexpr int G = kVec<T>;
  constexpr int U = kUnroll<T>;
  __shared__ float fscratch[kMaxWarpsPerRow];
  __shared__ int64_t iscratch[kMaxWarpsPerRow];
  const int nt = wpr * kWarp;  // threads per row
  const int t = static_cast<int>(threadIdx.x) % nt;
  const int64_t pos = static_cast<int64_t>(blockIdx.x) * (blockDim.x / nt) + threadIdx.x / nt;
  if (pos >= B) return;  // whole row groups exit together
  const int64_t n = static_cast<int64_t>(sorted[pos]);
  if (pos > 0 && static_cast<int64_t>(sorted[pos - 1]) == n) return;  // the run's head handles it
  int64_t end = pos + 1;                                              // the run is [pos, end)
  while (end < B && static_cast<int64_t>(sorted[end]) == n) ++end;
  if (n < 0 || n >= N) {
    if (t == 0) count(counters, kOutOfRange, end - pos);
    if (kStats)
      for (int64_t k = pos + t; k < end; k += nt) store_nan_row(rs.stats, order[k]);
    return;
  }
  const int32_t epoch = static_cast<int32_t>(counters[kEpoch]);
  const int32_t old = seen[n];
  bool fresh = old != epoch;                           // no row of n applied yet this epoch
  const bool with_d = epoch >= 1 && old == epoch - 1;  // d_{e-1} needs a record in epoch e - 1
  S* q = prev + n * C;
  const bool qvec = aligned<S, G>(q);
  int64_t duplicates = 0, nonfinite = 0;
  for (int64_t k = pos; k < end; ++k) {
    const int64_t row = order[k];
    const T* x = logits + row * C;
    const bool xvec = aligned<T, G>(x);
    // The previous row is read in pass 4 if this row is applied and n was recorded in e - 1;
    // a fresh n is the only case where it can be, which does not depend on the logits, so its
    // lines are fetched into L2 now and arrive while pass 1 streams the logits, instead of
    // after them (a skipped row wastes the hint; an L2 prefetch holds no register).
    if (fresh && with_d) {
      const char* q0 = reinterpret_cast<const char*>(q);
      const int64_t bytes = C * static_cast<int64_t>(sizeof(S));
      for (int64_t off = static_cast<int64_t>(t) * 128; off < bytes; off += static_cast<int64_t>(nt) * 128)
        prefetch_l2(q0 + off);
    }

    // 1. row max; x - x is NaN exactly for inf/NaN, so `bad` flags a non-finite row
    float m = -INFINITY, bad = 0.f;
    for_each_class<G, U>(x, C, t, nt, xvec, [&](float z) {
      m = fmaxf(m, z);
      bad += z - z;
    });
    m = row_reduce(m, Max(), fscratch, wpr);
    if (isnan(row_reduce(bad, Sum(), fscratch, wpr))) {  // skipped: the sample stays unrecorded by this row
      ++nonfinite;
      if (kStats && t == 0) store_nan_row(rs.stats, row);
      continue;
    }
    // 2. the first usable row of the sample in the epoch wins (values are uniform in the group)
    if (!fresh) {
      ++duplicates;
      if (kStats && t == 0) store_nan_row(rs.stats, row);
      continue;
    }
    fresh = false;
    // with targets: the row's stats are computed if its target y is a class (uniform)
    int64_t y = -1;
    if (kStats) {
      const int64_t tgt = target_of(rs, row);
      if (tgt >= 0 && tgt < C) y = tgt;
    }
    const bool want = y >= 0;

    // 3. softmax denominator (the row again: L1/L2 hits)
    float s = 0.f;
    for_each_class<G, U>(x, C, t, nt, xvec, [&](float z) { s += expf(z - m); });
    const float inv = 1.f / row_reduce(s, Sum(), fscratch, wpr);

    // 4. p, log(p + eps), d against the cached log, and the new cached log (re-reading x and
    // recomputing exp is cheaper than staging the row: the kernel is memory-bound)
    // With targets, from the same values: the lowest class whose z is the row max (each thread
    // visits its classes in increasing order, so its first hit is its lowest; exact, since m is
    // the max of these very values), max_{c != y} z, and sum_{c != y} p_c^2, to which
    // (1 - p_y)^2 is added (not sum p^2 - 2 p_y + 1: that cancels when p_y ~ 1).
    float d = 0.f, other = -INFINITY, e2 = 0.f;
    int64_t first = C;
    for (int64_t g0 = t; g0 * G < C; g0 += static_cast<int64_t>(nt) * U) {
      float v[U][G], old_lp[U][G];
#pragma unroll
      for (int u = 0; u < U; ++u) {  // both rows' loads issued before any is used
        const int64_t g = g0 + static_cast<int64_t>(u) * nt;
        const int valid = in_row<G>(g, C);
        load_group<G>(x + g * G, valid, xvec, v[u]);
        if (with_d) load_group<G>(q + g * G, valid, qvec, old_lp[u]);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t g = g0 + static_cast<int64_t>(u) * nt;
        const int valid = in_row<G>(g, C);
        float lp[G];
#pragma unroll
        for (int e = 0; e < G; ++e) {
          lp[e] = 0.f;
          if (e < valid) {
            const int64_t c = g * G + e;
            const float z = v[u][e];
            const float p = expf(z - m) * inv;
            lp[e] = logf(p + kEps);
            if (with_d) d += fabsf(p * (lp[e] - old_lp[u][e]));
            if (want) {
              if (z == m && first == C) first = c;
              if (c != y) {
                other = fmaxf(other, z);
                e2 += p * p;
              }
            }
          }
        }
        store_group<G>(q + g * G, valid, qvec, lp);
      }
    }
    d = row_reduce(d, Sum(), fscratch, wpr);
    if (want) {
      first = row_reduce(first, Min(), iscratch, wpr);
      other = row_reduce(other, Max(), fscratch, wpr);
      e2 = row_reduce(e2, Sum(), fscratch, wpr);
    }
    if (t == 0) {
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
  if (t == 0) {  // integer sums: the same whatever order the groups add them in
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
  const int64_t C = logits.size(1);
  const int wpr = warps_per_row(C);
  const int rows_per_block = wpr == 1 ? kWarpRowsPerBlock : 1;
  const unsigned blocks = static_cast<unsigned>((B + rows_per_block - 1) / rows_per_block);
  auto* kernel = rs.stats != nullptr ? update_kernel<T, S, K, true> : update_kernel<T, S, K, false>;
  kernel<<<blocks, rows_per_block * wpr * kWarp, 0, stream>>>(
      static_cast<const T*>(logits.data_ptr()), static_cast<const K*>(sorted.data_ptr()),
      order.data_ptr<int64_t>(), static_cast<S*>(prev.data_ptr()), seen.data_ptr<int32_t>(),
      ring.data_ptr<float>(), counters.data_ptr<int64_t>(), B, C, prev.size(0), ring.size(1), wpr, rs);
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
  const RowStatsArgs rs = row_stats_args(targets, row_stats);
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
