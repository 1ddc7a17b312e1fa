// Attention metrics against an independent long-double computation on fresh random inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "saap/core/error.h"
#include "saap/eval/decode_replay.h"
#include "saap/eval/attention_metrics.h"
#include "saap/kernels/cpu/attention.h"
#include "saap/methods/dense.h"

namespace saap {
namespace {

constexpr int kH = 6, kKV = 2, kD = 16;

struct Problem {
  int64_t n;
  std::vector<float> k, v, q;  // k, v [n][kKV][kD]; q [kH][kD]
  KVCache cache;
  explicit Problem(int64_t n_, uint32_t seed) : n(n_), cache({1, kKV, kD, n_, DType::F32}) {
    std::mt19937 rng{seed};
    std::normal_distribution<float> normal;
    k.resize(size_t(n) * kKV * kD);
    v.resize(k.size());
    q.resize(size_t(kH) * kD);
    for (auto* b : {&k, &v, &q})
      for (auto& x : *b) x = 2.0f * normal(rng);  // peaked softmax, so selections matter
    cache.append(0, k.data(), v.data(), n);
  }
  QueryView view() const {
    QueryView qv;
    qv.q = q.data();
    qv.q_pre = q.data();
    qv.n_q_heads = kH;
    qv.pos = n - 1;
    return qv;
  }
  // Dense softmax probabilities of head h, in long double.
  std::vector<long double> probs(int h) const {
    const int kvh = h / (kH / kKV);
    std::vector<long double> p(static_cast<size_t>(n));
    long double mx = -INFINITY, sum = 0;
    for (int64_t t = 0; t < n; ++t) {
      long double dot = 0;
      for (int i = 0; i < kD; ++i) dot += (long double)q[h * kD + i] * k[(t * kKV + kvh) * kD + i];
      p[t] = dot / std::sqrt((long double)kD);
      mx = std::max(mx, p[t]);
    }
    for (auto& x : p) sum += (x = std::exp(x - mx));
    for (auto& x : p) x /= sum;
    return p;
  }
  // Attention output of head h over `keep` (renormalized), in long double.
  std::vector<long double> output(int h, const std::vector<char>& keep) const {
    const auto p = probs(h);
    const int kvh = h / (kH / kKV);
    std::vector<long double> o(kD, 0);
    long double z = 0;
    for (int64_t t = 0; t < n; ++t)
      if (keep[t]) z += p[t];
    if (z == 0) return o;
    for (int64_t t = 0; t < n; ++t)
      if (keep[t])
        for (int i = 0; i < kD; ++i) o[i] += p[t] / z * v[(t * kKV + kvh) * kD + i];
    return o;
  }
};

// The method's output for `sel`, through the same attend() every method uses.
std::vector<float> attend(const Problem& pr, const Selection& sel) {
  DenseAttention method({0, kH, kKV, kD, pr.n});
  std::vector<float> out(size_t(kH) * kD);
  LookupStats stats;
  method.attend(pr.cache.layer(0), pr.view(), sel, out.data(), stats);
  return out;
}

TEST(AttentionMetrics, SelectingEverythingIsPerfect) {
  Problem pr(300, 11);
  for (bool explicit_list : {false, true}) {
    Selection sel;
    sel.clear(kH);
    if (explicit_list)
      for (auto& l : sel.positions) {
        l.resize(size_t(pr.n));
        std::iota(l.begin(), l.end(), 0);
      }
    else
      sel.all = true;
    const auto out = attend(pr, sel);
    std::vector<AttentionMetrics> m(kH);
    measure_query(pr.cache.layer(0), pr.view(), sel, out.data(), 16, m);
    for (int h = 0; h < kH; ++h) {
      EXPECT_EQ(m[h].samples, 1);
      EXPECT_DOUBLE_EQ(m[h].recall, 1.0);
      EXPECT_DOUBLE_EQ(m[h].jaccard, 1.0);
      EXPECT_NEAR(m[h].mass, 1.0, 1e-12);
      EXPECT_LT(m[h].rel_error, 1e-5);
      EXPECT_DOUBLE_EQ(m[h].selected, 1.0);
    }
  }
}

TEST(AttentionMetrics, SinksAndWindowMatchReference) {
  Problem pr(500, 12);
  const int sinks = 4, window = 20, top_k = 10;
  Selection sel;
  sel.clear(kH);
  std::vector<char> keep(size_t(pr.n), 0);
  for (int64_t t = 0; t < pr.n; ++t)
    if (t < sinks || t >= pr.n - window) keep[t] = 1;
  for (auto& l : sel.positions)
    for (int64_t t = 0; t < pr.n; ++t)
      if (keep[t]) l.push_back(int32_t(t));
  const auto out = attend(pr, sel);
  std::vector<AttentionMetrics> m(kH);
  measure_query(pr.cache.layer(0), pr.view(), sel, out.data(), top_k, m);
  for (int h = 0; h < kH; ++h) {
    const auto p = pr.probs(h);
    long double mass = 0;
    for (int64_t t = 0; t < pr.n; ++t) mass += keep[t] ? p[t] : 0;
    std::vector<int64_t> order(size_t(pr.n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
    int hits_k = 0, hits_s = 0;
    const int n_sel = sinks + window;
    for (int i = 0; i < top_k; ++i) hits_k += keep[order[i]];
    for (int i = 0; i < n_sel; ++i) hits_s += keep[order[i]];
    const auto dense = pr.output(h, std::vector<char>(size_t(pr.n), 1));
    const auto sparse = pr.output(h, keep);
    long double err = 0, norm = 0;
    for (int i = 0; i < kD; ++i) {
      err += (sparse[i] - dense[i]) * (sparse[i] - dense[i]);
      norm += dense[i] * dense[i];
    }
    ASSERT_LT(mass, 0.999L) << "the random problem should not put all mass in the window";
    EXPECT_NEAR(m[h].mass, double(mass), 1e-9);
    EXPECT_DOUBLE_EQ(m[h].recall, double(hits_k) / top_k);
    EXPECT_DOUBLE_EQ(m[h].jaccard, double(hits_s) / double(2 * n_sel - hits_s));
    EXPECT_NEAR(m[h].rel_error, double(std::sqrt(err / norm)), 1e-4 * double(std::sqrt(err / norm)) + 1e-6);
    EXPECT_NEAR(m[h].selected, double(n_sel) / double(pr.n), 1e-12);
  }
}

TEST(AttentionMetrics, EmptySelectionIsReportedNotCrashed) {
  Problem pr(64, 13);
  Selection sel;
  sel.clear(kH);
  const auto out = attend(pr, sel);
  std::vector<AttentionMetrics> m(kH);
  measure_query(pr.cache.layer(0), pr.view(), sel, out.data(), 8, m);
  for (int h = 0; h < kH; ++h) {
    EXPECT_EQ(m[h].recall, 0.0);
    EXPECT_EQ(m[h].jaccard, 0.0);
    EXPECT_EQ(m[h].mass, 0.0);
    EXPECT_NEAR(m[h].rel_error, 1.0, 1e-12);  // the output is zero
  }
}

TEST(AttentionMetrics, BadInputsAreRefused) {
  Problem pr(32, 14);
  Selection sel;
  sel.clear(kH);
  sel.positions[0] = {40};  // beyond the causal prefix [0, 31]
  std::vector<float> out(size_t(kH) * kD);
  std::vector<AttentionMetrics> m(kH);
  EXPECT_THROW(measure_query(pr.cache.layer(0), pr.view(), sel, out.data(), 8, m), Error);
  sel.clear(kH);
  std::vector<AttentionMetrics> too_few(2);
  EXPECT_THROW(measure_query(pr.cache.layer(0), pr.view(), sel, out.data(), 8, too_few), Error);
  EXPECT_THROW(measure_query(pr.cache.layer(0), pr.view(), sel, out.data(), 0, m), Error);
}

// The decode replay: dense reads everything (fraction 1) and is perfect at every sampled position;
// a prefix-only method replayed position by position never sees the future.
TEST(AttentionMetrics, ReplayOfDenseIsExact) {
  const int64_t n = 96;
  std::mt19937 rng{15};
  std::normal_distribution<float> normal;
  std::vector<float> q(size_t(n) * kH * kD), k(size_t(n) * kKV * kD), v(k.size());
  for (auto* b : {&q, &k, &v})
    for (auto& x : *b) x = normal(rng);
  MethodFactory dense = [](const LayerShape& s) { return std::make_unique<DenseAttention>(s); };
  std::vector<AttentionMetrics> m(kH);
  LookupStats stats;
  const std::vector<int32_t> sample = {1, 17, 50, 95};
  replay_layer(dense, {3, kH, kKV, kD, n}, n, q.data(), q.data(), k.data(), k.data(), v.data(), sample, 8, m, stats);
  EXPECT_EQ(stats.queries, n);
  EXPECT_DOUBLE_EQ(stats.fraction(), 1.0);
  for (int h = 0; h < kH; ++h) {
    EXPECT_EQ(m[h].samples, int64_t(sample.size()));
    EXPECT_DOUBLE_EQ(m[h].mean_recall(), 1.0);
    EXPECT_NEAR(m[h].mean_mass(), 1.0, 1e-12);
    EXPECT_LT(m[h].mean_rel_error(), 1e-5);
  }
}

}  // namespace
}  // namespace saap
