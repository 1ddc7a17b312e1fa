// Element types of tensors and caches, with exact round-to-nearest-even conversions.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace saap {

enum class DType { F32, F16, BF16 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
DType dtype_from_name(const std::string& name);  // "f32" | "f16" | "bf16"; throws otherwise

// Storage types: plain 16-bit patterns, so that they are trivially copyable and layout-exact.
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { return bits_to_float(uint32_t(x.bits) << 16); }
float to_float(f16 x);

// Round to nearest, ties to even; NaN stays NaN (quiet), overflow goes to Inf.
inline bf16 to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x0040u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}
f16 to_f16(float f);

template <class T>
T from_float(float f);
template <>
inline float from_float<float>(float f) { return f; }
template <>
inline bf16 from_float<bf16>(float f) { return to_bf16(f); }
template <>
inline f16 from_float<f16>(float f) { return to_f16(f); }

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::F32; }
template <>
constexpr DType dtype_of<f16>() { return DType::F16; }
template <>
constexpr DType dtype_of<bf16>() { return DType::BF16; }

// Converts n elements between any two dtypes.
void convert(const void* src, DType src_type, void* dst, DType dst_type, size_t n);

// Calls fn(T{}) with T the C++ type of `t`: the single dispatch point from runtime dtype to templates.
template <class Fn>
decltype(auto) dispatch_dtype(DType t, Fn&& fn) {
  switch (t) {
    case DType::F32: return fn(float{});
    case DType::F16: return fn(f16{});
    case DType::BF16: return fn(bf16{});
  }
  return fn(float{});
}

}  // namespace saap
