// Saap and symmetric k-means as attention methods: the partition-grouped layout, the budget rule,
// the routing, byte accounting and artifact validation. Routers and centroids here are random (the
// trained behaviour is tested in tests/train/test_saap_trainer.cpp); references are naive double loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <set>
#include <unistd.h>
#include <string>

#include "saap/core/error.h"
#include "saap/methods/dense.h"
#include "saap/methods/partition_oracle.h"
#include "saap/methods/saap.h"
#include "saap/methods/symmetric_kmeans.h"

namespace saap {
namespace {

constexpr int kHeads = 4, kKV = 2, kDim = 16, kC = 8, kHidden = 12, kLen = 300;

std::string temp_path(const std::string& name) {
  return std::string(::testing::TempDir()) + "/saap_test_" + std::to_string(::getpid()) + "_" + name;
}

ArtifactIdentity model_id() {
  ArtifactIdentity id;
  id.model_identity = "synthetic-model";
  id.n_layers = 2;
  id.n_heads = kHeads;
  id.n_kv_heads = kKV;
  id.head_dim = kDim;
  return id;
}

// Router output weights are scaled down so that each head's softmax over partitions spreads over
// several of them (N(0, 1) weights make it one-hot, and then any way of combining the heads ranks
// alike: a test could not tell a sum from a max).
constexpr float kRouterOutScale = 0.1f, kRouterBiasScale = 0.5f;

PartitionArtifact random_artifact(bool classifiers, bool pre_rope, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  PartitionArtifact a;
  a.identity = model_id();
  a.identity.method = classifiers ? "saap" : "kmeans";
  a.partitions = kC;
  a.hidden = classifiers ? kHidden : 0;
  a.pre_rope = pre_rope;
  a.spherical = true;
  PartitionLayer& layer = a.layers[1];
  layer.centroids.resize(size_t(kKV) * kC * kDim);
  for (int c = 0; c < kKV * kC; ++c) {
    float* m = layer.centroids.data() + c * kDim;
    double n = 0;
    for (int i = 0; i < kDim; ++i) m[i] = normal(rng), n += double(m[i]) * m[i];
    for (int i = 0; i < kDim; ++i) m[i] = float(m[i] / std::sqrt(n));
  }
  if (classifiers)
    for (int h = 0; h < kHeads; ++h) {
      PartitionClassifier m(kDim, kHidden, kC);
      for (auto* v : {&m.w1, &m.b1, &m.w2, &m.b2})
        for (auto& x : *v) x = normal(rng);
      for (auto& x : m.w2) x *= kRouterOutScale;
      for (auto& x : m.b2) x *= kRouterBiasScale;
      layer.classifiers.push_back(m);
    }
  a.train = {{"note", "random"}};
  return a;
}

struct Sequence {
  KVCache cache{{2, kKV, kDim, kLen, DType::F32}};
  std::vector<float> k_pre, k, v, q_pre, q;  // k_pre/k/v [kLen][kKV][kDim], q [kLen][kHeads][kDim]
  // With `near`, each key is drawn near one of its KV head's centroids, centroid c with probability
  // proportional to 0.6^c: the partitions come out of very uneven sizes, as real ones are.
  explicit Sequence(uint32_t seed, const PartitionArtifact* near = nullptr) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    k_pre.resize(size_t(kLen) * kKV * kDim);
    v.resize(k_pre.size());
    for (auto& x : k_pre) x = normal(rng);
    if (near) {
      std::vector<double> w(kC);
      for (int c = 0; c < kC; ++c) w[size_t(c)] = std::pow(0.6, c);
      std::discrete_distribution<int> pick(w.begin(), w.end());
      for (int64_t p = 0; p < kLen; ++p)
        for (int h = 0; h < kKV; ++h) {
          const float* m = near->layers.at(1).centroids.data() + (h * kC + pick(rng)) * kDim;
          for (int i = 0; i < kDim; ++i) k_pre[size_t((p * kKV + h) * kDim + i)] = 3.0f * m[i] + 0.5f * normal(rng);
        }
    }
    for (auto& x : v) x = normal(rng);
    k = k_pre;  // the "post-RoPE" copy differs from pre-RoPE so that the choice is observable
    for (size_t i = 0; i < k.size(); i += 2) std::swap(k[i], k[i + 1]);
    q_pre.resize(size_t(kLen) * kHeads * kDim);
    for (auto& x : q_pre) x = normal(rng);
    q = q_pre;
    for (size_t i = 0; i < q.size(); i += 2) std::swap(q[i], q[i + 1]);
    cache.append(1, k.data(), v.data(), kLen);
  }
  QueryView query(int64_t pos) const {
    return {q.data() + pos * kHeads * kDim, q_pre.data() + pos * kHeads * kDim, kHeads, pos};
  }
};

LayerShape shape() { return {1, kHeads, kKV, kDim, kLen}; }

int brute_nearest(const float* centroids, const float* x) {
  int best = 0;
  double best_s = -1e300;
  for (int c = 0; c < kC; ++c) {
    double s = 0;
    for (int i = 0; i < kDim; ++i) s += double(x[i]) * centroids[c * kDim + i];
    if (s > best_s) best_s = s, best = c;
  }
  return best;
}

std::vector<double> naive_router(const PartitionClassifier& m, const float* x) {
  std::vector<double> h(size_t(m.hidden)), s(size_t(m.out_dim));
  for (int j = 0; j < m.hidden; ++j) {
    double z = m.b1[size_t(j)];
    for (int i = 0; i < m.in_dim; ++i) z += double(m.w1[size_t(j * m.in_dim + i)]) * x[i];
    h[size_t(j)] = std::max(0.0, z);
  }
  for (int c = 0; c < m.out_dim; ++c) {
    double z = m.b2[size_t(c)];
    for (int j = 0; j < m.hidden; ++j) z += double(m.w2[size_t(c * m.hidden + j)]) * h[size_t(j)];
    s[size_t(c)] = z;
  }
  return s;
}

TEST(SaapLayout, EveryPositionInExactlyOneListInOrderWithItsRows) {
  auto a = std::make_shared<const PartitionArtifact>(random_artifact(true, true, 1));
  Sequence s(2);
  SaapAttention m(shape(), a, {0.1, 4, 16});
  const LayerKV kv = s.cache.layer(1);
  // Prefill in one block, then decode-style appends of one position.
  m.place(kv, 0, 200, s.k_pre.data());
  for (int64_t p = 200; p < kLen; ++p) m.place(kv, p, p + 1, s.k_pre.data() + p * kKV * kDim);
  EXPECT_EQ(m.placed(), kLen);
  for (int h = 0; h < kKV; ++h) {
    const PartitionLists& lists = m.lists(h);
    EXPECT_EQ(lists.total(), kLen);
    std::vector<int> seen(kLen, 0);
    for (int c = 0; c < kC; ++c) {
      const auto& pos = lists.positions(c);
      EXPECT_TRUE(std::is_sorted(pos.begin(), pos.end()));
      for (size_t i = 0; i < pos.size(); ++i) {
        const int p = pos[i];
        ++seen[size_t(p)];
        EXPECT_EQ(brute_nearest(a->layers.at(1).centroids.data() + h * kC * kDim, s.k_pre.data() + (p * kKV + h) * kDim), c);
        // The grouped copies are contiguous and equal the cached rows.
        EXPECT_EQ(0, std::memcmp(lists.keys(c) + i * kDim * 4, kv.key<float>(h, p), kDim * 4));
        EXPECT_EQ(0, std::memcmp(lists.values(c) + i * kDim * 4, kv.value<float>(h, p), kDim * 4));
      }
    }
    for (int p = 0; p < kLen; ++p) EXPECT_EQ(seen[size_t(p)], 1) << "position " << p;
  }
}

TEST(SaapLayout, PostRopeArtifactAssignsCachedKeysAndReplacingAfterTruncateKeepsOneCopy) {
  auto a = std::make_shared<const PartitionArtifact>(random_artifact(true, false, 3));
  Sequence s(4);
  SaapAttention m(shape(), a, {0.1, 4, 16});
  const LayerKV kv = s.cache.layer(1);
  m.place(kv, 0, 120, nullptr);  // post-RoPE partitions read the cache, no pre-RoPE keys needed
  m.place(kv, 80, 150, nullptr);  // a re-run suffix from position 80
  EXPECT_EQ(m.placed(), 150);
  for (int h = 0; h < kKV; ++h) {
    EXPECT_EQ(m.lists(h).total(), 150);
    for (int c = 0; c < kC; ++c)
      for (int p : m.lists(h).positions(c))
        EXPECT_EQ(brute_nearest(a->layers.at(1).centroids.data() + h * kC * kDim, s.k.data() + (p * kKV + h) * kDim), c);
  }
  EXPECT_THROW(m.place(kv, 151, 160, nullptr), Error);  // a gap
  m.reset();
  EXPECT_EQ(m.lists(0).total(), 0);
}

// Reference of the budget rule: ceil(lookup * n_ctx) tokens in all, the sinks and the window first;
// the rest goes to partitions (their tokens strictly between the sinks and the window), taken from
// the group's rankings in turn (rank 0 of each, then rank 1, ...; one ranking for a group score),
// a partition once and only if it fits in what is left,
// until the rest is used up or no partition fits. Every head of the group reads the union.
std::set<int32_t> reference_selection(const std::vector<std::vector<double>>& group_scores, const PartitionLists& lists,
                                      int64_t pos, double lookup, int sinks, int window) {
  const int64_t n_ctx = pos + 1;
  const int64_t b = std::min<int64_t>(sinks, n_ctx), e = std::max<int64_t>(b, n_ctx - window);
  std::vector<std::vector<int>> orders;
  for (const auto& scores : group_scores) {
    std::vector<int> order(kC);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return scores[size_t(x)] > scores[size_t(y)]; });
    orders.push_back(order);
  }
  std::set<int32_t> out;
  std::set<int> used;
  int64_t taken = 0;
  const int64_t budget = std::max<int64_t>(0, int64_t(std::ceil(lookup * double(n_ctx))) - (b + n_ctx - e));
  for (int r = 0; r < kC; ++r)
    for (const auto& order : orders) {
      if (taken >= budget || used.count(order[size_t(r)])) continue;
      std::vector<int32_t> mid;
      for (int32_t p : lists.positions(order[size_t(r)]))
        if (p >= b && p < e) mid.push_back(p);
      if (mid.empty() || taken + int64_t(mid.size()) > budget) continue;
      out.insert(mid.begin(), mid.end());
      used.insert(order[size_t(r)]);
      taken += int64_t(mid.size());
    }
  for (int64_t p = 0; p < n_ctx; ++p)
    if (p < b || p >= e) out.insert(int32_t(p));
  return out;
}

TEST(SaapSelect, RoutesEachHeadByItsClassifierUnderTheBudget) {
  auto a = std::make_shared<const PartitionArtifact>(random_artifact(true, true, 5));
  Sequence s(6);
  const double lookup = 0.4;  // several partitions past the sinks and window at the later positions
  SaapAttention m(shape(), a, {lookup, 3, 10});
  const LayerKV kv = s.cache.layer(1);
  m.place(kv, 0, kLen, s.k_pre.data());
  for (int64_t pos : {0, 5, 13, 77, 180, 299}) {
    const QueryView q = s.query(pos);
    Selection sel;
    m.select(kv, q, sel);
    check_selection(q, sel);
    for (int h = 0; h < kHeads; ++h) {
      const int g0 = (h / 2) * 2;
      // Saap's scores are log densities: head g gives partition c the share n_c exp(s_gc) / Z_g of
      // its attention (n_c: the partition's keys between the sinks and the window), and the group
      // ranks by the summed density exp(s_gc) / Z_g, over the partitions holding such keys.
      const int64_t n_ctx = pos + 1, b = std::min<int64_t>(3, n_ctx), e = std::max<int64_t>(b, n_ctx - 10);
      std::vector<double> count(kC, 0.0);
      for (int c = 0; c < kC; ++c)
        for (int32_t p : m.lists(h / 2).positions(c)) count[size_t(c)] += (p >= b && p < e) ? 1 : 0;
      std::vector<std::vector<double>> scores(1, std::vector<double>(kC, 0.0));
      for (int g = g0; g < g0 + 2; ++g) {
        const auto s = naive_router(a->layers.at(1).classifiers[size_t(g)], q.q_pre + g * kDim);
        double z = 0;
        for (int c = 0; c < kC; ++c) z += count[size_t(c)] * std::exp(s[size_t(c)]);
        for (int c = 0; c < kC; ++c)
          if (count[size_t(c)] > 0) scores[0][size_t(c)] += std::exp(s[size_t(c)]) / z;
      }
      const auto want = reference_selection(scores, m.lists(h / 2), pos, lookup, 3, 10);
      const std::set<int32_t> got(sel.positions[size_t(h)].begin(), sel.positions[size_t(h)].end());
      EXPECT_EQ(got.size(), sel.positions[size_t(h)].size()) << "duplicates at head " << h;
      EXPECT_EQ(got, want) << "pos " << pos << " head " << h;
    }
    const int64_t router_bytes = int64_t(kHeads) * (kHidden * (kDim + 1) + kC * (kHidden + 1)) * 4;
    EXPECT_EQ(sel.index_bytes, router_bytes + int64_t(kKV) * kC * 4);
  }
}

// The reference density keys of a KV group in float64, from the routers and the partition lists:
// head g gives partition c the share n_c exp(s_gc) / Z_g of its attention (n_c: the partition's
// keys between the sinks and the window, Z_g summed over partitions with such keys), and the group
// ranks by the summed density exp(s_gc) / Z_g.
std::vector<double> reference_group_density(const PartitionArtifact& a, const SaapAttention& m, const QueryView& q,
                                            int kv_head, int sinks, int window) {
  const int64_t n_ctx = q.pos + 1, b = std::min<int64_t>(sinks, n_ctx), e = std::max<int64_t>(b, n_ctx - window);
  std::vector<double> count(kC, 0.0), density(kC, 0.0);
  for (int c = 0; c < kC; ++c)
    for (int32_t p : m.lists(kv_head).positions(c)) count[size_t(c)] += (p >= b && p < e) ? 1 : 0;
  for (int g = kv_head * 2; g < kv_head * 2 + 2; ++g) {
    const auto s = naive_router(a.layers.at(1).classifiers[size_t(g)], q.q_pre + g * kDim);
    double z = 0;
    for (int c = 0; c < kC; ++c) z += count[size_t(c)] * std::exp(s[size_t(c)]);
    for (int c = 0; c < kC; ++c)
      if (count[size_t(c)] > 0) density[size_t(c)] += std::exp(s[size_t(c)]) / z;
  }
  return density;
}

// Uneven partitions, spread-out router softmaxes and a fractional budget (0.33 of n_ctx is rarely a
// whole number of tokens) at many positions with room for partitions: the combination under which
// the density ranking (sum over heads, per-head normalisation with the count term), the ceiling of
// the budget and the skip-and-continue fill each change what is read.
TEST(SaapSelect, GroupDensityRankingAndFillMatchTheReferenceOnUnevenPartitions) {
  const PartitionArtifact art = random_artifact(true, true, 31);
  auto a = std::make_shared<const PartitionArtifact>(art);
  Sequence s(32, &art);
  const double lookup = 0.33;
  const int sinks = 3, window = 10;
  SaapAttention m(shape(), a, {lookup, sinks, window});
  const LayerKV kv = s.cache.layer(1);
  m.place(kv, 0, kLen, s.k_pre.data());
  int64_t smallest = kLen, largest = 0;
  for (int c = 0; c < kC; ++c)
    smallest = std::min(smallest, m.lists(0).size(c)), largest = std::max(largest, m.lists(0).size(c));
  ASSERT_GE(largest, 4 * std::max<int64_t>(smallest, 1)) << "the partitions should be uneven";
  int skipped_then_taken = 0;
  for (int64_t pos = 20; pos < kLen; pos += 7) {
    const QueryView q = s.query(pos);
    Selection sel;
    m.select(kv, q, sel);
    check_selection(q, sel);
    for (int g = 0; g < kKV; ++g) {
      const auto density = reference_group_density(art, m, q, g, sinks, window);
      const auto want = reference_selection({density}, m.lists(g), pos, lookup, sinks, window);
      for (int h = 2 * g; h < 2 * g + 2; ++h) {
        const std::set<int32_t> got(sel.positions[size_t(h)].begin(), sel.positions[size_t(h)].end());
        EXPECT_EQ(got.size(), sel.positions[size_t(h)].size()) << "duplicates at head " << h;
        EXPECT_EQ(got, want) << "pos " << pos << " head " << h;
      }
      // Whether this position exercised the skip: a ranked partition left out while a lower one
      // was read.
      std::vector<int> order(kC);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return density[size_t(x)] > density[size_t(y)]; });
      bool skipped = false;
      for (int c : order) {
        const auto& pos_c = m.lists(g).positions(c);
        bool any_mid = false, in = false;
        for (int32_t p : pos_c)
          if (p >= sinks && p < pos + 1 - window) any_mid = true, in = want.count(p) > 0;
        if (!any_mid) continue;
        if (!in) skipped = true;
        else if (skipped) {
          ++skipped_then_taken;
          break;
        }
      }
    }
  }
  EXPECT_GT(skipped_then_taken, 0) << "no position exercised the skip-and-continue fill";
}

// The partition oracle ranks by the true density: the group's exact attention (post-RoPE query
// and keys, softmax over the whole prefix) in each partition's candidate keys, over their count.
TEST(SaapSelect, PartitionOracleRanksByTrueAttentionDensity) {
  auto a = std::make_shared<const PartitionArtifact>(random_artifact(false, true, 23));
  Sequence s(24);
  const double lookup = 0.3;
  PartitionOracleAttention m(shape(), a, {lookup, 3, 10});
  const LayerKV kv = s.cache.layer(1);
  m.place(kv, 0, kLen, s.k_pre.data());
  for (int64_t pos : {40, 150, 299}) {
    const QueryView q = s.query(pos);
    Selection sel;
    m.select(kv, q, sel);
    check_selection(q, sel);
    EXPECT_EQ(sel.index_bytes, 0);
    const int64_t n_ctx = pos + 1, b = 3, e = n_ctx - 10;
    for (int g = 0; g < kKV; ++g) {
      std::vector<double> density(kC, 0.0), count(kC, 0.0);
      std::vector<int> part(static_cast<size_t>(kLen));  // every placed position, also past the query
      for (int c = 0; c < kC; ++c)
        for (int32_t p : m.lists(g).positions(c)) part[size_t(p)] = c;
      for (int64_t p = b; p < e; ++p) count[size_t(part[size_t(p)])] += 1;
      for (int h = 2 * g; h < 2 * g + 2; ++h) {
        std::vector<double> w(static_cast<size_t>(n_ctx));
        double z = 0;
        for (int64_t p = 0; p < n_ctx; ++p) {
          double dot = 0;
          for (int i = 0; i < kDim; ++i) dot += double(q.q[h * kDim + i]) * s.k[size_t((p * kKV + g) * kDim + i)];
          z += (w[size_t(p)] = std::exp(dot / 4.0));  // 1 / sqrt(16)
        }
        for (int64_t p = b; p < e; ++p) density[size_t(part[size_t(p)])] += w[size_t(p)] / z;
      }
      for (int c = 0; c < kC; ++c) density[size_t(c)] = count[size_t(c)] > 0 ? density[size_t(c)] / count[size_t(c)] : 0;
      const auto want = reference_selection({density}, m.lists(g), pos, lookup, 3, 10);
      const std::set<int32_t> got(sel.positions[size_t(2 * g)].begin(), sel.positions[size_t(2 * g)].end());
      EXPECT_EQ(got, want) << "pos " << pos << " kv head " << g;
    }
  }
}

TEST(SaapSelect, SymmetricRoutesToNearestCentroidsOfTheSamePartition) {
  const PartitionArtifact saap = random_artifact(true, true, 7);
  PartitionArtifact km = saap;
  km.identity.method = "kmeans";
  km.layers.at(1).classifiers.clear();
  auto a = std::make_shared<const PartitionArtifact>(km);
  Sequence s(8);
  SymmetricKMeansAttention m(shape(), a, {0.45, 4, 8});
  const LayerKV kv = s.cache.layer(1);
  m.place(kv, 0, kLen, s.k_pre.data());
  const QueryView q = s.query(250);
  Selection sel;
  m.select(kv, q, sel);
  for (int h = 0; h < kHeads; ++h) {
    std::vector<std::vector<double>> scores(2, std::vector<double>(kC));
    for (int g = 0; g < 2; ++g)
      for (int c = 0; c < kC; ++c)
        for (int i = 0; i < kDim; ++i)
          scores[size_t(g)][size_t(c)] += double(q.q_pre[((h / 2) * 2 + g) * kDim + i]) *
                                          a->layers.at(1).centroids[size_t(((h / 2) * kC + c) * kDim + i)];
    const auto want = reference_selection(scores, m.lists(h / 2), 250, 0.45, 4, 8);
    EXPECT_EQ(std::set<int32_t>(sel.positions[size_t(h)].begin(), sel.positions[size_t(h)].end()), want);
  }
  EXPECT_EQ(sel.index_bytes, int64_t(kKV) * kC * (kDim * 4 + 4));
}

// The symmetric baseline on uneven partitions at a fractional budget, at many positions: the heads
// of a group rank by their own nearest centroids, and the rankings are merged round-robin.
TEST(SaapSelect, SymmetricMergesItsHeadsRankingsRoundRobinOnUnevenPartitions) {
  PartitionArtifact km = random_artifact(false, true, 33);
  auto a = std::make_shared<const PartitionArtifact>(km);
  Sequence s(34, &km);
  const double lookup = 0.33;
  const int sinks = 3, window = 10;
  SymmetricKMeansAttention m(shape(), a, {lookup, sinks, window});
  const LayerKV kv = s.cache.layer(1);
  m.place(kv, 0, kLen, s.k_pre.data());
  for (int64_t pos = 20; pos < kLen; pos += 7) {
    const QueryView q = s.query(pos);
    Selection sel;
    m.select(kv, q, sel);
    for (int g = 0; g < kKV; ++g) {
      std::vector<std::vector<double>> scores(2, std::vector<double>(kC, 0.0));
      for (int h = 0; h < 2; ++h)
        for (int c = 0; c < kC; ++c)
          for (int i = 0; i < kDim; ++i)
            scores[size_t(h)][size_t(c)] += double(q.q_pre[(2 * g + h) * kDim + i]) *
                                            km.layers.at(1).centroids[size_t((g * kC + c) * kDim + i)];
      const auto want = reference_selection(scores, m.lists(g), pos, lookup, sinks, window);
      for (int h = 2 * g; h < 2 * g + 2; ++h)
        EXPECT_EQ(std::set<int32_t>(sel.positions[size_t(h)].begin(), sel.positions[size_t(h)].end()), want)
            << "pos " << pos << " head " << h;
    }
  }
}

TEST(SaapSelect, LookupOneEqualsDenseAndCountsTheUnionPerGroup) {
  auto a = std::make_shared<const PartitionArtifact>(random_artifact(true, true, 9));
  Sequence s(10);
  SaapAttention m(shape(), a, {1.0, 4, 16});
  DenseAttention dense(shape());
  const LayerKV kv = s.cache.layer(1);
  m.place(kv, 0, kLen, s.k_pre.data());
  for (int64_t pos : {0, 40, 299}) {
    std::vector<float> out(kHeads * kDim), want(kHeads * kDim);
    LookupStats st, dst;
    m.forward(kv, s.query(pos), out.data(), st);
    dense.forward(kv, s.query(pos), want.data(), dst);
    // Both fp32, the same keys in another order (partition lists vs the cache): summation order only.
    for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], want[i], 1e-5 * (1 + std::abs(want[i])));
    EXPECT_EQ(st.kv_bytes, st.dense_bytes);
  }
}

TEST(SaapSelect, SmallBudgetReadsLessAndBytesAreTheGroupUnion) {
  auto a = std::make_shared<const PartitionArtifact>(random_artifact(true, true, 11));
  Sequence s(12);
  SaapAttention m(shape(), a, {0.1, 4, 16});
  const LayerKV kv = s.cache.layer(1);
  m.place(kv, 0, kLen, s.k_pre.data());
  Selection sel;
  const QueryView q = s.query(299);
  m.select(kv, q, sel);
  std::vector<float> out(kHeads * kDim);
  LookupStats st;
  m.attend(kv, q, sel, out.data(), st);
  int64_t positions = 0;
  for (int g = 0; g < kKV; ++g) {
    std::set<int32_t> u(sel.positions[size_t(2 * g)].begin(), sel.positions[size_t(2 * g)].end());
    u.insert(sel.positions[size_t(2 * g + 1)].begin(), sel.positions[size_t(2 * g + 1)].end());
    positions += int64_t(u.size());
  }
  EXPECT_EQ(st.kv_bytes, positions * 2 * kDim * 4);
  EXPECT_LT(st.kv_bytes, st.dense_bytes);
}

// A fixed budget of B tokens reads what the fraction B / n_ctx would at that prefix, and a prefix
// of at most B tokens whole.
TEST(SaapSelect, FixedTokenBudgetIsTheFractionThatBuysIt) {
  auto a = std::make_shared<const PartitionArtifact>(random_artifact(true, true, 13));
  Sequence s(14);
  const LayerKV kv = s.cache.layer(1);
  SaapAttention fixed(shape(), a, {0.05, 3, 10, 60});
  fixed.place(kv, 0, kLen, s.k_pre.data());
  for (int64_t pos : {30, 59, 77, 180, 299}) {
    SaapAttention frac(shape(), a, {60.0 / double(pos + 1), 3, 10});
    frac.place(kv, 0, kLen, s.k_pre.data());
    const QueryView q = s.query(pos);
    Selection got, want;
    fixed.select(kv, q, got);
    frac.select(kv, q, want);
    for (int h = 0; h < kHeads; ++h) {
      EXPECT_EQ(std::set<int32_t>(got.positions[size_t(h)].begin(), got.positions[size_t(h)].end()),
                std::set<int32_t>(want.positions[size_t(h)].begin(), want.positions[size_t(h)].end()))
          << "pos " << pos << " head " << h;
      EXPECT_LE(int64_t(got.positions[size_t(h)].size()), std::max<int64_t>(60, 13)) << "pos " << pos;
      if (pos < 60) {
        EXPECT_EQ(int64_t(got.positions[size_t(h)].size()), pos + 1) << "a short prefix is read whole";
      }
    }
  }
}

TEST(SaapSelect, RefusesUnplacedQueriesAndMissingVectors) {
  auto a = std::make_shared<const PartitionArtifact>(random_artifact(true, true, 13));
  Sequence s(14);
  SaapAttention m(shape(), a, {0.1, 4, 16});
  const LayerKV kv = s.cache.layer(1);
  Selection sel;
  EXPECT_THROW(m.select(kv, s.query(3), sel), Error);
  EXPECT_THROW(m.place(kv, 0, 10, nullptr), Error);  // pre-RoPE artifact needs k_pre
  m.place(kv, 0, 10, s.k_pre.data());
  QueryView q = s.query(5);
  q.q_pre = nullptr;
  EXPECT_THROW(m.select(kv, q, sel), Error);
  EXPECT_THROW(m.select(kv, s.query(10), sel), Error);
}

void expect_error(const std::function<void()>& f, ErrorKind kind, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(int(e.kind()), int(kind)) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(SaapArtifact, RoundTripsAndFactoriesCheckTheBudgetAndTheFile) {
  const std::string path = temp_path("saap.safetensors");
  const PartitionArtifact a = random_artifact(true, false, 15);
  a.save(path);
  ArtifactIdentity want = model_id();
  want.method = "saap";
  const PartitionArtifact b = PartitionArtifact::load(path, want);
  EXPECT_EQ(b.partitions, kC);
  EXPECT_FALSE(b.pre_rope);
  EXPECT_EQ(b.layers.at(1).centroids, a.layers.at(1).centroids);
  EXPECT_EQ(b.layers.at(1).classifiers[3].w2, a.layers.at(1).classifiers[3].w2);

  MethodSpec spec;
  spec.name = "saap";
  spec.artifact = path;
  spec.window = 8;  // 5% of the 300-token test context must leave room beside sinks and window
  auto factory = saap_factory(spec, model_id());
  EXPECT_EQ(factory(shape())->name(), "saap");
  expect_error([&] { factory({0, kHeads, kKV, kDim, kLen}); }, ErrorKind::InvalidArgument, "layer = 0");
  expect_error([&] { factory({1, kHeads, kKV, 8, kLen}); }, ErrorKind::InvalidArgument, "head_dim");
  // The baseline may use a Saap artifact's partition.
  spec.name = "kmeans";
  EXPECT_EQ(kmeans_factory(spec, model_id())(shape())->name(), "kmeans");
  for (double lookup : {0.0, -0.1, 1.5}) {
    spec.lookup = lookup;
    expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::InvalidArgument, "lookup");
    expect_error([&] { kmeans_factory(spec, model_id()); }, ErrorKind::InvalidArgument, "lookup");
  }
  // A budget the cache cannot meet: at full context the sinks and window already fill it.
  spec.lookup = 0.01;
  spec.sinks = 4;
  spec.window = 64;
  expect_error([&] { saap_factory(spec, model_id())(shape()); }, ErrorKind::InvalidArgument, "no partition could ever be read");
  expect_error([&] { kmeans_factory(spec, model_id())(shape()); }, ErrorKind::InvalidArgument, "sinks 4 + window 64");
  // The full budget reads everything, whatever sinks and window ask for: never refused.
  spec.lookup = 1.0;
  spec.sinks = 200;
  spec.window = 200;
  EXPECT_EQ(saap_factory(spec, model_id())(shape())->name(), "saap");
  EXPECT_EQ(kmeans_factory(spec, model_id())(shape())->name(), "kmeans");
  spec.lookup = 0.05;
  spec.window = 8;
  spec.sinks = -1;
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::InvalidArgument, "sinks");
  spec.sinks = 4;
  spec.artifact = "";
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::InvalidArgument, "artifact");
  std::remove(path.c_str());
}

TEST(SaapArtifact, BadFilesAreRefusedNamingTheField) {
  const std::string path = temp_path("bad.safetensors");
  MethodSpec spec;
  spec.artifact = path;
  spec.window = 8;
  ArtifactIdentity other = model_id();
  other.model_identity = "another-model";

  // A kmeans artifact cannot serve Saap (no routers).
  PartitionArtifact km = random_artifact(false, true, 17);
  km.save(path);
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::BadFile, "method");
  EXPECT_EQ(kmeans_factory(spec, model_id())(shape())->name(), "kmeans");
  expect_error([&] { kmeans_factory(spec, other); }, ErrorKind::BadFile, "model_identity");

  // Non-finite weights.
  PartitionArtifact nan = random_artifact(true, true, 19);
  nan.layers.at(1).classifiers[2].b2[1] = NAN;
  nan.save(path);
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::BadFile, "b2.1");

  // Header fields: wrong value, wrong type, missing; a tensor of the wrong shape.
  const PartitionArtifact good = random_artifact(true, true, 21);
  auto write_with = [&](const std::function<void(nlohmann::json&)>& edit, bool bad_shape) {
    SafetensorsWriter w;
    const auto& L = good.layers.at(1);
    std::vector<float> w1, b1, w2, b2;
    for (const auto& c : L.classifiers) {
      w1.insert(w1.end(), c.w1.begin(), c.w1.end());
      b1.insert(b1.end(), c.b1.begin(), c.b1.end());
      w2.insert(w2.end(), c.w2.begin(), c.w2.end());
      b2.insert(b2.end(), c.b2.begin(), c.b2.end());
    }
    w.add_f32("centroids.1", L.centroids.data(), {kKV, kC, kDim});
    w.add_f32("w1.1", w1.data(), {kHeads, kHidden, kDim});
    w.add_f32("b1.1", b1.data(), {kHeads, kHidden});
    if (bad_shape)
      w.add_f32("w2.1", w2.data(), {kHeads, kHidden, kC});
    else
      w.add_f32("w2.1", w2.data(), {kHeads, kC, kHidden});
    w.add_f32("b2.1", b2.data(), {kHeads, kC});
    ArtifactIdentity id = model_id();
    id.method = "saap";
    nlohmann::json h = to_json(id);
    h["partitions"] = kC;
    h["hidden"] = kHidden;
    h["rope"] = "pre";
    h["spherical"] = true;
    h["router"] = kRouterOutput;
    h["layers"] = {1};
    edit(h);
    w.write(path, h);
  };
  write_with([](nlohmann::json&) {}, false);
  EXPECT_EQ(saap_factory(spec, model_id())(shape())->name(), "saap");
  write_with([](nlohmann::json&) {}, true);
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::BadFile, "w2.1");
  write_with([](nlohmann::json& h) { h["router"] = "log_mass"; }, false);  // routers of another meaning
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::BadFile, "router");
  write_with([](nlohmann::json& h) { h.erase("router"); }, false);
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::BadFile, "router");
  write_with([](nlohmann::json& h) { h["rope"] = "sideways"; }, false);
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::BadFile, "rope");
  write_with([](nlohmann::json& h) { h["partitions"] = "many"; }, false);
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::BadFile, "partitions");
  write_with([](nlohmann::json& h) { h["partitions"] = kC + 1; }, false);
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::BadFile, "centroids.1");
  write_with([](nlohmann::json& h) { h.erase("hidden"); }, false);
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::BadFile, "hidden");
  write_with([](nlohmann::json& h) { h["layers"] = {5}; }, false);
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::BadFile, "layers");
  write_with([](nlohmann::json& h) { h["layers"] = {0}; }, false);
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::BadFile, "centroids.0");

  FILE* f = std::fopen(path.c_str(), "wb");
  std::fputs("not a safetensors file", f);
  std::fclose(f);
  EXPECT_THROW(saap_factory(spec, model_id()), Error);
  std::remove(path.c_str());
  expect_error([&] { saap_factory(spec, model_id()); }, ErrorKind::NotFound, "");
}

}  // namespace
}  // namespace saap
