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
  std::vector<double> theta, x, t, w, off;  // off empty: no offsets
};

// Random weights, inputs, weights and target distributions; with offsets, each row's log counts
// are random and about a third of the partitions hold no candidate key (offset -inf, target 0).
Problem random_problem(int in, int hidden, int out, int n, uint32_t seed, bool skip = false, bool offsets = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uni(0.1, 2.0);
  Problem p{{in, hidden, out, skip}, n, {}, {}, {}, {}, {}};
  p.theta.resize(size_t(p.s.size()));
  for (auto& v : p.theta) v = normal(rng);
  p.x.resize(size_t(n) * in);
  for (auto& v : p.x) v = normal(rng);
  if (offsets) {
    p.off.resize(size_t(n) * out);
    for (int i = 0; i < n; ++i)
      for (int c = 0; c < out; ++c)
        p.off[size_t(i * out + c)] = (c == i % out || rng() % 3) ? std::log(double(1 + rng() % 40)) : -INFINITY;
  }
  p.t.resize(size_t(n) * out);
  for (int i = 0; i < n; ++i) {
    double z = 0;
    for (int c = 0; c < out; ++c) {
      const bool present = p.off.empty() || std::isfinite(p.off[size_t(i * out + c)]);
      z += (p.t[size_t(i * out + c)] = present ? std::exp(2 * normal(rng)) : 0.0);
    }
    for (int c = 0; c < out; ++c) p.t[size_t(i * out + c)] /= z;
  }
  p.w.resize(size_t(n));
  for (auto& v : p.w) v = uni(rng);
  return p;
}

const double* offsets_of(const Problem& p) { return p.off.empty() ? nullptr : p.off.data(); }

// Naive loss, written from the definition in classifier.h: softmax over the partitions present of
// score + log count, the skip's U x added to the MLP's scores.
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
    std::vector<bool> present(size_t(s.out), true);
    double mx = -1e300;
    for (int c = 0; c < s.out; ++c) {
      double z = th[size_t(s.off_b2() + c)];
      for (int j = 0; j < s.hidden; ++j) z += th[size_t(s.off_w2() + c * s.hidden + j)] * h[size_t(j)];
      if (s.skip)
        for (int k = 0; k < s.in; ++k) z += th[size_t(s.off_u() + c * s.in + k)] * p.x[size_t(i * s.in + k)];
      if (!p.off.empty()) {
        present[size_t(c)] = std::isfinite(p.off[size_t(i * s.out + c)]);
        if (present[size_t(c)]) z += p.off[size_t(i * s.out + c)];
      }
      sc[size_t(c)] = z;
      if (present[size_t(c)]) mx = std::max(mx, z);
    }
    double lse = 0;
    for (int c = 0; c < s.out; ++c)
      if (present[size_t(c)]) lse += std::exp(sc[size_t(c)] - mx);
    lse = mx + std::log(lse);
    double li = 0;
    for (int c = 0; c < s.out; ++c)
      if (present[size_t(c)]) li -= p.t[size_t(i * s.out + c)] * (sc[size_t(c)] - lse);
    total += p.w[size_t(i)] * li;
    wsum += p.w[size_t(i)];
  }
  return total / wsum;
}

struct Variant {
  bool skip, offsets;
};
const Variant kVariants[] = {{false, false}, {true, false}, {false, true}, {true, true}};

TEST(Classifier, LossMatchesTheDefinition) {
  for (const Variant v : kVariants) {
    const Problem p = random_problem(6, 9, 7, 13, 1, v.skip, v.offsets);
    const double got =
        mlp_loss<double>(p.s, p.theta.data(), p.x.data(), p.t.data(), p.w.data(), offsets_of(p), p.n, nullptr);
    // Both in double, the same terms summed in another order: a few ulps.
    EXPECT_NEAR(got, naive_loss(p, p.theta), 1e-12 * std::abs(got)) << "skip " << v.skip << " offsets " << v.offsets;
  }
}

TEST(Classifier, GradientMatchesFiniteDifferences) {
  double max_rel = 0;
  for (const Variant v : kVariants) {
    const Problem p = random_problem(5, 8, 6, 11, 2, v.skip, v.offsets);
    std::vector<double> g(p.theta.size());
    mlp_loss<double>(p.s, p.theta.data(), p.x.data(), p.t.data(), p.w.data(), offsets_of(p), p.n, g.data());
    const double eps = 1e-6;
    for (size_t k = 0; k < p.theta.size(); ++k) {
      std::vector<double> plus = p.theta, minus = p.theta;
      plus[k] += eps, minus[k] -= eps;
      const double fd = (naive_loss(p, plus) - naive_loss(p, minus)) / (2 * eps);
      const double rel = std::abs(fd - g[k]) / std::max(1e-6, std::abs(fd) + std::abs(g[k]));
      max_rel = std::max(max_rel, rel);
      // Central differences at eps 1e-6 on a double loss: truncation ~eps^2, rounding ~1e-16 / eps =
      // 1e-10; 1e-6 absolute + 1e-5 relative still fails a wrong term of the gradient.
      EXPECT_NEAR(g[k], fd, 1e-6 + 1e-5 * std::abs(fd))
          << "parameter " << k << ", skip " << v.skip << ", offsets " << v.offsets;
    }
  }
  RecordProperty("max_relative_error", std::to_string(max_rel));
}

TEST(Classifier, FloatGradientMatchesDouble) {
  for (const Variant v : kVariants) {
    const Problem p = random_problem(16, 32, 24, 40, 3, v.skip, v.offsets);
    std::vector<double> gd(p.theta.size());
    const double ld =
        mlp_loss<double>(p.s, p.theta.data(), p.x.data(), p.t.data(), p.w.data(), offsets_of(p), p.n, gd.data());
    auto f = [](const std::vector<double>& x) { return std::vector<float>(x.begin(), x.end()); };
    const auto th = f(p.theta), x = f(p.x), t = f(p.t), w = f(p.w), off = f(p.off);
    std::vector<float> gf(th.size());
    const double lf = mlp_loss<float>(p.s, th.data(), x.data(), t.data(), w.data(), v.offsets ? off.data() : nullptr,
                                      p.n, gf.data());
    // float32 loss and gradient over 40 samples and 24 hidden units against double: ~1e-6 relative.
    EXPECT_NEAR(lf, ld, 1e-5 * std::abs(ld));
    double num = 0, den = 0;
    for (size_t k = 0; k < gd.size(); ++k) num += std::pow(gf[k] - gd[k], 2), den += gd[k] * gd[k];
    EXPECT_LT(std::sqrt(num / den), 1e-5) << "skip " << v.skip << " offsets " << v.offsets;
  }
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

// Options under which the learnable tasks are learned well within a fraction of a second.
ClassifierOptions learning_options() {
  ClassifierOptions o;
  o.hidden = 64;
  o.epochs = 30;
  o.batch = 32;
  o.lr = 3e-3f;
  o.recall_at = 2;
  return o;
}

TEST(Classifier, LearnsAMappingAndKeepsTheBestHeldOutEpoch) {
  const Task tr = learnable_task(8, 16, 2000, 6), va = learnable_task(8, 16, 300, 7);
  const ClassifierOptions o = learning_options();
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

// With the skip, W2 starts at zero: a router trained with a vanishing learning rate is the skip's
// routing, U x, exactly, through the folded 2 * in extra hidden units (and the standardization
// folded back), on inputs far from the training mean.
TEST(Classifier, SkipStartsAtItsInitAndFoldsIntoTheStoredMlp) {
  const int in = 8, out = 16;
  const Task tr = learnable_task(in, out, 200, 13);
  std::mt19937 rng(14);
  std::normal_distribution<float> normal;
  std::vector<float> u(size_t(out) * in);
  for (auto& x : u) x = normal(rng);
  ClassifierOptions o;
  o.hidden = 32;
  o.epochs = 1;
  o.lr = 1e-30f;
  PartitionClassifier m;
  train_classifier(m, in, out, {tr.x.data(), tr.t.data(), nullptr, tr.n}, {}, o, u.data());
  ASSERT_EQ(m.hidden, 32 + 2 * in);
  std::vector<float> x(static_cast<size_t>(in)), sc(static_cast<size_t>(out)), h(static_cast<size_t>(m.hidden));
  for (int trial = 0; trial < 5; ++trial) {
    for (auto& v : x) v = 3.0f * normal(rng) + 2.0f;
    m.scores(x.data(), sc.data(), h.data());
    for (int c = 0; c < out; ++c) {
      double want = 0;
      for (int k = 0; k < in; ++k) want += double(u[size_t(c * in + k)]) * x[size_t(k)];
      // The folded skip in float32 (2 * in extra hidden units, inputs of scale 3-5) against its double
      // definition: float rounding of sums of ~2 * in terms of order 10.
      EXPECT_NEAR(sc[size_t(c)], want, 1e-4 * (1 + std::abs(want))) << "partition " << c;
    }
  }
}

// Offsets are log counts: a router fed the counts learns the per-key density, so its recall (by
// predicted mass, score + offset) follows the counts of a row it has never seen.
TEST(Classifier, OffsetsLetTheRouterLearnDensitiesAndRejectMassOnEmptyPartitions) {
  const int in = 8, out = 16;
  Task tr = learnable_task(in, out, 1500, 15), va = learnable_task(in, out, 300, 16);
  // Mass = count * density, the density being the learnable task's target.
  auto with_counts = [&](Task& t, uint32_t seed, std::vector<float>& off) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> log_n(0.0, 7.0);  // counts from 1 to ~1000, a quarter empty
    off.assign(size_t(t.n) * out, 0.0f);
    for (int i = 0; i < t.n; ++i) {
      double z = 0;
      for (int c = 0; c < out; ++c) {
        const int n = rng() % 4 ? int(std::exp(log_n(rng))) : 0;
        off[size_t(i * out + c)] = n ? std::log(float(n)) : -INFINITY;
        z += (t.t[size_t(i * out + c)] *= float(n));
      }
      if (z == 0) {  // every count zero: give the row one key in partition 0
        off[size_t(i * out)] = 0.0f;
        t.t[size_t(i * out)] = 1.0f, z = 1.0;
      }
      for (int c = 0; c < out; ++c) t.t[size_t(i * out + c)] = float(t.t[size_t(i * out + c)] / z);
    }
  };
  std::vector<float> off_tr, off_va;
  with_counts(tr, 17, off_tr);
  with_counts(va, 18, off_va);
  const ClassifierOptions o = learning_options();
  const ClassifierData train{tr.x.data(), tr.t.data(), nullptr, tr.n, off_tr.data()};
  const ClassifierData val{va.x.data(), va.t.data(), nullptr, va.n, off_va.data()};
  PartitionClassifier m;
  const ClassifierStats st = train_classifier(m, in, out, train, val, o);
  EXPECT_GT(st.val_recall, 0.8 * st.val_oracle_recall);
  // A router trained on the same masses without the counts has to guess them, and cannot.
  PartitionClassifier blind;
  const ClassifierStats sb = train_classifier(blind, in, out, {tr.x.data(), tr.t.data(), nullptr, tr.n},
                                              {va.x.data(), va.t.data(), nullptr, va.n}, o);
  RecordProperty("recall_with_counts", std::to_string(st.val_recall));
  RecordProperty("recall_without_counts", std::to_string(sb.val_recall));
  EXPECT_GT(st.val_recall, sb.val_recall + 0.1);

  std::vector<float> bad = off_tr;
  for (int c = 0; c < out; ++c)
    if (tr.t[size_t(c)] > 0) {
      bad[size_t(c)] = -INFINITY;  // a partition with mass but no key
      break;
    }
  EXPECT_THROW(train_classifier(m, in, out, {tr.x.data(), tr.t.data(), nullptr, tr.n, bad.data()}, {}, o), Error);
  bad = off_tr;
  bad[0] = NAN;
  EXPECT_THROW(train_classifier(m, in, out, {tr.x.data(), tr.t.data(), nullptr, tr.n, bad.data()}, {}, o), Error);
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
