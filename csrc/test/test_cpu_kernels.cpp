// C++ checks of the CPU kernels against values worked out by hand or in double precision,
// called through the dispatcher as a C++ trainer would. Run by ctest (CMakeLists.txt).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <vector>

namespace {

int failures = 0;

#define EXPECT(cond)                                                                \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                                   \
    }                                                                               \
  } while (0)

bool close(double a, double b, double rtol = 1e-5, double atol = 1e-6) {
  return std::abs(a - b) <= atol + rtol * std::abs(b);
}

using T = const at::Tensor&;
using O = const std::optional<at::Tensor>&;
void update(T logits, T index, T prev, T seen, T ring, T counters, O targets = std::nullopt,
            O row_stats = std::nullopt) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("tdds::update_ext", "")
                       .typed<void(T, T, T, T, T, T, O, O)>();
  op.call(logits, index, prev, seen, ring, counters, targets, row_stats);
}
void update_topk(T logits, T index, T val, T idx, T rest, T seen, T ring, T counters) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("tdds::update_topk_ext", "")
                       .typed<void(T, T, T, T, T, T, T, T, O, O)>();
  op.call(logits, index, val, idx, rest, seen, ring, counters, std::nullopt, std::nullopt);
}
void fold(T row_stats, T index, T packed, T epoch, int64_t el2n_epoch) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("tdds::fold_baselines_ext", "")
                       .typed<void(T, T, T, T, int64_t)>();
  op.call(row_stats, index, packed, epoch, el2n_epoch);
}
void epoch_step(T seen, T ring, T score, T counters, double decay) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("tdds::epoch_step_ext", "")
                       .typed<void(T, T, T, T, double)>();
  op.call(seen, ring, score, counters, decay);
}

at::Tensor counters_at(int64_t epoch) {
  auto c = at::zeros({5}, at::kLong);
  c[4] = epoch;
  return c;
}

// d for p = softmax([0, log 3]) = [1/4, 3/4] after q = [1/2, 1/2].
void test_known_transition() {
  auto prev = at::log(at::full({1, 2}, 0.5f) + 1e-8f);
  auto seen = at::zeros({1}, at::kInt);
  auto ring = at::full({1, 2}, -7.f);
  auto counters = counters_at(1);
  update(at::tensor({0.f, std::log(3.f)}).reshape({1, 2}), at::tensor({int64_t{0}}), prev, seen, ring,
         counters);
  const double d = 0.25 * std::log(2.0) + 0.75 * std::log(1.5);
  EXPECT(close(ring[0][0].item<float>(), d, 1e-6));
  EXPECT(ring[0][1].item<float>() == -7.f);
  EXPECT(seen[0].item<int>() == 1);
  EXPECT(close(prev[0][1].item<float>(), std::log(0.75)));
}

// Every row of a wide batch (C = 1271: vector tails) against a double-precision softmax; one
// duplicate, one out-of-range and one non-finite row are counted and skipped.
void test_wide_rows_and_counters(at::ScalarType storage) {
  const int64_t B = 64, C = 1271, N = 100;
  auto logits = at::randn({B, C}) * 4;
  auto index = at::randperm(N).slice(0, 0, B).clone();
  index[5] = index[4];  // duplicate
  index[6] = -1;        // out of range
  logits[7][1000] = std::numeric_limits<float>::infinity();
  auto prev0 = at::log_softmax(at::randn({N, C}), 1);
  auto prev = prev0.to(storage).clone();  // a copy even for float32: prev0 is the expected input
  auto seen = at::zeros({N}, at::kInt);
  auto ring = at::full({N, 3}, -7.f);
  auto counters = counters_at(1);
  update(logits, index, prev, seen, ring, counters);
  EXPECT(counters[0].item<int64_t>() == 1 && counters[2].item<int64_t>() == 1 &&
         counters[3].item<int64_t>() == 1);
  EXPECT(counters[1].item<int64_t>() == 0 && counters[4].item<int64_t>() == 1);
  auto x = logits.to(at::kDouble);
  auto lp = at::log(at::softmax(x, 1) + 1e-8);
  const double tol = storage == at::kFloat ? 1e-5 : 1e-2;
  for (int64_t i = 0; i < B; ++i) {
    if (i == 5 || i == 6 || i == 7) continue;
    const int64_t n = index[i].item<int64_t>();
    auto q = prev0[n].to(storage).to(at::kDouble);  // what the kernel read
    const double d = (lp[i].exp() - 1e-8).mul(lp[i] - q).abs().sum().item<double>();
    EXPECT(close(ring[n][0].item<float>(), d, 1e-4, 1e-5));
    EXPECT(at::allclose(prev[n].to(at::kDouble), lp[i], tol, 1e-5));
    EXPECT(seen[n].item<int>() == 1);
  }
  const int64_t skipped = index[7].item<int64_t>();
  EXPECT(seen[skipped].item<int>() == 0 && ring[skipped][0].item<float>() == -7.f);
}

// The window example of docs/design.md §3: ring [1, nan, 3, 5], the sample missing at epoch 4.
void test_epoch_step_window() {
  auto seen = at::full({1}, 3, at::kInt);
  auto ring = at::tensor({1.f, NAN, 3.f, 5.f}).reshape({1, 4});
  auto score = at::zeros({1});
  auto counters = counters_at(3);
  epoch_step(seen, ring, score, counters, 0.5);  // recorded at 3; no window before epoch 4
  EXPECT(score[0].item<float>() == 0.f && counters[4].item<int64_t>() == 4);
  epoch_step(seen, ring, score, counters, 0.5);  // missing at 4: slot 3 undefined
  EXPECT(std::isnan(ring[0][3].item<float>()) && counters[1].item<int64_t>() == 1);
  EXPECT(close(score[0].item<float>(), 0.5 * std::sqrt(2.0)));
  EXPECT(counters[4].item<int64_t>() == 5);
}

// A batch big enough for several tasks, with samples that occur once, samples that occur many
// times (first copies non-finite), and out-of-range rows: the result does not depend on the
// number of threads (1, 2 or 4: every split visits a sample's rows in batch order, in one task),
// and the first finite copy of each sample is the one applied. Under ASan this also covers the
// occurrence table and the row lists of ops_cpu.cpp.
void test_threads_give_one_result() {
  const int64_t B = 4096, C = 24, N = 3000;
  auto index = at::randint(0, 200, {B}, at::kLong);                           // many copies of 200 samples
  index.slice(0, 0, 1000).copy_(at::randperm(2800).slice(0, 0, 1000) + 200);  // 1000 samples once
  index = index.index_select(0, at::randperm(B));
  index[17] = -1;
  index[99] = N + 5;
  auto logits = at::randn({B, C}) * 3;
  for (int64_t s = 0; s < 200; s += 7) {  // first copy of every 7th repeated sample: a NaN
    auto rows = at::nonzero(index == s);
    if (rows.size(0) > 1) logits[rows[0][0].item<int64_t>()][3] = NAN;
  }
  std::vector<at::Tensor> results;
  const int before = at::get_num_threads();
  for (int threads : {1, 2, 4}) {
    at::set_num_threads(threads);
    auto prev = at::zeros({N, C});
    auto seen = at::zeros({N}, at::kInt);
    auto ring = at::full({N, 3}, -7.f);
    auto counters = counters_at(1);
    update(logits, index, prev, seen, ring, counters);
    results.push_back(
        at::cat({prev.flatten(), seen.to(at::kFloat), ring.flatten(), counters.to(at::kFloat)}));
  }
  at::set_num_threads(before);
  EXPECT(at::equal(results[0], results[1]) && at::equal(results[0], results[2]));
  auto prev = results[0].slice(0, 0, N * C).view({N, C});
  auto lp = at::log(at::softmax(logits, 1) + 1e-8f);
  for (int64_t s = 0; s < 200; ++s) {
    auto rows = at::nonzero((index == s) & at::isfinite(logits).all(1));
    if (rows.size(0) == 0) continue;
    EXPECT(at::allclose(prev[s], lp[rows[0][0].item<int64_t>()], 1e-5, 1e-6));
  }
}

// The baselines' row stats of p = softmax([0, log 3]) = [1/4, 3/4], by hand: target 1 (correct,
// ||p - e1|| = sqrt(2)/4, margin log 3, p_y 3/4) and target 0 (wrong, sqrt(2) 3/4, -log 3, 1/4);
// a duplicate and a label outside [0, C) get NaN. Then the fold of those stats.
void test_row_stats_and_fold() {
  const float l3 = std::log(3.f);
  auto logits = at::tensor({0.f, l3, 0.f, l3, 0.f, l3, 0.f, l3}).reshape({4, 2});
  auto index = at::tensor(std::vector<int64_t>{0, 1, 0, 2});
  auto targets = at::tensor(std::vector<int64_t>{1, 0, 1, 2});
  auto prev = at::zeros({3, 2});
  auto seen = at::full({3}, -1, at::kInt);
  auto ring = at::zeros({3, 2});
  auto counters = counters_at(0);
  auto stats = at::full({4, 4}, 7.f);
  update(logits, index, prev, seen, ring, counters, targets, stats);
  const double r2 = std::sqrt(2.0);
  const double want[2][4] = {{1, r2 / 4, std::log(3.0), 0.75}, {0, 3 * r2 / 4, -std::log(3.0), 0.25}};
  for (int b = 0; b < 2; ++b)
    for (int k = 0; k < 4; ++k) EXPECT(close(stats[b][k].item<float>(), want[b][k]));
  for (int b = 2; b < 4; ++b) EXPECT(at::isnan(stats[b]).all().item<bool>());
  // packed: count, forgetting, last_correct, learned, el2n, margin_sum, ring (window 2); sample
  // 0 was correct last epoch and is wrong now (a forgetting event) in the second fold.
  auto packed = at::zeros({4, 8}, at::kDouble);
  fold(stats, index, packed, at::scalar_tensor(3, at::kLong), -1);
  EXPECT(packed[0][0].item<double>() == 1 && packed[0][2].item<double>() == 1 &&
         packed[0][3].item<double>() == 1);
  EXPECT(close(packed[0][4].item<double>(), r2 / 4) && close(packed[0][5].item<double>(), std::log(3.0)));
  EXPECT(close(packed[0][6 + 3 % 2].item<double>(), 0.75) && packed[0][6].item<double>() == 0);
  EXPECT(packed[2].abs().sum().item<double>() == 0);  // row 3 of the batch had no stats
  auto wrong = stats.clone();
  wrong[0][0] = 0.f;
  fold(wrong, index, packed, at::scalar_tensor(4, at::kLong), 7);  // el2n kept only at epoch 7
  EXPECT(packed[0][1].item<double>() == 1 && packed[0][0].item<double>() == 2);
  EXPECT(close(packed[0][4].item<double>(), r2 / 4));
}

// The compressed previous row over two epochs (C = 1271: vector tails; K = 32): epoch 0 has no
// old row, epoch 1 starts from the old kept classes (taken out of the row); one sample's old
// kept class falls to p = 0 (the selection then starts from scratch), and one sample's stored
// ids repeat a class (a state the op never writes and a load refuses: only its memory safety and
// the new row are checked). Against double precision: the K largest p in order, their logs, the
// residual, and d against the old state (docs/design.md §2.1: the old kept classes' terms plus
// the tail's one term).
void test_topk_rows() {
  const int64_t B = 48, C = 1271, K = 32;
  auto val = at::zeros({B, K});
  auto idx = at::zeros({B, K}, at::kShort);
  auto rest = at::zeros({B});
  auto seen = at::full({B}, -1, at::kInt);
  auto ring = at::full({B, 3}, -7.f);
  auto index = at::randperm(B);
  auto z = at::randn({B, C}) * 6;
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    auto old_val = val.to(at::kDouble), old_rest = rest.to(at::kDouble);
    auto old_idx = idx.to(at::kLong);
    z = z + 0.6 * at::randn({B, C});
    if (epoch == 1) {
      old_idx[3].slice(0, 0, 3).fill_(7);  // sample 3: class 7 three times, with one value
      old_val[3].slice(0, 0, 3).fill_(old_val[3][2].item<double>());
      idx.copy_(old_idx.to(at::kShort));
      val.copy_(old_val.to(at::kFloat));
      z[5][old_idx[5][K - 1].item<int64_t>()] = -1e4f;  // sample 5: an old kept class's p is 0
    }
    auto counters = counters_at(epoch);
    update_topk(z.index_select(0, index), index, val, idx, rest, seen, ring, counters);
    auto p = at::softmax(z.to(at::kDouble), 1);
    auto lp = at::log(p + 1e-8);
    auto sorted = at::sort(p, 1, /*descending=*/true);
    for (int64_t n = 0; n < B; ++n) {
      auto top = std::get<1>(sorted)[n].slice(0, 0, K);
      EXPECT(at::equal(idx[n].to(at::kLong), top));
      EXPECT(at::allclose(val[n].to(at::kDouble), lp[n].index_select(0, top), 1e-5, 1e-5));
      const double mean = std::get<0>(sorted)[n].slice(0, K).sum().item<double>() / (C - K);
      EXPECT(close(rest[n].item<float>(), std::log(mean + 1e-8), 1e-4, 1e-5));
      const float d = ring[n][(epoch + 2) % 3].item<float>();  // the slot of d_{epoch-1}
      if (epoch == 0) {
        EXPECT(std::isnan(d));
        continue;
      }
      if (n == 3) continue;
      auto kept = old_idx[n];
      auto tail = at::ones({C}, at::kBool).index_fill_(0, kept, false);
      const double d_kept = (p[n].index_select(0, kept) * (lp[n].index_select(0, kept) - old_val[n]))
                                .abs()
                                .sum()
                                .item<double>();
      const double m = p[n].masked_select(tail).sum().item<double>();
      const double step = std::log(m / (C - K) + 1e-8) - old_rest[n].item<double>();
      EXPECT(close(d, d_kept + m * std::fabs(step), 1e-4, 1e-6));
    }
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_known_transition();
  for (auto storage : {at::kFloat, at::kBFloat16, at::kHalf}) test_wide_rows_and_counters(storage);
  test_topk_rows();
  test_epoch_step_window();
  test_threads_give_one_result();
  test_row_stats_and_fold();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all tdds C++ checks passed\n");
  return 0;
}
