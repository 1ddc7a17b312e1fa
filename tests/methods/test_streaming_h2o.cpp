// StreamingLLM and H2O through the AttentionMethod interface: exact selections, exact attention
// over them (long-double reference), H2O's accumulated scores recomputed independently and its
// eviction rule checked step by step, and the degenerate budgets.
#include <gtest/gtest.h>

#include <map>

#include "methods/reference.h"
#include "saap/core/error.h"
#include "saap/kernels/cpu/attention.h"
#include "saap/methods/h2o.h"
#include "saap/methods/oracle_topk.h"
#include "saap/methods/registry.h"
#include "saap/methods/streaming.h"

namespace saap {
namespace {

using namespace testref;

MethodSpec spec(const char* name, double lookup, int sinks, int window) {
  MethodSpec s;
  s.name = name;
  s.lookup = lookup;
  s.sinks = sinks;
  s.window = window;
  return s;
}

TEST(Streaming, SelectsSinksAndWindowAndAttendsExactly) {
  std::mt19937 rng(1);
  const int n_q = 6, n_kv = 2, d = 32;
  KVCache cache = random_cache(n_kv, d, 200, DType::F32, rng);
  const LayerKV kv = cache.layer(0);
  auto method = streaming_factory(spec("streaming", 0, 4, 16), ArtifactIdentity{})(LayerShape{0, n_q, n_kv, d, 200});
  const std::vector<float> q = normal_vector(n_q * d, rng);
  std::vector<float> out(n_q * d);
  LookupStats stats;
  const QueryView qv{q.data(), q.data(), n_q, 150};
  Selection sel;
  sel.clear(n_q);
  method->select(kv, qv, sel);
  std::vector<int32_t> want;
  for (int p = 0; p < 4; ++p) want.push_back(p);
  for (int p = 135; p <= 150; ++p) want.push_back(p);
  for (const auto& l : sel.positions) EXPECT_EQ(l, want);
  EXPECT_EQ(sel.index_bytes, 0);
  method->attend(kv, qv, sel, out.data(), stats);
  for (int h = 0; h < n_q; ++h)  // fp32 attention over 20 keys vs long double: ~1e-7, 1e-5 is fp32's bound
    EXPECT_LT(max_rel_error(attention(kv, q.data() + h * d, h / 3, want), out.data() + h * d), 1e-5);
  EXPECT_EQ(stats.kv_bytes, 20 * n_kv * 2 * d * 4);
  EXPECT_DOUBLE_EQ(stats.fraction(), 20.0 / 151.0);
}

TEST(Streaming, CoveringBudgetIsDenseAndZeroBudgetReadsTheQueryToken) {
  std::mt19937 rng(2);
  KVCache cache = random_cache(1, 16, 40, DType::F32, rng);
  const LayerKV kv = cache.layer(0);
  const std::vector<float> q = normal_vector(2 * 16, rng);
  std::vector<float> out(32), dense(32);
  LookupStats stats;
  StreamingAttention big(LayerShape{0, 2, 1, 16, 40}, 30, 30);
  big.forward(kv, QueryView{q.data(), q.data(), 2, 39}, out.data(), stats);
  attention_decode(kv, q.data(), 2, 40, 0.25f, dense.data());
  EXPECT_EQ(out, dense);
  StreamingAttention none(LayerShape{0, 2, 1, 16, 40}, 0, 0);
  none.forward(kv, QueryView{q.data(), q.data(), 2, 20}, out.data(), stats);
  // One token attended: the output is that token's value.
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 16; ++i) EXPECT_EQ(out[h * 16 + i], kv.value<float>(0, 20)[i]);
  EXPECT_THROW(StreamingAttention(LayerShape{0, 2, 1, 16, 40}, -1, 4), Error);
}

// Runs H2O over a whole sequence and checks every step against an independent bookkeeping.
TEST(H2O, EvictsLightestForGoodAndAccumulatesExactWeights) {
  std::mt19937 rng(3);
  const int n_q = 4, n_kv = 2, d = 16, group = 2;
  const int64_t n = 160;
  KVCache cache = random_cache(n_kv, d, n, DType::F32, rng);
  const LayerKV kv = cache.layer(0);
  const double lookup = 0.2;
  auto method = h2o_factory(spec("h2o", lookup, 4, 64), ArtifactIdentity{})(LayerShape{0, n_q, n_kv, d, n});
  auto* h2o = dynamic_cast<H2OAttention*>(method.get());
  ASSERT_NE(h2o, nullptr);
  std::vector<std::vector<long double>> acc(n_q, std::vector<long double>(n, 0.0L));
  std::vector<std::vector<char>> gone(n_q, std::vector<char>(n, 0));
  std::vector<float> out(n_q * d);
  LookupStats stats;
  int evictions = 0;
  int64_t kv_bytes = 0;
  for (int64_t pos = 0; pos < n; ++pos) {
    const std::vector<float> q = normal_vector(n_q * d, rng, 2.0f);
    const QueryView qv{q.data(), q.data(), n_q, pos};
    Selection sel;
    sel.clear(n_q);
    method->select(kv, qv, sel);
    const int64_t ctx = pos + 1, k = ceil_tokens(lookup, ctx), recent = (k + 1) / 2;
    for (int h = 0; h < n_q; ++h) {
      const std::vector<int32_t> list = sel.all ? all_positions(ctx) : sel.positions[size_t(h)];
      std::vector<char> in(size_t(ctx), 0);
      for (int32_t p : list) in[size_t(p)] = 1;
      // The recent half is always read; the selection is the budget exactly once enough is old.
      for (int64_t p = std::max<int64_t>(0, ctx - recent); p < ctx; ++p) EXPECT_TRUE(in[size_t(p)]) << pos << " " << p;
      long double lightest_kept = INFINITY;
      for (int64_t p = 0; p < ctx - recent; ++p) {
        EXPECT_FALSE(gone[size_t(h)][size_t(p)] && in[size_t(p)]) << "evicted " << p << " came back at " << pos;
        if (in[size_t(p)]) lightest_kept = std::min(lightest_kept, acc[size_t(h)][size_t(p)]);
      }
      // Newly evicted positions are at most as heavy as any kept heavy hitter.
      for (int64_t p = 0; p < ctx - recent; ++p)
        if (!in[size_t(p)] && !gone[size_t(h)][size_t(p)]) {
          EXPECT_TRUE(h2o->evicted(h, p));
          // Accumulated fp32 weights (sums of <= 100 softmax terms) vs long double: ~1e-6.
          EXPECT_LE(double(acc[size_t(h)][size_t(p)]), double(lightest_kept) + 1e-5) << pos << " " << p;
          gone[size_t(h)][size_t(p)] = 1;
          ++evictions;
        }
      // Heavy hitters only ever leave as many as their half allows, so the budget is always full.
      EXPECT_EQ(int64_t(list.size()), k) << "step " << pos;
    }
    method->attend(kv, qv, sel, out.data(), stats);
    kv_bytes += sel.all ? ctx * n_kv * kv.token_bytes() : union_bytes(kv, sel, n_q);
    for (int h = 0; h < n_q; ++h) {
      const std::vector<int32_t> list = sel.all ? all_positions(ctx) : sel.positions[size_t(h)];
      std::vector<long double> w;
      const auto want = attention(kv, q.data() + h * d, h / group, list, &w);
      EXPECT_LT(max_rel_error(want, out.data() + h * d), 1e-5);  // fp32 attention, as above
      for (size_t j = 0; j < list.size(); ++j) acc[size_t(h)][size_t(list[j])] += w[j];
    }
    for (int h = 0; h < n_q; ++h)
      for (int64_t p = 0; p < ctx; ++p)
        // fp32 running sums of <= 100 weights in [0, 1] against long double.
        ASSERT_NEAR(h2o->accumulated(h, p), double(acc[size_t(h)][size_t(p)]), 1e-5) << pos << " " << p;
  }
  EXPECT_GT(evictions, n_q * 100);
  // Heads of a KV group keep different heavy hitters: the group reads their union, between the
  // budget and twice its heavy half.
  EXPECT_EQ(stats.kv_bytes, kv_bytes);
  EXPECT_GT(stats.kv_fraction(), lookup);
  EXPECT_LT(stats.kv_fraction(), 1.5 * lookup + 0.05);
  // A new sequence needs reset(); then it starts clean.
  const std::vector<float> q = normal_vector(n_q * d, rng);
  EXPECT_THROW(method->forward(kv, QueryView{q.data(), q.data(), n_q, 5}, out.data(), stats), Error);
  method->reset();
  EXPECT_NO_THROW(method->forward(kv, QueryView{q.data(), q.data(), n_q, 0}, out.data(), stats));
  EXPECT_FALSE(h2o->evicted(0, 0));
}

// A fixed budget of tokens (rules::Budget, as the oracle's, through the registry): each head reads
// min(tokens, n) every step, the whole prefix while it fits, then the budget with evictions.
TEST(H2O, FixedBudgetReadsThatManyTokensPerHead) {
  std::mt19937 rng(5);
  const int n_q = 4, n_kv = 2, d = 16;
  const int64_t n = 120, tokens = 20;
  KVCache cache = random_cache(n_kv, d, n, DType::F32, rng);
  const LayerKV kv = cache.layer(0);
  MethodSpec s = spec("h2o", 0.05, 0, 0);
  s.budget_tokens = tokens;
  auto method = make_method_factory(s, ArtifactIdentity{})(LayerShape{0, n_q, n_kv, d, n});
  auto* h2o = dynamic_cast<H2OAttention*>(method.get());
  ASSERT_NE(h2o, nullptr);
  std::vector<float> out(n_q * d);
  LookupStats stats;
  for (int64_t pos = 0; pos < n; ++pos) {
    const std::vector<float> q = normal_vector(n_q * d, rng);
    const QueryView qv{q.data(), q.data(), n_q, pos};
    Selection sel;
    method->select(kv, qv, sel);
    for (int h = 0; h < n_q; ++h) {
      const int64_t read = sel.all ? pos + 1 : int64_t(sel.positions[size_t(h)].size());
      EXPECT_EQ(read, std::min<int64_t>(tokens, pos + 1)) << pos;
    }
    method->attend(kv, qv, sel, out.data(), stats);
  }
  // Every position older than the budget's recent half was either kept or evicted: n - tokens gone.
  int64_t gone = 0;
  for (int64_t p = 0; p < n; ++p) gone += h2o->evicted(0, p);
  EXPECT_EQ(gone, n - tokens);
}

TEST(H2O, FullBudgetIsDenseAndTinyBudgetReadsTheQueryToken) {
  std::mt19937 rng(4);
  const int n_q = 4, n_kv = 1, d = 8;
  KVCache cache = random_cache(n_kv, d, 50, DType::BF16, rng);
  const LayerKV kv = cache.layer(0);
  H2OAttention full(LayerShape{0, n_q, n_kv, d, 50}, 1.0), zero(LayerShape{0, n_q, n_kv, d, 50}, 1e-6);
  std::vector<float> out(n_q * d), dense(n_q * d);
  LookupStats fs, zs;
  for (int64_t pos = 0; pos < 50; ++pos) {
    const std::vector<float> q = normal_vector(n_q * d, rng);
    full.forward(kv, QueryView{q.data(), q.data(), n_q, pos}, out.data(), fs);
    attention_decode(kv, q.data(), n_q, pos + 1, 1.0f / std::sqrt(8.0f), dense.data());
    EXPECT_EQ(out, dense);
    zero.forward(kv, QueryView{q.data(), q.data(), n_q, pos}, out.data(), zs);
    for (int h = 0; h < n_q; ++h)
      for (int i = 0; i < d; ++i) EXPECT_EQ(out[h * d + i], to_float(kv.value<bf16>(0, pos)[i]));
  }
  EXPECT_DOUBLE_EQ(fs.fraction(), 1.0);
  EXPECT_EQ(zs.kv_bytes, 50 * kv.token_bytes());
  EXPECT_THROW(H2OAttention(LayerShape{0, n_q, n_kv, d, 50}, 2.0), Error);
  EXPECT_THROW(H2OAttention(LayerShape{0, n_q, n_kv, d, 50}, 0.0), Error);
}

}  // namespace
}  // namespace saap
