// The AttentionMethod contract, exercised through DenseAttention and a hand-made selection.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "saap/core/error.h"
#include "saap/kernels/cpu/attention.h"
#include "saap/methods/dense.h"

namespace saap {
namespace {

struct Fixture {
  LayerShape shape{0, 6, 2, 32, 256};
  KVCache cache{{1, 2, 32, 256, DType::F32}};
  std::vector<float> q;
  Fixture() {
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    std::vector<float> k(256 * 2 * 32), v(k.size());
    for (auto& x : k) x = normal(rng);
    for (auto& x : v) x = normal(rng);
    cache.append(0, k.data(), v.data(), 256);
    q.resize(6 * 32);
    for (auto& x : q) x = normal(rng);
  }
};

TEST(Method, DenseThroughInterfaceEqualsKernelAndReportsFullRead) {
  Fixture f;
  DenseAttention dense(f.shape);
  QueryView q{f.q.data(), f.q.data(), 6, 99};
  std::vector<float> out(6 * 32), want(6 * 32);
  LookupStats stats;
  dense.forward(f.cache.layer(0), q, out.data(), stats);
  attention_decode(f.cache.layer(0), f.q.data(), 6, 100, 1.f / std::sqrt(32.f), want.data());
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], want[i]);
  EXPECT_EQ(stats.queries, 1);
  EXPECT_EQ(stats.dense_bytes, 100 * 2 * 2 * 32 * 4);
  EXPECT_EQ(stats.kv_bytes, stats.dense_bytes);
  EXPECT_DOUBLE_EQ(stats.fraction(), 1.0);
}

TEST(Method, ExplicitSelectionCountsEachPositionOncePerKVGroup) {
  Fixture f;
  DenseAttention dense(f.shape);
  QueryView q{f.q.data(), f.q.data(), 6, 199};
  Selection sel;
  sel.clear(6);
  // Heads 0-2 share KV head 0: union {1,2,3,4} = 4 positions; heads 3-5: {7} = 1 position.
  sel.positions = {{1, 2}, {2, 3}, {4, 1}, {7}, {7}, {7}};
  sel.index_bytes = 10;
  std::vector<float> out(6 * 32);
  LookupStats stats;
  dense.attend(f.cache.layer(0), q, sel, out.data(), stats);
  const int64_t token_bytes = 2 * 32 * 4;
  EXPECT_EQ(stats.kv_bytes, 5 * token_bytes);
  EXPECT_EQ(stats.index_bytes, 10);
  EXPECT_EQ(stats.dense_bytes, 200 * 2 * token_bytes);
  // Head 3 attends to one position: its output is exactly that value row.
  for (int i = 0; i < 32; ++i) EXPECT_FLOAT_EQ(out[3 * 32 + i], f.cache.layer(0).value<float>(1, 7)[i]);
}

TEST(Method, RefusesSelectionsOutsideTheCausalPrefix) {
  Fixture f;
  DenseAttention dense(f.shape);
  QueryView q{f.q.data(), f.q.data(), 6, 10};
  Selection sel;
  sel.clear(6);
  sel.positions[2] = {11};
  std::vector<float> out(6 * 32);
  LookupStats stats;
  EXPECT_THROW(dense.attend(f.cache.layer(0), q, sel, out.data(), stats), Error);
  sel.positions.resize(5);
  EXPECT_THROW(dense.attend(f.cache.layer(0), q, sel, out.data(), stats), Error);
  EXPECT_THROW(DenseAttention(LayerShape{0, 6, 4, 32, 10}), Error);
}

}  // namespace
}  // namespace saap
