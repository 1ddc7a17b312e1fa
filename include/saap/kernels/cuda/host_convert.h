// Host-side rounding of fp32 to the 16-bit storage types (round to nearest even), via CUDA's own
// conversions so host and device agree bit for bit.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "saap/core/dtype.h"

namespace saap::cuda {

inline uint16_t float_to_bits16(float f, DType t) {
  uint16_t u;
  if (t == DType::F16) {
    const __half h = __float2half_rn(f);
    std::memcpy(&u, &h, 2);
  } else {
    const __nv_bfloat16 b = __float2bfloat16_rn(f);
    std::memcpy(&u, &b, 2);
  }
  return u;
}
inline float bits16_to_float(uint16_t u, DType t) {
  if (t == DType::F16) {
    __half h;
    std::memcpy(&h, &u, 2);
    return __half2float(h);
  }
  __nv_bfloat16 b;
  std::memcpy(&b, &u, 2);
  return __bfloat162float(b);
}
inline std::vector<uint16_t> round_to_bits16(const std::vector<float>& v, DType t) {
  std::vector<uint16_t> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = float_to_bits16(v[i], t);
  return r;
}

}  // namespace saap::cuda
