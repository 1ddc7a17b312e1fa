// Per-head top-k selection shared by the oracle top-k (oracle_topk.h) and Loki (loki.h): both
// rank each query head's scores of its causal prefix on their own, take its k best (ties to the
// lower position, rules::ranks_before), count the union over the KV group for the K/V bytes, and
// attend each head over its own positions; they differ only in the scores (exact q.k, or q.k over
// Loki's first r PCA components). Three kernels, no host synchronisation (graph-capturable).
#pragma once
#include <cub/block/block_scan.cuh>

#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/dense_decode.cuh"
#include "saap/kernels/cuda/reduce.cuh"

namespace saap::cuda::per_head {

// The prefix length of (b, kv head) bh: lengths[bh / per] (per = n_kv_heads for [batch] lengths,
// 1 for lengths kept per (b, kv head)).
struct PrefixLengths {
  const int32_t* len;
  int per;
  __device__ int64_t of(int64_t bh) const { return len[bh / per]; }
};

// Keys of a dense cache [bh][max_len][D].
template <class T, int D>
struct DenseKeys {
  const T* k;
  int64_t max_len;
  __device__ const T* lane_base(int64_t bh, int sub) const { return k + bh * max_len * D + sub * 8; }
  __device__ int64_t stride(int) const { return D; }
};

// Keys split as Loki stores them: components [0, R) in low [bh][max_len][R], the rest in
// rest [bh][max_len][D - R] (R a multiple of 8, so a lane's 8 components lie in one of them).
template <class T, int D>
struct SplitKeys {
  const T* low;
  const T* rest;
  int R;
  int64_t max_len;
  __device__ const T* lane_base(int64_t bh, int sub) const {
    return sub * 8 < R ? low + bh * max_len * R + sub * 8 : rest + bh * max_len * (D - R) + sub * 8 - R;
  }
  __device__ int64_t stride(int sub) const { return sub * 8 < R ? R : D - R; }
};

constexpr int kScoreThreads = 256;
constexpr int kSelectThreads = 1024;
constexpr int kMaxGroup = 8;  // DecodeShape::check's largest group
constexpr int kStage = kDecodeWarps * 32;  // positions an attend block stages at a time

// The radix key of a score: order-preserving bits, with -0 read as +0 so that the bits order
// exactly as rules::ranks_before compares the floats.
static __device__ __forceinline__ uint32_t rank_bits(float s) { return float_key(s == 0.f ? 0.f : s); }

// Block (position tile, b * n_kv_heads + h): scores[b * Hq + h * G + g][p] = q_g[:DIMS] . k_p for
// every position p < the prefix length and head g of the group, in fp32, products and sums rounded
// one at a time in dimension order (the CPU methods' loops), so that the ranking sees the CPU's
// numbers. K rows [bh][max_len][DIMS]; q rows [b * Hq + hq][q_stride], the first DIMS read (the
// oracle: all of q and K; Loki: the first r PCA components of q' and of the stored keys).
template <class T, int DIMS>
static __global__ void __launch_bounds__(kScoreThreads)
    per_head_score_kernel(const T* __restrict__ K, int64_t max_len, PrefixLengths lengths,
                          const float* __restrict__ q, int q_stride, int G, float* __restrict__ scores) {
  static_assert(DIMS % 8 == 0, "keys are read 8 components at a time");
  constexpr int D = DIMS;
  __shared__ float qs[kMaxGroup][D];
  const int64_t bh = blockIdx.y;
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) qs[i / D][i % D] = q[(bh * G + i / D) * q_stride + i % D];
  __syncthreads();
  const int64_t n = lengths.of(bh);
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= n) return;
  const uint4* row = reinterpret_cast<const uint4*>(K + (bh * max_len + p) * D);
  float s[kMaxGroup];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) s[g] = 0.f;
  for (int c = 0; c < D / 8; ++c) {
    float kf[8];
    Vec8<T>::to_float(row[c], kf);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g)
        if (g < G) s[g] = __fadd_rn(s[g], __fmul_rn(qs[g][c * 8 + j], kf[j]));
  }
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g)
    if (g < G) scores[(bh * G + g) * max_len + p] = s[g];
}

// Block per (b, kv head); each head g of the group in turn:
//  1. k = budget.topk(n); unless k >= n, the k-th key in rank order by four 8-bit radix passes
//     (a histogram of the digit among the keys that share the digits found so far);
//  2. the taken positions in position order: keys above the k-th, and of the keys equal to it the
//     `need` lowest positions (rules::ranks_before: ties to the lower position). Thread t owns the
//     contiguous positions [t * per, (t + 1) * per), so two block scans (ties, then takes) give
//     each thread its ties' ranks and its output offset;
//  3. bit g of taken_by[p] marks the take; after the last head the union of the group (the K/V
//     rows the group reads once) is counted into union_count[bh].
static __global__ void __launch_bounds__(kSelectThreads)
    per_head_select_kernel(const float* __restrict__ scores, int64_t max_len, PrefixLengths lengths, int G,
                           rules::Budget budget, int32_t* __restrict__ positions,
                         int32_t* __restrict__ counts, int32_t* __restrict__ union_count,
                         uint8_t* __restrict__ taken_by) {
  using Scan = cub::BlockScan<int, kSelectThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ int s_need;
  __shared__ float red[32];
  const int64_t bh = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int64_t n = lengths.of(bh);
  const int64_t k = budget.topk(n);
  const bool all = k >= n;
  const int64_t per = (n + nt - 1) / nt;
  const int64_t p0 = min(n, tid * per), p1 = min(n, p0 + per);
  uint8_t* by = taken_by + bh * max_len;
  for (int g = 0; g < G; ++g) {
    const int64_t row = bh * G + g;
    const float* sc = scores + row * max_len;
    uint32_t prefix = 0, mask = 0;
    int need = int(k);  // keys still to take among those whose bits match prefix under mask
    if (!all) {
      for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += nt) hist[i] = 0;
        __syncthreads();
        for (int64_t p = tid; p < n; p += nt) {
          const uint32_t u = rank_bits(sc[p]);
          if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1);
        }
        __syncthreads();
        if (tid == 0) {
          int cum = 0, d = 255;
          for (; d > 0; --d) {
            if (cum + hist[d] >= need) break;
            cum += hist[d];
          }
          s_prefix = prefix | (uint32_t(d) << shift);
          s_need = need - cum;
        }
        __syncthreads();
        prefix = s_prefix;
        need = s_need;
        mask |= 255u << shift;
      }
    }
    int above = 0, ties = 0;
    if (all) {
      above = int(p1 - p0);
    } else {
      for (int64_t p = p0; p < p1; ++p) {
        const uint32_t u = rank_bits(sc[p]);
        above += u > prefix;
        ties += u == prefix;
      }
    }
    int tie_off, tie_total;
    Scan(scan_tmp).ExclusiveSum(ties, tie_off, tie_total);
    __syncthreads();  // scan_tmp is reused
    const int my_ties = max(0, min(ties, need - tie_off));
    int off, total;
    Scan(scan_tmp).ExclusiveSum(above + my_ties, off, total);
    __syncthreads();
    int32_t* out = positions + row * max_len;
    int t = tie_off;
    for (int64_t p = p0; p < p1; ++p) {
      bool take = all;
      if (!all) {
        const uint32_t u = rank_bits(sc[p]);
        if (u > prefix) {
          take = true;
        } else if (u == prefix) {
          take = t < need;
          ++t;
        }
      }
      if (take) out[off++] = int32_t(p);
      by[p] = uint8_t((g == 0 ? 0 : by[p]) | (uint32_t(take) << g));
    }
    if (tid == 0) counts[row] = total;
  }
  float mine = 0.f;
  for (int64_t p = p0; p < p1; ++p) mine += by[p] != 0;
  const float all_read = block_reduce<false>(mine, red);  // exact: at most 2^24 positions
  if (tid == 0) union_count[bh] = int32_t(all_read);
}

// Block (split, query head, b): head row r = b * Hq + hq attends to its positions
// [count * split / splits, count * (split + 1) / splits), staged kStage at a time. Keys: where a
// lane's 8 components of a key row lie (DenseKeys or SplitKeys); q is in the keys' basis.
template <class T, int D, class Keys>
static __global__ void __launch_bounds__(kDecodeWarps * 32)
    per_head_attend_kernel(Keys keys, const T* __restrict__ V, int64_t max_len,
                         const int32_t* __restrict__ positions, const int32_t* __restrict__ counts,
                         const float* __restrict__ q, int n_q_heads, int G, float scale, int splits,
                         float* __restrict__ part_out, float* __restrict__ part_lse) {
  using A = GroupAttender<T, D, 1, kDecodeWarps>;
  __shared__ typename A::Shared sh;
  __shared__ int32_t stage[kStage];
  const int split = blockIdx.x, hq = blockIdx.y, b = blockIdx.z;
  const int64_t row = int64_t(b) * n_q_heads + hq, bh = row / G;
  A at;
  at.init(q + row * D, 1, scale);
  const int64_t cnt = counts[row];
  const int64_t j0 = cnt * split / splits, j1 = cnt * (split + 1) / splits;
  const T* kb = keys.lane_base(bh, at.sub);
  const int64_t kstride = keys.stride(at.sub);
  const T* vb = V + bh * max_len * D + at.sub * 8;
  const int32_t* pos = positions + row * max_len;
  for (int64_t s0 = j0; s0 < j1; s0 += kStage) {
    const int ns = int(min(int64_t(kStage), j1 - s0));
    __syncthreads();  // the previous stage is no longer read
    if (int(threadIdx.x) < ns) stage[threadIdx.x] = pos[s0 + threadIdx.x];
    __syncthreads();
    at.run(ns, [&](int i) { return kb + int64_t(stage[i]) * kstride; }, [&](int i) { return vb + int64_t(stage[i]) * D; });
  }
  at.finish(sh, 1, part_out + (row * splits + split) * D, int64_t(splits) * D, part_lse + row * splits + split,
            splits);
}

}  // namespace saap::cuda::per_head
