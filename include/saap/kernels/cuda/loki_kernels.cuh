// Loki kernels: query/key rotation into the PCA basis and the storage of keys split into the
// first r components and the rest (the scoring, selection and attention are per_head_topk.cuh's).
#pragma once
#include "saap/kernels/cuda/attend.cuh"
#include "saap/kernels/cuda/saap_assign.cuh"  // elem_to_float

namespace saap::cuda {

// q_rot[row][j] = sum_i basis[h][i][j] q[row][i]; block (query head, sequence) of 4*D threads:
// group k sums inputs i = k, k+4, ... so each thread has D/4 independent loads in flight.
static __global__ void loki_rotate_q_kernel(const float* __restrict__ q, const float* __restrict__ basis, int n_q_heads,
                                            int G, int D, float* __restrict__ q_rot) {
  extern __shared__ float sm[];  // q [D], partial sums [4][D]
  float* qs = sm;
  float* part = sm + D;
  const int64_t row = int64_t(blockIdx.y) * n_q_heads + blockIdx.x;
  const float* P = basis + int64_t(blockIdx.x / G) * D * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) qs[i] = q[row * D + i];
  __syncthreads();
  const int j = threadIdx.x % D, k = threadIdx.x / D;
  float s = 0.f;
#pragma unroll 8
  for (int i = k; i < D; i += 4) s = fmaf(P[i * D + j], qs[i], s);
  part[k * D + j] = s;
  __syncthreads();
  if (k == 0) q_rot[row * D + j] = part[j] + part[D + j] + part[2 * D + j] + part[3 * D + j];
}

// Rotates and stores keys of tokens [pos0(b,h), pos0 + n) and copies their values. Block of D
// threads per (token chunk of 16, bh). src rows: k + (bh * src_stride + t - src_base) * D.
template <class T>
static __global__ void loki_store_kernel(const T* __restrict__ k, const T* __restrict__ v, int64_t src_stride,
                                  bool src_is_new, const int32_t* __restrict__ pos0, const int32_t* __restrict__ count,
                                  const float* __restrict__ basis, int n_kv_heads, int D, int R, int64_t max_len,
                                  T* __restrict__ k_low, T* __restrict__ k_rest, T* __restrict__ vout) {
  extern __shared__ float ks[];  // [16][D]
  const int bh = blockIdx.y, h = bh % n_kv_heads;
  const int64_t p0 = pos0[bh], n = count[bh];
  const int64_t i0 = int64_t(blockIdx.x) * 16;
  if (i0 >= n) return;
  const int m = int(min(int64_t(16), n - i0));
  auto src_row = [&](int64_t i) { return (int64_t(bh) * src_stride + (src_is_new ? 0 : p0 + i)) * D; };
  for (int e = threadIdx.x; e < m * D; e += blockDim.x) ks[e] = elem_to_float(k[src_row(i0 + e / D) + e % D]);
  __syncthreads();
  const float* P = basis + int64_t(h) * D * D;
  for (int j = threadIdx.x; j < D; j += blockDim.x) {
    float acc[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) acc[r] = 0.f;
    for (int i = 0; i < D; ++i) {
      const float p = P[i * D + j];
#pragma unroll
      for (int r = 0; r < 16; ++r) acc[r] = fmaf(p, ks[(r < m ? r : 0) * D + i], acc[r]);
    }
    for (int r = 0; r < m; ++r) {
      const int64_t t = p0 + i0 + r;
      const T val = T(acc[r]);
      if (j < R)
        k_low[(int64_t(bh) * max_len + t) * R + j] = val;
      else
        k_rest[(int64_t(bh) * max_len + t) * (D - R) + j - R] = val;
      vout[(int64_t(bh) * max_len + t) * D + j] = v[src_row(i0 + r) + j];
    }
  }
}

// Splits rotated keys into k_low / k_rest and copies values, 16 bytes per thread.
static __global__ void loki_split_kernel(const uint4* __restrict__ k, const uint4* __restrict__ v, int64_t src_stride,
                                         const int32_t* __restrict__ count, int D, int R, int64_t max_len,
                                         uint4* __restrict__ k_low, uint4* __restrict__ k_rest, uint4* __restrict__ vout) {
  const int bh = blockIdx.y, vpr = D / 8, lo = R / 8;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t t = i / vpr;
  const int e = int(i % vpr);
  if (t >= count[bh]) return;
  const int64_t src = (int64_t(bh) * src_stride + t) * vpr + e;
  const int64_t row = int64_t(bh) * max_len + t;
  if (e < lo)
    k_low[row * lo + e] = k[src];
  else
    k_rest[row * (vpr - lo) + e - lo] = k[src];
  vout[row * vpr + e] = v[src];
}

}  // namespace saap::cuda

namespace saap::cuda {

// seq_len[bh] += 1 after an append (the launcher checked that it fits).
// An append's store of one token per (b, h) at position seq_len: pos0 = seq_len, count = 1 (a
// kernel, not a copy from the host, so the append holds no host synchronisation).
static __global__ void loki_append_begin_kernel(const int32_t* __restrict__ seq_len, int32_t* __restrict__ pos0,
                                                int32_t* __restrict__ count, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    pos0[i] = seq_len[i];
    count[i] = 1;
  }
}

static __global__ void loki_advance_kernel(int32_t* __restrict__ seq_len, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) seq_len[i] += 1;
}

}  // namespace saap::cuda
