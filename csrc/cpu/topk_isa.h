// The compressed previous row of the CPU update (update_topk_ext, docs/design.md §2.1): d against
// the old row and the selection of the new one. Included by kernels_isa.h inside its
// per-ISA namespace (after fast_log, hsum and the Vec helpers it uses), so it is compiled once
// per ISA like the rest of the update.
//
// Per applied row, from e = exp(x - shift) in the row buffer (padding lanes 0) and inv = 1 / sum e,
// one pass over the buffer (in L2 at C = 21,841; it also sums the tail mass d needs: no log per
// class, see compressed_row) selects with a running threshold t, a compare mask per vector (on
// e: see e_threshold):
//   - a class with p > t is appended to a short candidate list (only the set mask bits are
//     visited), the others' p are summed (the residual: no 1 - kept cancellation);
//   - when the list reaches 2K + 32, a selection keeps its K best (p desc, class id asc), the
//     rest go to the residual, and t becomes the K-th best p: a later class ties it only with a
//     larger id, so it is worse, and `p > t` is exact.
// Then a selection and a sort of the at most 2K + 32 candidates left. The kept set is exactly the K
// first of the total order (ties to the lower class id, as every backend) whatever the data.
// With last epoch's row (what training gives every sample) t starts at the smallest new p of
// the old kept classes (compressed_row), so only the classes that entered the top K since are
// appended; without one t starts at -1 and the list grows by about K (1 + ln(C / K)) entries on
// a row in random class order (O(C) compaction work at worst, a row sorted ascending). Cost:
// O(C) vector work + O(K log(C / K)) scalar work at worst, instead of a K-heap update per class.
// At K = C the stored values and d are the full row's, bit for bit: the same
// fast_log(fmadd(e, inv, eps)) and the same accumulation order against the same (expanded) row.

// A candidate as one integer: the bits of p inverted above the class id, so ascending order is
// (p desc, class id asc) (p >= 0 orders as its bits) and all keys differ. Selected and sorted by
// the functions below rather than std::nth_element / std::sort: their partition steps branch on
// random keys (measured: half of a row's time at C = 1,000, K = 128).
using Cand = uint64_t;
inline Cand cand_of(float p, int64_t c) {
  uint32_t b;
  std::memcpy(&b, &p, sizeof b);
  return (static_cast<uint64_t>(~b) << 32) | static_cast<uint32_t>(c);
}
inline float p_of(Cand k) {
  const uint32_t b = ~static_cast<uint32_t>(k >> 32);
  float p;
  std::memcpy(&p, &b, sizeof p);
  return p;
}
inline int32_t c_of(Cand k) {
  return static_cast<int32_t>(static_cast<uint32_t>(k));
}

// Partition a[lo, hi) (distinct keys, hi - lo >= 3) around the median of three: returns m with
// a[lo, m) < pivot <= a[m, hi), lo < m < hi. Branch-free and without a chain through memory:
// the smaller keys are written back in place (never ahead of the read), the others to tmp and
// copied after them (an in-place swap partition reloads a[m] each step: latency-bound).
inline size_t partition(Cand* a, size_t lo, size_t hi, Cand* tmp) {
  const Cand x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1];
  const Cand pivot = std::max(std::min(x, y), std::min(std::max(x, y), z));
  size_t m = lo, t = 0;
  for (size_t i = lo; i < hi; ++i) {
    const Cand v = a[i];
    const bool less = v < pivot;
    a[m] = v;
    tmp[t] = v;
    m += less;
    t += !less;
  }
  std::memcpy(a + m, tmp, t * sizeof(Cand));
  return m;
}
inline void insertion_sort(Cand* a, size_t lo, size_t hi) {
  for (size_t i = lo + 1; i < hi; ++i) {
    const Cand v = a[i];
    size_t j = i;
    for (; j > lo && a[j - 1] > v; --j) a[j] = a[j - 1];
    a[j] = v;
  }
}
// a[0, k) becomes the k smallest of a[0, n) with a[k - 1] the k-th (0 < k <= n): partitions down
// to two elements, no insertion sort (its branches were a third of the pass at C = 1,000).
inline void select_smallest(Cand* a, size_t n, size_t k, Cand* tmp) {
  size_t lo = 0, hi = n;  // a[0, lo) < a[lo, hi) < a[hi, n), and k - 1 lies in [lo, hi)
  while (hi - lo > 2) {
    const size_t m = partition(a, lo, hi, tmp);
    (k - 1 < m ? hi : lo) = m;
  }
  if (hi - lo == 2 && a[lo] > a[lo + 1]) std::swap(a[lo], a[lo + 1]);
}
inline void sort_all(Cand* a, size_t lo, size_t hi, Cand* tmp) {
  while (hi - lo > 16) {
    const size_t m = partition(a, lo, hi, tmp);
    if (m - lo < hi - m) {  // recurse into the smaller side: depth O(log n)
      sort_all(a, lo, m, tmp);
      lo = m;
    } else {
      sort_all(a, m, hi, tmp);
      hi = m;
    }
  }
  insertion_sort(a, lo, hi);
}

// Per call of update_rows_t (one thread): the expanded old row and the candidate lists.
struct TopKScratch {
  std::unique_ptr<float[]> lq;  // (padded,) old row's logs by class; padding stays 0 (finite)
  std::vector<Cand> cand;
  std::vector<Cand> tmp;    // the partitions' scratch: as long as the longest list (C at K = C)
  std::vector<float> kept;  // the K kept e, padded to whole kSteps for the vector log
  TopKScratch(int64_t K, int64_t padded)
      : lq(K ? new float[padded]() : nullptr),
        tmp(K ? padded : 0),
        kept(K ? (K + kStep - 1) / kStep * kStep : 0, 0.f) {
    cand.reserve(K ? 2 * K + 32 + kStep : 0);  // the list never grows past one step over its cap
  }
};

// Lanes of p above t, as bits (lane i -> bit i).
C10_ALWAYS_INLINE uint32_t above_bits(const Vec& p, const Vec& t) {
#if defined(CPU_CAPABILITY_AVX512)
  return static_cast<uint32_t>(_mm512_cmp_ps_mask(p, t, _CMP_GT_OQ));
#elif defined(CPU_CAPABILITY_AVX2)
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(p, t, _CMP_GT_OQ)));
#else
  alignas(64) float a[kVF], b[kVF];
  p.store(a);
  t.store(b);
  uint32_t bits = 0;
  for (int64_t i = 0; i < kVF; ++i) bits |= static_cast<uint32_t>(a[i] > b[i]) << i;
  return bits;
#endif
}

// The largest e with e * inv <= t (in float): since the product is monotone in e, e > it exactly
// when p = e * inv > t, so the pass compares e and forms p only for the classes that pass.
inline float e_threshold(float t, float inv) {
  if (t < 0.f) return t;  // every e >= 0 passes
  const float inf = std::numeric_limits<float>::infinity();
  float e = t / inv;  // within an ulp or two of it
  while (e > 0.f && e * inv > t) e = std::nextafter(e, 0.f);
  for (float up = std::nextafter(e, inf); up * inv <= t; up = std::nextafter(e, inf)) e = up;
  return e;
}

// The selection pass from a threshold t_start below the K-th best p (every class at or below it
// is dropped at once): at most 2K + 32 candidates left in cand (every class outside it is not
// among the K best); returns the sum of the p of every class dropped. With kWithD it is first
// the full row's d loop against the expanded old row lq (K = C only: the full row's d, bit for
// bit); `all_e` (when not null) gets the sum of every e in buf. Block sums of 16 steps in float,
// added in double: a float running sum over 21,841 near-equal values drifts by ~1e-5 relative.
template <bool kWithD>
double filter_pass(const float* buf, const float* lq, int64_t C, int64_t K, float inv, float t_start,
                   std::vector<Cand>& cand, Cand* tmp, Vec& vd, double* all_e) {
  const Vec vinv(inv), veps(1e-8f), zero(0.f);
  const size_t cap = static_cast<size_t>(2 * K + 32);
  Vec vt(e_threshold(t_start, inv));               // in e: p > t_start exactly where e > vt
  double rest_p = 0.0, rest_e = 0.0, sum_e = 0.0;  // the dropped candidates' p; the other classes' e
  Vec block(0.f), block_all(0.f);
  // d in a loop of its own (the full row's, without its stores): with the selection in the same
  // loop the vector log's constants no longer fit in registers and were reloaded on every step.
  // The row is in L2 for the second loop.
  for (int64_t j = 0; kWithD && j < C; j += kStep) {
    const Vec e0 = Vec::loadu(buf + j), e1 = Vec::loadu(buf + j + kVF);
    const Vec l0 = fast_log(at::vec::fmadd(e0, vinv, veps)), l1 = fast_log(at::vec::fmadd(e1, vinv, veps));
    vd = at::vec::fmadd(e0, (l0 - Vec::loadu(lq + j)).abs(),
                        at::vec::fmadd(e1, (l1 - Vec::loadu(lq + j + kVF)).abs(), vd));
  }
  for (int64_t j = 0; j < C; j += kStep) {
    const Vec e0 = Vec::loadu(buf + j), e1 = Vec::loadu(buf + j + kVF);
    uint32_t bits = above_bits(e0, vt) | (above_bits(e1, vt) << kVF);
    block = block + Vec::blendv(e0, zero, e0 > vt) + Vec::blendv(e1, zero, e1 > vt);
    if (all_e) block_all = block_all + e0 + e1;
    if (bits) {
      if (C - j < kStep) bits &= (uint32_t{1} << (C - j)) - 1;  // not the padding lanes
      while (bits) {
        const int lane = __builtin_ctz(bits);
        bits &= bits - 1;
        cand.push_back(cand_of(buf[j + lane] * inv, j + lane));  // p as the full row forms it
      }
      if (cand.size() >= cap) {  // keep the K best so far; the K-th becomes the threshold
        select_smallest(cand.data(), cand.size(), K, tmp);
        for (size_t i = K; i < cand.size(); ++i) rest_p += p_of(cand[i]);
        cand.resize(K);
        vt = Vec(e_threshold(p_of(cand[K - 1]), inv));  // the K-th best
      }
    }
    if ((j / kStep) % 16 == 15) {
      rest_e += hsum(block);
      block = zero;
      if (all_e) {
        sum_e += hsum(block_all);
        block_all = zero;
      }
    }
  }
  if (all_e) *all_e = sum_e + hsum(block_all);
  return rest_p + (rest_e + hsum(block)) * inv;
}

// The sum of the e in buf[0, C), as filter_pass sums them (padding lanes are 0).
inline double sum_row(const float* buf, int64_t C) {
  double sum = 0.0;
  Vec block(0.f);
  for (int64_t j = 0; j < C; j += kStep) {
    block = block + Vec::loadu(buf + j) + Vec::loadu(buf + j + kVF);
    if ((j / kStep) % 16 == 15) {
      sum += hsum(block);
      block = Vec(0.f);
    }
  }
  return sum + hsum(block);
}

// Fetch sample m's compressed row (values, ids, residual) ahead of its turn.
template <typename S>
inline void prefetch_compressed_row(const UpdateArgs& a, int64_t m) {
  const int64_t id_bytes = a.idx_i32 ? 4 : 2;
  const char* v = static_cast<const char*>(a.prev_val) + m * a.K * static_cast<int64_t>(sizeof(S));
  const char* i = static_cast<const char*>(a.prev_idx) + m * a.K * id_bytes;
  const int64_t val_bytes = a.K * static_cast<int64_t>(sizeof(S)), id_row = a.K * id_bytes;
  for (int64_t o = 0; o < val_bytes; o += 64) __builtin_prefetch(v + o, 1, 3);
  for (int64_t o = 0; o < id_row; o += 64) __builtin_prefetch(i + o, 1, 3);
  __builtin_prefetch(v + val_bytes - 1, 1, 3);  // the last line, where the row straddles one more
  __builtin_prefetch(i + id_row - 1, 1, 3);
  __builtin_prefetch(static_cast<const S*>(a.prev_rest) + m, 1, 3);
}

// The update of one applied row with a compressed previous row (UpdateArgs K > 0): the e of the
// row in buf (padding 0; changed during the call, restored before it returns), inv = 1 / sum e.
// Writes the new K logs, ids and residual of sample n and returns d against the old ones (NaN
// where undefined).
//
// d (K < C) is the old kept classes' terms plus one term for the rest of the row, the tail
// (docs/design.md §2.1): m |log(m / (C - K) + eps) - r|, m the new p summed over the classes
// outside the old kept set, so no class outside it costs a log. The old kept classes are taken
// out of the row first (their e saved and zeroed in buf), so m is the sum of what is left, summed
// directly (not 1 - the kept mass: a settled sample's small tail would be lost to cancellation).
// When their smallest new p is above 0 (between epochs most of the kept set stays) they enter the
// candidate list directly and the pass starts from just below it: they are K classes at or above
// it, so the K-th best is too, and a class below it cannot be kept; the pass sums m on the way.
// Otherwise (an old kept class whose p underflowed to 0; ids that are not K distinct classes in
// range, which this op never writes: a repeated id reads the 0 of its first occurrence) m is
// summed by a loop of its own and the pass starts from -1 on the restored row. At K = C the old
// row is expanded by class into lq and d is the full row's loop (bit for bit).
template <typename S>
float compressed_row(const UpdateArgs& a, int64_t n, float* buf, float inv_s, bool with_d, TopKScratch& s) {
  const int64_t C = a.C, K = a.K;
  S* val = static_cast<S*>(a.prev_val) + n * K;
  S* rest = static_cast<S*>(a.prev_rest) + n;
  int16_t* id16 = static_cast<int16_t*>(a.prev_idx) + n * K;
  int32_t* id32 = static_cast<int32_t*>(a.prev_idx) + n * K;
  const auto old_id = [&](int64_t j) -> int64_t { return a.idx_i32 ? id32[j] : id16[j]; };
  float* lq = s.lq.get();
  float* ke = s.kept.data();  // the old kept classes' e here, the new ones' at the end
  const Vec vinv(inv_s), veps(1e-8f);
  auto& cand = s.cand;
  cand.clear();
  Vec vd(0.f);
  double left_out = 0.0;
  float d = std::numeric_limits<float>::quiet_NaN();

  if (with_d && K < C) {
    int64_t taken = 0;  // old kept classes zeroed in buf
    float e_min = std::numeric_limits<float>::infinity();
    for (; taken < K; ++taken) {
      const int64_t c = old_id(taken);
      if (c < 0 || c >= C) break;
      ke[taken] = buf[c];  // a repeated id reads the 0 written by its first occurrence
      buf[c] = 0.f;
      e_min = std::min(e_min, ke[taken]);
    }
    const float p_min = taken == K ? e_min * inv_s : 0.f;
    // In reverse: a repeated id (only in a state this op did not write) restores its first e last.
    const auto restore_old_kept = [&] {
      for (int64_t j = taken; j-- > 0;) buf[old_id(j)] = ke[j];
    };
    float* lv = lq;  // the old kept logs, beside their e (both padded with 0: a term of 0)
    for (int64_t j = 0; j < taken; ++j) lv[j] = static_cast<float>(val[j]);
    std::fill(ke + taken, ke + s.kept.size(), 0.f);
    std::fill(lv + taken, lv + s.kept.size(), 0.f);
    Vec vk(0.f);
    for (int64_t j = 0; j < taken; j += kVF) {
      const Vec e = Vec::loadu(ke + j);
      vk = at::vec::fmadd(e, (fast_log(at::vec::fmadd(e, vinv, veps)) - Vec::loadu(lv + j)).abs(), vk);
    }
    double tail_e = 0.0;
    if (p_min > 0.f) {
      for (int64_t j = 0; j < K; ++j) cand.push_back(cand_of(ke[j] * inv_s, old_id(j)));
      // p = e * inv in the pass, so the old kept class with e_min has p = p_min exactly; the pass
      // keeps p > t, so t is the float just below it (a tie with a lower class id is kept).
      left_out = filter_pass<false>(buf, lq, C, K, inv_s, std::nextafter(p_min, 0.f), cand, s.tmp.data(), vd,
                                    &tail_e);
      restore_old_kept();
    } else {
      tail_e = sum_row(buf, C);
      restore_old_kept();
      left_out = filter_pass<false>(buf, lq, C, K, inv_s, -1.f, cand, s.tmp.data(), vd, nullptr);
    }
    // The tail's step in double: for a settled sample it is a small difference of two logs ~ -10.
    const double m = tail_e * inv_s;
    const double step =
        std::log(m / static_cast<double>(C - K) + 1e-8) - static_cast<double>(static_cast<float>(*rest));
    d = static_cast<float>(static_cast<double>(hsum(vk) * inv_s) + m * std::fabs(step));
  } else if (with_d) {  // K = C: the old row by class, as the full row's loop reads it
    std::fill(lq, lq + C, static_cast<float>(*rest));  // every class is written: ids from this op
    for (int64_t j = 0; j < K; ++j) {
      const int64_t c = old_id(j);
      if (c >= 0 && c < C) lq[c] = static_cast<float>(val[j]);  // ids come from this op; guard anyway
    }
    left_out = filter_pass<true>(buf, lq, C, K, inv_s, -1.f, cand, s.tmp.data(), vd, nullptr);
    d = hsum(vd) * inv_s;
  } else {
    left_out = filter_pass<false>(buf, lq, C, K, inv_s, -1.f, cand, s.tmp.data(), vd, nullptr);
  }
  if (static_cast<int64_t>(cand.size()) > K) {
    select_smallest(cand.data(), cand.size(), K, s.tmp.data());
    for (size_t j = K; j < cand.size(); ++j) left_out += p_of(cand[j]);
  }
  sort_all(cand.data(), 0, K, s.tmp.data());

  // The K logs as the full row computes them (the same vector log on the same e).
  for (int64_t j = 0; j < K; ++j) ke[j] = buf[c_of(cand[j])];
  std::fill(ke + K, ke + s.kept.size(), 0.f);  // the vector tail: log(eps), discarded
  for (int64_t j = 0; j < K; j += kVF) fast_log(at::vec::fmadd(Vec::loadu(ke + j), vinv, veps)).store(ke + j);
  for (int64_t j = 0; j < K; ++j) {
    val[j] = static_cast<S>(ke[j]);
    if (a.idx_i32)
      id32[j] = c_of(cand[j]);
    else
      id16[j] = static_cast<int16_t>(c_of(cand[j]));
  }
  const double mean = K < C ? left_out / static_cast<double>(C - K) : 0.0;
  *rest = static_cast<S>(std::log(static_cast<float>(mean) + 1e-8f));
  return d;
}
