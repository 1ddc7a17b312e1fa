// Loki's trainer on an in-memory calibration set: each (layer, KV head) basis is the PCA of that
// head's keys (pre-RoPE, or post-RoPE at the key's window position), checked as eigenvectors of
// a long-double covariance computed here; the artifact loads back for the same model only.
#include "saap/train/loki_trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "saap/core/error.h"
#include "saap/core/rope.h"

namespace saap {
namespace {

using ld = long double;

CalibrationSet make_set(std::mt19937& rng) {
  CalibrationSet set;
  set.model_identity = "tiny:7";
  set.n_layers = 2;
  set.n_heads = 4;
  set.n_kv_heads = 2;
  set.head_dim = 16;
  set.windows = 3;
  set.window_len = 200;
  set.rope.head_dim = 16;
  set.rope.base = 10000.0f;
  std::normal_distribution<float> nd;
  const int64_t tokens = int64_t(set.windows) * set.window_len;
  for (int l = 0; l < set.n_layers; ++l) {
    CalibrationLayer layer;
    // Per head, a dominant direction (coordinate l * 2 + h) with variance 25, the rest 1.
    for (int64_t t = 0; t < tokens; ++t)
      for (int h = 0; h < set.n_kv_heads; ++h)
        for (int i = 0; i < set.head_dim; ++i) layer.keys_pre.push_back((i == l * 2 + h ? 5.0f : 1.0f) * nd(rng) + 0.5f);
    set.layers.push_back(std::move(layer));
  }
  return set;
}

// Covariance of one head's keys (post-RoPE when asked), in long double.
std::vector<ld> head_cov(const CalibrationSet& set, int l, int h, bool post) {
  const int d = set.head_dim;
  const Rope rope(set.rope);
  std::vector<std::vector<float>> rows;
  for (int w = 0; w < set.windows; ++w)
    for (int p = 0; p < set.window_len; ++p) {
      std::vector<float> k(set.key_pre(l, w, p, h), set.key_pre(l, w, p, h) + d);
      if (post) rope.apply(k.data(), 1, p);
      rows.push_back(k);
    }
  std::vector<ld> mean(size_t(d), 0), cov(size_t(d) * d, 0);
  for (const auto& r : rows)
    for (int i = 0; i < d; ++i) mean[size_t(i)] += r[size_t(i)];
  for (auto& m : mean) m /= rows.size();
  for (const auto& r : rows)
    for (int a = 0; a < d; ++a)
      for (int b = 0; b < d; ++b) cov[size_t(a * d + b)] += (r[size_t(a)] - mean[size_t(a)]) * (r[size_t(b)] - mean[size_t(b)]);
  for (auto& c : cov) c /= (rows.size() - 1);
  return cov;
}

void check_bases(const CalibrationSet& set, const LokiArtifact& a, bool post) {
  const int d = set.head_dim;
  for (int l = 0; l < set.n_layers; ++l)
    for (int h = 0; h < set.n_kv_heads; ++h) {
      SCOPED_TRACE("layer " + std::to_string(l) + " head " + std::to_string(h));
      const std::vector<ld> s = head_cov(set, l, h, post);
      const float* b = a.basis(l, h);
      const float* var = a.variances.data() + (l * set.n_kv_heads + h) * d;
      for (int j = 0; j < d; ++j) {
        ld resid = 0;
        for (int x = 0; x < d; ++x) {
          ld sv = 0;
          for (int y = 0; y < d; ++y) sv += s[size_t(x * d + y)] * b[j * d + y];
          resid += (sv - var[j] * b[j * d + x]) * (sv - var[j] * b[j * d + x]);
        }
        // float-stored axes against the long-double covariance: float rounding, relative to the top variance.
        EXPECT_LT(double(std::sqrt(resid) / var[0]), 1e-5) << "axis " << j;
      }
      if (!post) {
        EXPECT_GT(std::fabs(b[l * 2 + h]), 0.99f) << "the planted direction leads";
      }
    }
}

TEST(LokiTrainer, PreRopeBasesArePcaOfEachHeadsKeys) {
  std::mt19937 rng(1);
  const CalibrationSet set = make_set(rng);
  const LokiArtifact a = train_loki(set, true, false);
  EXPECT_TRUE(a.pre_rope);
  EXPECT_EQ(a.identity.method, "loki");
  EXPECT_EQ(a.identity.model_identity, "tiny:7");
  EXPECT_EQ(a.identity.n_heads, 4);
  EXPECT_EQ(a.train["keys"], 600);
  check_bases(set, a, false);
}

TEST(LokiTrainer, PostRopeBasesArePcaOfRotatedKeys) {
  std::mt19937 rng(2);
  const CalibrationSet set = make_set(rng);
  const LokiArtifact post = train_loki(set, false, false);
  EXPECT_FALSE(post.pre_rope);
  check_bases(set, post, true);
  const LokiArtifact pre = train_loki(set, true, false);
  EXPECT_NE(post.components, pre.components);
}

TEST(LokiTrainer, ArtifactLoadsForTheSameModelOnly) {
  std::mt19937 rng(3);
  const CalibrationSet set = make_set(rng);
  const std::string path = ::testing::TempDir() + "saap_loki_trainer_" + std::to_string(::getpid()) + ".safetensors";
  train_loki(set, false, false).save(path);
  const LokiArtifact back = LokiArtifact::load(path, set.identity());
  EXPECT_FALSE(back.pre_rope);
  ArtifactIdentity other = set.identity();
  other.n_heads = 9;
  EXPECT_THROW(LokiArtifact::load(path, other), Error);
  std::remove(path.c_str());
}

TEST(LokiTrainer, RefusesInconsistentSets) {
  std::mt19937 rng(4);
  CalibrationSet set = make_set(rng);
  set.layers[1].keys_pre.resize(10);
  EXPECT_THROW(train_loki(set, true, false), Error);
  CalibrationSet empty;
  EXPECT_THROW(train_loki(empty, true, false), Error);
}

}  // namespace
}  // namespace saap
