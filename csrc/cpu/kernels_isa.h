// The CPU kernels (update rows, epoch-step rows), compiled once per ISA: each
// cpu/kernels_<isa>.cpp defines
// CPU_CAPABILITY (+ CPU_CAPABILITY_<ISA>), switches the code generation target with
// `#pragma GCC target` and includes this file, so one set of compiler flags builds DEFAULT, AVX2
// and AVX512 variants and ops_cpu.cpp picks one at run time (cpu_isa.cpp: the widest the CPU
// supports, narrowed by ATEN_CPU_CAPABILITY) instead of baking -march=native into the binary.
//
// at::vec puts Vectorized<> in an inline namespace named after CPU_CAPABILITY, so the variants
// do not collide. Inline helpers shared with other translation units (libstdc++, c10) are
// included by kernels_isa_prelude.h *before* the target pragma, so they are compiled for the
// baseline ISA in every TU and any copy the linker keeps is safe to call on any CPU.
//
// Update, per row of the list it is given, in list order (two passes over the row in L1, two
// transcendentals per element):
//   1. max over the row, a non-finite check (x - x is NaN exactly for inf/NaN), and in the same
//      pass e = exp(x - x[0]) into a row buffer, s = sum(e) (any shift gives the same p = e / s)
//   2. the first finite row of a sample in the epoch wins: seen[n] == epoch means a duplicate
//   3. only where the max is far above x[0] (exp may have overflowed): e = exp(x - max), s again
//   4. p = e / s, lp = log(p + eps); d += |p * (lp - prev)|; prev = lp   (prev caches the log)
// Step 2 is a plain read and write: the caller gives each concurrent call the rows of a disjoint
// set of samples, each sample's rows in batch order (ops_cpu.cpp), so the winner is the lowest
// batch position whatever the threads do.
// With targets, between steps 3 and 4 the applied row's baseline statistics (row_stats_of) come
// from what is then in L1: the logits row, its exp buffer, max and sum; every other row of the
// list gets NaN stats.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "kernel_args.h"

#ifndef TDDS_PREFETCH_ROWS
#define TDDS_PREFETCH_ROWS 2  // rows ahead; 2-4 measured best here (1: 10% slower, 0: 30%)
#endif
#define TDDS_CONCAT_(a, b) a##b
#define TDDS_CONCAT(a, b) TDDS_CONCAT_(a, b)

namespace tdds::cpu {
namespace CPU_CAPABILITY {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVF = Vec::size();
constexpr int64_t kStep = 2 * kVF;  // one Vectorized<Half/BFloat16> holds two float vectors

// Load/store kStep elements (fewer at a row's tail: n < kStep) as two float vectors. Forced
// inline: g++ otherwise keeps some calls out of line, and the two vectors then go through memory
// on every step of the hot loops.
template <typename T>
struct Io {
  C10_ALWAYS_INLINE static void load(const T* p, int64_t n, Vec& a, Vec& b) {
    using V = at::vec::Vectorized<T>;
    std::tie(a, b) = at::vec::convert_to_float<T>(n >= kStep ? V::loadu(p) : V::loadu(p, n));
  }
  C10_ALWAYS_INLINE static void store(T* p, int64_t n, const Vec& a, const Vec& b) {
    auto v = at::vec::convert_from_float<T>(a, b);
    if (n >= kStep)
      v.store(p);
    else
      v.store(p, n);
  }
};
template <>
struct Io<float> {
  C10_ALWAYS_INLINE static void load(const float* p, int64_t n, Vec& a, Vec& b) {
    if (n >= kStep) {
      a = Vec::loadu(p);
      b = Vec::loadu(p + kVF);
    } else {
      a = Vec::loadu(p, std::min(n, kVF));
      b = n > kVF ? Vec::loadu(p + kVF, n - kVF) : Vec(0.f);
    }
  }
  C10_ALWAYS_INLINE static void store(float* p, int64_t n, const Vec& a, const Vec& b) {
    if (n >= kStep) {
      a.store(p);
      b.store(p + kVF);
    } else {
      a.store(p, std::min(n, kVF));
      if (n > kVF) b.store(p + kVF, n - kVF);
    }
  }
};

constexpr int64_t kPrefetchRows = TDDS_PREFETCH_ROWS;

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// The two transcendentals are most of the kernel's arithmetic, and the library versions pay for
// inputs this kernel never sees (log: zero, negatives, subnormals, inf; exp: overflow) and, for
// SLEEF's log, a division. The versions below serve only these ranges, each a short polynomial
// (coefficients: near-minimax fits, rounded to float). Measured on every float of their range
// against double precision: log within 2 ulp (absolute 3e-6 at log(1e-8) = -18.4), exp within
// 3.3 ulp where its result is a normal float. tests/ops/test_extension_cpu.py runs rows whose
// probabilities sweep 1e-12..1 through each ISA variant: within 1e-6 of the reference.

// log's table: x = 2^k z with z in [0.699, 1.398) (k and z from the bits of x - 0x3f330000, so
// z near 1 keeps k = 0 and log(x) near 0 keeps its relative accuracy); the top 4 bits of z's
// fraction pick a subinterval c, and log z = log c + log1p(z/c - 1) with |z/c - 1| < 0.03, where
// a degree-4 polynomial is within 1.2e-9. kInvC is 1/c (c the subinterval's midpoint, exactly 1
// on the one holding 1: z = 1 gives 0 exactly), kLogC = -log(kInvC), both rounded to float.
alignas(64) constexpr float kInvC[16] = {
    1.3989070653915405f, 1.3403141498565674f, 1.286432147026062f,  1.2367149591445923f, 1.1906976699829102f,
    1.147982120513916f,  1.1082251071929932f, 1.0711296796798706f, 1.0364372730255127f, 1.0f,
    0.9481481313705444f, 0.8951048851013184f, 0.8476821184158325f, 0.805031418800354f,  0.7664670944213867f,
    0.7314285635948181f};
alignas(64) constexpr float kLogC[16] = {-0.33569127321243286f, -0.2929040193557739f,
                                         -0.25187259912490845f, -0.21245864033699036f,
                                         -0.17453941702842712f, -0.13800571858882904f,
                                         -0.10275973379611969f, -0.06871386617422104f,
                                         -0.0357891321182251f,  0.0f,
                                         0.05324453115463257f,  0.11081437766551971f,
                                         0.16524957120418549f,  0.21687397360801697f,
                                         0.26596352458000183f,  0.3127557337284088f};
constexpr int32_t kLogOff = 0x3f330000;  // the bits of 0.699, the lower end of z's range
constexpr float kLn2 = 0.693147182f, kLog2e = 1.44269502f;
// ln 2 in two parts, the first with 14 significant bits so k * kLn2Hi is exact for |k| < 2^9
constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.42860677e-06f;
// log1p(r) = r + r^2 (kL2 + kL3 r + kL4 r^2) on |r| < 0.03
constexpr float kL2 = -0.5f, kL3 = 0.3334650695f, kL4 = -0.2501097918f;
// exp(r) = 1 + r (1 + kE2 r + kE3 r^2 + kE4 r^3 + kE5 r^4) on |r| <= ln(2)/2
constexpr float kE2 = 0.4999937117f, kE3 = 0.1666657776f, kE4 = 0.04187564552f, kE5 = 0.008363173343f;
#endif

#if defined(CPU_CAPABILITY_AVX512)
// log(x) for x in [1e-8, 1 + 1e-8]: positive normal floats only (see above).
inline Vec fast_log(const Vec& x) {
  const __m512i ix = _mm512_castps_si512(x);
  const __m512i off = _mm512_sub_epi32(ix, _mm512_set1_epi32(kLogOff));
  const __m512i k = _mm512_srai_epi32(off, 23);
  const __m512i i = _mm512_srli_epi32(off, 19);  // the permutes read only its low 4 bits
  const __m512 z = _mm512_castsi512_ps(_mm512_sub_epi32(ix, _mm512_slli_epi32(k, 23)));
  const __m512 inv_c = _mm512_permutexvar_ps(i, _mm512_load_ps(kInvC));
  const __m512 log_c = _mm512_permutexvar_ps(i, _mm512_load_ps(kLogC));
  const __m512 r = _mm512_fmsub_ps(z, inv_c, _mm512_set1_ps(1.f));
  const __m512 head = _mm512_fmadd_ps(_mm512_cvtepi32_ps(k), _mm512_set1_ps(kLn2), log_c);
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(kL4), r, _mm512_set1_ps(kL3));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kL2));
  return _mm512_fmadd_ps(_mm512_mul_ps(r, r), q, _mm512_add_ps(head, r));
}
// exp(t) for t <= 64 (t = x - x[0] or x - max; a larger t only in lanes whose result is
// discarded: a row's tail, and rows that step 3 redoes). exp(-104) is below half the smallest
// subnormal, so clamping there keeps every result while making t = -inf (x - max overflows for
// finite logits 3e38 apart) give 0 instead of NaN; scalef then flushes through the subnormals
// to 0 as exp does.
inline Vec fast_exp(const Vec& t_in) {
  const __m512 t = _mm512_max_ps(t_in, _mm512_set1_ps(-104.f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Hi), t);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Lo), r);
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(kE5), r, _mm512_set1_ps(kE4));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kE3));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kE2));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(_mm512_fmadd_ps(q, r, _mm512_set1_ps(1.f)), k);
}
#elif defined(CPU_CAPABILITY_AVX2)
// A 16-entry table lookup: two 8-entry permutes, bit 3 of i picks between them.
inline __m256 lookup16(const __m256i& i, const float* table) {
  const __m256 lo = _mm256_permutevar8x32_ps(_mm256_load_ps(table), i);
  const __m256 hi = _mm256_permutevar8x32_ps(_mm256_load_ps(table + 8), i);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(i, 28)));
}
inline Vec fast_log(const Vec& x) {  // as the AVX-512 version
  const __m256i ix = _mm256_castps_si256(x);
  const __m256i off = _mm256_sub_epi32(ix, _mm256_set1_epi32(kLogOff));
  const __m256i k = _mm256_srai_epi32(off, 23);
  const __m256i i = _mm256_srli_epi32(off, 19);
  const __m256 z = _mm256_castsi256_ps(_mm256_sub_epi32(ix, _mm256_slli_epi32(k, 23)));
  const __m256 r = _mm256_fmsub_ps(z, lookup16(i, kInvC), _mm256_set1_ps(1.f));
  const __m256 head = _mm256_fmadd_ps(_mm256_cvtepi32_ps(k), _mm256_set1_ps(kLn2), lookup16(i, kLogC));
  __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(kL4), r, _mm256_set1_ps(kL3));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kL2));
  return _mm256_fmadd_ps(_mm256_mul_ps(r, r), q, _mm256_add_ps(head, r));
}
// As the AVX-512 version, but 2^k is built from its bits, which needs -126 <= k <= 127 (t <= 64
// keeps the upper bound): t is clamped at -126 ln 2 and the lanes below it set to 0 (exp's subnormal results,
// flushed to zero: below 1.2e-38 they cannot change a probability compared at 1e-5).
inline Vec fast_exp(const Vec& t_in) {
  const __m256 lim = _mm256_set1_ps(-87.33654f);
  const __m256 live = _mm256_cmp_ps(t_in, lim, _CMP_GE_OQ);
  const __m256 t = _mm256_max_ps(t_in, lim);
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Hi), t);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Lo), r);
  __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(kE5), r, _mm256_set1_ps(kE4));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kE3));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kE2));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  const __m256 e = _mm256_mul_ps(_mm256_fmadd_ps(q, r, _mm256_set1_ps(1.f)), _mm256_castsi256_ps(bits));
  return _mm256_and_ps(e, live);
}
#else
// Portable: at::vec's (SLEEF-free on this ISA) log, and its 20-ulp exp.
inline Vec fast_log(const Vec& x) {
  return x.log();
}
inline Vec fast_exp(const Vec& t) {
  return t.exp_u20();
}
#endif

inline float hsum(const Vec& v) {
  alignas(64) float t[kVF];
  v.store(t);
  float s = 0.f;
  for (int64_t k = 0; k < kVF; ++k) s += t[k];
  return s;
}
inline float hmax(const Vec& v) {
  alignas(64) float t[kVF];
  v.store(t);
  float m = t[0];
  for (int64_t k = 1; k < kVF; ++k) m = std::max(m, t[k]);
  return m;
}

// Lanes [count, kVF) of v replaced by fill (count may be <= 0 or >= kVF). Only a row's tail
// takes the partial case; it stays out of line because at::vec's per-count switch, inlined,
// made g++ keep v in memory on every step of the hot loops.
C10_NOINLINE inline Vec keep_part(Vec v, float fill, int64_t count) {
  return Vec::set(Vec(fill), v, std::max<int64_t>(count, 0));
}
C10_ALWAYS_INLINE Vec keep(const Vec& v, float fill, int64_t count) {
  return count >= kVF ? v : keep_part(v, fill, count);
}

#include "topk_isa.h"  // the compressed previous row: Cand, TopKScratch, compressed_row

// sum p^2 over the row buffer (e = exp(x - shift), padding lanes 0) scaled by inv = 1 / sum e:
// squares of p <= 1, not of e (up to e^64 after the fused pass: overflow). Four accumulators:
// with one chain of dependent fmadds this pass cost a quarter of the whole row.
inline float sum_p2(const float* buf, int64_t C, float inv) {
  const Vec vinv(inv);
  Vec sq0(0.f), sq1(0.f), sq2(0.f), sq3(0.f);
  for (int64_t j = 0; j < C; j += 2 * kStep) {  // buf is zero-padded to whole kSteps
    const Vec p0 = Vec::loadu(buf + j) * vinv, p1 = Vec::loadu(buf + j + kVF) * vinv;
    sq0 = at::vec::fmadd(p0, p0, sq0);
    sq1 = at::vec::fmadd(p1, p1, sq1);
    if (j + kStep < C) {
      const Vec p2 = Vec::loadu(buf + j + kStep) * vinv, p3 = Vec::loadu(buf + j + kStep + kVF) * vinv;
      sq2 = at::vec::fmadd(p2, p2, sq2);
      sq3 = at::vec::fmadd(p3, p3, sq3);
    }
  }
  return hsum((sq0 + sq1) + (sq2 + sq3));
}

// The baselines' statistics of an applied row with target y in [0, C) (op_contract.h RowStat),
// from its logits x, e = exp(x - shift) in buf for some shift <= m (padding lanes 0), m = max x
// and s = sum e (p = e / s whatever the shift):
//   correct: argmax x == y, the lowest index among ties (as torch.argmax);
//   margin:  x_y - max_{c != y} x_c: x_y - m unless y holds the max; then the second largest x
//            (as a multiset: m again if another class ties), found in the pass that sums p^2;
//   el2n:    sqrt(sum_{c != y} p_c^2 + (1 - p_y)^2), with y left out of the sum rather than
//            subtracted from sum p^2 (that would cancel to noise when p_y ~ 1).
// One extra pass over the row (in L1) where y is not the argmax, one over x and the buffer
// together where it is.
template <typename T>
void row_stats_of(const T* x, float* buf, int64_t C, int64_t y, float m, float s, float* out) {
  const float inf = std::numeric_limits<float>::infinity();
  const float xy = static_cast<float>(x[y]), ey = buf[y], inv = 1.f / s, py = ey * inv;
  bool correct = xy == m;
  float other = m, sq;
  buf[y] = 0.f;  // (restored below: step 4 reads the buffer)
  if (!correct) {
    sq = sum_p2(buf, C, inv);
  } else {
    // Per lane the largest and second largest x, next to sum p^2.
    const Vec vinv(inv);
    Vec sq0(0.f), sq1(0.f), hi(-inf), second(-inf);
    for (int64_t j = 0; j < C; j += kStep) {
      const int64_t r = C - j;
      const Vec p0 = Vec::loadu(buf + j) * vinv, p1 = Vec::loadu(buf + j + kVF) * vinv;
      sq0 = at::vec::fmadd(p0, p0, sq0);
      sq1 = at::vec::fmadd(p1, p1, sq1);
      Vec x0, x1;
      Io<T>::load(x + j, r, x0, x1);
      x0 = keep(x0, -inf, r);
      x1 = keep(x1, -inf, r - kVF);
      second = at::vec::clamp_min(second, at::vec::minimum(hi, x0));
      hi = at::vec::clamp_min(hi, x0);
      second = at::vec::clamp_min(second, at::vec::minimum(hi, x1));
      hi = at::vec::clamp_min(hi, x1);
    }
    sq = hsum(sq0 + sq1);
    alignas(64) float h[kVF], s2[kVF];
    hi.store(h);
    second.store(s2);
    float top = -inf;
    other = -inf;
    for (int64_t k = 0; k < kVF; ++k) {
      other = std::max({other, s2[k], std::min(top, h[k])});
      top = std::max(top, h[k]);
    }
    if (other == m)  // a tie for the max: argmax is y only if no lower class reaches it
      for (int64_t c = 0; c < y && correct; ++c) correct = static_cast<float>(x[c]) != m;
  }
  buf[y] = ey;
  out[kCorrect] = correct ? 1.f : 0.f;
  out[kEl2n] = std::sqrt(sq + (1.f - py) * (1.f - py));
  out[kMargin] = xy - other;
  out[kTargetProb] = py;
}

template <typename T, typename S, typename I>
void update_rows_t(const UpdateArgs& a, const int64_t* rows, int64_t count, UpdateCounts& cnt) {
  const int64_t C = a.C;
  const int32_t epoch = static_cast<int32_t>(a.epoch);
  const T* logits = static_cast<const T*>(a.logits);
  const I* index = static_cast<const I*>(a.index);
  S* prev = static_cast<S*>(a.prev);
  // exp(x - max) of the current row; padded to whole steps so full-vector stores stay inside.
  const int64_t padded = (C + kStep - 1) / kStep * kStep;
  std::unique_ptr<float[]> buf(new float[padded]);
  TopKScratch topk(a.K, padded);  // with a compressed row (topk_isa.h)
  const float inf = std::numeric_limits<float>::infinity();

  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(S));
  const int64_t logit_bytes = C * static_cast<int64_t>(sizeof(T));
  for (int64_t k = 0; k < count; ++k) {
    // The prev rows are gathered at random from an (N, C) table far larger than the caches, so
    // the hardware prefetcher only ramps up inside each row; fetching the cache lines of the
    // row kPrefetchRows further down the list while this row computes hides that latency.
    if (k + kPrefetchRows < count) {
      const int64_t ahead = rows ? rows[k + kPrefetchRows] : k + kPrefetchRows;
      const int64_t m = static_cast<int64_t>(index[ahead]);
      if (m >= 0 && m < a.N) {
        // seen[m] and the ring entry are one cache line each, but at random in arrays of N: at
        // ImageNet's N the read of seen[n] waited for memory on every row (a fifth of the time,
        // measured, once the arithmetic was cheap).
        __builtin_prefetch(a.seen + m, /*rw=*/1, /*locality=*/3);
        __builtin_prefetch(a.ring + m * a.W1 + a.slot, /*rw=*/1, /*locality=*/3);
        if (prev) {
          const char* r = reinterpret_cast<const char*>(prev + m * C);
          for (int64_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(r + o, /*rw=*/1, /*locality=*/3);
        } else if (a.K) {
          // A compressed row is only K values, ids and a residual, but three misses at random:
          // at C = 1,000 they were a third of the row's time once the selection was cheap.
          prefetch_compressed_row<S>(a, m);
        }
        // The logits row as well: the hardware streamer does not follow where the list jumps
        // over the batch (the rows of repeated samples, split by sample), and on consecutive
        // rows it fell behind once the arithmetic got cheap (measured at N = 1.28M, one thread:
        // 17% faster with float16 storage, 3% with float32).
        const char* z = reinterpret_cast<const char*>(logits + ahead * C);
        for (int64_t o = 0; o < logit_bytes; o += 64) __builtin_prefetch(z + o, /*rw=*/0, /*locality=*/3);
      }
    }
    const int64_t i = rows ? rows[k] : k;
    const int64_t n = static_cast<int64_t>(index[i]);
    // Stats of a row not applied (or without a usable target): NaN, written first so that
    // every path below leaves the row written.
    float* stats = a.row_stats ? a.row_stats + i * kNumRowStats : nullptr;
    if (stats) std::fill(stats, stats + kNumRowStats, std::numeric_limits<float>::quiet_NaN());
    if (n < 0 || n >= a.N) {
      cnt.out_of_range++;
      continue;
    }
    const T* x = logits + i * C;

    // 1. max and non-finite check, and (step 3 below) e = exp(x - x[0]) into the row buffer with
    // s = sum(e) in the same pass: any shift gives the same p = e / s, and x[0] instead of the
    // max saves a second pass over the row. Two accumulators each, so the loop is not bound by
    // the latency of one chain; clamp_min is a plain max (at::vec::maximum adds NaN
    // propagation, which the check makes unnecessary).
    const float first = static_cast<float>(x[0]);
    const Vec shift(first);
    Vec vmax0(-inf), vmax1(-inf), vbad0(0.f), vbad1(0.f), vs(0.f);
    for (int64_t j = 0; j < C; j += kStep) {
      const int64_t r = C - j;
      Vec x0, x1;
      Io<T>::load(x + j, r, x0, x1);  // tail lanes load as 0: finite, but must not raise the max
      vbad0 = vbad0 + (x0 - x0);
      vbad1 = vbad1 + (x1 - x1);
      vmax0 = at::vec::clamp_min(vmax0, keep(x0, -inf, r));
      vmax1 = at::vec::clamp_min(vmax1, keep(x1, -inf, r - kVF));
      const Vec e0 = keep(fast_exp(x0 - shift), 0.f, r), e1 = keep(fast_exp(x1 - shift), 0.f, r - kVF);
      e0.store(buf.get() + j);
      e1.store(buf.get() + j + kVF);
      vs = vs + e0 + e1;
    }
    if (std::isnan(hsum(vbad0 + vbad1))) {  // the row is ignored: no claim, no state change
      cnt.nonfinite++;
      continue;
    }

    // 2. of the finite rows of one sample in an epoch (this batch or an earlier one) the first
    // is applied; the rows come in batch order and no other thread holds this sample's rows.
    const int32_t old = a.seen[n];
    if (old == epoch) {
      cnt.duplicates++;
      continue;
    }
    a.seen[n] = epoch;

    // 3. e = exp(x - max), s = sum(e), again, where the max is so far above x[0] that exp(x -
    // x[0]) may have overflowed (exp(88.7) is float's largest; below exp(64), s cannot overflow
    // either); tail lanes forced to 0 so they add nothing below
    const float row_max = hmax(at::vec::clamp_min(vmax0, vmax1));
    if (row_max - first > 64.f) {
      const Vec vm(row_max);
      vs = Vec(0.f);
      for (int64_t j = 0; j < C; j += kStep) {
        const int64_t r = C - j;
        Vec x0, x1;
        Io<T>::load(x + j, r, x0, x1);
        const Vec e0 = keep(fast_exp(x0 - vm), 0.f, r), e1 = keep(fast_exp(x1 - vm), 0.f, r - kVF);
        e0.store(buf.get() + j);
        e1.store(buf.get() + j + kVF);
        vs = vs + e0 + e1;
      }
    }

    const float sum = hsum(vs);
    if (stats) {
      const int64_t y = a.targets_i64 ? static_cast<const int64_t*>(a.targets)[i]
                                      : static_cast<const int32_t*>(a.targets)[i];
      if (y >= 0 && y < C) row_stats_of<T>(x, buf.get(), C, y, row_max, sum, stats);
    }

    // 4. p, log(p + eps), the transition d against the cached log, and the new cached log
    const float inv_s = 1.f / sum;
    const Vec inv(inv_s), veps(1e-8f);
    const bool with_d = epoch >= 1 && old == epoch - 1;  // d is defined only after epoch-1
    if (a.K) {
      a.ring[n * a.W1 + a.slot] = compressed_row<S>(a, n, buf.get(), inv_s, with_d, topk);
      continue;
    }
    // p itself is never formed: p + eps is one fmadd, and d = sum p |lp - q| = inv sum e |lp - q|
    // (e >= 0) takes the scale out of the loop.
    S* q = prev + n * C;
    Vec vd(0.f);
    for (int64_t j = 0; j < C; j += kStep) {
      const int64_t r = C - j;
      const Vec e0 = Vec::loadu(buf.get() + j), e1 = Vec::loadu(buf.get() + j + kVF);
      const Vec l0 = fast_log(at::vec::fmadd(e0, inv, veps)), l1 = fast_log(at::vec::fmadd(e1, inv, veps));
      if (with_d) {  // tail lanes: e = 0, so they add 0
        Vec q0, q1;
        Io<S>::load(q + j, r, q0, q1);
        vd = at::vec::fmadd(e0, (l0 - q0).abs(), at::vec::fmadd(e1, (l1 - q1).abs(), vd));
      }
      Io<S>::store(q + j, r, l0, l1);
    }
    a.ring[n * a.W1 + a.slot] = with_d ? hsum(vd) * inv_s : std::numeric_limits<float>::quiet_NaN();
  }
}

template <typename T, typename S>
void by_index(const UpdateArgs& a, const int64_t* rows, int64_t count, UpdateCounts& c) {
  if (a.index_i64)
    update_rows_t<T, S, int64_t>(a, rows, count, c);
  else
    update_rows_t<T, S, int32_t>(a, rows, count, c);
}
template <typename T>
void by_storage(const UpdateArgs& a, const int64_t* rows, int64_t count, UpdateCounts& c) {
  switch (a.prev_dt) {
    case Dt::f32:
      return by_index<T, float>(a, rows, count, c);
    case Dt::f16:
      return by_index<T, c10::Half>(a, rows, count, c);
    case Dt::bf16:
      return by_index<T, c10::BFloat16>(a, rows, count, c);
  }
}

// R of one ring row (scalar; for the rows left over after whole vectors).
inline float window_deviation(const float* r, int64_t w1) {
  float sum = 0.f;
  int64_t count = 0;
  for (int64_t j = 0; j < w1; ++j)
    if (!std::isnan(r[j])) sum += r[j], ++count;
  if (count < 2) return 0.f;
  const float mean = sum / static_cast<float>(count);
  float ss = 0.f;
  for (int64_t j = 0; j < w1; ++j)
    if (!std::isnan(r[j])) ss += (r[j] - mean) * (r[j] - mean);
  return std::sqrt(ss);
}

// Epoch step over rows [begin, end): mark missing samples' transition undefined, then (once a
// window is complete) R = sqrt(sum of squared deviations of the defined ring values from their
// mean), 0 with fewer than two, folded into the EMA. A window is only W-1 (~10) values, so the
// vectors run across kVF rows at once: value j of each row is a strided gather (rows stay in
// L1 between the two passes).
int64_t epoch_step_rows_t(const StepArgs& a, int64_t begin, int64_t end) {
  using IVec = at::vec::Vectorized<int32_t>;
  const int64_t W1 = a.W1;
  int64_t missing = 0;
  for (int64_t n = begin; n < end; ++n)
    if (a.seen[n] != a.epoch) {
      ++missing;
      a.ring[n * W1 + a.slot] = std::numeric_limits<float>::quiet_NaN();
    }
  if (a.epoch < W1) return missing;  // no complete window yet

  const bool gather_ok = W1 * kVF < (int64_t{1} << 31);  // int32 offsets
  const IVec offsets = IVec::arange(0, static_cast<int32_t>(gather_ok ? W1 : 0));
  const Vec zero(0.f), one(1.f), two(2.f), keep(a.keep), add(a.add);
  int64_t n = begin;
  const int64_t block_bytes = kVF * W1 * static_cast<int64_t>(sizeof(float));
  constexpr int64_t kKeep = 32;  // windows up to 33 (the paper uses 5-20) gather each value once
  Vec kept[kKeep];
  for (; gather_ok && n + kVF <= end; n += kVF) {
    const float* r = a.ring + n * W1;
    // gathers do not train the hardware prefetcher: fetch the block after next explicitly
    if (n + 3 * kVF <= end)
      for (int64_t o = 0; o < block_bytes; o += 64)
        __builtin_prefetch(reinterpret_cast<const char*>(r + 2 * kVF * W1) + o, 0, 3);
    Vec sum(0.f), cnt(0.f);
    for (int64_t j = 0; j < W1; ++j) {
      const Vec v = at::vec::gather<sizeof(float)>(r + j, offsets);
      if (j < kKeep) kept[j] = v;  // the second pass reuses up to kKeep columns
      const Vec defined = v == v;  // all-ones lanes where v is not NaN
      sum = sum + Vec::blendv(zero, v, defined);
      cnt = cnt + Vec::blendv(zero, one, defined);
    }
    const Vec mean = sum / at::vec::maximum(cnt, one);
    Vec ss(0.f);
    for (int64_t j = 0; j < W1; ++j) {
      const Vec v = j < kKeep ? kept[j] : at::vec::gather<sizeof(float)>(r + j, offsets);
      const Vec dev = Vec::blendv(zero, v - mean, v == v);
      ss = ss + dev * dev;
    }
    const Vec R = Vec::blendv(zero, ss.sqrt(), cnt >= two);
    (keep * Vec::loadu(a.score + n) + add * R).store(a.score + n);
  }
  for (; n < end; ++n) a.score[n] = a.keep * a.score[n] + a.add * window_deviation(a.ring + n * W1, W1);
  return missing;
}

}  // namespace CPU_CAPABILITY

int64_t TDDS_CONCAT(epoch_step_rows_, CPU_CAPABILITY)(const StepArgs& a, int64_t begin, int64_t end) {
  return CPU_CAPABILITY::epoch_step_rows_t(a, begin, end);
}

void TDDS_CONCAT(update_rows_, CPU_CAPABILITY)(const UpdateArgs& a, const int64_t* rows, int64_t count,
                                               UpdateCounts& c) {
  using namespace CPU_CAPABILITY;
  switch (a.logits_dt) {
    case Dt::f32:
      return by_storage<float>(a, rows, count, c);
    case Dt::f16:
      return by_storage<c10::Half>(a, rows, count, c);
    case Dt::bf16:
      return by_storage<c10::BFloat16>(a, rows, count, c);
  }
}

}  // namespace tdds::cpu
