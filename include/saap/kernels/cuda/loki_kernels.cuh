// Loki kernels: query/key rotation into the PCA basis, low-rank scoring with a fused histogram of
// the score keys' top 11 bits, and the exact top-k (threshold bin, filter, refine inside the bin).
#pragma once
#include "saap/kernels/cuda/attend.cuh"
#include "saap/kernels/cuda/reduce.cuh"
#include "saap/kernels/cuda/saap_assign.cuh"

namespace saap::cuda {

constexpr int kLokiBins = 2048;  // top 11 bits of the score key
constexpr int kLokiBinShift = 21;
constexpr int kLoki2Shift = 10;   // second level: key bits 20..10
constexpr int kLoki3Bits = 10;    // third level: key bits 9..0
constexpr int kScoreTokensPerBlock = 8192;

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

// Low-rank scores of one (b, h) chunk of tokens: s_t = max_g q'_g[:R] . k_low[t]; writes the
// scores and adds the histogram of their keys' top bits to hist[bh].
template <class T, int R, int GMAX>
static __global__ void __launch_bounds__(256)
    loki_score_kernel(const T* __restrict__ k_low, const float* __restrict__ q_rot, const int32_t* __restrict__ seq_len,
                      int n_kv_heads, int G, int D, int64_t max_len, float* __restrict__ scores,
                      int32_t* __restrict__ hist) {
  constexpr int LPT = R / 8, TPP = 32 / LPT, U = 8;  // 8 passes of loads in flight per warp
  __shared__ int sh[kLokiBins];
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
  const int64_t t0 = int64_t(blockIdx.x) * kScoreTokensPerBlock;
  const int64_t t1 = min(n, t0 + kScoreTokensPerBlock);
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
  __syncthreads();
  for (int i = threadIdx.x; i < kLokiBins; i += blockDim.x)
    if (sh[i]) atomicAdd(&hist[int64_t(bh) * kLokiBins + i], sh[i]);
}

// Finds, per (b, h), the highest bin at which the count from the top reaches k (the block loads
// the histogram, one warp scans it). bin_need[bh] = (threshold bin, tokens still needed from it).
static __global__ void loki_threshold_kernel(const int32_t* __restrict__ hist, const int32_t* __restrict__ seq_len,
                                      float k_frac, int2* __restrict__ bin_need, int32_t* __restrict__ sel_count,
                                      int32_t* __restrict__ cand_count) {
  const int bh = blockIdx.x, lane = threadIdx.x & 31;
  const int32_t* hb = hist + int64_t(bh) * kLokiBins;
  const int64_t n = seq_len[bh];
  const int64_t k = min(n, max(int64_t(1), int64_t(floorf(k_frac * float(n)))));
  __shared__ int hs[kLokiBins];
  for (int i = threadIdx.x; i < kLokiBins; i += blockDim.x) hs[i] = hb[i];
  __syncthreads();
  if (threadIdx.x >= 32) return;
  int bin;
  long long cum;
  warp_find_digit(hs, kLokiBins, k, true, bin, cum);
  if (lane == 0) bin_need[bh] = make_int2(bin, int(k - cum));
  if (lane == 0) {
    sel_count[bh] = 0;
    cand_count[bh] = 0;
  }
}

// Tokens above the threshold bin go straight to the selection, tokens in it become candidates
// (index and key). Each warp owns a contiguous run of the block's chunk: a counting pass, one
// global atomic per list per block, then a writing pass with warp-local offsets (per-warp
// atomics on one counter per (b, h) serialise at this scale).
constexpr int kFilterThreads = 256;
static __global__ void __launch_bounds__(kFilterThreads)
    loki_filter_kernel(const float* __restrict__ scores, const int32_t* __restrict__ seq_len, int64_t max_len,
                       const int2* __restrict__ bin_need, int32_t* __restrict__ sel_count, int32_t* __restrict__ sel,
                       int32_t* __restrict__ cand_count, int2* __restrict__ cand, int32_t* __restrict__ hist2) {
  constexpr int NW = kFilterThreads / 32, PER_WARP = kScoreTokensPerBlock / NW;
  __shared__ int n_sel[NW], n_cand[NW], base_sel, base_cand;
  __shared__ int h2[kLokiBins];  // candidates by the key's next 11 bits
  for (int i = threadIdx.x; i < kLokiBins; i += blockDim.x) h2[i] = 0;
  const int bh = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = seq_len[bh];
  const uint32_t bin = uint32_t(bin_need[bh].x);
  const int64_t w0 = int64_t(blockIdx.x) * kScoreTokensPerBlock + warp * PER_WARP;
  const int64_t w1 = min(n, w0 + PER_WARP);
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
      atomicAdd(&h2[(key >> kLoki2Shift) & (kLokiBins - 1)], 1);
    }
    os += __popc(ms);
    oc += __popc(mc);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kLokiBins; i += blockDim.x)
    if (h2[i]) atomicAdd(&hist2[int64_t(blockIdx.y) * kLokiBins + i], h2[i]);
}

// The `need` highest-scoring candidates of the threshold bin, in two launches. The filter already
// histogrammed their next 11 bits (hist2).
// 1. loki_refine_pass_kernel, kRefineBlocks blocks per (b, h) over the candidates: every block
//    finds the second-level digit from hist2, takes the candidates above it into the selection
//    and gathers those at it into list2 (short: one 2^-11 slice of one bin).
// 2. loki_refine_final_kernel, a block per (b, h): a 10-bit histogram of list2 fixes the exact
//    key; candidates above it are taken, ties at it first come, first served.
constexpr int kRefineBlocks = 16, kRefineThreads = 256;

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
    loki_refine_pass_kernel(int64_t max_len, const int2* __restrict__ bin_need, const int32_t* __restrict__ cand_count,
                            const int2* __restrict__ cand, const int32_t* __restrict__ hist2,
                            int32_t* __restrict__ sel_count, int32_t* __restrict__ sel, int2* __restrict__ need2_out,
                            int32_t* __restrict__ list2_count, int2* __restrict__ list2) {
  __shared__ int hist[kLokiBins];
  __shared__ int s_d2, s_need2, n_above, n_at, base_above, base_at;
  const int bh = blockIdx.y, tid = threadIdx.x;
  const int m = cand_count[bh];
  const int per = (m + kRefineBlocks - 1) / kRefineBlocks;
  const int i0 = blockIdx.x * per, i1 = min(m, i0 + per);
  const uint32_t bin = uint32_t(bin_need[bh].x);
  for (int i = tid; i < kLokiBins; i += blockDim.x) hist[i] = hist2[int64_t(bh) * kLokiBins + i];
  if (tid == 0) n_above = n_at = 0;
  __syncthreads();
  if (tid < 32) {
    int d;
    long long cum;
    warp_find_digit(hist, kLokiBins, bin_need[bh].y, true, d, cum);
    if (tid == 0) {
      s_d2 = d;
      s_need2 = bin_need[bh].y - int(cum);
      if (blockIdx.x == 0) need2_out[bh] = make_int2(d, s_need2);
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
}

static __global__ void __launch_bounds__(1024)
    loki_refine_final_kernel(int64_t max_len, const int2* __restrict__ need2_in,
                             const int32_t* __restrict__ list2_count, const int2* __restrict__ list2,
                             int32_t* __restrict__ sel_count, int32_t* __restrict__ sel) {
  constexpr int NB3 = 1 << kLoki3Bits;
  __shared__ int hist[NB3];
  __shared__ int s_d3, s_need3, s_ties, s_out, s_base;
  const int bh = blockIdx.x, tid = threadIdx.x;
  const int n2 = list2_count[bh];
  const int2* lb = list2 + int64_t(bh) * max_len;
  const int need2 = need2_in[bh].y;
  for (int i = tid; i < NB3; i += blockDim.x) hist[i] = 0;
  if (tid == 0) {
    s_ties = s_out = 0;
    s_base = sel_count[bh];  // the refine pass is done; this block is the only writer now
  }
  __syncthreads();
  for (int i = tid; i < n2; i += blockDim.x) atomicAdd(&hist[uint32_t(lb[i].y) & (NB3 - 1)], 1);
  __syncthreads();
  if (tid < 32) {
    int d;
    long long cum;
    warp_find_digit(hist, NB3, need2, true, d, cum);
    if (tid == 0) {
      s_d3 = d;
      s_need3 = need2 - int(cum);
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
      c = lb[i];
      const uint32_t low = uint32_t(c.y) & (NB3 - 1);  // the higher bits are equal in list2
      take = low > low3;
      if (low == low3) take = atomicAdd(&s_ties, 1) < need3;
    }
    warp_emit(take, c.x, &s_out, out);
  }
  __syncthreads();
  if (tid == 0) sel_count[bh] = s_base + s_out;
}

}  // namespace saap::cuda

namespace saap::cuda {

// seq_len[bh] += 1 after an append (the launcher checked that it fits).
static __global__ void loki_advance_kernel(int32_t* __restrict__ seq_len, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) seq_len[i] += 1;
}

}  // namespace saap::cuda
