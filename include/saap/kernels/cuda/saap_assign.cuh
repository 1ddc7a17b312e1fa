// Nearest-centroid assignment of keys: argmax_c k.c - ||c||^2/2 (= argmin ||k - c||), ties to the
// lowest index. Prefill scores come from a cuBLAS GEMM; decode assigns one key per block.
#pragma once
#include "saap/kernels/cuda/attend.cuh"
#include "saap/kernels/cuda/reduce.cuh"

namespace saap::cuda {

template <class T>
__device__ __forceinline__ float elem_to_float(T x);
template <>
__device__ __forceinline__ float elem_to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float elem_to_float(__half x) {
  return __half2float(x);
}

__device__ __forceinline__ void argmax_merge(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

// scores [Hkv][n][C] (GEMM output for tokens t0 .. t0+n-1 of sequence b); one warp per token.
static __global__ void argmax_scores_kernel(const float* __restrict__ scores, const float* __restrict__ half_norm, int n,
                                     int C, int n_kv_heads, int b, int64_t t0, int64_t max_len,
                                     int32_t* __restrict__ assign) {
  const int h = blockIdx.y;
  const int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (i >= n) return;
  const float* row = scores + (int64_t(h) * n + i) * C;
  const float* hn = half_norm + int64_t(h) * C;
  float best = -INFINITY;
  int arg = C;
  for (int c = lane; c < C; c += 32) argmax_merge(best, arg, row[c] - hn[c], c);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, arg, o);
    argmax_merge(best, arg, ov, oi);
  }
  if (lane == 0) assign[(int64_t(b) * n_kv_heads + h) * max_len + t0 + i] = arg;
}

// Nearest centroid of one key (kf [D] in shared memory) among fp32 centroids [c_begin, C) of one
// head; every thread of the block gets the best objective and its index. Each warp scores 8 centroids per step with all their
// loads in flight (the loop is latency bound otherwise). red_v/red_i: shared scratch of 32 each.
template <int D>
__device__ void nearest_centroid(const float* kf, const float* __restrict__ cent, const float* __restrict__ half_norm,
                                 int c_begin, int C, float* red_v, int* red_i, float& best_out, int& arg_out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  constexpr int EPL = D / 32, STEP = 8;
  float kl[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) kl[e] = kf[lane * EPL + e];
  float best = -INFINITY;
  int arg = C;
  for (int c0 = c_begin + warp * STEP; c0 < C; c0 += nw * STEP) {
    float d[STEP];
#pragma unroll
    for (int r = 0; r < STEP; ++r) {
      d[r] = 0.f;
      if (c0 + r < C) {
        const float* row = cent + int64_t(c0 + r) * D + lane * EPL;
#pragma unroll
        for (int e = 0; e < EPL; ++e) d[r] = fmaf(kl[e], row[e], d[r]);
      }
    }
#pragma unroll
    for (int r = 0; r < STEP; ++r) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) d[r] += __shfl_xor_sync(0xffffffffu, d[r], o);
      if (c0 + r < C) argmax_merge(best, arg, d[r] - half_norm[c0 + r], c0 + r);
    }
  }
  __syncthreads();
  if (lane == 0) {
    red_v[warp] = best;
    red_i[warp] = arg;
  }
  __syncthreads();
  best = -INFINITY;
  arg = C;
  for (int w = 0; w < nw; ++w) argmax_merge(best, arg, red_v[w], red_i[w]);
  best_out = best;
  arg_out = arg;
}

// (objective, index) packed so that a larger objective, then a smaller index, compares larger:
// blocks searching parts of the centroids merge with one atomicMax. 0 means "none yet".
__device__ __forceinline__ unsigned long long pack_best(float v, int c) {
  return (static_cast<unsigned long long>(float_key(v)) << 32) | ~uint32_t(c);
}
__device__ __forceinline__ int unpack_index(unsigned long long p) { return int(~uint32_t(p & 0xffffffffu)); }

}  // namespace saap::cuda
