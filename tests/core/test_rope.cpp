#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "saap/core/error.h"
#include "saap/core/rope.h"

namespace saap {
namespace {

std::vector<float> random_vec(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

// Reference: rotate pair (a, b) by pos * base^(-2i/n_rot) in double.
std::vector<double> reference(const std::vector<float>& x, int d, int64_t pos, double base, bool neox) {
  std::vector<double> y(x.begin(), x.end());
  for (int i = 0; i < d / 2; ++i) {
    const double theta = double(pos) * std::pow(base, -2.0 * i / d);
    const int a = neox ? i : 2 * i, b = neox ? i + d / 2 : 2 * i + 1;
    y[a] = x[a] * std::cos(theta) - x[b] * std::sin(theta);
    y[b] = x[a] * std::sin(theta) + x[b] * std::cos(theta);
  }
  return y;
}

TEST(Rope, BothConventionsMatchReference) {
  for (bool neox : {false, true}) {
    RopeConfig c;
    c.head_dim = 64;
    c.base = 100000.f;
    c.style = neox ? RopeStyle::NeoX : RopeStyle::Interleaved;
    Rope rope(c);
    for (int64_t pos : {0, 1, 17, 8191}) {
      auto x = random_vec(64, uint32_t(pos));
      auto want = reference(x, 64, pos, 100000.0, neox);
      rope.apply(x.data(), 1, pos);
      for (int i = 0; i < 64; ++i) EXPECT_NEAR(x[i], want[i], 2e-5) << "neox=" << neox << " pos=" << pos;
    }
  }
}

TEST(Rope, InvertUndoesApplyAndPreservesDotProductsOfEqualPositions) {
  RopeConfig c;
  c.head_dim = 128;
  Rope rope(c);
  auto x = random_vec(3 * 128, 1), original = x;
  rope.apply(x.data(), 3, 4000);
  rope.invert(x.data(), 3, 4000);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], original[i], 1e-4);
  // q·k after RoPE depends only on the position difference.
  auto q = random_vec(128, 2), k = random_vec(128, 3);
  auto dot_at = [&](int64_t pq, int64_t pk) {
    auto a = q, b = k;
    rope.apply(a.data(), 1, pq);
    rope.apply(b.data(), 1, pk);
    double s = 0;
    for (int i = 0; i < 128; ++i) s += double(a[i]) * b[i];
    return s;
  };
  EXPECT_NEAR(dot_at(100, 90), dot_at(1010, 1000), 1e-3);
}

TEST(Rope, RejectsBadConfig) {
  RopeConfig c;
  c.head_dim = 64;
  c.n_rot = 63;
  EXPECT_THROW(Rope{c}, Error);
  c.n_rot = 64;
  c.freq_factors = {1.f, 2.f};
  EXPECT_THROW(Rope{c}, Error);
}

}  // namespace
}  // namespace saap
