// Conversions against exact rational rounding done in double, over every 16-bit pattern.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "saap/core/dtype.h"
#include "saap/core/error.h"

namespace saap {
namespace {

// Nearest representable of a sorted list of finite values, ties to the even bit pattern.
template <class T>
uint16_t round_reference(float x, const std::vector<std::pair<double, uint16_t>>& table) {
  auto it = std::lower_bound(table.begin(), table.end(), std::pair<double, uint16_t>(double(x), 0));
  if (it == table.begin()) return it->second;
  if (it == table.end()) return std::prev(it)->second;
  auto lo = std::prev(it);
  const double dlo = double(x) - lo->first, dhi = it->first - double(x);
  if (dlo < dhi) return lo->second;
  if (dhi < dlo) return it->second;
  return (lo->second & 1) ? it->second : lo->second;
}

template <class T>
std::vector<std::pair<double, uint16_t>> finite_table() {
  std::vector<std::pair<double, uint16_t>> table;
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = to_float(T{uint16_t(b)});
    if (std::isfinite(f) && !(f == 0.f && (b & 0x8000))) table.push_back({double(f), uint16_t(b)});
  }
  std::sort(table.begin(), table.end());
  return table;
}

TEST(DType, Bf16RoundTripsEveryPattern) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = to_float(bf16{uint16_t(b)});
    if (std::isnan(f))
      EXPECT_TRUE(std::isnan(to_float(to_bf16(f))));
    else
      EXPECT_EQ(to_bf16(f).bits, b);
  }
}

TEST(DType, F16RoundTripsEveryPattern) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = to_float(f16{uint16_t(b)});
    if (std::isnan(f))
      EXPECT_TRUE(std::isnan(to_float(to_f16(f))));
    else
      EXPECT_EQ(to_f16(f).bits, b) << std::hex << b;
  }
}

TEST(DType, F16SubnormalDecodeIsExact) {
  EXPECT_EQ(to_float(f16{0x0001}), std::ldexp(1.0f, -24));
  EXPECT_EQ(to_float(f16{0x03ff}), std::ldexp(1023.0f, -24));
  EXPECT_EQ(to_float(f16{0x7bff}), 65504.0f);
}

TEST(DType, RoundToNearestEvenOnRandomFloats) {
  const auto bf_table = finite_table<bf16>();
  const auto h_table = finite_table<f16>();
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> mantissa(-1.f, 1.f);
  std::uniform_int_distribution<int> exponent(-30, 20);
  for (int i = 0; i < 200000; ++i) {
    const float x = std::ldexp(mantissa(rng), exponent(rng));
    if (x == 0.f) continue;
    EXPECT_EQ(to_bf16(x).bits, round_reference<bf16>(x, bf_table)) << x;
    if (std::abs(x) < 65504.f) {
      const uint16_t want = round_reference<f16>(x, h_table);
      // Zero's sign follows the input.
      const uint16_t got = to_f16(x).bits;
      if ((want & 0x7fff) == 0)
        EXPECT_EQ(got & 0x7fff, 0) << x;
      else
        EXPECT_EQ(got, want) << x;
    }
  }
}

TEST(DType, TiesGoToEven) {
  // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
  EXPECT_EQ(to_bf16(1.0f + std::ldexp(1.0f, -8)).bits, to_bf16(1.0f).bits);
  EXPECT_EQ(to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits, uint16_t(to_bf16(1.0f).bits + 2));
  EXPECT_EQ(to_f16(1.0f + std::ldexp(1.0f, -11)).bits, 0x3c00);
  EXPECT_EQ(to_f16(65520.f).bits, 0x7c00);  // rounds up to Inf
  EXPECT_EQ(to_f16(65519.f).bits, 0x7bff);
}

TEST(DType, NamesAndErrors) {
  EXPECT_EQ(dtype_from_name("bf16"), DType::BF16);
  EXPECT_EQ(dtype_size(DType::F16), 2u);
  EXPECT_THROW(dtype_from_name("fp8"), Error);
}

}  // namespace
}  // namespace saap
