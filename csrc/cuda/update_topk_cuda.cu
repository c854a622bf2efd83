// CUDA kernel of tdds::update_topk_ext: the update with a compressed previous row
// (docs/design.md §2.1). The row rules are ops_cuda.cu's update_kernel (one run of equal indices
// of the stably sorted batch per head; the first usable row applied), with a block per row
// instead of a warp: at the widths this op is for (C = 21,841) a warp would stream the row alone.
//
// Per applied row, from p = exp(z - max) / sum (recomputed from the logits in every pass, the
// same expression each time, so every pass sees the same p):
//   d     the K stored classes against their stored logs, plus one term for the tail (K < C):
//         m |log(m / (C - K) + eps) - r|, m the p summed over the classes outside the stored ids
//         (reference_topk.py: the old tail taken to have the new row's shape at its stored mean),
//         so a tail class costs its p, not a log; which classes are stored is a bitmask in shared
//         memory, and m is summed over the classes it holds (not 1 - the stored mass, which loses
//         a settled sample's small tail to cancellation);
//   key   the K-th largest p by a radix select on p's bits (non-negative floats order as their
//         bits): four passes of 8-bit digits counted in a shared histogram, whatever K; where
//         more classes share that p than are kept, four more passes over (inverted) class ids
//         pick the lowest ids among them (the tie rule of every backend);
//   keep  one pass: the classes above the key and the chosen ones at it go to shared memory,
//         the others' p are summed (the residual: no 1 - kept cancellation);
//   store the K kept in the order (p desc, id asc): each one's rank is counted among the K.
// Shared memory: C bits + 8 bytes per kept class (2.7 KB + 1 KB at C = 21,841, K = 128); the
// launcher refuses shapes above 48 KB.
#include <ATen/core/Tensor.h>
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
constexpr int kThreads = 256;  // a block per row
constexpr int kWarps = kThreads / kWarp;
constexpr int64_t kSharedLimit = 48 * 1024;  // dynamic shared memory without an opt-in

__device__ __forceinline__ void count(int64_t* counters, int slot, int64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(counters + slot), static_cast<unsigned long long>(v));
}

// Block-wide reductions (every thread gets the result). `scratch`: kWarps values.
template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, Op op, V* scratch) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // scratch may still be read by the previous reduction
  if (threadIdx.x % kWarp == 0) scratch[threadIdx.x / kWarp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < kWarps; ++w) v = op(v, scratch[w]);  // the same order in every thread
  return v;
}

template <typename T>
__device__ __forceinline__ float prob(const T* x, int64_t c, float m, float inv) {
  return expf(static_cast<float>(x[c]) - m) * inv;
}

// One 8-bit digit (bits shift..shift+7) of the K-th largest key among the classes that match
// `prefix` above it (and, for the id passes, hold the p key `at`): the lowest digit with fewer
// than `need` matching classes above it. Updates prefix and need (block-uniform).
template <typename T>
__device__ void radix_digit(const T* x, int64_t C, float m, float inv, int shift, bool by_id, uint32_t at,
                            uint32_t& prefix, int& need, unsigned* hist, int* shared_digit) {
  for (int b = threadIdx.x; b < 256; b += kThreads) hist[b] = 0;
  __syncthreads();
  // Every lane runs every step (c past C counts nothing), so the warp can combine its lanes'
  // increments: most classes of a row share the first digits, and one shared atomic per class
  // on the same bin would serialize the pass.
  for (int64_t base = 0; base < C; base += kThreads) {
    const int64_t c = base + threadIdx.x;
    const uint32_t key = c < C ? __float_as_uint(prob(x, c, m, inv)) : 0u;
    uint32_t v = by_id ? 0x7fffffffu - static_cast<uint32_t>(c) : key;  // ids: larger for lower ids
    bool counted = c < C && (!by_id || key == at);
    if (shift < 24) counted = counted && (v >> (shift + 8)) == (prefix >> (shift + 8));
    const uint32_t digit = counted ? (v >> shift) & 255u : 256u;
    const unsigned peers = __match_any_sync(0xffffffffu, digit);
    if (counted && threadIdx.x % kWarp == __ffs(peers) - 1) atomicAdd(hist + digit, __popc(peers));
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int above = 0, digit = 0;
    for (int b = 255; b >= 0; --b) {
      if (above + static_cast<int>(hist[b]) >= need) {
        digit = b;
        break;
      }
      above += static_cast<int>(hist[b]);
    }
    shared_digit[0] = digit;
    shared_digit[1] = need - above;
  }
  __syncthreads();
  prefix |= static_cast<uint32_t>(shared_digit[0]) << shift;
  need = shared_digit[1];
  __syncthreads();
}

template <typename T, typename S, typename I, bool kStats>
__global__ void __launch_bounds__(kThreads)
    update_topk_kernel(const T* __restrict__ logits, const I* __restrict__ sorted,
                       const int64_t* __restrict__ order, S* __restrict__ val, void* __restrict__ idx_ptr,
                       bool idx_i32, S* __restrict__ rest, int32_t* __restrict__ seen,
                       float* __restrict__ ring, int64_t* __restrict__ counters, int64_t B, int64_t C,
                       int64_t N, int64_t W1, int64_t K, RowStatsArgs rs) {
  extern __shared__ uint2 dynamic[];
  uint2* kept = dynamic;                                     // (K,): (p's bits, class id)
  uint32_t* stored = reinterpret_cast<uint32_t*>(kept + K);  // ((C + 31) / 32,): the old ids' bits
  __shared__ float fscratch[kWarps];
  __shared__ int iscratch[kWarps];
  __shared__ unsigned hist[256];
  __shared__ int shared_digit[2];
  __shared__ int n_kept;
  int16_t* id16 = static_cast<int16_t*>(idx_ptr);
  int32_t* id32 = static_cast<int32_t*>(idx_ptr);

  const int64_t pos = blockIdx.x;
  const int64_t n = static_cast<int64_t>(sorted[pos]);
  if (pos > 0 && static_cast<int64_t>(sorted[pos - 1]) == n) return;  // the run's head handles it
  int64_t end = pos + 1;
  while (end < B && static_cast<int64_t>(sorted[end]) == n) ++end;
  if (n < 0 || n >= N) {
    if (threadIdx.x == 0) count(counters, kOutOfRange, end - pos);
    if (kStats)
      for (int64_t k = pos + threadIdx.x; k < end; k += kThreads) store_nan_row(rs.stats, order[k]);
    return;
  }
  const int32_t epoch = static_cast<int32_t>(counters[kEpoch]);
  const int32_t old = seen[n];
  bool fresh = old != epoch;
  const bool with_d = epoch >= 1 && old == epoch - 1;
  int64_t duplicates = 0, nonfinite = 0;
  for (int64_t k = pos; k < end; ++k) {
    const int64_t row = order[k];
    const T* x = logits + row * C;
    float m = -INFINITY, bad = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      const float v = static_cast<float>(x[c]);
      m = fmaxf(m, v);
      bad += v - v;  // NaN exactly for inf/NaN
    }
    m = block_reduce(m, Max(), fscratch);
    const bool finite = !isnan(block_reduce(bad, Sum(), fscratch));
    if (!finite || !fresh) {  // skipped (the sample stays unrecorded by it), or a duplicate
      ++(finite ? duplicates : nonfinite);
      if (kStats && threadIdx.x == 0) store_nan_row(rs.stats, row);
      continue;
    }
    fresh = false;
    int64_t y = -1;
    if (kStats) {
      const int64_t t = target_of(rs, row);
      if (t >= 0 && t < C) y = t;
    }
    float s = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += kThreads) s += expf(static_cast<float>(x[c]) - m);
    const float inv = 1.f / block_reduce(s, Sum(), fscratch);

    // d against the old compressed row (before it is replaced below)
    float d = 0.f;
    if (with_d) {
      const int64_t words = (C + 31) / 32;
      for (int64_t w = threadIdx.x; w < words; w += kThreads) stored[w] = 0u;
      __syncthreads();
      for (int64_t j = threadIdx.x; j < K; j += kThreads) {
        const int64_t c = idx_i32 ? id32[n * K + j] : id16[n * K + j];
        if (c < 0 || c >= C) continue;  // ids come from this op; guard anyway
        atomicOr(stored + c / 32, 1u << (c % 32));
        const float p = prob(x, c, m, inv);
        d += fabsf(p * (logf(p + kEps) - static_cast<float>(val[n * K + j])));
      }
      __syncthreads();
      d = block_reduce(d, Sum(), fscratch);
      if (K < C) {  // the tail's mass (`m` is the row's max logit), then its one term
        // An int class index (C bits fit in 48 KB: C < 2^19), a register less than int64_t: with
        // the early ring store below, ptxas fits the sm_90 variants without spills.
        float tail = 0.f;
        for (int c = threadIdx.x; c < static_cast<int>(C); c += kThreads)
          if (!((stored[c / 32] >> (c % 32)) & 1u)) tail += prob(x, c, m, inv);
        tail = block_reduce(tail, Sum(), fscratch);  // every thread: the same mass, the same d
        d += tail * fabsf(logf(tail / static_cast<float>(C - K) + kEps) - static_cast<float>(rest[n]));
      }
    }
    // d recorded now rather than with the row's other writes below: it is not carried through
    // the selection passes (fewer live registers there; nothing in this block reads it back).
    if (threadIdx.x == 0) ring[n * W1 + ring_slot(epoch, W1)] = with_d ? d : NAN;

    // The K-th largest key, then (only where classes tie at it) the lowest ids among the ties.
    uint32_t key_k = 0, id_k = 0;
    int need = static_cast<int>(K);
    for (int shift = 24; shift >= 0; shift -= 8)
      radix_digit(x, C, m, inv, shift, false, 0u, key_k, need, hist, shared_digit);
    const bool all_ties = static_cast<int>(hist[(key_k) & 255u]) == need;  // last pass: the ties
    __syncthreads();
    if (!all_ties)
      for (int shift = 24; shift >= 0; shift -= 8)
        radix_digit(x, C, m, inv, shift, true, key_k, id_k, need, hist, shared_digit);

    // keep: the kept classes to shared memory, the others' p summed; row stats on the way
    if (threadIdx.x == 0) n_kept = 0;
    __syncthreads();
    float residual = 0.f, other = -INFINITY, e2 = 0.f;
    int first = static_cast<int>(C);
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      const float z = static_cast<float>(x[c]);
      const float p = expf(z - m) * inv;
      const uint32_t key = __float_as_uint(p);
      const bool keep =
          key > key_k || (key == key_k && (all_ties || 0x7fffffffu - static_cast<uint32_t>(c) >= id_k));
      if (keep) {
        const int slot = atomicAdd(&n_kept, 1);
        if (slot < K) kept[slot] = make_uint2(key, static_cast<uint32_t>(c));  // exactly K: a guard
      } else {
        residual += p;
      }
      if (kStats && y >= 0) {
        if (z == m && first == C) first = static_cast<int>(c);
        if (c != y) {
          other = fmaxf(other, z);
          e2 += p * p;
        }
      }
    }
    residual = block_reduce(residual, Sum(), fscratch);
    if (kStats && y >= 0) {
      first = block_reduce(first, Min(), iscratch);
      other = block_reduce(other, Max(), fscratch);
      e2 = block_reduce(e2, Sum(), fscratch);
    }
    // store: each kept class at its rank in (p desc, id asc)
    for (int64_t j = threadIdx.x; j < K; j += kThreads) {
      const uint2 e = kept[j];
      int64_t rank = 0;
      for (int64_t i = 0; i < K; ++i) {
        const uint2 o = kept[i];
        rank += o.x > e.x || (o.x == e.x && o.y < e.y);
      }
      val[n * K + rank] = static_cast<S>(logf(__uint_as_float(e.x) + kEps));
      if (idx_i32)
        id32[n * K + rank] = static_cast<int32_t>(e.y);
      else
        id16[n * K + rank] = static_cast<int16_t>(e.y);
    }
    if (threadIdx.x == 0) {
      const float mean = K < C ? residual / static_cast<float>(C - K) : 0.f;
      rest[n] = static_cast<S>(logf(mean + kEps));
      seen[n] = epoch;
      if (kStats) {
        if (y >= 0) {
          const float zy = static_cast<float>(x[y]);
          const float py = expf(zy - m) * inv;
          store_row_stats(rs.stats, row, first == y ? 1.f : 0.f, sqrtf(e2 + (1.f - py) * (1.f - py)),
                          zy - other, py);
        } else {
          store_nan_row(rs.stats, row);
        }
      }
    }
    __syncthreads();  // kept[] and the scratch are reused by the next row of the run
  }
  if (threadIdx.x == 0) {
    if (duplicates) count(counters, kDuplicates, duplicates);
    if (nonfinite) count(counters, kNonfinite, nonfinite);
  }
}

template <typename T, typename S, typename I>
void launch(const at::Tensor& logits, const at::Tensor& index, const at::Tensor& val, const at::Tensor& idx,
            const at::Tensor& rest, const at::Tensor& seen, const at::Tensor& ring,
            const at::Tensor& counters, const RowStatsArgs& rs, size_t shared, cudaStream_t stream) {
  const int64_t B = logits.size(0);
  const auto [sorted, order] =
      at::sort(index, /*stable=*/std::optional<bool>(true), /*dim=*/0, /*descending=*/false);
  auto* kernel = rs.stats != nullptr ? update_topk_kernel<T, S, I, true> : update_topk_kernel<T, S, I, false>;
  kernel<<<static_cast<unsigned>(B), kThreads, shared, stream>>>(
      static_cast<const T*>(logits.data_ptr()), static_cast<const I*>(sorted.data_ptr()),
      order.data_ptr<int64_t>(), static_cast<S*>(val.data_ptr()), idx.data_ptr(),
      idx.scalar_type() == at::kInt, static_cast<S*>(rest.data_ptr()), seen.data_ptr<int32_t>(),
      ring.data_ptr<float>(), counters.data_ptr<int64_t>(), B, logits.size(1), val.size(0), ring.size(1),
      val.size(1), rs);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void update_topk_cuda(const at::Tensor& logits, const at::Tensor& index, const at::Tensor& prev_val,
                      const at::Tensor& prev_idx, const at::Tensor& prev_rest, const at::Tensor& seen,
                      const at::Tensor& ring, const at::Tensor& counters, const OptTensor& targets,
                      const OptTensor& row_stats) {
  check_update_topk(logits, index, prev_val, prev_idx, prev_rest, seen, ring, counters);
  check_targets("update_topk_ext", logits, targets, row_stats);
  const int64_t C = logits.size(1), K = prev_val.size(1);
  const int64_t shared = K * 8 + (C + 31) / 32 * 4;
  TORCH_CHECK(shared <= kSharedLimit,
              "update_topk_ext: on CUDA, 8 K + C / 8 bytes must fit in 48 KB of shared ",
              "memory, got K = ", K, ", C = ", C, " (use backend='triton')");
  if (logits.size(0) == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t st = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  const RowStatsArgs rs = row_stats_args(targets, row_stats);
  const auto by_index = [&](auto t, auto s) {
    using T = decltype(t);
    using S = decltype(s);
    if (index.scalar_type() == at::kLong)
      launch<T, S, int64_t>(logits, index, prev_val, prev_idx, prev_rest, seen, ring, counters, rs, shared,
                            st);
    else
      launch<T, S, int32_t>(logits, index, prev_val, prev_idx, prev_rest, seen, ring, counters, rs, shared,
                            st);
  };
  const auto by_storage = [&](auto t) {
    switch (prev_val.scalar_type()) {
      case at::kFloat:
        return by_index(t, float{});
      case at::kHalf:
        return by_index(t, c10::Half{});
      default:
        return by_index(t, c10::BFloat16{});
    }
  };
  switch (logits.scalar_type()) {
    case at::kFloat:
      return by_storage(float{});
    case at::kHalf:
      return by_storage(c10::Half{});
    default:
      return by_storage(c10::BFloat16{});
  }
}

}  // namespace
}  // namespace tdds

TORCH_LIBRARY_IMPL(tdds, CUDA, m) {
  m.impl("update_topk_ext", &tdds::update_topk_cuda);
}
