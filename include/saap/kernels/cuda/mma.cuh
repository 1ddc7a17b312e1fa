// Tensor-core helpers shared by the kernels that score keys with mma.sync (Loki's low-rank scores,
// the decode attenders' logits): the bf16 m16n8k16 MMA with fp32 accumulation, the split of an
// fp32 value into bf16 terms, so that an fp32 query is carried exactly by three MMAs, and the
// query's fragments for a key tile.
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

// The fp32 query carried by kMmaQueryTerms bf16 terms (24 bits of mantissa).
constexpr int kMmaQueryTerms = 3;
// Key rows of one warp's tile in the decode attenders' tensor-core loops (the MMA's M or 2 x N).
constexpr int kMmaTileRows = 16;

// Which 16-byte piece (8 components) of a key row lane c = lane & 3 of a quad holds as its j-th
// (j < D / 32): a contiguous quarter (SPREAD = false: a lane's global loads of its own quarter), or
// every 4th piece (SPREAD: the four lanes of a quad read 64 contiguous bytes, so a warp's
// shared-memory reads of a row tile conflict at most 2 ways, not 4).
template <int D, bool SPREAD>
__device__ __forceinline__ int mma_key_piece(int c, int j) {
  return SPREAD ? j * 4 + c : c * (D / 32) + j;
}

// The query heads of a group as this lane's fragments for the D / 16 k-steps of q.k over a key
// tile whose lane c holds pieces mma_key_piece<D, SPREAD>(c, j): f[kb][p][e] holds components
// mma_key_piece(c, kb / 2) * 8 + 4 (kb % 2) + 2p + {0, 1} of head (lane / 4) % G, times `mult`,
// as term e of kMmaQueryTerms. These are the B columns of an MMA with keys as A (column lane / 4),
// and equally the A rows of one with keys as B (f[kb][0] is a0, f[kb][1] is a2, row lane / 4): the
// two fragments put the same elements on the same lanes. qg: the G query rows [G][D] (fp32).
template <int D, bool SPREAD>
__device__ void mma_query_fragments(const float* qg, int G, float mult, int lane,
                                    uint32_t (&f)[D / 16][2][kMmaQueryTerms]) {
  const int gr = lane >> 2, c = lane & 3;
  const float* qh = qg + (gr % G) * D;
#pragma unroll
  for (int kb = 0; kb < D / 16; ++kb)
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const int comp = mma_key_piece<D, SPREAD>(c, kb >> 1) * 8 + 4 * (kb & 1) + 2 * p;
      float x0 = qh[comp] * mult, x1 = qh[comp + 1] * mult;
#pragma unroll
      for (int e = 0; e < kMmaQueryTerms; ++e) f[kb][p][e] = split_bf16x2(x0, x1);
    }
}

}  // namespace saap::cuda
