// Oracle top-k against long-double exact scores: the selection is the true top-k, the output is
// exact attention over it, the bytes are counted as defined, and a budget covering the prefix
// reproduces dense attention.
#include "saap/methods/oracle_topk.h"

#include <gtest/gtest.h>

#include "methods/reference.h"
#include "saap/core/error.h"
#include "saap/kernels/cpu/attention.h"

namespace saap {
namespace {

using namespace testref;

MethodSpec oracle_spec(double lookup) {
  MethodSpec spec;
  spec.name = "oracle";
  spec.lookup = lookup;
  return spec;
}

TEST(TopK, PicksLargestWithTiesToLowerPosition) {
  const float s[] = {1, 5, 3, 5, 0, 5};
  std::vector<int32_t> out, order;
  top_k_positions(s, 6, 2, out, order);
  EXPECT_EQ(out, (std::vector<int32_t>{1, 3}));
  top_k_positions(s, 6, 0, out, order);
  EXPECT_TRUE(out.empty());
  top_k_positions(s, 6, 6, out, order);
  EXPECT_EQ(out.size(), 6u);
  EXPECT_THROW(top_k_positions(s, 6, 7, out, order), Error);
}

void check_oracle(DType dtype) {
  SCOPED_TRACE(dtype_name(dtype));
  std::mt19937 rng(21);
  const int n_q = 8, n_kv = 2, d = 64;
  const int64_t n_cache = 300;
  KVCache cache = random_cache(n_kv, d, n_cache, dtype, rng);
  const LayerKV kv = cache.layer(0);
  OracleTopK oracle(LayerShape{0, n_q, n_kv, d, n_cache}, 0.1);
  for (int64_t pos : {0, 9, 57, 299}) {
    const std::vector<float> q = normal_vector(size_t(n_q * d), rng);
    QueryView qv{q.data(), q.data(), n_q, pos};
    const int64_t n = pos + 1, k = ceil_tokens(0.1, n);
    Selection sel;
    sel.clear(n_q);
    oracle.select(kv, qv, sel);
    std::vector<float> out(size_t(n_q * d));
    LookupStats stats;
    oracle.attend(kv, qv, sel, out.data(), stats);
    const int64_t tb = 2 * d * int64_t(dtype_size(dtype));
    EXPECT_EQ(stats.dense_bytes, n * n_kv * tb);
    if (k >= n) {
      EXPECT_TRUE(sel.all);
      std::vector<float> dense(out.size());
      attention_decode(kv, q.data(), n_q, n, 1.0f / 8.0f, dense.data());
      EXPECT_EQ(out, dense);
      EXPECT_EQ(stats.index_bytes, 0);
      continue;
    }
    ASSERT_FALSE(sel.all);
    EXPECT_EQ(sel.index_bytes, n * n_kv * d * int64_t(dtype_size(dtype)));
    EXPECT_EQ(stats.kv_bytes, union_bytes(kv, sel, n_q));
    EXPECT_DOUBLE_EQ(stats.fraction(), double(stats.kv_bytes + stats.index_bytes) / double(stats.dense_bytes));
    EXPECT_GT(stats.fraction(), 0.5) << "the oracle reads all of K (half the dense bytes) to decide";
    for (int h = 0; h < n_q; ++h) {
      const auto& list = sel.positions[size_t(h)];
      ASSERT_EQ(int64_t(list.size()), k);
      const auto exact = exact_scores(kv, q.data() + h * d, h / (n_q / n_kv), n);
      std::vector<char> chosen(size_t(n), 0);
      long double worst_in = INFINITY, best_out = -INFINITY;
      for (int32_t p : list) chosen[size_t(p)] = 1, worst_in = std::min(worst_in, exact[size_t(p)]);
      for (int64_t p = 0; p < n; ++p)
        if (!chosen[size_t(p)]) best_out = std::max(best_out, exact[size_t(p)]);
      // fp32 dot products of 64 terms of order 1 are within ~1e-5 of long double: only a near-tie
      // at the cut may go either way.
      EXPECT_GE(double(worst_in), double(best_out) - 1e-4) << "head " << h;
      const auto want = attention(kv, q.data() + h * d, h / (n_q / n_kv), list);
      // fp32 softmax and weighted sum over <= 300 keys: a few 1e-7 ulps accumulated, well under 1e-5.
      EXPECT_LT(max_rel_error(want, out.data() + h * d), 1e-5) << "head " << h;
    }
  }
}

TEST(Oracle, SelectsTrueTopKAndAttendsExactlyF32) { check_oracle(DType::F32); }
TEST(Oracle, SelectsTrueTopKAndAttendsExactlyBF16) { check_oracle(DType::BF16); }

TEST(Oracle, FullBudgetReproducesDense) {
  std::mt19937 rng(3);
  KVCache cache = random_cache(3, 32, 120, DType::F32, rng);
  auto make = oracle_factory(oracle_spec(1.0), ArtifactIdentity{});
  auto method = make(LayerShape{0, 9, 3, 32, 120});
  const std::vector<float> q = normal_vector(9 * 32, rng);
  std::vector<float> out(9 * 32), dense(9 * 32);
  LookupStats stats;
  method->forward(cache.layer(0), QueryView{q.data(), q.data(), 9, 119}, out.data(), stats);
  attention_decode(cache.layer(0), q.data(), 9, 120, 1.0f / std::sqrt(32.0f), dense.data());
  EXPECT_EQ(out, dense);
  EXPECT_DOUBLE_EQ(stats.fraction(), 1.0);
}

TEST(Oracle, TinyBudgetStillReadsOneToken) {
  std::mt19937 rng(4);
  KVCache cache = random_cache(1, 16, 50, DType::F32, rng);
  OracleTopK oracle(LayerShape{0, 2, 1, 16, 50}, 1e-6);
  const std::vector<float> q = normal_vector(2 * 16, rng);
  Selection sel;
  sel.clear(2);
  oracle.select(cache.layer(0), QueryView{q.data(), q.data(), 2, 49}, sel);
  for (const auto& l : sel.positions) EXPECT_EQ(l.size(), 1u);
}

TEST(Oracle, FixedTokenBudgetTakesThatManyKeysWhateverThePrefix) {
  // budget_tokens = 40: 40 keys of every prefix longer than 40 (the same keys the fraction that buys
  // 40 tokens selects), the whole prefix otherwise; the fraction given beside it plays no part.
  std::mt19937 rng(5);
  KVCache cache = random_cache(2, 32, 200, DType::F32, rng);
  MethodSpec spec = oracle_spec(0.9);
  spec.budget_tokens = 40;
  auto fixed = oracle_factory(spec, ArtifactIdentity{})(LayerShape{0, 4, 2, 32, 200});
  for (int64_t pos : {20, 39, 40, 99, 199}) {
    const int64_t n = pos + 1;
    const std::vector<float> q = normal_vector(4 * 32, rng);
    const QueryView qv{q.data(), q.data(), 4, pos};
    Selection got, want;
    fixed->select(cache.layer(0), qv, got);
    if (n <= 40) {
      EXPECT_TRUE(got.all) << "n = " << n;
      continue;
    }
    OracleTopK by_fraction(LayerShape{0, 4, 2, 32, 200}, 40.0 / double(n));
    by_fraction.select(cache.layer(0), qv, want);
    ASSERT_FALSE(got.all);
    for (int h = 0; h < 4; ++h) {
      EXPECT_EQ(got.positions[size_t(h)].size(), 40u) << "n = " << n;
      EXPECT_EQ(got.positions[size_t(h)], want.positions[size_t(h)]) << "n = " << n << ", head " << h;
    }
  }
  spec.budget_tokens = -1;
  EXPECT_THROW(oracle_factory(spec, ArtifactIdentity{}), Error);
}

TEST(Oracle, RefusesBadParameters) {
  EXPECT_THROW(OracleTopK(LayerShape{0, 2, 1, 16, 50}, 1.5), Error);
  EXPECT_THROW(OracleTopK(LayerShape{0, 2, 1, 16, 50}, 0.0), Error);  // 0 reads nothing: refused, not garbage
  EXPECT_THROW(oracle_factory(oracle_spec(0.0), ArtifactIdentity{}), Error);
  EXPECT_THROW(oracle_factory(oracle_spec(-0.1), ArtifactIdentity{}), Error);
}

}  // namespace
}  // namespace saap
