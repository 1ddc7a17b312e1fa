// The replay of recorded activations at the sampled queries only (ReplayQueries::sampled_positions)
// must measure exactly what the replay of every position measures there: a method that depends on
// the keys alone selects the same at a query whether the earlier queries ran or not, and H2O (whose
// heavy hitters accumulate over queries) must still run them all. Its lookup counts the sampled
// queries only, checked against the dense byte count written out here.
#include <gtest/gtest.h>

#include <random>

#include "saap/core/error.h"

#include "saap/eval/attention_eval.h"
#include "saap/eval/decode_replay.h"
#include "saap/methods/registry.h"
#include "saap/train/capture.h"

namespace saap {
namespace {

constexpr int kHeads = 4, kKvHeads = 1, kDim = 16;  // one GQA group of 4, as Gemma-3's
constexpr int64_t kLen = 320;

struct Activations {
  std::vector<float> q, q_pre, k, k_pre, v;
};

// Random activations; keys get a per-position offset along a few directions so that attention is
// peaked (some keys matter far more than others) and selections differ between methods.
Activations random_activations(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto fill = [&](std::vector<float>& x, int heads, float scale) {
    x.resize(size_t(kLen) * heads * kDim);
    for (float& e : x) e = scale * normal(rng);
  };
  Activations a;
  fill(a.q, kHeads, 1.5f);
  fill(a.q_pre, kHeads, 1.5f);
  fill(a.k, kKvHeads, 1.5f);
  fill(a.k_pre, kKvHeads, 1.0f);
  fill(a.v, kKvHeads, 1.0f);
  return a;
}

MethodSpec spec(const std::string& name) {
  MethodSpec s;
  s.name = name;
  s.lookup = 0.1;
  s.sinks = 2;
  s.window = 8;
  s.page_size = 8;
  return s;
}

struct Replayed {
  std::vector<AttentionMetrics> heads;
  LookupStats lookup;
};

Replayed replay(const MethodSpec& s, const Activations& a, const std::vector<int32_t>& sample, ReplayQueries mode) {
  Replayed r;
  r.heads.assign(kHeads, AttentionMetrics{});
  const LayerShape shape{0, kHeads, kKvHeads, kDim, kLen};
  replay_layer(make_method_factory(s, ArtifactIdentity{}), shape, kLen, a.q.data(), a.q_pre.data(), a.k.data(),
               a.k_pre.data(), a.v.data(), sample, 8, r.heads, r.lookup, mode);
  return r;
}

TEST(DecodeReplay, SampledQueriesMeasureWhatEveryPositionMeasures) {
  const Activations a = random_activations(7);
  const std::vector<int32_t> sample = sample_query_positions(int(kLen), 24, 3);
  for (const std::string name : {"dense", "oracle", "streaming", "quest", "h2o"}) {
    SCOPED_TRACE(name);
    const Replayed every = replay(spec(name), a, sample, ReplayQueries::every_position);
    const Replayed sampled = replay(spec(name), a, sample, ReplayQueries::sampled_positions);
    for (int h = 0; h < kHeads; ++h) {
      EXPECT_EQ(sampled.heads[h].samples, int64_t(sample.size()));
      // The same selections over the same keys: the same arithmetic, bit for bit.
      EXPECT_EQ(sampled.heads[h].samples, every.heads[h].samples);
      EXPECT_DOUBLE_EQ(sampled.heads[h].mass, every.heads[h].mass);
      EXPECT_DOUBLE_EQ(sampled.heads[h].recall, every.heads[h].recall);
      EXPECT_DOUBLE_EQ(sampled.heads[h].jaccard, every.heads[h].jaccard);
      EXPECT_DOUBLE_EQ(sampled.heads[h].rel_error, every.heads[h].rel_error);
    }
    // The lookup: every position in one mode, the sampled queries only in the other.
    EXPECT_EQ(every.lookup.queries, kLen);
    EXPECT_EQ(sampled.lookup.queries, int64_t(sample.size()));
    int64_t dense = 0;  // a dense read of the prefix [0, t]: keys and values, fp32, per KV head
    for (int32_t t : sample) dense += int64_t(t + 1) * kKvHeads * kDim * 2 * int64_t(sizeof(float));
    EXPECT_EQ(sampled.lookup.dense_bytes, dense);
    if (name == "dense") {
      EXPECT_EQ(sampled.lookup.kv_bytes, dense);
    } else {
      EXPECT_LT(sampled.lookup.kv_bytes, dense);  // the case is not trivial
    }
  }
}

TEST(DecodeReplay, OnlyH2ONeedsEveryQuery) {
  const LayerShape shape{0, kHeads, kKvHeads, kDim, kLen};
  for (const std::string name : {"dense", "oracle", "streaming", "quest", "h2o"})
    EXPECT_EQ(make_method_factory(spec(name), ArtifactIdentity{})(shape)->needs_every_query(), name == "h2o") << name;
}

TEST(AttentionQuerySample, FirstQueryKeepsTheSampleInTheLastPart) {
  AttentionEvalOptions o;
  o.queries_per_window = 40;
  o.seed = 5;
  // first_query 0 is the harness's sample as it was: sample_query_positions with the window's seed.
  EXPECT_EQ(attention_query_sample(1000, o, 2), sample_query_positions(1000, 40, 5 * 1000003u + 2));
  o.first_query = 750;
  const std::vector<int32_t> s = attention_query_sample(1000, o, 2);
  ASSERT_EQ(s.size(), 40u);
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_GE(s[i], 750);
    EXPECT_LT(s[i], 1000);
    if (i > 0) {
      EXPECT_LT(s[i - 1], s[i]);
    }
  }
  // A range shorter than the count gives every position of it.
  o.first_query = 990;
  const std::vector<int32_t> all = attention_query_sample(1000, o, 0);
  EXPECT_EQ(all.size(), 10u);
  EXPECT_EQ(all.front(), 990);
  EXPECT_EQ(all.back(), 999);
  o.first_query = 999;  // the last position alone
  EXPECT_EQ(attention_query_sample(1000, o, 0), std::vector<int32_t>{999});
  o.first_query = 1000;  // past the window
  EXPECT_THROW(attention_query_sample(1000, o, 0), Error);
}

}  // namespace
}  // namespace saap
