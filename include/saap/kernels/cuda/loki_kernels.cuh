// Loki kernels: query/key rotation into the PCA basis, low-rank scoring with a fused histogram of
// the score keys' top 11 bits (tensor cores for bf16 keys at rank 16/32), and the exact top-k
// (threshold bin at the end of scoring, filter, refine inside the bin).
#pragma once
#include "saap/kernels/cuda/attend.cuh"
#include "saap/kernels/cuda/mma.cuh"
#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/reduce.cuh"
#include "saap/kernels/cuda/saap_assign.cuh"

namespace saap::cuda {

// 11 first-level bits: 13 cut the threshold bin's candidates 4x (refine -11 us at 512k) but
// zeroing, flushing and scanning 8192 bins per scoring block cost more (+16 us, H100).
constexpr int kLokiBins = 2048;  // first level: top 11 bits of the score key
constexpr int kLokiBinShift = 21;
constexpr int kLoki2Bins = 2048, kLoki2Shift = 10;  // second level: key bits 20..10
constexpr int kLoki3Bits = 10;                      // third level: key bits 9..0

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

// Shared end of the scoring kernels: the block adds its histogram to hist[bh]; the last block of
// (b, h) to finish (a counter, not a second launch: that launch was a dependent step of bh tiny
// blocks) finds the threshold bin, i.e. the highest bin at which the count from the top reaches k,
// and leaves hist[bh] and its counter zeroed for the next call. bin_need[bh] = (threshold bin,
// tokens still needed from it); the selection and candidate counts restart at 0.
__device__ inline void loki_score_finish(int* sh, int32_t* __restrict__ hist, uint32_t* __restrict__ done, int64_t n,
                                         double k_frac, int2* __restrict__ bin_need, int32_t* __restrict__ sel_count,
                                         int32_t* __restrict__ cand_count) {
  __shared__ bool last;
  const int bh = blockIdx.y;
  int32_t* hb = hist + int64_t(bh) * kLokiBins;
  __syncthreads();
  for (int i = threadIdx.x; i < kLokiBins; i += blockDim.x)
    if (sh[i]) atomicAdd(&hb[i], sh[i]);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&done[bh], 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = threadIdx.x; i < kLokiBins; i += blockDim.x) {
    sh[i] = __ldcg(&hb[i]);  // from L2, where the other blocks' atomics landed
    hb[i] = 0;
  }
  __syncthreads();
  if (threadIdx.x >= 32) return;
  const int64_t k = rules::loki_keys(k_frac, n);
  int bin;
  long long cum;
  warp_find_digit(sh, kLokiBins, k, true, bin, cum);
  if (threadIdx.x == 0) {
    bin_need[bh] = make_int2(bin, int(k - cum));
    sel_count[bh] = 0;
    cand_count[bh] = 0;
    done[bh] = 0;
  }
}

// Both scoring kernels and the filter take `chunk` tokens of one (b, h) per block, sized by the
// launcher so that the grid is one wave of resident blocks: a fixed chunk left a second, mostly
// idle wave (512 blocks of the scoring kernel at 512k tokens against 396 resident).

// Low-rank scores of one (b, h) chunk of tokens on the CUDA cores (f16 keys, or rank 8):
// s_t = max_g q'_g[:R] . k_low[t]; writes the scores and histograms their keys' top bits.
template <class T, int R, int GMAX>
static __global__ void __launch_bounds__(256)
    loki_score_kernel(const T* __restrict__ k_low, const float* __restrict__ q_rot, const int32_t* __restrict__ seq_len,
                      int G, int D, int64_t max_len, int64_t chunk, double k_frac, float* __restrict__ scores,
                      int32_t* __restrict__ hist, uint32_t* __restrict__ done, int2* __restrict__ bin_need,
                      int32_t* __restrict__ sel_count, int32_t* __restrict__ cand_count) {
  constexpr int LPT = R / 8, TPP = 32 / LPT, U = 8;  // 8 passes of loads in flight per warp
  __shared__ int sh[kLokiBins];
  wait_prior_grid();
  const int bh = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int sub = lane % LPT, slot = lane / LPT;
  for (int i = threadIdx.x; i < kLokiBins; i += blockDim.x) sh[i] = 0;
  float q[GMAX][8];
  const float* qb = q_rot + int64_t(bh) * G * D;  // rows of the group: (b*Hkv + h)*G == b*Hq + h*G
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
#pragma unroll
    for (int j = 0; j < 8; ++j) q[g][j] = g < G ? qb[g * D + sub * 8 + j] : -INFINITY;
  __syncthreads();
  const int64_t n = seq_len[bh];
  const int64_t t0 = int64_t(blockIdx.x) * chunk;
  const int64_t t1 = min(n, t0 + chunk);
  const T* kb = k_low + int64_t(bh) * max_len * R + sub * 8;
  for (int64_t base = t0 + warp * TPP * U; base < t1; base += int64_t(nw) * TPP * U) {
    uint4 kr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t t = base + u * TPP + slot;
      kr[u] = t < t1 ? load_stream(kb + t * R) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      Vec8<T>::to_float(kr[u], kf);
      float best = -INFINITY;
#pragma unroll
      for (int g = 0; g < GMAX; ++g) {
        if (g < G) {
          float d = 0.f;
#pragma unroll
          for (int j = 0; j < 8; ++j) d = fmaf(q[g][j], kf[j], d);
#pragma unroll
          for (int o = LPT / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
          best = fmaxf(best, d);
        }
      }
      const int64_t t = base + u * TPP + slot;
      if (sub == 0 && t < t1) {
        scores[int64_t(bh) * max_len + t] = best;
        atomicAdd(&sh[float_key(best) >> kLokiBinShift], 1);
      }
    }
  }
  loki_score_finish(sh, hist, done, n, k_frac, bin_need, sel_count, cand_count);
}

// Low-rank scores on the tensor cores (bf16 keys, rank 16 or 32). A warp scores tiles of 16 tokens
// with mma m16n8k16: A = the tile's keys [16 tokens][16 components], B = the rotated queries
// [16 components][8 columns], column n holding query head n % G (repeats leave the max over heads
// unchanged), fp32 accumulation. The dot product does not care which physical component each
// k slot holds as long as A and B agree, so each lane loads one contiguous quarter of a token row
// (R/4 components: 16-byte loads at R = 32) and B is permuted to match, instead of the fragment
// order that would cost 4-byte loads. The fp32 query is split into three bf16 terms (hi + mid +
// lo carry its 24 bits), so the scores are those of the fp32 query, not of a rounded one.
template <int W>
__device__ __forceinline__ void load_words(const void* p, uint32_t (&w)[W]);
template <>
__device__ __forceinline__ void load_words<4>(const void* p, uint32_t (&w)[4]) {
  const uint4 v = load_stream(p);
  w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
}
template <>
__device__ __forceinline__ void load_words<2>(const void* p, uint32_t (&w)[2]) {
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
}

template <int R>
static __global__ void __launch_bounds__(256)
    loki_score_mma_kernel(const __nv_bfloat16* __restrict__ k_low, const float* __restrict__ q_rot,
                          const int32_t* __restrict__ seq_len, int G, int D, int64_t max_len, int64_t chunk,
                          double k_frac,
                          float* __restrict__ scores, int32_t* __restrict__ hist, uint32_t* __restrict__ done,
                          int2* __restrict__ bin_need, int32_t* __restrict__ sel_count,
                          int32_t* __restrict__ cand_count) {
  static_assert(R == 16 || R == 32, "tensor-core scoring needs rank 16 or 32");
  constexpr int W = R / 8;   // 32-bit words of its quarter row a lane loads (R/4 components)
  constexpr int M = R / 16;  // k16 MMAs per tile
  constexpr int U = 16 / W;  // tiles whose loads are in flight together (32 words per lane)
  constexpr int TERMS = 3;
  __shared__ int sh[kLokiBins];
  wait_prior_grid();
  const int bh = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int gr = lane >> 2, c = lane & 3;  // fragment row group and column pair of this lane
  for (int i = threadIdx.x; i < kLokiBins; i += blockDim.x) sh[i] = 0;
  // Lane (gr, c) holds components [c*R/4, (c+1)*R/4) of rows gr and gr+8. In MMA m, word 2m of a
  // row sits at k = 2c, 2c+1 and word 2m+1 at k = 2c+8, 2c+9; B at those k must be the same
  // physical components of query column gr.
  uint32_t b[M][2][TERMS];
  const float* qh = q_rot + (int64_t(bh) * G + gr % G) * D + c * 2 * W;
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      float x0 = qh[4 * m + 2 * p], x1 = qh[4 * m + 2 * p + 1];
#pragma unroll
      for (int e = 0; e < TERMS; ++e) b[m][p][e] = split_bf16x2(x0, x1);
    }
  __syncthreads();
  const int64_t n = seq_len[bh];
  const int64_t t0 = int64_t(blockIdx.x) * chunk;
  const int64_t t1 = min(n, t0 + chunk);
  const __nv_bfloat16* kb = k_low + int64_t(bh) * max_len * R + c * 2 * W;
  for (int64_t base = t0 + warp * 16 * U; base < t1; base += int64_t(nw) * 16 * U) {
    uint32_t a[U][2][W];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t t = base + u * 16 + gr + 8 * h;
        if (t < t1)
          load_words<W>(kb + t * R, a[u][h]);
        else
#pragma unroll
          for (int w = 0; w < W; ++w) a[u][h][w] = 0u;
      }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float d[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int e = TERMS - 1; e >= 0; --e)  // smallest terms first
#pragma unroll
        for (int m = 0; m < M; ++m)
          mma_bf16_16816(d, a[u][0][2 * m], a[u][1][2 * m], a[u][0][2 * m + 1], a[u][1][2 * m + 1], b[m][0][e],
                         b[m][1][e]);
      // d: rows gr (d0, d1) and gr+8 (d2, d3), columns 2c, 2c+1; the row max spans the 4 lanes of gr.
      float s0 = fmaxf(d[0], d[1]), s1 = fmaxf(d[2], d[3]);
      s0 = fmaxf(s0, __shfl_xor_sync(0xffffffffu, s0, 1));
      s1 = fmaxf(s1, __shfl_xor_sync(0xffffffffu, s1, 1));
      s0 = fmaxf(s0, __shfl_xor_sync(0xffffffffu, s0, 2));
      s1 = fmaxf(s1, __shfl_xor_sync(0xffffffffu, s1, 2));
      const int64_t t = base + u * 16 + gr + (c == 2 ? 8 : 0);
      if ((c == 0 || c == 2) && t < t1) {
        const float s = c == 2 ? s1 : s0;
        scores[int64_t(bh) * max_len + t] = s;
        atomicAdd(&sh[float_key(s) >> kLokiBinShift], 1);
      }
    }
  }
  loki_score_finish(sh, hist, done, n, k_frac, bin_need, sel_count, cand_count);
}


// Tokens above the threshold bin go straight to the selection, tokens in it become candidates
// (index and key). Each warp owns a contiguous run of the block's chunk: a counting pass, one
// global atomic per list per block, then a writing pass with warp-local offsets (per-warp
// atomics on one counter per (b, h) serialise at this scale).
constexpr int kFilterThreads = 256;
static __global__ void __launch_bounds__(kFilterThreads)
    loki_filter_kernel(const float* __restrict__ scores, const int32_t* __restrict__ seq_len, int64_t max_len,
                       int64_t chunk, const int2* __restrict__ bin_need, int32_t* __restrict__ sel_count, int32_t* __restrict__ sel,
                       int32_t* __restrict__ cand_count, int2* __restrict__ cand, int32_t* __restrict__ hist2) {
  constexpr int NW = kFilterThreads / 32;
  const int64_t per_warp = chunk / NW;
  __shared__ int n_sel[NW], n_cand[NW], base_sel, base_cand;
  __shared__ int h2[kLoki2Bins];  // candidates by the key's next 11 bits
  wait_prior_grid();
  for (int i = threadIdx.x; i < kLoki2Bins; i += blockDim.x) h2[i] = 0;
  const int bh = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = seq_len[bh];
  const uint32_t bin = uint32_t(bin_need[bh].x);
  const int64_t w0 = int64_t(blockIdx.x) * chunk + warp * per_warp;
  const int64_t w1 = min(n, w0 + per_warp);
  const float* sb = scores + int64_t(bh) * max_len;
  int cs = 0, cc = 0;
#pragma unroll 8
  for (int64_t t = w0 + lane; t < w1; t += 32) {
    const uint32_t b = float_key(sb[t]) >> kLokiBinShift;
    cs += b > bin;
    cc += b == bin;
  }
  cs = int(warp_sum(float(cs)));
  cc = int(warp_sum(float(cc)));
  if (lane == 0) {
    n_sel[warp] = cs;
    n_cand[warp] = cc;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int ts = 0, tc = 0;
    for (int w = 0; w < NW; ++w) {
      const int s = n_sel[w], c = n_cand[w];
      n_sel[w] = ts;
      n_cand[w] = tc;
      ts += s;
      tc += c;
    }
    base_sel = ts ? atomicAdd(&sel_count[bh], ts) : 0;
    base_cand = tc ? atomicAdd(&cand_count[bh], tc) : 0;
  }
  __syncthreads();
  int os = base_sel + n_sel[warp], oc = base_cand + n_cand[warp];
  int32_t* so = sel + int64_t(bh) * max_len;
  int2* co = cand + int64_t(bh) * max_len;
#pragma unroll 4
  for (int64_t t0 = w0; t0 < w1; t0 += 32) {
    const int64_t t = t0 + lane;
    uint32_t key = 0, b = 0;
    if (t < w1) {
      key = float_key(sb[t]);
      b = key >> kLokiBinShift;
    }
    const unsigned ms = __ballot_sync(0xffffffffu, t < w1 && b > bin);
    const unsigned mc = __ballot_sync(0xffffffffu, t < w1 && b == bin);
    const unsigned below = (1u << lane) - 1;
    if (t < w1 && b > bin) so[os + __popc(ms & below)] = int32_t(t);
    if (t < w1 && b == bin) {
      co[oc + __popc(mc & below)] = make_int2(int(t), int(key));
      atomicAdd(&h2[(key >> kLoki2Shift) & (kLoki2Bins - 1)], 1);
    }
    os += __popc(ms);
    oc += __popc(mc);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kLoki2Bins; i += blockDim.x)
    if (h2[i]) atomicAdd(&hist2[int64_t(blockIdx.y) * kLoki2Bins + i], h2[i]);
}

// The `need` highest-scoring candidates of the threshold bin, gridDim.x blocks per (b, h) over
// the candidates (the filter already histogrammed their next 11 bits in hist2):
// 1. every block finds the second-level digit from hist2, takes the candidates above it into the
//    selection and gathers those at it into list2 (short: one 2^-11 slice of one bin);
// 2. the last block of (b, h) to finish (a counter instead of a second dependent launch) builds a
//    10-bit histogram of list2, which fixes the exact key: candidates above it are taken, ties at
//    it first come, first served. It leaves hist2, list2_count and the counter zeroed.
// The launcher fills one wave of blocks: each block's passes over its candidates are latency bound
// (16 blocks per (b, h) took 26 us at 512k tokens, batch 1, for ~80k candidates per (b, h)).
constexpr int kRefineThreads = 256;

// Warp-aggregated append of the lanes with `take` at out[base + ...]; *count is a shared counter.
__device__ __forceinline__ void warp_emit(bool take, int32_t value, int* count, int32_t* out) {
  const unsigned mt = __ballot_sync(0xffffffffu, take);
  if (!mt) return;
  const int lane = threadIdx.x & 31, leader = __ffs(mt) - 1;
  int base = 0;
  if (lane == leader) base = atomicAdd(count, __popc(mt));
  base = __shfl_sync(0xffffffffu, base, leader);
  if (take) out[base + __popc(mt & ((1u << lane) - 1))] = value;
}

static __global__ void __launch_bounds__(kRefineThreads)
    loki_refine_kernel(int64_t max_len, const int2* __restrict__ bin_need, const int32_t* __restrict__ cand_count,
                       const int2* __restrict__ cand, int32_t* __restrict__ hist2, int32_t* __restrict__ sel_count,
                       int32_t* __restrict__ sel, int32_t* __restrict__ list2_count, int2* __restrict__ list2,
                       uint32_t* __restrict__ done) {
  __shared__ int hist[kLoki2Bins];
  __shared__ int s_d2, s_need2, n_above, n_at, base_above, base_at;
  __shared__ int s_d3, s_need3, s_ties, s_out, s_base;
  __shared__ bool last;
  wait_prior_grid();
  const int bh = blockIdx.y, tid = threadIdx.x;
  const int m = cand_count[bh];
  const int per = (m + gridDim.x - 1) / gridDim.x;
  const int i0 = blockIdx.x * per, i1 = min(m, i0 + per);
  const uint32_t bin = uint32_t(bin_need[bh].x);
  int32_t* h2 = hist2 + int64_t(bh) * kLoki2Bins;
  for (int i = tid; i < kLoki2Bins; i += blockDim.x) hist[i] = h2[i];
  if (tid == 0) n_above = n_at = 0;
  __syncthreads();
  if (tid < 32) {
    int d;
    long long cum;
    warp_find_digit(hist, kLoki2Bins, bin_need[bh].y, true, d, cum);
    if (tid == 0) {
      s_d2 = d;
      s_need2 = bin_need[bh].y - int(cum);
    }
  }
  __syncthreads();
  const uint32_t pre2 = (bin << kLokiBinShift) | (uint32_t(s_d2) << kLoki2Shift);
  const uint32_t mask2 = ~0u << kLoki2Shift;
  const int2* cb = cand + int64_t(bh) * max_len;
  int ca = 0, ct = 0;
#pragma unroll 4
  for (int i = i0 + tid; i < i1; i += blockDim.x) {
    const uint32_t k = uint32_t(cb[i].y) & mask2;
    ca += k > pre2;
    ct += k == pre2;
  }
  atomicAdd(&n_above, ca);
  atomicAdd(&n_at, ct);
  __syncthreads();
  if (tid == 0) {
    base_above = n_above ? atomicAdd(&sel_count[bh], n_above) : 0;
    base_at = n_at ? atomicAdd(&list2_count[bh], n_at) : 0;
    n_above = n_at = 0;
  }
  __syncthreads();
  int32_t* so = sel + int64_t(bh) * max_len + base_above;
  int2* lo = list2 + int64_t(bh) * max_len + base_at;
  for (int j0 = i0; j0 < i1; j0 += blockDim.x) {  // block-uniform trip count: full-warp ballots
    const int i = j0 + tid;
    int2 c = make_int2(0, 0);
    uint32_t k = 0;
    if (i < i1) {
      c = cb[i];
      k = uint32_t(c.y) & mask2;
    }
    warp_emit(i < i1 && k > pre2, c.x, &n_above, so);
    const bool at = i < i1 && k == pre2;
    const unsigned mt = __ballot_sync(0xffffffffu, at);
    if (mt) {
      const int lane = tid & 31, leader = __ffs(mt) - 1;
      int base = 0;
      if (lane == leader) base = atomicAdd(&n_at, __popc(mt));
      base = __shfl_sync(0xffffffffu, base, leader);
      if (at) lo[base + __popc(mt & ((1u << lane) - 1))] = c;
    }
  }
  // Step 2, in the last block to finish.
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(&done[bh], 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  constexpr int NB3 = 1 << kLoki3Bits;
  for (int i = tid; i < NB3; i += blockDim.x) hist[i] = 0;
  for (int i = tid; i < kLoki2Bins; i += blockDim.x) h2[i] = 0;
  if (tid == 0) {
    s_ties = s_out = 0;
    s_base = __ldcg(&sel_count[bh]);  // every pass is done: this block is the only writer now
  }
  __syncthreads();
  const int n2 = __ldcg(&list2_count[bh]);
  const int2* lb = list2 + int64_t(bh) * max_len;
  for (int i = tid; i < n2; i += blockDim.x) atomicAdd(&hist[uint32_t(__ldcg(&lb[i]).y) & (NB3 - 1)], 1);
  __syncthreads();
  if (tid < 32) {
    int d;
    long long cum;
    warp_find_digit(hist, NB3, s_need2, true, d, cum);
    if (tid == 0) {
      s_d3 = d;
      s_need3 = s_need2 - int(cum);
    }
  }
  __syncthreads();
  const uint32_t low3 = uint32_t(s_d3);
  const int need3 = s_need3;
  int32_t* out = sel + int64_t(bh) * max_len + s_base;
  for (int j0 = 0; j0 < n2; j0 += blockDim.x) {
    const int i = j0 + tid;
    bool take = false;
    int2 c = make_int2(0, 0);
    if (i < n2) {
      c = __ldcg(&lb[i]);
      const uint32_t low = uint32_t(c.y) & (NB3 - 1);  // the higher bits are equal in list2
      take = low > low3;
      if (low == low3) take = atomicAdd(&s_ties, 1) < need3;
    }
    warp_emit(take, c.x, &s_out, out);
  }
  __syncthreads();
  if (tid == 0) {
    sel_count[bh] = s_base + s_out;
    list2_count[bh] = 0;
    done[bh] = 0;
  }
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
