// The selection rules (selection_rules.h) against hand-worked cases and float64 brute force: the
// budget's rounding, the fixed reads, the ranking order, the density keys and the fill rule.
#include "saap/core/selection_rules.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace saap::rules {
namespace {

TEST(SelectionRules, LookupRangeIsHalfOpenAtZero) {
  EXPECT_FALSE(lookup_in_range(0.0));
  EXPECT_FALSE(lookup_in_range(-0.1));
  EXPECT_FALSE(lookup_in_range(1.0000001));
  EXPECT_FALSE(lookup_in_range(NAN));
  EXPECT_TRUE(lookup_in_range(1e-6));
  EXPECT_TRUE(lookup_in_range(1.0));
}

TEST(SelectionRules, TokensForFractionIsTheCeilingWithRoundingSlack) {
  EXPECT_EQ(tokens_for_fraction(0.25, 8), 2);    // whole
  EXPECT_EQ(tokens_for_fraction(0.25, 9), 3);    // 2.25 -> 3 (a floor would give 2)
  EXPECT_EQ(tokens_for_fraction(0.33, 100), 33);
  EXPECT_EQ(tokens_for_fraction(0.33, 101), 34);  // 33.33 -> 34
  EXPECT_EQ(tokens_for_fraction(0.1, 30), 3);     // 0.1 * 30 lands above 3 in binary: still 3
  EXPECT_EQ(tokens_for_fraction(0.7, 10), 7);     // 0.7 * 10 lands below 7: still 7
  EXPECT_EQ(tokens_for_fraction(1.0, 7), 7);
  EXPECT_EQ(tokens_for_fraction(0.99, 1), 1);
  EXPECT_EQ(tokens_for_fraction(0.001, 10), 1);
  EXPECT_EQ(tokens_for_fraction(0.0, 100), 0);
  EXPECT_EQ(tokens_for_fraction(0.5, 0), 0);
  // Brute force: the smallest k with k >= f * n, over many fractions f = a / 1000.
  for (int a = 1; a <= 1000; a += 7)
    for (int64_t n : {1, 2, 3, 17, 100, 1023, 4096, 524288}) {
      int64_t want = (int64_t(a) * n + 999) / 1000;  // exact integer ceiling of a * n / 1000
      want = std::min(want, n);
      EXPECT_EQ(tokens_for_fraction(a / 1000.0, n), want) << a << "/1000 of " << n;
    }
}

TEST(SelectionRules, TopKAndLokiTakeAtLeastOneKeyAndLokiRankIsTheCeiling) {
  EXPECT_EQ(topk_keys(0.001, 10), 1);
  EXPECT_EQ(topk_keys(0.25, 9), 3);
  EXPECT_EQ(topk_keys(1.0, 5), 5);
  EXPECT_EQ(topk_keys(0.5, 0), 0);
  EXPECT_EQ(loki_keys(0.33, 101), 34);
  EXPECT_EQ(loki_rank(0.25, 64), 16);
  EXPECT_EQ(loki_rank(0.3, 64), 20);   // 19.2 -> 20: a fractional rank rounds up
  EXPECT_EQ(loki_rank(0.01, 64), 1);
  EXPECT_EQ(loki_rank(1.0, 64), 64);
  EXPECT_EQ(loki_rank(0.2, 10), 2);    // 0.2 * 10 lands above 2 in binary: still 2
}

TEST(SelectionRules, FixedReadsNeverOverlapAndSelectableBudgetPaysThemFirst) {
  FixedReads f = fixed_reads(100, 4, 16);
  EXPECT_EQ(f.sink_end, 4);
  EXPECT_EQ(f.window_begin, 84);
  EXPECT_EQ(f.count(), 20);
  EXPECT_EQ(f.middle(), 80);
  f = fixed_reads(10, 4, 16);  // the window would reach into the sinks
  EXPECT_EQ(f.sink_end, 4);
  EXPECT_EQ(f.window_begin, 4);
  EXPECT_EQ(f.count(), 10);
  EXPECT_EQ(f.middle(), 0);
  f = fixed_reads(3, 4, 0);
  EXPECT_EQ(f.sink_end, 3);
  EXPECT_EQ(f.count(), 3);

  EXPECT_EQ(selectable_budget(0.33, 101, 3, 10), 34 - 13);
  EXPECT_EQ(selectable_budget(0.1, 100, 4, 16), 0);  // sinks and window fill it
  EXPECT_EQ(selectable_budget(1.0, 50, 40, 40), 50);  // the full budget reads everything
  EXPECT_TRUE(budget_reaches_index(0.05, 2048, 4, 64));   // 103 > 68
  EXPECT_FALSE(budget_reaches_index(0.01, 300, 4, 64));   // 3 <= 68
  EXPECT_FALSE(budget_reaches_index(0.2, 340, 4, 64));    // 68 == 68: nothing is left
  EXPECT_TRUE(budget_reaches_index(1.0, 10, 40, 40));
}

TEST(SelectionRules, BudgetTakesAFractionOrAFixedTokenCount) {
  // The lookup form is selectable_budget and topk_keys, checked above, worked by hand here too.
  const Budget frac{0.25, 0};
  EXPECT_FALSE(frac.fixed());
  EXPECT_EQ(frac.total(1000), 250);
  EXPECT_EQ(frac.selectable(1000, 4, 64), 250 - 68);
  EXPECT_EQ(frac.topk(9), 3);
  // A fixed budget: 512 K/V tokens per query whatever the prefix, sinks and window paid first; a
  // prefix of at most 512 tokens is read whole.
  const Budget fixed{0.25, 512};
  EXPECT_TRUE(fixed.fixed());
  EXPECT_EQ(fixed.total(32768), 512);
  EXPECT_EQ(fixed.total(300), 300);
  EXPECT_EQ(fixed.selectable(32768, 4, 64), 512 - 68);
  EXPECT_EQ(fixed.selectable(2048, 4, 64), 512 - 68);  // the lookup 0.25 (512 of 2048) plays no part
  EXPECT_EQ(fixed.selectable(4096, 4, 64), 512 - 68);
  EXPECT_EQ(fixed.selectable(400, 4, 64), 400);
  EXPECT_EQ(fixed.topk(32768), 512);
  EXPECT_EQ(fixed.topk(100), 100);
  EXPECT_EQ((Budget{0.05, 1}.topk(100)), 1);
  EXPECT_TRUE(reaches_index(fixed, 32768, 4, 64));
  EXPECT_FALSE(reaches_index(Budget{0.05, 68}, 32768, 4, 64));  // sinks and window fill 68 tokens
  EXPECT_TRUE(reaches_index(Budget{0.05, 68}, 60, 4, 64));      // a context it covers whole
  EXPECT_FALSE(reaches_index(Budget{0.01, 0}, 300, 4, 64));
}

TEST(SelectionRules, RanksBeforeIsHigherKeyThenLowerId) {
  EXPECT_TRUE(ranks_before(2.0f, 7, 1.0f, 0));
  EXPECT_FALSE(ranks_before(1.0f, 0, 2.0f, 7));
  EXPECT_TRUE(ranks_before(1.0f, 3, 1.0f, 5));
  EXPECT_FALSE(ranks_before(1.0f, 5, 1.0f, 3));
  EXPECT_FALSE(ranks_before(1.0f, 3, 1.0f, 3));
  EXPECT_TRUE(ranks_before(-1.0f, 9, -INFINITY, 0));
}

// log sum_g density_g(c) in float64 from its definition: density_g(c) = exp(s_gc) / Z_g with
// Z_g = sum over c' with keys of n_c' exp(s_gc').
std::vector<double> reference_group_keys(const std::vector<std::vector<float>>& s, const std::vector<int>& counts) {
  const size_t C = counts.size();
  std::vector<double> sum(C, 0.0);
  for (const auto& head : s) {
    double z = 0;
    for (size_t c = 0; c < C; ++c) z += counts[c] * std::exp(double(head[c]));
    for (size_t c = 0; c < C; ++c) sum[c] += std::exp(double(head[c])) / z;
  }
  for (auto& x : sum) x = std::log(x);
  return sum;
}

TEST(SelectionRules, GroupLogDensityIsTheLogOfTheSummedNormalisedDensity) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.5f);  // softmaxes far from one-hot: every term matters
  std::uniform_int_distribution<int> sizes(1, 40);  // uneven partitions: the count term matters
  const int C = 24, G = 3;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<std::vector<float>> s(G, std::vector<float>(C));
    std::vector<int> counts(C);
    for (auto& c : counts) c = sizes(rng);
    counts[5] = 0;  // a partition with no candidate key is left out of every normaliser
    for (auto& head : s)
      for (auto& x : head) x = nd(rng);
    std::vector<double> want_counts(counts.begin(), counts.end());
    std::vector<float> flat(size_t(G) * C), lse(G);
    for (int g = 0; g < G; ++g) {
      std::copy(s[g].begin(), s[g].end(), flat.begin() + g * C);
      lse[g] = head_log_normaliser(s[g].data(), counts.data(), C);
      double z = 0;
      for (int c = 0; c < C; ++c) z += counts[c] * std::exp(double(s[g][c]));
      // float32 log-sum-exp of ~24 terms: a few ulps of a value of order 5.
      EXPECT_NEAR(lse[g], std::log(z), 1e-5) << "head " << g;
    }
    const auto want = reference_group_keys(s, counts);
    for (int c = 0; c < C; ++c) {
      if (counts[c] == 0) continue;
      const float got = group_log_density(flat.data() + c, C, lse.data(), G);
      EXPECT_NEAR(got, want[c], 1e-5) << "partition " << c;  // float32 exp/log of order-5 values
    }
  }
  // Tiny densities (huge normalisers) must not underflow to -inf: summed relative to the largest.
  std::vector<float> big = {-200.0f, -210.0f}, lse2 = {0.0f, 0.0f};
  EXPECT_NEAR(group_log_density(big.data(), 1, lse2.data(), 2), -200.0 + std::log1p(std::exp(-10.0)), 1e-4);
  std::vector<int> none = {0, 0};
  EXPECT_EQ(head_log_normaliser(big.data(), none.data(), 2), -INFINITY);
}

// The fill rule by brute force: walk the order, take what fits, skip what does not.
std::vector<int> reference_fill(const std::vector<int>& order, const std::vector<int64_t>& size, int64_t budget) {
  std::vector<int> taken;
  int64_t used = 0;
  for (int id : order)
    if (size[id] > 0 && used + size[id] <= budget) taken.push_back(id), used += size[id];
  std::sort(taken.begin(), taken.end());
  return taken;
}

TEST(SelectionRules, FillSkipsWhatDoesNotFitAndGoesOn) {
  // Ranked 0, 1, 2, 3: 1 does not fit beside 0, 2 and 3 do. A stop at the first misfit reads 5.
  const std::vector<int32_t> order = {0, 1, 2, 3};
  const std::vector<int64_t> size = {5, 9, 3, 2};
  std::vector<uint8_t> taken(4, 0);
  const auto sz = [&](int32_t id) { return size[size_t(id)]; };
  EXPECT_EQ(fill_in_order(order.data(), 4, sz, 10, taken.data()), 10);
  EXPECT_EQ(taken, (std::vector<uint8_t>{1, 0, 1, 1}));
  // Empty ids are never taken, and the read never exceeds the budget.
  const std::vector<int64_t> with_empty = {0, 4, 4, 4};
  std::fill(taken.begin(), taken.end(), 0);
  EXPECT_EQ(fill_in_order(order.data(), 4, [&](int32_t id) { return with_empty[size_t(id)]; }, 9, taken.data()), 8);
  EXPECT_EQ(taken, (std::vector<uint8_t>{0, 1, 1, 0}));

  // Random orders and sizes; `smallest` (a true lower bound on the sizes) never changes the result.
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    const int C = 1 + int(rng() % 40);
    std::vector<int> ord(C);
    std::iota(ord.begin(), ord.end(), 0);
    std::shuffle(ord.begin(), ord.end(), rng);
    std::vector<int64_t> sizes(C);
    int64_t smallest = INT64_MAX;
    for (auto& s : sizes) {
      s = int64_t(rng() % 30);
      if (s > 0) smallest = std::min(smallest, s);
    }
    const int64_t budget = int64_t(rng() % 200);
    const auto want = reference_fill(ord, sizes, budget);
    for (int64_t hint : {int64_t(1), smallest == INT64_MAX ? int64_t(1) : smallest}) {
      std::vector<uint8_t> t(C, 0);
      const int64_t used =
          fill_in_order(ord.data(), C, [&](int id) { return sizes[size_t(id)]; }, budget, t.data(), hint);
      std::vector<int> got;
      int64_t sum = 0;
      for (int c = 0; c < C; ++c)
        if (t[c]) got.push_back(c), sum += sizes[size_t(c)];
      EXPECT_EQ(got, want) << "trial " << trial;
      EXPECT_EQ(used, sum);
      EXPECT_LE(used, budget);
    }
  }
}

}  // namespace
}  // namespace saap::rules
