// PCA against data of known covariance: the recovered basis is orthonormal, each axis is an
// eigenvector of the sample covariance (checked in long double, without an eigen-solver), and the
// axes and variances match the ones the data was generated from.
#include "saap/train/pca.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "saap/core/error.h"

namespace saap {
namespace {

using ld = long double;

// A random orthogonal matrix: Gram-Schmidt (twice, for accuracy) on Gaussian rows.
std::vector<ld> random_orthogonal(int d, std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  std::vector<ld> q(size_t(d) * d);
  for (auto& v : q) v = nd(rng);
  for (int i = 0; i < d; ++i)
    for (int pass = 0; pass < 2; ++pass) {
      for (int j = 0; j < i; ++j) {
        ld dot = 0;
        for (int k = 0; k < d; ++k) dot += q[size_t(i) * d + k] * q[size_t(j) * d + k];
        for (int k = 0; k < d; ++k) q[size_t(i) * d + k] -= dot * q[size_t(j) * d + k];
      }
      ld norm = 0;
      for (int k = 0; k < d; ++k) norm += q[size_t(i) * d + k] * q[size_t(i) * d + k];
      for (int k = 0; k < d; ++k) q[size_t(i) * d + k] /= std::sqrt(norm);
    }
  return q;
}

struct Generated {
  std::vector<float> x;
  std::vector<ld> axes;       // [d][d] true axes
  std::vector<double> vars;   // true variances, descending
  std::vector<double> mean;
};

Generated generate(int d, int64_t n, int64_t stride, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Generated g;
  g.axes = random_orthogonal(d, rng);
  for (int j = 0; j < d; ++j) g.vars.push_back(4.0 * std::pow(0.7, j));
  std::normal_distribution<double> nd;
  for (int k = 0; k < d; ++k) g.mean.push_back(3.0 * nd(rng));
  g.x.assign(size_t(n * stride), -777.0f);  // padding between rows must be ignored
  for (int64_t i = 0; i < n; ++i) {
    std::vector<ld> row(g.mean.begin(), g.mean.end());
    for (int j = 0; j < d; ++j) {
      const ld z = std::sqrt(g.vars[size_t(j)]) * nd(rng);
      for (int k = 0; k < d; ++k) row[size_t(k)] += z * g.axes[size_t(j) * d + k];
    }
    for (int k = 0; k < d; ++k) g.x[size_t(i * stride + k)] = float(row[size_t(k)]);
  }
  return g;
}

// The sample covariance of the float data, in long double (unbiased, as fit_pca).
std::vector<ld> sample_cov(const std::vector<float>& x, int64_t n, int d, int64_t stride) {
  std::vector<ld> mean(size_t(d), 0), cov(size_t(d) * d, 0);
  for (int64_t i = 0; i < n; ++i)
    for (int k = 0; k < d; ++k) mean[size_t(k)] += x[size_t(i * stride + k)];
  for (auto& m : mean) m /= n;
  for (int64_t i = 0; i < n; ++i)
    for (int a = 0; a < d; ++a)
      for (int b = 0; b < d; ++b)
        cov[size_t(a) * d + b] += (x[size_t(i * stride + a)] - mean[size_t(a)]) * (x[size_t(i * stride + b)] - mean[size_t(b)]);
  for (auto& c : cov) c /= (n - 1);
  return cov;
}

void check_pca(int d, int64_t n, int64_t stride, uint64_t seed) {
  SCOPED_TRACE("d = " + std::to_string(d));
  const Generated g = generate(d, n, stride, seed);
  const Pca p = fit_pca(g.x.data(), n, d, stride);
  ASSERT_EQ(p.dim, d);
  const std::vector<ld> s = sample_cov(g.x, n, d, stride);
  const ld lmax = p.variances[0];

  // Orthonormal rows.
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) {
      ld dot = 0;
      for (int k = 0; k < d; ++k) dot += ld(p.components[size_t(i) * d + k]) * p.components[size_t(j) * d + k];
      // float storage of a float64 eigenbasis: orthonormal to float rounding (~1e-7 per term, d terms).
      EXPECT_NEAR(double(dot), i == j ? 1.0 : 0.0, 1e-5) << i << "," << j;
    }
  ld trace = 0, ratio_sum = 0;
  for (int k = 0; k < d; ++k) trace += s[size_t(k) * d + k];
  for (int j = 0; j < d; ++j) {
    const float* v = p.components.data() + size_t(j) * d;
    // S v = lambda v, relative to the largest eigenvalue.
    ld resid = 0, rayleigh = 0;
    for (int a = 0; a < d; ++a) {
      ld sv = 0;
      for (int b = 0; b < d; ++b) sv += s[size_t(a) * d + b] * v[b];
      resid += (sv - ld(p.variances[size_t(j)]) * v[a]) * (sv - ld(p.variances[size_t(j)]) * v[a]);
      rayleigh += v[a] * sv;
    }
    // float-stored vectors against the long-double covariance: float rounding, relative to lambda_max.
    EXPECT_LT(double(std::sqrt(resid) / lmax), 1e-5) << "axis " << j;
    EXPECT_NEAR(double(rayleigh / lmax), double(p.variances[size_t(j)] / lmax), 1e-5) << "axis " << j;
    if (j > 0) {
      EXPECT_LE(p.variances[size_t(j)], p.variances[size_t(j - 1)]);
    }
    // Deterministic sign: the largest-magnitude coordinate is positive.
    int am = 0;
    for (int k = 1; k < d; ++k)
      if (std::fabs(v[k]) > std::fabs(v[am])) am = k;
    EXPECT_GT(v[am], 0.0f);
    // Against the generating axes and variances (sampling error ~ 1/sqrt(n)).
    ld dot = 0;
    for (int k = 0; k < d; ++k) dot += ld(v[k]) * g.axes[size_t(j) * d + k];
    EXPECT_GT(double(std::fabs(dot)), 0.98) << "axis " << j;
    EXPECT_NEAR(p.variances[size_t(j)] / g.vars[size_t(j)], 1.0, 0.05) << "axis " << j;
    ratio_sum += p.explained_ratio[size_t(j)];
    EXPECT_NEAR(double(p.explained_ratio[size_t(j)]), double(p.variances[size_t(j)] / trace), 1e-6);  // float ratio
  }
  EXPECT_NEAR(double(ratio_sum), 1.0, 1e-5);  // d float ratios summed
  // Sample mean against the generating mean: sampling error ~ sigma / sqrt(n).
  for (int k = 0; k < d; ++k) EXPECT_NEAR(p.mean[size_t(k)], g.mean[size_t(k)], 0.1);
}

TEST(Pca, RecoversKnownCovariance) {
  check_pca(8, 20000, 8, 1);
  check_pca(64, 20000, 64, 2);
}

TEST(Pca, StridedRowsIgnorePadding) { check_pca(16, 20000, 21, 3); }

TEST(Pca, RotationPreservesDotProducts) {
  const Generated g = generate(32, 4000, 32, 4);
  const Pca p = fit_pca(g.x.data(), 4000, 32, 32);
  std::vector<float> a(32), b(32);
  for (int t = 0; t < 20; ++t) {
    const float* x = g.x.data() + 32 * t;
    const float* y = g.x.data() + 32 * (t + 100);
    p.rotate(x, a.data(), 32);
    p.rotate(y, b.data(), 32);
    ld d0 = 0, d1 = 0, n0 = 0, n1 = 0;
    for (int k = 0; k < 32; ++k) {
      d0 += ld(x[k]) * y[k];
      d1 += ld(a[size_t(k)]) * b[size_t(k)];
      n0 += ld(x[k]) * x[k];
      n1 += ld(y[k]) * y[k];
    }
    EXPECT_NEAR(double(d1), double(d0), 1e-5 * double(std::sqrt(n0 * n1)));
  }
}

TEST(Pca, RejectsBadInput) {
  std::vector<float> x(64, 1.0f);
  EXPECT_THROW(fit_pca(x.data(), 1, 4, 4), Error);
  EXPECT_THROW(fit_pca(x.data(), 4, 0, 4), Error);
  EXPECT_THROW(fit_pca(x.data(), 4, 4, 3), Error);
  x[13] = std::nanf("");
  try {
    fit_pca(x.data(), 16, 4, 4);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::NonFinite);
    EXPECT_NE(std::string(e.what()).find("row 3"), std::string::npos) << e.what();
  }
}

TEST(Pca, DegenerateDataGivesZeroVariances) {
  // All rows equal: zero covariance, still an orthonormal basis and no NaN.
  std::vector<float> x(10 * 4, 2.5f);
  const Pca p = fit_pca(x.data(), 10, 4, 4);
  for (float v : p.variances) EXPECT_EQ(v, 0.0f);
  for (float r : p.explained_ratio) EXPECT_EQ(r, 0.0f);
  for (float c : p.components) EXPECT_TRUE(std::isfinite(c));
}

}  // namespace
}  // namespace saap
