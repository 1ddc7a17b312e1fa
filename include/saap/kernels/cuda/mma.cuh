// Tensor-core helpers shared by the kernels that score keys with mma.sync (Loki's low-rank scores,
// the dense decode's logits): the bf16 m16n8k16 MMA with fp32 accumulation, and the split of an
// fp32 value into bf16 terms, so that an fp32 query is carried exactly by three MMAs.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace saap::cuda {

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Two floats as bf16 (x0 in the low half: the lower k index), and the remainders x - bf16(x).
__device__ __forceinline__ uint32_t split_bf16x2(float& x0, float& x1) {
  const __nv_bfloat162 p = __floats2bfloat162_rn(x0, x1);
  x0 -= __low2float(p);
  x1 -= __high2float(p);
  return *reinterpret_cast<const uint32_t*>(&p);
}

// Word i (0..3) of a 16-byte load.
__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

}  // namespace saap::cuda
