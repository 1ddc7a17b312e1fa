// Loki through the AttentionMethod interface on random caches: with all dimensions it selects what
// the oracle selects, with few dimensions it still agrees on low-rank keys, it reports the bytes it
// reads, a covering budget is dense, and corrupt or mismatched artifacts are refused by name.
#include "saap/methods/loki.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "methods/reference.h"
#include "saap/core/error.h"
#include "saap/kernels/cpu/attention.h"
#include "saap/methods/oracle_topk.h"

namespace saap {
namespace {

using namespace testref;
using ::testing::HasSubstr;

constexpr int kLayers = 2, kQ = 6, kKV = 2, kD = 32;

// Rows of a random orthogonal matrix (Gram-Schmidt twice in double).
std::vector<float> random_basis(int d, std::mt19937& rng) {
  std::normal_distribution<double> nd;
  std::vector<double> q(size_t(d) * d);
  for (auto& v : q) v = nd(rng);
  for (int i = 0; i < d; ++i)
    for (int pass = 0; pass < 2; ++pass) {
      for (int j = 0; j < i; ++j) {
        double dot = 0;
        for (int k = 0; k < d; ++k) dot += q[size_t(i * d + k)] * q[size_t(j * d + k)];
        for (int k = 0; k < d; ++k) q[size_t(i * d + k)] -= dot * q[size_t(j * d + k)];
      }
      double norm = 0;
      for (int k = 0; k < d; ++k) norm += q[size_t(i * d + k)] * q[size_t(i * d + k)];
      for (int k = 0; k < d; ++k) q[size_t(i * d + k)] /= std::sqrt(norm);
    }
  return std::vector<float>(q.begin(), q.end());
}

ArtifactIdentity model_identity() {
  ArtifactIdentity id;
  id.model_identity = "test-model:1";
  id.n_layers = kLayers;
  id.n_heads = kQ;
  id.n_kv_heads = kKV;
  id.head_dim = kD;
  return id;
}

// An artifact whose bases are random rotations; variances decay so that the leading axes matter.
std::shared_ptr<LokiArtifact> make_artifact(std::mt19937& rng) {
  auto a = std::make_shared<LokiArtifact>();
  a->identity = model_identity();
  a->identity.method = "loki";
  for (int l = 0; l < kLayers; ++l)
    for (int h = 0; h < kKV; ++h) {
      const std::vector<float> b = random_basis(kD, rng);
      a->components.insert(a->components.end(), b.begin(), b.end());
      double total = 0;
      for (int j = 0; j < kD; ++j) total += std::pow(0.8, j);
      for (int j = 0; j < kD; ++j) {
        a->variances.push_back(float(std::pow(0.8, j)));
        a->explained_ratio.push_back(float(std::pow(0.8, j) / total));
      }
    }
  return a;
}

// Keys of layer `layer` concentrated on the first `rank` axes of each KV head's basis (plus a
// small isotropic part), as real keys are in a PCA basis. [n][kKV][kD].
std::vector<float> low_rank_keys(const LokiArtifact& a, int layer, int64_t n, int rank, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::vector<float> k(size_t(n) * kKV * kD);
  for (int64_t p = 0; p < n; ++p)
    for (int h = 0; h < kKV; ++h) {
      const float* b = a.basis(layer, h);
      float* key = k.data() + (p * kKV + h) * kD;
      for (int i = 0; i < kD; ++i) key[i] = 0.05f * nd(rng);
      for (int j = 0; j < rank; ++j) {
        const float z = 2.0f * nd(rng);
        for (int i = 0; i < kD; ++i) key[i] += z * b[j * kD + i];
      }
    }
  return k;
}

// A query that looks at keys: drawn in the same subspace, so attention is peaked as in a model.
std::vector<float> query_like(const std::vector<float>& keys, int64_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int64_t> pick(0, n - 1);
  std::normal_distribution<float> nd;
  std::vector<float> q(kQ * kD);
  for (int h = 0; h < kQ; ++h)
    for (int i = 0; i < kD; ++i) q[size_t(h * kD + i)] = keys[size_t((pick(rng) * kKV + h / (kQ / kKV)) * kD + i)] + 0.3f * nd(rng);
  return q;
}

LayerShape layer_shape(int layer, int64_t n) { return LayerShape{layer, kQ, kKV, kD, n}; }

double mean_jaccard_vs_oracle(LokiAttention& loki, const LayerKV& kv, const std::vector<float>& keys, int64_t n,
                              double k_f, std::mt19937& rng) {
  OracleTopK oracle(layer_shape(loki.shape().layer, n), k_f);
  double sum = 0;
  int count = 0;
  for (int t = 0; t < 10; ++t) {
    const std::vector<float> q = query_like(keys, n, rng);
    const QueryView qv{q.data(), q.data(), kQ, n - 1 - t * 7};
    Selection a, b;
    a.clear(kQ);
    b.clear(kQ);
    loki.select(kv, qv, a);
    oracle.select(kv, qv, b);
    for (int h = 0; h < kQ; ++h, ++count) sum += jaccard(a.positions[size_t(h)], b.positions[size_t(h)]);
  }
  return sum / count;
}

TEST(Loki, AllDimensionsSelectTheOracleTopK) {
  std::mt19937 rng(1);
  auto art = make_artifact(rng);
  const int64_t n = 400;
  KVCache cache = random_cache(kKV, kD, n, DType::F32, rng);
  const LayerKV kv = cache.layer(0);
  LokiAttention loki(layer_shape(1, n), LokiParams{0.1, 1.0}, art);
  loki.place(kv, 0, n, nullptr);
  EXPECT_EQ(loki.rank(), kD);
  for (int64_t pos : {50, 213, 399}) {
    const std::vector<float> q = normal_vector(kQ * kD, rng);
    const QueryView qv{q.data(), q.data(), kQ, pos};
    Selection sel;
    sel.clear(kQ);
    loki.select(kv, qv, sel);
    const int64_t k = ceil_tokens(0.1, pos + 1);
    for (int h = 0; h < kQ; ++h) {
      const auto& list = sel.positions[size_t(h)];
      ASSERT_EQ(int64_t(list.size()), k);
      // The rotated full-rank score is the exact score: the selection is the true top-k, up to
      // fp32 rounding at the boundary.
      const auto exact = exact_scores(kv, q.data() + h * kD, h / 3, pos + 1);
      std::vector<char> in(size_t(pos + 1), 0);
      long double worst_in = INFINITY, best_out = -INFINITY;
      for (int32_t p : list) in[size_t(p)] = 1, worst_in = std::min(worst_in, exact[size_t(p)]);
      for (int64_t p = 0; p <= pos; ++p)
        if (!in[size_t(p)]) best_out = std::max(best_out, exact[size_t(p)]);
      EXPECT_GE(double(worst_in), double(best_out) - 1e-4);
    }
  }
}

TEST(Loki, FewDimensionsAgreeWithOracleOnLowRankKeys) {
  std::mt19937 rng(2);
  auto art = make_artifact(rng);
  const int64_t n = 512;
  const std::vector<float> keys = low_rank_keys(*art, 0, n, 6, rng);
  KVCache cache = random_cache(kKV, kD, n, DType::F32, rng, keys);
  LokiAttention loki(layer_shape(0, n), LokiParams{0.25, 0.25}, art);  // r = 8 of 32
  loki.place(cache.layer(0), 0, n, nullptr);
  EXPECT_EQ(loki.rank(), 8);
  const double j_low = mean_jaccard_vs_oracle(loki, cache.layer(0), keys, n, 0.25, rng);
  EXPECT_GT(j_low, 0.9);
  // The same rank on isotropic keys ranks poorly: the agreement above comes from the basis.
  const std::vector<float> iso = normal_vector(size_t(n) * kKV * kD, rng, 2.0f);
  KVCache iso_cache = random_cache(kKV, kD, n, DType::F32, rng, iso);
  LokiAttention loki_iso(layer_shape(0, n), LokiParams{0.25, 0.25}, art);
  loki_iso.place(iso_cache.layer(0), 0, n, nullptr);
  const double j_iso = mean_jaccard_vs_oracle(loki_iso, iso_cache.layer(0), iso, n, 0.25, rng);
  EXPECT_LT(j_iso, j_low - 0.2);
  std::printf("loki d_f=0.25 k_f=0.25 Jaccard vs oracle: low-rank keys %.3f, isotropic keys %.3f\n", j_low, j_iso);
}

TEST(Loki, ExactAttentionOverSelectionAndBytes) {
  std::mt19937 rng(3);
  auto art = make_artifact(rng);
  const int64_t n = 300;
  for (DType dtype : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const std::vector<float> keys = low_rank_keys(*art, 1, n, 8, rng);
    KVCache cache = random_cache(kKV, kD, n, dtype, rng, keys);
    const LayerKV kv = cache.layer(0);
    LokiAttention loki(layer_shape(1, n), LokiParams{0.125, 0.5}, art);
    loki.place(kv, 0, 100, nullptr);  // placed in two pieces, as prefill then decode would
    loki.place(kv, 100, n, nullptr);
    const std::vector<float> q = query_like(keys, n, rng);
    const QueryView qv{q.data(), q.data(), kQ, 255};
    std::vector<float> out(kQ * kD);
    LookupStats stats;
    Selection sel;
    sel.clear(kQ);
    loki.select(kv, qv, sel);
    loki.attend(kv, qv, sel, out.data(), stats);
    for (int h = 0; h < kQ; ++h) {
      EXPECT_EQ(int64_t(sel.positions[size_t(h)].size()), 32);  // ceil(0.125 * 256)
      // fp32 attention over 32 keys vs long double (bf16/f16 keys are read exactly in both).
      EXPECT_LT(max_rel_error(attention(kv, q.data() + h * kD, h / 3, sel.positions[size_t(h)]), out.data() + h * kD),
                1e-5);
    }
    const int64_t es = int64_t(dtype_size(dtype));
    EXPECT_EQ(stats.index_bytes, 256 * kKV * 16 * es);  // r = 16 coordinates of every prefix key
    EXPECT_EQ(stats.kv_bytes, union_bytes(kv, sel, kQ));
    EXPECT_EQ(stats.dense_bytes, 256 * kKV * 2 * kD * es);
    // Loki's theoretical read: d_f / 2 (half of K's bytes are K) + k_f, plus GQA unions.
    EXPECT_GE(stats.fraction(), 0.25 + 0.125 - 1e-12);
    EXPECT_LE(stats.fraction(), 0.25 + 3 * 0.125 + 1e-12);
  }
}

// d_f = 0.3 of 32 dimensions is 9.6: the rank is 10 (the ceiling), and the selection is the top-k of
// the partial score over exactly those 10 axes, computed here in long double from the basis.
TEST(Loki, FractionalRankIsTheCeilingAndRanksByThatManyAxes) {
  std::mt19937 rng(9);
  auto art = make_artifact(rng);
  const int64_t n = 300;
  KVCache cache = random_cache(kKV, kD, n, DType::F32, rng);  // full-rank keys: every axis changes the ranking
  const LayerKV kv = cache.layer(0);
  LokiAttention loki(layer_shape(0, n), LokiParams{0.33, 0.3}, art);
  loki.place(kv, 0, n, nullptr);
  ASSERT_EQ(loki.rank(), 10);
  for (int64_t pos : {40, 151, 299}) {
    const std::vector<float> q = normal_vector(kQ * kD, rng);
    Selection sel;
    sel.clear(kQ);
    loki.select(kv, QueryView{q.data(), q.data(), kQ, pos}, sel);
    const int64_t k = ceil_tokens(0.33, pos + 1);  // 0.33 (pos + 1) is fractional at these positions
    for (int h = 0; h < kQ; ++h) {
      const int kvh = h / (kQ / kKV);
      const float* b = art->basis(0, kvh);
      std::vector<long double> partial(size_t(pos + 1), 0.0L);
      for (int j = 0; j < 10; ++j) {
        long double qj = 0;
        for (int i = 0; i < kD; ++i) qj += (long double)b[j * kD + i] * q[size_t(h * kD + i)];
        for (int64_t p = 0; p <= pos; ++p) {
          long double kj = 0;
          for (int i = 0; i < kD; ++i) kj += (long double)b[j * kD + i] * kv.key<float>(kvh, p)[i];
          partial[size_t(p)] += qj * kj;
        }
      }
      const auto& list = sel.positions[size_t(h)];
      ASSERT_EQ(int64_t(list.size()), k) << "pos " << pos;
      std::vector<char> in(size_t(pos + 1), 0);
      long double worst_in = INFINITY, best_out = -INFINITY;
      for (int32_t p : list) in[size_t(p)] = 1, worst_in = std::min(worst_in, partial[size_t(p)]);
      for (int64_t p = 0; p <= pos; ++p)
        if (!in[size_t(p)]) best_out = std::max(best_out, partial[size_t(p)]);
      // fp32 partial scores of order 10 differ from long double by ~1e-5: only a near-tie at the
      // cut may go either way.
      EXPECT_GE(double(worst_in), double(best_out) - 1e-4) << "pos " << pos << " head " << h;
    }
  }
}

TEST(Loki, CoveringBudgetIsDense) {
  std::mt19937 rng(4);
  auto art = make_artifact(rng);
  KVCache cache = random_cache(kKV, kD, 64, DType::F32, rng);
  const LayerKV kv = cache.layer(0);
  LokiAttention loki(layer_shape(0, 64), LokiParams{1.0, 0.25}, art);
  loki.place(kv, 0, 64, nullptr);
  const std::vector<float> q = normal_vector(kQ * kD, rng);
  std::vector<float> out(kQ * kD), dense(kQ * kD);
  LookupStats stats;
  loki.forward(kv, QueryView{q.data(), q.data(), kQ, 63}, out.data(), stats);
  attention_decode(kv, q.data(), kQ, 64, 1.0f / std::sqrt(float(kD)), dense.data());
  EXPECT_EQ(out, dense);
  EXPECT_DOUBLE_EQ(stats.fraction(), 1.0);
  // A tiny k_f still attends to one token; a prefix of one token is the covering case.
  LokiAttention tiny(layer_shape(0, 64), LokiParams{1e-6, 0.25}, art);
  EXPECT_THROW(LokiAttention(layer_shape(0, 64), LokiParams{0.0, 0.25}, art), Error);  // 0 reads nothing
  tiny.place(kv, 0, 64, nullptr);
  Selection sel;
  sel.clear(kQ);
  tiny.select(kv, QueryView{q.data(), q.data(), kQ, 63}, sel);
  for (const auto& l : sel.positions) EXPECT_EQ(l.size(), 1u);
  tiny.select(kv, QueryView{q.data(), q.data(), kQ, 0}, sel);
  EXPECT_TRUE(sel.all);
}

TEST(Loki, PlacementOrderAndRefill) {
  std::mt19937 rng(5);
  auto art = make_artifact(rng);
  KVCache cache({1, kKV, kD, 100, DType::F32});
  std::vector<float> k = normal_vector(100 * kKV * kD, rng), v = normal_vector(100 * kKV * kD, rng);
  cache.append(0, k.data(), v.data(), 60);
  LokiAttention loki(layer_shape(0, 100), LokiParams{0.1, 0.25}, art);
  const std::vector<float> q = normal_vector(kQ * kD, rng);
  Selection sel;
  sel.clear(kQ);
  EXPECT_THROW(loki.select(cache.layer(0), QueryView{q.data(), q.data(), kQ, 10}, sel), Error);  // nothing placed
  EXPECT_THROW(loki.place(cache.layer(0), 10, 20, nullptr), Error);  // a gap
  EXPECT_THROW(loki.place(cache.layer(0), 0, 61, nullptr), Error);   // beyond the cache
  loki.place(cache.layer(0), 0, 60, nullptr);
  // The cache is cut back and refilled with other keys: the method follows.
  cache.truncate(30);
  std::vector<float> k2 = normal_vector(70 * kKV * kD, rng);
  cache.append(0, k2.data(), v.data(), 70);
  loki.place(cache.layer(0), 30, 100, nullptr);
  LokiAttention fresh(layer_shape(0, 100), LokiParams{0.1, 0.25}, art);
  fresh.place(cache.layer(0), 0, 100, nullptr);
  Selection a, b;
  a.clear(kQ);
  b.clear(kQ);
  loki.select(cache.layer(0), QueryView{q.data(), q.data(), kQ, 99}, a);
  fresh.select(cache.layer(0), QueryView{q.data(), q.data(), kQ, 99}, b);
  EXPECT_EQ(a.positions, b.positions);
  loki.reset();
  EXPECT_THROW(loki.select(cache.layer(0), QueryView{q.data(), q.data(), kQ, 10}, sel), Error);
}

class LokiArtifactFile : public ::testing::Test {
 protected:
  std::string path = ::testing::TempDir() + "saap_loki_" + std::to_string(::getpid()) + ".safetensors";
  std::mt19937 rng{6};
  std::shared_ptr<LokiArtifact> art = make_artifact(rng);
  void TearDown() override { std::remove(path.c_str()); }

  void expect_refused(const ArtifactIdentity& expected, const std::string& needle) {
    try {
      LokiArtifact::load(path, expected);
      FAIL() << "accepted; expected a refusal naming '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadFile) << e.what();
      EXPECT_THAT(e.what(), HasSubstr(needle));
    }
  }
};

TEST_F(LokiArtifactFile, RoundTripAndFactory) {
  art->pre_rope = false;
  art->train = {{"keys", 123}};
  art->save(path);
  const LokiArtifact back = LokiArtifact::load(path, model_identity());
  EXPECT_FALSE(back.pre_rope);
  EXPECT_EQ(back.components, art->components);
  EXPECT_EQ(back.variances, art->variances);
  EXPECT_EQ(back.explained_ratio, art->explained_ratio);
  EXPECT_EQ(back.train["keys"], 123);
  EXPECT_EQ(back.rank_for_variance(0, 0.0), 1);
  EXPECT_EQ(back.rank_for_variance(0, 1.01), kD);

  MethodSpec spec;
  spec.name = "loki";
  spec.k_f = 0.5;
  spec.d_f = 0.125;
  spec.artifact = path;
  MethodFactory make = loki_factory(spec, model_identity());
  auto m = make(layer_shape(1, 10));
  EXPECT_EQ(m->name(), "loki");
  EXPECT_EQ(dynamic_cast<LokiAttention*>(m.get())->rank(), 4);
  EXPECT_THROW(make(layer_shape(2, 10)), Error);  // no such layer in the artifact
  spec.artifact.clear();
  EXPECT_THROW(loki_factory(spec, model_identity()), Error);
  spec.artifact = path;
  spec.d_f = 0.0;
  EXPECT_THROW(loki_factory(spec, model_identity()), Error);
  spec.d_f = 0.25;
  spec.artifact = path + ".missing";
  try {
    loki_factory(spec, model_identity());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::NotFound);
  }
}

TEST_F(LokiArtifactFile, MismatchedModelOrHeadsAreRefusedByName) {
  art->save(path);
  ArtifactIdentity other = model_identity();
  other.model_identity = "another-model:2";
  expect_refused(other, "model_identity");
  other = model_identity();
  other.n_kv_heads = 1;
  expect_refused(other, "n_kv_heads");
  other = model_identity();
  other.head_dim = 64;
  expect_refused(other, "head_dim");
  other = model_identity();
  other.n_layers = 30;
  expect_refused(other, "n_layers");
  // Another method's file.
  SafetensorsWriter w;
  w.add_f32("components", art->components.data(), {kLayers, kKV, kD, kD});
  nlohmann::json h = to_json(art->identity);
  h["method"] = "saap";
  w.write(path, h);
  expect_refused(model_identity(), "method");
}

TEST_F(LokiArtifactFile, CorruptFilesAreRefused) {
  art->save(path);
  std::vector<char> bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  // Truncated.
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size() - 100));
  expect_refused(model_identity(), "truncated");
  // A basis that is no longer orthonormal.
  art->components[5] += 0.5f;
  art->save(path);
  expect_refused(model_identity(), "not orthonormal");
  art->components[5] -= 0.5f;
  art->variances[3] = -1.0f;
  art->save(path);
  expect_refused(model_identity(), "variances");
  art->variances[3] = 1.0f;
  // The rope field missing, and a tensor of the wrong shape.
  SafetensorsWriter w;
  w.add_f32("components", art->components.data(), {kLayers, kKV, kD, kD});
  w.add_f32("variances", art->variances.data(), {kLayers, kKV, kD});
  w.add_f32("explained_ratio", art->explained_ratio.data(), {kLayers * kKV, kD});
  w.write(path, to_json(art->identity));
  expect_refused(model_identity(), "'rope'");
  nlohmann::json h = to_json(art->identity);
  h["rope"] = "pre";
  w.write(path, h);
  expect_refused(model_identity(), "tensor 'explained_ratio' has shape");
}

}  // namespace
}  // namespace saap
