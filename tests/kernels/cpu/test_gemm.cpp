// matmul_xwt (BLAS where the build has it) and the portable loop matmul_xwt_loop against a float64
// reference, and against each other, on shapes with ragged edges (rows and features not multiples
// of the 4 x 4 block, the single-row decode shape, more slices than features).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "saap/kernels/cpu/gemm.h"

namespace saap {
namespace {

struct Shape {
  int64_t n, in, out;
};

// y = x · Wᵀ (+ y0) in float64.
std::vector<double> reference(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& y0,
                              const Shape& s, bool accumulate) {
  std::vector<double> y(size_t(s.n * s.out));
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t o = 0; o < s.out; ++o) {
      double acc = accumulate ? double(y0[size_t(i * s.out + o)]) : 0.0;
      for (int64_t k = 0; k < s.in; ++k) acc += double(x[size_t(i * s.in + k)]) * double(w[size_t(o * s.in + k)]);
      y[size_t(i * s.out + o)] = acc;
    }
  return y;
}

// Worst |got - ref| over the scale of the sum, sum_k |x_k w_k| (+ |y0|): fp32 accumulation of `in`
// terms (+ y0) errs by at most about (in + 1) * 2^-24 of that scale.
double worst_error(const std::vector<float>& got, const std::vector<double>& ref, const std::vector<float>& x,
                   const std::vector<float>& w, const Shape& s, const std::vector<float>* y0) {
  double worst = 0;
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t o = 0; o < s.out; ++o) {
      double scale = y0 ? std::fabs(double((*y0)[size_t(i * s.out + o)])) : 1e-30;
      for (int64_t k = 0; k < s.in; ++k) scale += std::fabs(double(x[size_t(i * s.in + k)]) * w[size_t(o * s.in + k)]);
      const size_t at = size_t(i * s.out + o);
      worst = std::max(worst, std::fabs(double(got[at]) - ref[at]) / scale);
    }
  return worst;
}

class Gemm : public ::testing::TestWithParam<Shape> {};

TEST_P(Gemm, BothPathsMatchFloat64AndEachOther) {
  const Shape s = GetParam();
  std::mt19937 rng(uint32_t(s.n * 131 + s.in * 7 + s.out));
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(size_t(s.n * s.in)), w(size_t(s.out * s.in)), y0(size_t(s.n * s.out));
  for (auto& v : x) v = normal(rng);
  for (auto& v : w) v = normal(rng);
  for (auto& v : y0) v = normal(rng);
  // (in + 1) * 2^-24 bounds the relative error of an fp32 dot product of `in` terms (the worst case of
  // sequential summation); BLAS and the loop order their sums differently, so they agree within
  // twice that.
  const double limit = double(s.in + 1) * std::ldexp(1.0, -24);
  for (bool accumulate : {false, true}) {
    const std::vector<double> ref = reference(x, w, y0, s, accumulate);
    std::vector<float> fast = y0, loop = y0;
    matmul_xwt(fast.data(), x.data(), w.data(), s.n, s.in, s.out, accumulate);
    matmul_xwt_loop(loop.data(), x.data(), w.data(), s.n, s.in, s.out, accumulate);
    const std::vector<float>* added = accumulate ? &y0 : nullptr;
    const double e_fast = worst_error(fast, ref, x, w, s, added), e_loop = worst_error(loop, ref, x, w, s, added);
    EXPECT_LE(e_fast, limit) << "matmul_xwt (" << (matmul_uses_blas() ? "BLAS" : "loop") << "), accumulate "
                             << accumulate;
    EXPECT_LE(e_loop, limit) << "matmul_xwt_loop, accumulate " << accumulate;
    const double apart = worst_error(loop, std::vector<double>(fast.begin(), fast.end()), x, w, s, added);
    EXPECT_LE(apart, 2 * limit) << "BLAS vs loop, accumulate " << accumulate;
    std::printf("n %lld in %lld out %lld accumulate %d: error %.2e (%s), loop %.2e, limit %.2e\n", (long long)s.n,
                (long long)s.in, (long long)s.out, int(accumulate), e_fast, matmul_uses_blas() ? "BLAS" : "loop",
                e_loop, limit);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Gemm,
                         ::testing::Values(Shape{1, 576, 192}, Shape{7, 64, 130}, Shape{16, 576, 1536},
                                           Shape{5, 3, 3}, Shape{33, 129, 65}),
                         [](const auto& info) {
                           const Shape& s = info.param;
                           return "n" + std::to_string(s.n) + "_in" + std::to_string(s.in) + "_out" +
                                  std::to_string(s.out);
                         });

}  // namespace
}  // namespace saap
