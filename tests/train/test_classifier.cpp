// The query router's training: loss and gradient against independent references (naive double
// loops, central finite differences of the double loss), reproducibility on a fixed seed, and
// that it learns a learnable mapping.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "saap/core/error.h"
#include "saap/train/classifier.h"

namespace saap {
namespace {

struct Problem {
  MlpShape s;
  int n;
  std::vector<double> theta, x, t, w;
};

Problem random_problem(int in, int hidden, int out, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uni(0.1, 2.0);
  Problem p{{in, hidden, out}, n, {}, {}, {}, {}};
  p.theta.resize(size_t(p.s.size()));
  for (auto& v : p.theta) v = normal(rng);
  p.x.resize(size_t(n) * in);
  for (auto& v : p.x) v = normal(rng);
  p.t.resize(size_t(n) * out);
  for (int i = 0; i < n; ++i) {
    double z = 0;
    for (int c = 0; c < out; ++c) z += (p.t[size_t(i * out + c)] = std::exp(2 * normal(rng)));
    for (int c = 0; c < out; ++c) p.t[size_t(i * out + c)] /= z;
  }
  p.w.resize(size_t(n));
  for (auto& v : p.w) v = uni(rng);
  return p;
}

// Naive loss, written from the definition in classifier.h.
double naive_loss(const Problem& p, const std::vector<double>& th) {
  const MlpShape& s = p.s;
  double total = 0, wsum = 0;
  for (int i = 0; i < p.n; ++i) {
    std::vector<double> h(size_t(s.hidden)), sc(size_t(s.out));
    for (int j = 0; j < s.hidden; ++j) {
      double z = th[size_t(s.off_b1() + j)];
      for (int k = 0; k < s.in; ++k) z += th[size_t(j * s.in + k)] * p.x[size_t(i * s.in + k)];
      h[size_t(j)] = z > 0 ? z : 0;
    }
    double mx = -1e300;
    for (int c = 0; c < s.out; ++c) {
      double z = th[size_t(s.off_b2() + c)];
      for (int j = 0; j < s.hidden; ++j) z += th[size_t(s.off_w2() + c * s.hidden + j)] * h[size_t(j)];
      sc[size_t(c)] = z;
      mx = std::max(mx, z);
    }
    double lse = 0;
    for (double z : sc) lse += std::exp(z - mx);
    lse = mx + std::log(lse);
    double li = 0;
    for (int c = 0; c < s.out; ++c) li -= p.t[size_t(i * s.out + c)] * (sc[size_t(c)] - lse);
    total += p.w[size_t(i)] * li;
    wsum += p.w[size_t(i)];
  }
  return total / wsum;
}

TEST(Classifier, LossMatchesTheDefinition) {
  const Problem p = random_problem(6, 9, 7, 13, 1);
  const double got = mlp_loss<double>(p.s, p.theta.data(), p.x.data(), p.t.data(), p.w.data(), p.n, nullptr);
  EXPECT_NEAR(got, naive_loss(p, p.theta), 1e-12 * std::abs(got));
}

TEST(Classifier, GradientMatchesFiniteDifferences) {
  const Problem p = random_problem(5, 8, 6, 11, 2);
  std::vector<double> g(p.theta.size());
  mlp_loss<double>(p.s, p.theta.data(), p.x.data(), p.t.data(), p.w.data(), p.n, g.data());
  const double eps = 1e-6;
  double max_rel = 0;
  for (size_t k = 0; k < p.theta.size(); ++k) {
    std::vector<double> plus = p.theta, minus = p.theta;
    plus[k] += eps, minus[k] -= eps;
    const double fd = (naive_loss(p, plus) - naive_loss(p, minus)) / (2 * eps);
    const double rel = std::abs(fd - g[k]) / std::max(1e-6, std::abs(fd) + std::abs(g[k]));
    max_rel = std::max(max_rel, rel);
    EXPECT_NEAR(g[k], fd, 1e-6 + 1e-5 * std::abs(fd)) << "parameter " << k;
  }
  RecordProperty("max_relative_error", std::to_string(max_rel));
}

TEST(Classifier, FloatGradientMatchesDouble) {
  const Problem p = random_problem(16, 32, 24, 40, 3);
  std::vector<double> gd(p.theta.size());
  const double ld = mlp_loss<double>(p.s, p.theta.data(), p.x.data(), p.t.data(), p.w.data(), p.n, gd.data());
  auto f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  const auto th = f(p.theta), x = f(p.x), t = f(p.t), w = f(p.w);
  std::vector<float> gf(th.size());
  const double lf = mlp_loss<float>(p.s, th.data(), x.data(), t.data(), w.data(), p.n, gf.data());
  EXPECT_NEAR(lf, ld, 1e-5 * std::abs(ld));
  double num = 0, den = 0;
  for (size_t k = 0; k < gd.size(); ++k) num += std::pow(gf[k] - gd[k], 2), den += gd[k] * gd[k];
  EXPECT_LT(std::sqrt(num / den), 1e-5);
}

// Targets that are a sharp function of the input: the mass sits on the partitions whose
// (hidden) prototypes best match x.
struct Task {
  std::vector<float> x, t;
  int n;
};
Task learnable_task(int in, int out, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::mt19937 proto_rng(99);  // the same mapping for every seed
  std::vector<float> proto(size_t(in) * out);
  for (auto& v : proto) v = normal(proto_rng);
  Task task{{}, {}, n};
  for (int i = 0; i < n; ++i) {
    std::vector<float> xi(static_cast<size_t>(in));
    for (auto& v : xi) v = normal(rng);
    std::vector<double> s(static_cast<size_t>(out));
    double mx = -1e300;
    for (int c = 0; c < out; ++c) {
      for (int k = 0; k < in; ++k) s[size_t(c)] += 2.0 * proto[size_t(c * in + k)] * xi[size_t(k)];
      mx = std::max(mx, s[size_t(c)]);
    }
    double z = 0;
    for (auto& v : s) z += (v = std::exp(v - mx));
    task.x.insert(task.x.end(), xi.begin(), xi.end());
    for (double v : s) task.t.push_back(float(v / z));
  }
  return task;
}

TEST(Classifier, SameSeedReproducesTheLossDifferentSeedDoesNot) {
  const Task tr = learnable_task(8, 16, 300, 4), va = learnable_task(8, 16, 60, 5);
  ClassifierOptions o;
  o.hidden = 32;
  o.epochs = 4;
  o.batch = 32;
  o.seed = 11;
  const ClassifierData train{tr.x.data(), tr.t.data(), nullptr, tr.n}, val{va.x.data(), va.t.data(), nullptr, va.n};
  PartitionClassifier a, b, c;
  const ClassifierStats sa = train_classifier(a, 8, 16, train, val, o);
  const ClassifierStats sb = train_classifier(b, 8, 16, train, val, o);
  EXPECT_EQ(sa.train_loss, sb.train_loss);
  EXPECT_EQ(sa.val_loss, sb.val_loss);
  EXPECT_EQ(a.w2, b.w2);
  o.seed = 12;
  const ClassifierStats sc = train_classifier(c, 8, 16, train, val, o);
  EXPECT_NE(sa.train_loss, sc.train_loss);
}

TEST(Classifier, LearnsAMappingAndKeepsTheBestHeldOutEpoch) {
  const Task tr = learnable_task(8, 16, 2000, 6), va = learnable_task(8, 16, 300, 7);
  ClassifierOptions o;
  o.hidden = 64;
  o.epochs = 30;
  o.batch = 32;
  o.lr = 3e-3f;
  o.recall_at = 2;
  const ClassifierData train{tr.x.data(), tr.t.data(), nullptr, tr.n}, val{va.x.data(), va.t.data(), nullptr, va.n};
  PartitionClassifier m;
  const ClassifierStats st = train_classifier(m, 8, 16, train, val, o);
  ASSERT_FALSE(st.val_loss.empty());
  EXPECT_LT(st.val_loss[size_t(st.best_epoch - 1)], st.val_loss.front() * 0.8);
  EXPECT_DOUBLE_EQ(st.best_val_loss, *std::min_element(st.val_loss.begin(), st.val_loss.end()));
  // The kept weights (standardization folded in) reproduce the best held-out recall, close to
  // the oracle's and far above a mapping-free guess (2 of 16 partitions).
  EXPECT_NEAR(classifier_recall(m, val, 2), st.val_recall, 1e-12);
  EXPECT_GT(st.val_recall, 0.8 * st.val_oracle_recall);
  EXPECT_GT(st.val_recall, 0.5);
}

TEST(Classifier, BadInputIsRefused) {
  const Task tr = learnable_task(4, 5, 20, 8);
  std::vector<float> t = tr.t;
  t[3] = NAN;
  PartitionClassifier m;
  ClassifierOptions o;
  const ClassifierData empty{};
  EXPECT_THROW(train_classifier(m, 4, 5, {tr.x.data(), t.data(), nullptr, tr.n}, empty, o), Error);
  o.hidden = 0;
  EXPECT_THROW(train_classifier(m, 4, 5, {tr.x.data(), tr.t.data(), nullptr, tr.n}, empty, o), Error);
  o.hidden = 8;
  EXPECT_THROW(train_classifier(m, 4, 5, empty, empty, o), Error);
}

}  // namespace
}  // namespace saap
