// The element-wise and row-wise kernels of the Llama forward pass (see llama_ops.h).
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "saap/kernels/cuda/check.h"
#include "saap/kernels/cuda/llama_ops.h"
#include "saap/kernels/cuda/reduce.cuh"

namespace saap::cuda {
namespace {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `count` elements.
unsigned stride_blocks(int64_t count) {
  return unsigned(std::clamp<int64_t>((count + kThreads - 1) / kThreads, 1, int64_t(1) << 16));
}

__global__ void embed_kernel(const int32_t* __restrict__ tokens, const __nv_bfloat16* __restrict__ embd, int vocab,
                             int dim, float scale, float* __restrict__ x, int32_t* __restrict__ lengths) {
  const int64_t r = blockIdx.x;
  const int32_t id = tokens[r];
  const bool ok = id >= 0 && id < vocab;
  const __nv_bfloat16* e = embd + int64_t(ok ? id : 0) * dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) x[r * dim + j] = ok ? __bfloat162float(e[j]) * scale : NAN;
  if (lengths != nullptr && threadIdx.x == 0) lengths[r] += 1;
}

// One warp per row (rows are short: 576 to a few thousand features): the sum of squares needs no
// block barrier, and the row's second read (to scale it) hits L1. Rows whose width is a multiple
// of 4 (all of ours) move as float4 when the pointers are aligned; the rest element by element.
constexpr int kNormRowsPerBlock = 8;
__global__ void rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ w, int64_t rows, int dim,
                                float eps, __nv_bfloat16* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kNormRowsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;
  const float* xr = x + r * dim;
  __nv_bfloat16* orow = out + r * dim;
  const bool vec = dim % 4 == 0 && (reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(w)) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(out) % 8 == 0;
  float ss = 0.f;
  if (vec) {
#pragma unroll 4  // four loads in flight per lane: a decode step's few rows are latency-bound
    for (int j = lane; j < dim / 4; j += 32) {
      const float4 v = reinterpret_cast<const float4*>(xr)[j];
      ss = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, ss))));
    }
  } else {
    for (int j = lane; j < dim; j += 32) ss = fmaf(xr[j], xr[j], ss);
  }
  const float inv = rsqrtf(warp_sum(ss) / float(dim) + eps);
  if (vec) {
#pragma unroll 4
    for (int j = lane; j < dim / 4; j += 32) {
      const float4 v = reinterpret_cast<const float4*>(xr)[j], g = reinterpret_cast<const float4*>(w)[j];
      __nv_bfloat162* o2 = reinterpret_cast<__nv_bfloat162*>(orow + 4 * j);
      o2[0] = __floats2bfloat162_rn(v.x * inv * g.x, v.y * inv * g.y);
      o2[1] = __floats2bfloat162_rn(v.z * inv * g.z, v.w * inv * g.w);
    }
  } else {
    for (int j = lane; j < dim; j += 32) orow[j] = __float2bfloat16_rn(xr[j] * inv * w[j]);
  }
}

// One warp per row, as rms_norm_kernel: x[r] += y[r] * rsqrt(mean(y[r]²) + eps) * w.
__global__ void rms_norm_add_kernel(const float* __restrict__ y, const float* __restrict__ w, int64_t rows, int dim,
                                    float eps, float* __restrict__ x) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kNormRowsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;
  const float* yr = y + r * dim;
  float ss = 0.f;
  for (int j = lane; j < dim; j += 32) ss = fmaf(yr[j], yr[j], ss);
  const float inv = rsqrtf(warp_sum(ss) / float(dim) + eps);
  float* xr = x + r * dim;
  for (int j = lane; j < dim; j += 32) xr[j] += yr[j] * inv * w[j];
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// One block per token row (b, t). Work items: the D/2 dimension pairs of every query and key head
// (rotated when pair < n_rot/2, copied otherwise), then the D values of every value head.
// With QK-norm (norm.q_weight set), the block first computes the inverse RMS of each of its
// Hq + Hkv query and key heads (one warp per head, into dynamic shared memory) and scales every
// element by it and by the head's weight before rotating.
template <class TQ>
__global__ void rope_split_kernel(QkvLayout s, const __nv_bfloat16* __restrict__ qkv, RopeTable rope, int64_t pos0,
                                  const int32_t* __restrict__ lengths, TQ* __restrict__ q,
                                  __nv_bfloat16* __restrict__ kc, __nv_bfloat16* __restrict__ vc, QkNorm norm) {
  extern __shared__ float inv_rms[];  // [Hq + Hkv] with QK-norm
  const int64_t row = blockIdx.x;  // b * n + t
  const int b = int(row / s.n);
  const int64_t t = row % s.n;
  const int64_t pos = (lengths ? int64_t(lengths[b]) - s.n : pos0) + t;
  if (pos < 0 || pos >= s.max_len || pos >= rope.max_pos) return;
  const int D = s.head_dim, half = D / 2, rot_pairs = rope.n_rot / 2;
  const int64_t width = int64_t(s.n_q_heads + 2 * s.n_kv_heads) * D;
  const __nv_bfloat16* in = qkv + row * width;
  const float2* cs = rope.cos_sin + pos * rot_pairs;
  const int pair_items = (s.n_q_heads + s.n_kv_heads) * half;
  const bool qk_norm = norm.q_weight != nullptr;
  if (qk_norm) {  // the early return above is per block (pos is the row's), so every thread gets here
    const int lane = threadIdx.x & 31;
    for (int head = threadIdx.x >> 5; head < s.n_q_heads + s.n_kv_heads; head += blockDim.x >> 5) {
      const __nv_bfloat16* src = in + int64_t(head) * D;
      float ss = 0.f;
      for (int d = lane; d < D; d += 32) {
        const float x = __bfloat162float(src[d]);
        ss = fmaf(x, x, ss);
      }
      ss = warp_sum(ss);
      if (lane == 0) inv_rms[head] = rsqrtf(ss / float(D) + norm.eps);
    }
    __syncthreads();
  }
  for (int j = threadIdx.x; j < pair_items; j += blockDim.x) {
    const int head = j / half, i = j % half;  // head < Hq: a query head, else key head head - Hq
    int a = 2 * i, bdim = 2 * i + 1;
    float c = 1.f, sn = 0.f;
    if (i < rot_pairs) {
      if (rope.neox) {
        a = i;
        bdim = i + rot_pairs;
      }
      c = cs[i].x;
      sn = cs[i].y;
    }
    const __nv_bfloat16* src = in + int64_t(head) * D;  // key heads follow the query heads in qkv
    float x0 = __bfloat162float(src[a]), x1 = __bfloat162float(src[bdim]);
    if (qk_norm) {
      const float* w = head < s.n_q_heads ? norm.q_weight : norm.k_weight;
      x0 *= inv_rms[head] * w[a];
      x1 *= inv_rms[head] * w[bdim];
      if (norm.normed) {
        __nv_bfloat16* dst = norm.normed + row * width + int64_t(head) * D;
        dst[a] = __float2bfloat16_rn(x0);
        dst[bdim] = __float2bfloat16_rn(x1);
      }
    }
    const float y0 = x0 * c - x1 * sn, y1 = x0 * sn + x1 * c;
    if (head < s.n_q_heads) {
      TQ* dst = q + (row * s.n_q_heads + head) * D;
      store(dst + a, y0);
      store(dst + bdim, y1);
    } else {
      const int h = head - s.n_q_heads;
      __nv_bfloat16* dst = kc + ((int64_t(b) * s.n_kv_heads + h) * s.max_len + pos) * D;
      dst[a] = __float2bfloat16_rn(y0);
      dst[bdim] = __float2bfloat16_rn(y1);
    }
  }
  const __nv_bfloat16* vin = in + int64_t(s.n_q_heads + s.n_kv_heads) * D;
  for (int j = threadIdx.x; j < s.n_kv_heads * D; j += blockDim.x) {
    const int h = j / D, d = j % D;
    vc[((int64_t(b) * s.n_kv_heads + h) * s.max_len + pos) * D + d] = vin[j];
  }
}

// Each thread takes one pair of adjacent features (n_ff is even); a row spans blocks_per_row
// blocks, so a decode step's few rows still spread over several SMs.
__global__ void swiglu_kernel(const __nv_bfloat16* __restrict__ gu, int n_ff, int blocks_per_row,
                              __nv_bfloat16* __restrict__ h) {
  const int64_t r = blockIdx.x / unsigned(blocks_per_row);
  const int j = int(blockIdx.x % unsigned(blocks_per_row)) * blockDim.x + threadIdx.x;  // pair index
  if (j >= n_ff / 2) return;
  const __nv_bfloat162* g = reinterpret_cast<const __nv_bfloat162*>(gu + r * 2 * n_ff);
  const __nv_bfloat162* u = reinterpret_cast<const __nv_bfloat162*>(gu + r * 2 * n_ff + n_ff);
  const float2 gf = __bfloat1622float2(g[j]), uf = __bfloat1622float2(u[j]);
  reinterpret_cast<__nv_bfloat162*>(h + r * n_ff)[j] =
      __floats2bfloat162_rn(gf.x / (1.f + expf(-gf.x)) * uf.x, gf.y / (1.f + expf(-gf.y)) * uf.y);
}

// As swiglu_kernel, with GELU-tanh for SiLU.
__global__ void geglu_kernel(const __nv_bfloat16* __restrict__ gu, int n_ff, __nv_bfloat16* __restrict__ h) {
  const int64_t r = blockIdx.x;
  const __nv_bfloat162* g = reinterpret_cast<const __nv_bfloat162*>(gu + r * 2 * n_ff);
  const __nv_bfloat162* u = reinterpret_cast<const __nv_bfloat162*>(gu + r * 2 * n_ff + n_ff);
  __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(h + r * n_ff);
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  for (int j = threadIdx.x; j < n_ff / 2; j += blockDim.x) {
    const float2 gf = __bfloat1622float2(g[j]), uf = __bfloat1622float2(u[j]);
    const float a = 0.5f * gf.x * (1.f + tanhf(k * (gf.x + 0.044715f * gf.x * gf.x * gf.x)));
    const float b = 0.5f * gf.y * (1.f + tanhf(k * (gf.y + 0.044715f * gf.y * gf.y * gf.y)));
    out[j] = __floats2bfloat162_rn(a * uf.x, b * uf.y);
  }
}

__global__ void to_bf16_kernel(const float* __restrict__ in, int64_t count, __nv_bfloat16* __restrict__ out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}

// (value, id) ordering of argmax: larger value wins, then the lower id; NaN (id -1) never wins.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  if (i < 0) return false;
  if (bi < 0) return true;
  return v > bv || (v == bv && i < bi);
}

constexpr int kArgmaxThreads = 1024;
__global__ void argmax_kernel(const float* __restrict__ logits, int vocab, int32_t* __restrict__ tokens) {
  __shared__ float sv[kArgmaxThreads];
  __shared__ int si[kArgmaxThreads];
  const float* l = logits + int64_t(blockIdx.x) * vocab;
  float bv = -INFINITY;
  int bi = -1;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = l[j];
    if (!isnan(v) && better(v, j, bv, bi)) {
      bv = v;
      bi = j;
    }
  }
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o && better(sv[threadIdx.x + o], si[threadIdx.x + o], sv[threadIdx.x], si[threadIdx.x])) {
      sv[threadIdx.x] = sv[threadIdx.x + o];
      si[threadIdx.x] = si[threadIdx.x + o];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) tokens[blockIdx.x] = si[0];
}

constexpr int kNllThreads = 512;
__global__ void prompt_nll_kernel(const float* __restrict__ logits, int vocab, PromptRows p, float* __restrict__ nll) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x, rr = p.r0 + row;
  const int64_t b = rr / p.cn, pos = p.t0 + rr % p.cn;
  const float* l = logits + row * vocab;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, l[j]);
  mx = block_reduce<true>(mx, red);
  float sum = 0.f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) sum += expf(l[j] - mx);
  sum = block_reduce<false>(sum, red);
  if (threadIdx.x == 0) {
    const int32_t target = pos + 1 < p.n ? p.prompt[b * p.n + pos + 1] : -1;
    nll[b * p.n + pos] = target >= 0 && target < vocab ? mx + logf(sum) - l[target] : NAN;
  }
}

void check_rows(int64_t rows, const char* func) {
  if (rows < 1 || rows > int64_t(INT32_MAX))
    fail(ErrorKind::InvalidArgument, func, "rows = %lld must be in [1, 2^31)", (long long)rows);
}

}  // namespace

void embed_rows(const int32_t* tokens, const __nv_bfloat16* embd, int vocab, int dim, int64_t rows, float* x,
                int32_t* lengths, cudaStream_t stream, float scale) {
  check_rows(rows, __func__);
  embed_kernel<<<unsigned(rows), 128, 0, stream>>>(tokens, embd, vocab, dim, scale, x, lengths);
  SAAP_CU_LAUNCHED();
}

void rms_norm_rows(const float* x, const float* weight, int64_t rows, int dim, float eps, __nv_bfloat16* out,
                   cudaStream_t stream) {
  check_rows(rows, __func__);
  rms_norm_kernel<<<unsigned((rows + kNormRowsPerBlock - 1) / kNormRowsPerBlock), kNormRowsPerBlock * 32, 0, stream>>>(
      x, weight, rows, dim, eps, out);
  SAAP_CU_LAUNCHED();
}

void rms_norm_add_rows(const float* y, const float* weight, int64_t rows, int dim, float eps, float* x,
                       cudaStream_t stream) {
  check_rows(rows, __func__);
  rms_norm_add_kernel<<<unsigned((rows + kNormRowsPerBlock - 1) / kNormRowsPerBlock), kNormRowsPerBlock * 32, 0,
                        stream>>>(y, weight, rows, dim, eps, x);
  SAAP_CU_LAUNCHED();
}

namespace {
template <class TQ>
void rope_split_impl(const QkvLayout& s, const __nv_bfloat16* qkv, const RopeTable& rope, int64_t pos0,
                     const int32_t* lengths, TQ* q, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                     cudaStream_t stream, const QkNorm* qk_norm, const char* func) {
  const int64_t rows = int64_t(s.batch) * s.n;
  check_rows(rows, func);
  if (s.head_dim % 2 != 0 || rope.n_rot % 2 != 0 || rope.n_rot > s.head_dim || rope.n_rot < 2)
    fail(ErrorKind::InvalidArgument, func, "head_dim = %d, n_rot = %d: n_rot must be even and in [2, head_dim]",
         s.head_dim, rope.n_rot);
  QkNorm norm;
  size_t smem = 0;
  if (qk_norm) {
    if (!qk_norm->q_weight || !qk_norm->k_weight || !(qk_norm->eps > 0))
      fail(ErrorKind::InvalidArgument, func, "QK-norm needs both weights and eps > 0 (eps = %g)", qk_norm->eps);
    norm = *qk_norm;
    smem = size_t(s.n_q_heads + s.n_kv_heads) * sizeof(float);
  }
  rope_split_kernel<TQ><<<unsigned(rows), 128, smem, stream>>>(s, qkv, rope, pos0, lengths, q, k_cache, v_cache, norm);
  SAAP_CU_LAUNCHED();
}
}  // namespace

void rope_split_qkv(const QkvLayout& s, const __nv_bfloat16* qkv, const RopeTable& rope, int64_t pos0,
                    const int32_t* lengths, float* q, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                    cudaStream_t stream, const QkNorm* qk_norm) {
  rope_split_impl(s, qkv, rope, pos0, lengths, q, k_cache, v_cache, stream, qk_norm, __func__);
}
void rope_split_qkv(const QkvLayout& s, const __nv_bfloat16* qkv, const RopeTable& rope, int64_t pos0,
                    const int32_t* lengths, __nv_bfloat16* q, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                    cudaStream_t stream, const QkNorm* qk_norm) {
  rope_split_impl(s, qkv, rope, pos0, lengths, q, k_cache, v_cache, stream, qk_norm, __func__);
}

void swiglu_rows(const __nv_bfloat16* gate_up, int64_t rows, int n_ff, __nv_bfloat16* h, cudaStream_t stream) {
  check_rows(rows, __func__);
  if (n_ff < 2 || n_ff % 2 != 0) fail(ErrorKind::InvalidArgument, __func__, "n_ff = %d must be even and >= 2", n_ff);
  const int blocks_per_row = (n_ff / 2 + kThreads - 1) / kThreads;
  if (rows * blocks_per_row > int64_t(INT32_MAX))
    fail(ErrorKind::InvalidArgument, __func__, "rows = %lld x n_ff = %d is too many", (long long)rows, n_ff);
  swiglu_kernel<<<unsigned(rows * blocks_per_row), kThreads, 0, stream>>>(gate_up, n_ff, blocks_per_row, h);
  SAAP_CU_LAUNCHED();
}

void geglu_rows(const __nv_bfloat16* gate_up, int64_t rows, int n_ff, __nv_bfloat16* h, cudaStream_t stream) {
  check_rows(rows, __func__);
  if (n_ff < 2 || n_ff % 2 != 0) fail(ErrorKind::InvalidArgument, __func__, "n_ff = %d must be even and >= 2", n_ff);
  geglu_kernel<<<unsigned(rows), kThreads, 0, stream>>>(gate_up, n_ff, h);
  SAAP_CU_LAUNCHED();
}

void to_bf16(const float* in, int64_t count, __nv_bfloat16* out, cudaStream_t stream) {
  check_rows(count, __func__);
  to_bf16_kernel<<<stride_blocks(count), kThreads, 0, stream>>>(in, count, out);
  SAAP_CU_LAUNCHED();
}

void argmax_rows(const float* logits, int64_t rows, int vocab, int32_t* tokens, cudaStream_t stream) {
  check_rows(rows, __func__);
  argmax_kernel<<<unsigned(rows), kArgmaxThreads, 0, stream>>>(logits, vocab, tokens);
  SAAP_CU_LAUNCHED();
}

void prompt_nll_rows(const float* logits, int64_t rows, int vocab, const PromptRows& p, float* nll,
                     cudaStream_t stream) {
  check_rows(rows, __func__);
  if (p.cn < 1 || p.n < 1 || p.prompt == nullptr)
    fail(ErrorKind::InvalidArgument, __func__, "prompt rows: n = %lld, cn = %lld, prompt = %p", (long long)p.n,
         (long long)p.cn, (const void*)p.prompt);
  prompt_nll_kernel<<<unsigned(rows), kNllThreads, 0, stream>>>(logits, vocab, p, nll);
  SAAP_CU_LAUNCHED();
}

}  // namespace saap::cuda
