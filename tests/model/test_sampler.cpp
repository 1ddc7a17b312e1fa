// Sampling against a float64 reference of softmax / top-k / top-p written out here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>

#include "saap/core/error.h"
#include "saap/model/sampler.h"

namespace saap {
namespace {

std::vector<float> random_logits(int n, unsigned seed, float spread = 3.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, spread);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = g(rng);
  return v;
}

// The distribution sampling should follow: softmax(logits / T) over the top-k, then the shortest
// most-likely prefix reaching top_p, renormalized.
std::map<int32_t, double> reference(const std::vector<float>& logits, double T, int top_k, double top_p) {
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  if (top_k > 0 && size_t(top_k) < ids.size()) ids.resize(size_t(top_k));
  std::vector<double> p;
  double z = 0;
  for (int32_t id : ids) z += std::exp(logits[id] / T);
  for (int32_t id : ids) p.push_back(std::exp(logits[id] / T) / z);
  double mass = 0, kept = 0;
  std::map<int32_t, double> out;
  for (size_t i = 0; i < ids.size() && mass < top_p; ++i) {
    mass += p[i];
    out[ids[i]] = p[i];
    kept += p[i];
  }
  for (auto& [id, q] : out) q /= kept;
  return out;
}

TEST(Sampler, GreedyIsArgmax) {
  for (unsigned seed = 0; seed < 20; ++seed) {
    const auto logits = random_logits(1000, std::random_device{}());
    Sampler s(SamplerConfig{});
    EXPECT_EQ(s.sample(logits.data(), 1000), std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
}

TEST(Sampler, CandidatesMatchTheReferenceDistribution) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const auto logits = random_logits(500, seed);
  struct Case { float T; int k; float p; };
  for (const Case c : {Case{1.0f, 0, 1.0f}, Case{0.7f, 0, 1.0f}, Case{1.3f, 40, 1.0f}, Case{0.8f, 0, 0.9f},
                       Case{1.0f, 50, 0.5f}, Case{2.0f, 3, 1.0f}}) {
    Sampler s(SamplerConfig{c.T, c.k, c.p, 1});
    const auto got = s.candidates(logits.data(), 500);
    const auto want = reference(logits, c.T, c.k, c.p);
    ASSERT_EQ(got.size(), want.size()) << "T " << c.T << " k " << c.k << " p " << c.p;
    for (const auto& [id, q] : got) {
      ASSERT_TRUE(want.count(id)) << "token " << id << " should not be a candidate";
      EXPECT_NEAR(q, want.at(id), 1e-6 * std::max(1.0, want.at(id)));
    }
  }
}

TEST(Sampler, SampleFrequenciesFollowTheDistribution) {
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f};
  Sampler s(SamplerConfig{1.0f, 0, 0.95f, uint64_t(std::random_device{}())});
  const auto want = reference(logits, 1.0, 0, 0.95);
  const int draws = 40000;
  std::map<int32_t, int> counts;
  for (int i = 0; i < draws; ++i) ++counts[s.sample(logits.data(), 6)];
  for (const auto& [id, n] : counts) ASSERT_TRUE(want.count(id)) << "token " << id << " is outside the nucleus";
  for (const auto& [id, p] : want) {
    const double sigma = std::sqrt(p * (1 - p) / draws);
    EXPECT_NEAR(double(counts[id]) / draws, p, 5 * sigma) << "token " << id;
  }
}

TEST(Sampler, SeedMakesRunsReproducible) {
  const auto logits = random_logits(300, 7, 1.0f);
  auto run = [&](uint64_t seed) {
    Sampler s(SamplerConfig{1.0f, 0, 1.0f, seed});
    std::vector<int32_t> ids;
    for (int i = 0; i < 50; ++i) ids.push_back(s.sample(logits.data(), 300));
    return ids;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(Sampler, BadConfigAndLogitsAreClearErrors) {
  EXPECT_THROW(Sampler(SamplerConfig{-1.0f, 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler(SamplerConfig{1.0f, -2, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler(SamplerConfig{1.0f, 0, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler(SamplerConfig{1.0f, 0, 1.5f, 0}), Error);
  std::vector<float> logits = {0.0f, NAN, 1.0f};
  Sampler s(SamplerConfig{});
  try {
    s.sample(logits.data(), 3);
    ADD_FAILURE() << "NaN logit accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::NonFinite);
    EXPECT_NE(std::string(e.what()).find("token 1"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace saap
