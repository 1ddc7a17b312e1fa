// The exact CPU attention against a naive float64 implementation on fresh random inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "saap/core/error.h"
#include "saap/kernels/cpu/attention.h"

namespace saap {
namespace {

struct Problem {
  int n_q_heads, n_kv_heads, head_dim;
  int64_t length;
  DType dtype;
  std::vector<float> k, v;  // [length][n_kv][d], as stored (already rounded to dtype)
  KVCache cache;

  Problem(int hq, int hkv, int d, int64_t n, DType t, uint32_t seed)
      : n_q_heads(hq), n_kv_heads(hkv), head_dim(d), length(n), dtype(t), cache({1, hkv, d, n, t}) {
    std::mt19937 rng(seed);
    // Keys with a few large outliers make the softmax peaked, which is where errors show.
    std::normal_distribution<float> normal(0.f, 1.f);
    k.resize(size_t(n) * hkv * d);
    v.resize(k.size());
    for (auto& x : k) x = normal(rng) * (rng() % 50 == 0 ? 4.f : 1.f);
    for (auto& x : v) x = normal(rng);
    cache.append(0, k.data(), v.data(), n);
    // The reference must see what the cache holds (bf16/f16 rounding is not the kernel's error).
    for (auto* buf : {&k, &v}) {
      std::vector<uint16_t> tmp(buf->size());
      if (t != DType::F32) {
        convert(buf->data(), DType::F32, tmp.data(), t, buf->size());
        convert(tmp.data(), t, buf->data(), DType::F32, buf->size());
      }
    }
  }

  // softmax(q k^T * scale) v over positions [0, n_ctx) in float64.
  std::vector<double> reference(const float* q, int64_t n_ctx, double scale, const std::vector<int32_t>* subset = nullptr,
                                int only_head = -1) const {
    std::vector<double> out(size_t(n_q_heads) * head_dim, 0.0);
    const int group = n_q_heads / n_kv_heads;
    for (int h = 0; h < n_q_heads; ++h) {
      if (only_head >= 0 && h != only_head) continue;
      const int kvh = h / group;
      std::vector<int64_t> positions;
      if (subset)
        positions.assign(subset->begin(), subset->end());
      else
        for (int64_t t = 0; t < n_ctx; ++t) positions.push_back(t);
      std::vector<double> s(positions.size());
      double mx = -INFINITY, sum = 0;
      for (size_t j = 0; j < positions.size(); ++j) {
        double dot = 0;
        for (int i = 0; i < head_dim; ++i)
          dot += double(q[h * head_dim + i]) * k[(positions[j] * n_kv_heads + kvh) * head_dim + i];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      for (auto& x : s) sum += (x = std::exp(x - mx));
      for (size_t j = 0; j < positions.size(); ++j)
        for (int i = 0; i < head_dim; ++i)
          out[h * head_dim + i] += s[j] / sum * v[(positions[j] * n_kv_heads + kvh) * head_dim + i];
    }
    return out;
  }
};

std::vector<float> random_queries(int64_t rows, int hq, int d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.5f);
  std::vector<float> q(size_t(rows) * hq * d);
  for (auto& x : q) x = normal(rng);
  return q;
}

// Largest |a - b| relative to the largest |b| of the same head: scale-aware, robust near zero.
double max_rel_error(const float* got, const std::vector<double>& want, int heads, int d) {
  double worst = 0;
  for (int h = 0; h < heads; ++h) {
    double norm = 1e-30, err = 0;
    for (int i = 0; i < d; ++i) {
      norm = std::max(norm, std::abs(want[h * d + i]));
      err = std::max(err, std::abs(got[h * d + i] - want[h * d + i]));
    }
    worst = std::max(worst, err / norm);
  }
  return worst;
}

struct DecodeCase {
  int hq, hkv, d;
  int64_t n;
  DType dtype;
};
// "q9_kv3_d64_n1000_bf16": the test name and the value ctest shows (not the struct's raw bytes).
std::string case_name(const DecodeCase& c) {
  return "q" + std::to_string(c.hq) + "_kv" + std::to_string(c.hkv) + "_d" + std::to_string(c.d) + "_n" +
         std::to_string(c.n) + "_" + dtype_name(c.dtype);
}
void PrintTo(const DecodeCase& c, std::ostream* os) { *os << case_name(c); }

class DecodeVsFloat64 : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(DecodeVsFloat64, MatchesAtEveryShape) {
  const auto c = GetParam();
  Problem p(c.hq, c.hkv, c.d, c.n, c.dtype, uint32_t(c.n * 131 + c.hq * 7 + c.d));
  const double scale = 1.0 / std::sqrt(double(c.d));
  for (int64_t n_ctx : {int64_t(1), c.n / 2 + 1, c.n}) {
    auto q = random_queries(1, c.hq, c.d, uint32_t(n_ctx));
    std::vector<float> out(size_t(c.hq) * c.d);
    attention_decode(p.cache.layer(0), q.data(), c.hq, n_ctx, float(scale), out.data());
    // Accumulation is fp32 whatever the storage type; inputs are compared after storage rounding.
    EXPECT_LT(max_rel_error(out.data(), p.reference(q.data(), n_ctx, scale), c.hq, c.d), 2e-5)
        << "n_ctx=" << n_ctx << " dtype=" << dtype_name(c.dtype);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DecodeVsFloat64,
    ::testing::Values(DecodeCase{1, 1, 64, 1, DType::F32}, DecodeCase{4, 4, 64, 37, DType::F32},
                      DecodeCase{9, 3, 64, 1000, DType::F32}, DecodeCase{8, 2, 128, 4096, DType::F32},
                      DecodeCase{32, 4, 128, 3000, DType::BF16}, DecodeCase{9, 3, 64, 4096, DType::BF16},
                      DecodeCase{16, 2, 32, 2049, DType::F16}, DecodeCase{8, 1, 64, 513, DType::BF16}),
    [](const ::testing::TestParamInfo<DecodeCase>& info) { return case_name(info.param); });

TEST(Prefill, CausalRowsMatchFloat64) {
  for (auto [hq, hkv, d, n, t] : {std::tuple{9, 3, 64, 300, DType::F32}, std::tuple{8, 1, 128, 129, DType::BF16},
                                  std::tuple{4, 4, 32, 65, DType::F32}}) {
    Problem p(hq, hkv, d, n, t, 99);
    const int64_t pos0 = n / 3, rows = n - pos0;
    auto q = random_queries(rows, hq, d, 5);
    std::vector<float> out(q.size());
    const double scale = 1.0 / std::sqrt(double(d));
    attention_prefill(p.cache.layer(0), q.data(), hq, rows, pos0, float(scale), out.data());
    for (int64_t r = 0; r < rows; ++r) {
      const float* qr = q.data() + r * hq * d;
      EXPECT_LT(max_rel_error(out.data() + r * hq * d, p.reference(qr, pos0 + r + 1, scale), hq, d), 2e-5)
          << "row " << r;
    }
  }
}

TEST(Prefill, EqualsDecodeRowByRow) {
  Problem p(9, 3, 64, 200, DType::F32, 3);
  auto q = random_queries(200, 9, 64, 8);
  std::vector<float> batched(q.size()), single(9 * 64);
  attention_prefill(p.cache.layer(0), q.data(), 9, 200, 0, 0.125f, batched.data());
  for (int64_t r : {0, 1, 63, 64, 65, 199}) {
    attention_decode(p.cache.layer(0), q.data() + r * 9 * 64, 9, r + 1, 0.125f, single.data());
    for (int i = 0; i < 9 * 64; ++i) EXPECT_NEAR(batched[r * 9 * 64 + i], single[i], 1e-5f);
  }
}

TEST(OverPositions, MatchesFloat64OnASubset) {
  Problem p(6, 2, 64, 1000, DType::BF16, 11);
  auto q = random_queries(1, 6, 64, 12);
  std::vector<int32_t> subset = {999, 3, 500, 501, 0, 77, 640};
  std::vector<float> out(64);
  attention_over_positions(p.cache.layer(0), 1, q.data() + 4 * 64, subset.data(), int64_t(subset.size()), 0.125f,
                           out.data());
  auto want = p.reference(q.data(), 0, 0.125, &subset, 4);
  std::vector<double> head(want.begin() + 4 * 64, want.begin() + 5 * 64);
  EXPECT_LT(max_rel_error(out.data(), head, 1, 64), 2e-5);
}

// The test must be able to fail: a wrong scale or one dropped key moves the output well past tolerance.
TEST(Sensitivity, WrongScaleOrDroppedKeyIsDetected) {
  Problem p(4, 2, 64, 512, DType::F32, 21);
  auto q = random_queries(1, 4, 64, 22);
  const double scale = 0.125;
  const auto want = p.reference(q.data(), 512, scale);
  std::vector<float> out(4 * 64);
  attention_decode(p.cache.layer(0), q.data(), 4, 512, float(scale * 1.01), out.data());
  EXPECT_GT(max_rel_error(out.data(), want, 4, 64), 1e-4);
  attention_decode(p.cache.layer(0), q.data(), 4, 511, float(scale), out.data());
  EXPECT_GT(max_rel_error(out.data(), want, 4, 64), 1e-4);
}

TEST(BadInput, ClearErrors) {
  Problem p(9, 3, 64, 16, DType::F32, 1);
  auto q = random_queries(1, 9, 64, 2);
  std::vector<float> out(9 * 64);
  const LayerKV kv = p.cache.layer(0);
  auto expect_error = [](auto fn, ErrorKind kind, const char* needle) {
    try {
      fn();
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), kind);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { attention_decode(kv, q.data(), 8, 16, 1.f, out.data()); }, ErrorKind::InvalidArgument, "n_q_heads = 8");
  expect_error([&] { attention_decode(kv, q.data(), 9, 17, 1.f, out.data()); }, ErrorKind::InvalidArgument, "cache holds 16");
  expect_error([&] { attention_prefill(kv, q.data(), 9, 2, 15, 1.f, out.data()); }, ErrorKind::InvalidArgument, "cache holds 16");
  q[5 * 64 + 3] = NAN;
  expect_error([&] { attention_decode(kv, q.data(), 9, 16, 1.f, out.data()); }, ErrorKind::NonFinite, "head 5");
  KVCache empty({1, 3, 64, 8, DType::F32});
  expect_error([&] { attention_decode(empty.layer(0), q.data(), 9, 1, 1.f, out.data()); }, ErrorKind::InvalidArgument, "empty");
  int32_t bad = 16;
  expect_error([&] { attention_over_positions(kv, 0, q.data(), &bad, 1, 1.f, out.data()); }, ErrorKind::InvalidArgument,
               "position 16");
}

}  // namespace
}  // namespace saap
