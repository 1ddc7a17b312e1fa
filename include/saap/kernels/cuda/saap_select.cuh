// Saap routing at decode: the per-query-head MLP classifier (logits over partitions) and the
// per-KV-group top-partition selection under a lookup budget, which writes the work segments.
#pragma once
#include <cub/block/block_scan.cuh>

#include "saap/kernels/cuda/reduce.cuh"
#include "saap/kernels/cuda/saap_layout.cuh"

namespace saap::cuda {

constexpr int kClassifyRows = 128;  // logits per block: spreads W2 (the big matrix) over many SMs

// Block (logit chunk, query head, sequence): hidden = relu(W1 q + b1) (recomputed per block; W1 is
// small and L2 resident), then kClassifyRows logits = W2 hidden + b2, a warp per 4 rows at a time.
template <int D>
static __global__ void __launch_bounds__(256)
    saap_classify_kernel(const float* __restrict__ q, const __nv_bfloat16* __restrict__ w1,
                         const float* __restrict__ b1, const __nv_bfloat16* __restrict__ w2,
                         const float* __restrict__ b2, int n_q_heads, int hidden, int C, float* __restrict__ logits) {
  __shared__ float qs[D];
  __shared__ float hs[1024];
  const int hq = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = int64_t(b) * n_q_heads + hq;
  for (int j = threadIdx.x; j < D; j += blockDim.x) qs[j] = q[row * D + j];
  __syncthreads();
  constexpr int EPL = D / 32;
  float ql[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) ql[e] = qs[lane * EPL + e];
  for (int u0 = warp * 4; u0 < hidden; u0 += 32) {
    float acc[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const __nv_bfloat16* w = w1 + (int64_t(hq) * hidden + u0 + r) * D + lane * EPL;
      acc[r] = 0.f;
#pragma unroll
      for (int e = 0; e < EPL; ++e) acc[r] = fmaf(__bfloat162float(w[e]), ql[e], acc[r]);
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float s = warp_sum(acc[r]);
      if (lane == 0) hs[u0 + r] = fmaxf(0.f, s + b1[int64_t(hq) * hidden + u0 + r]);
    }
  }
  __syncthreads();
  const int c_end = min(C, (blockIdx.x + 1) * kClassifyRows);
  for (int c0 = blockIdx.x * kClassifyRows + warp * 4; c0 < c_end; c0 += 32) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int j = lane * 2; j < hidden; j += 64) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        if (c0 + r < c_end) {
          const __nv_bfloat162 w = *reinterpret_cast<const __nv_bfloat162*>(w2 + (int64_t(hq) * C + c0 + r) * hidden + j);
          const float2 f = __bfloat1622float2(w);
          acc[r] = fmaf(f.x, hs[j], fmaf(f.y, hs[j + 1], acc[r]));
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float s = warp_sum(acc[r]);
      if (lane == 0 && c0 + r < c_end) logits[row * C + c0 + r] = s + b2[int64_t(hq) * C + c0 + r];
    }
  }
}

constexpr int kSelectThreads = 1024;
constexpr int kMaxPartitions = 4096;  // keys and sizes of all partitions stay in shared memory

// Cuts [start, start + n) into segments of at most seg tokens at out[k...].
__device__ __forceinline__ int emit_range(int2* out, int k, int max_k, int start, int n, int seg) {
  for (int o = 0; o < n; o += seg, ++k)
    if (k < max_k) out[k] = make_int2(start + o, min(seg, n - o));
  return k;
}
__device__ __forceinline__ int ranges_of(int n, int seg) { return (n + seg - 1) / seg; }

// Block per (b, h). The router gives log densities s_hc (attention per key), so head h puts the
// share n_c exp(s_hc) / Z_h of its attention on partition c (n_c its keys, Z_h summed over the
// non-empty partitions). A partition is scored by log sum_h exp(s_hc - log Z_h), the group's summed
// density: the attention the shared read gains per token it spends, which is how the CPU reference
// (SaapAttention::group_scores) ranks. Partitions are taken in decreasing score while their tokens
// fit the budget (a weighted radix select: 4 passes of 8-bit digits over the order-preserving score
// keys), and the segments are written: sinks, recent window, then every selected partition's
// prefill range and append pages.
static __global__ void __launch_bounds__(kSelectThreads)
    saap_select_kernel(const float* __restrict__ logits, int n_q_heads, int G, SaapGeom g, int segment, float lookup,
                       const int32_t* __restrict__ seq_len, const int32_t* __restrict__ part_start,
                       const int32_t* __restrict__ part_count, const int32_t* __restrict__ append_pages,
                       const int32_t* __restrict__ append_count, int64_t max_segments, int2* __restrict__ segments,
                       int32_t* __restrict__ segment_count, int32_t* __restrict__ selected_tokens) {
  using Scan = cub::BlockScan<int, kSelectThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ uint32_t keys[kMaxPartitions];
  __shared__ int sizes[kMaxPartitions];
  __shared__ int hist[256];
  __shared__ float red[32];
  __shared__ float lse[8];
  __shared__ uint32_t s_prefix, s_mask;
  __shared__ long long s_need;
  const int bh = blockIdx.x, b = bh / g.n_kv_heads, h = bh % g.n_kv_heads;
  const int tid = threadIdx.x;
  const int64_t pbase = int64_t(bh) * g.C;
  const float* lg = logits + (int64_t(b) * n_q_heads + int64_t(h) * G) * g.C;

  // Z_h weighs each partition by its keys, so the sizes come first.
  float total = 0.f;
  for (int c = tid; c < g.C; c += kSelectThreads) {
    sizes[c] = part_count[pbase + c] + append_count[pbase + c];
    total += float(sizes[c]);
  }
  total = block_reduce<false>(total, red);
  for (int gi = 0; gi < G; ++gi) {
    float mx = -INFINITY;
    for (int c = tid; c < g.C; c += kSelectThreads)
      if (sizes[c]) mx = fmaxf(mx, lg[int64_t(gi) * g.C + c]);
    mx = block_reduce<true>(mx, red);
    float se = 0.f;
    for (int c = tid; c < g.C; c += kSelectThreads)
      if (sizes[c]) se += float(sizes[c]) * expf(lg[int64_t(gi) * g.C + c] - mx);
    se = block_reduce<false>(se, red);
    if (tid == 0) lse[gi] = mx + logf(se);
  }
  __syncthreads();
  for (int c = tid; c < g.C; c += kSelectThreads) {
    if (!sizes[c]) {
      keys[c] = 0;  // below every score key and the threshold, so never taken
      continue;
    }
    // Each term is at most 1/n_c, but all of them can underflow: sum relative to the largest.
    float top = -INFINITY;
    for (int gi = 0; gi < G; ++gi) top = fmaxf(top, lg[int64_t(gi) * g.C + c] - lse[gi]);
    float se = 0.f;
    for (int gi = 0; gi < G; ++gi) se += expf(lg[int64_t(gi) * g.C + c] - lse[gi] - top);
    keys[c] = float_key(top + logf(se));
  }

  const int64_t n = seq_len[bh];
  const int n_sink = int(min(int64_t(g.S), n));
  const int n_win = int(min(int64_t(g.W), max(int64_t(0), n - g.S)));
  const long long budget = max(0LL, (long long)floorf(lookup * float(n)) - n_sink - n_win);
  const bool take_all = total <= float(budget);
  if (tid == 0) {
    s_prefix = 0;
    s_mask = 0;
    s_need = budget;
  }
  __syncthreads();
  for (int shift = 24; shift >= 0 && !take_all; shift -= 8) {
    for (int i = tid; i < 256; i += kSelectThreads) hist[i] = 0;
    __syncthreads();
    const uint32_t prefix = s_prefix, mask = s_mask;
    for (int c = tid; c < g.C; c += kSelectThreads)
      if ((keys[c] & mask) == prefix && sizes[c]) atomicAdd(&hist[(keys[c] >> shift) & 255], sizes[c]);
    __syncthreads();
    if (tid < 32) {
      int d;
      long long cum;
      warp_find_digit(hist, 256, s_need, false, d, cum);
      __syncwarp();
      if (tid == 0) {
        s_need -= cum;
        s_prefix = prefix | (uint32_t(d) << shift);
        s_mask = mask | (255u << shift);
      }
    }
    __syncthreads();
  }
  const uint32_t thr = s_prefix;
  // Segments: each thread counts its selected partitions' pieces, a block scan gives offsets.
  const int fixed = ranges_of(n_sink, segment) + ranges_of(n_win, segment);
  int mine = 0, my_tokens = 0;
  for (int c = tid; c < g.C; c += kSelectThreads)
    if (take_all || keys[c] > thr) {
      const int pc = part_count[pbase + c], ac = append_count[pbase + c];
      mine += ranges_of(pc, segment) + ranges_of(ac, g.P);
      my_tokens += pc + ac;
    }
  int off, all;
  Scan(scan_tmp).ExclusiveSum(mine, off, all);
  int2* out = segments + int64_t(bh) * max_segments;
  const int max_k = int(max_segments);
  if (tid == 0) {
    int k = emit_range(out, 0, max_k, 0, n_sink, segment);
    emit_range(out, k, max_k, g.S, n_win, segment);
  }
  int k = fixed + off;
  for (int c = tid; c < g.C; c += kSelectThreads)
    if (take_all || keys[c] > thr) {
      k = emit_range(out, k, max_k, part_start[pbase + c], part_count[pbase + c], segment);
      const int ac = append_count[pbase + c];
      const int32_t* pages = append_pages + (pbase + c) * g.A;
      for (int p = 0; p * g.P < ac; ++p, ++k)
        if (k < max_k) out[k] = make_int2(pages[p], min(g.P, ac - p * g.P));
    }
  const float tok = block_reduce<false>(float(my_tokens), red);
  if (tid == 0) {
    segment_count[bh] = min(fixed + all, max_k);
    selected_tokens[bh] = int32_t(tok) + n_sink + n_win;
  }
}

}  // namespace saap::cuda
