// Warp and block reductions used by the selection and classifier kernels.
#pragma once
#include <cstdint>

namespace saap::cuda {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reduction; every thread gets the result. scratch: 32 floats of shared memory.
template <bool MAX>
__device__ float block_reduce(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = MAX ? warp_max(v) : warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nw ? scratch[lane] : (MAX ? -INFINITY : 0.f);
  r = MAX ? warp_max(r) : warp_sum(r);
  return r;
}

// N block-wide reductions at once with one barrier (the sum in the order of block_reduce: lanes
// by xor, then the warps' totals by xor); every thread gets the results in v. scratch: [32][N] of
// shared memory that no other code reads or writes until the block's next barrier after this call
// (a second call on the same scratch needs a barrier between the two).
template <bool MAX, int N, class V>
__device__ void block_allreduce_n(V (&v)[N], V (*scratch)[N]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  const V none = MAX ? V(-INFINITY) : V(0);
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const V x = __shfl_xor_sync(0xffffffffu, v[i], o);
      v[i] = MAX ? (x > v[i] ? x : v[i]) : v[i] + x;
    }
  if (lane == 0)
#pragma unroll
    for (int i = 0; i < N; ++i) scratch[warp][i] = v[i];
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) {
    V r = lane < nw ? scratch[lane][i] : none;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const V x = __shfl_xor_sync(0xffffffffu, r, o);
      r = MAX ? (x > r ? x : r) : r + x;
    }
    v[i] = r;
  }
}

// Inclusive sums over the block, in thread order, of both components of v, and the block's
// totals, with one barrier. blockDim.x a multiple of 32. scratch: 32 int2 of shared memory, with
// the same rule as block_allreduce_n's.
struct BlockScan2 {
  int2 incl, total;
};
__device__ inline BlockScan2 block_inclusive_sum2(int2 v, int2* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  auto warp_scan = [&](int2 x) {
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int a = __shfl_up_sync(0xffffffffu, x.x, o), b = __shfl_up_sync(0xffffffffu, x.y, o);
      if (lane >= o) x.x += a, x.y += b;
    }
    return x;
  };
  v = warp_scan(v);
  if (lane == 31) scratch[warp] = v;
  __syncthreads();
  const int2 w = lane < nw ? scratch[lane] : make_int2(0, 0);
  const int2 wi = warp_scan(w);  // lane l: the warps up to l
  const int bx = __shfl_sync(0xffffffffu, wi.x - w.x, warp), by = __shfl_sync(0xffffffffu, wi.y - w.y, warp);
  BlockScan2 r;
  r.incl = make_int2(v.x + bx, v.y + by);
  r.total = make_int2(__shfl_sync(0xffffffffu, wi.x, 31), __shfl_sync(0xffffffffu, wi.y, 31));
  return r;
}

// Order-preserving map of a float to uint32 (larger float -> larger key).
__device__ __forceinline__ uint32_t float_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace saap::cuda
