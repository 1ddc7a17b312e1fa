// Per-head top-k selection shared by the oracle top-k (oracle_topk.h) and Loki (loki.h): both
// rank each query head's scores of its causal prefix on their own, take its k best (ties to the
// lower position, rules::ranks_before), count the union over the KV group for the K/V bytes, and
// attend each head over its own positions; they differ only in the scores (exact q.k, or q.k over
// Loki's first r PCA components). Score, select (radix_topk.cuh's grid-wide radix select) and
// attend, no host synchronisation (graph-capturable).
#pragma once
#include <algorithm>

#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/dense_decode.cuh"
#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/radix_topk.cuh"

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
constexpr int kStage = kDecodeWarps * 32;  // positions an attend block stages at a time

// Block (position tile, b * n_kv_heads + h): scores[b * Hq + h * G + g][p] = q_g[:DIMS] . k_p for
// every position p < the prefix length and head g of the group, in fp32, products and sums rounded
// one at a time in dimension order (the CPU methods' loops), so that the ranking sees the CPU's
// numbers. K rows [bh][max_len][DIMS]; q rows [b * Hq + hq][q_stride], the first DIMS read (the
// oracle: all of q and K; Loki: the first r PCA components of q' and of the stored keys).
// GMAX: G bucketed (dispatch_group); the padded heads score zeros and are not stored. A thread
// issues a key row's loads (up to 8 x 16 bytes) before it uses the first: a loop that used each
// piece as it came waited a round trip per piece, and with the group as a runtime bound every head
// up to 8 was issued (Nsight Compute, rank 32, 4 heads, 128k, batch 1: 48.5 us at 82% SM
// throughput before; 30.4 us at 53% of DRAM peak since 57cb12e).
template <class T, int DIMS, int GMAX>
static __global__ void __launch_bounds__(kScoreThreads)
    per_head_score_kernel(const T* __restrict__ K, int64_t max_len, PrefixLengths lengths,
                          const float* __restrict__ q, int q_stride, int G, float* __restrict__ scores) {
  static_assert(DIMS % 8 == 0, "keys are read 8 components at a time");
  constexpr int kPieces = DIMS / 8;                   // 16-byte pieces of a key row
  constexpr int kBatch = kPieces < 8 ? kPieces : 8;  // pieces in flight at once
  __shared__ float qs[GMAX][DIMS];
  const int64_t bh = blockIdx.y;
  for (int i = threadIdx.x; i < GMAX * DIMS; i += blockDim.x) {
    const int g = i / DIMS;
    qs[g][i % DIMS] = g < G ? q[(bh * G + g) * q_stride + i % DIMS] : 0.f;
  }
  __syncthreads();
  const int64_t n = lengths.of(bh);
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= n) return;
  const uint4* row = reinterpret_cast<const uint4*>(K + (bh * max_len + p) * DIMS);
  float s[GMAX];
#pragma unroll
  for (int g = 0; g < GMAX; ++g) s[g] = 0.f;
#pragma unroll
  for (int c0 = 0; c0 < kPieces; c0 += kBatch) {
    uint4 raw[kBatch];
#pragma unroll
    for (int c = 0; c < kBatch; ++c) raw[c] = row[c0 + c];
#pragma unroll
    for (int c = 0; c < kBatch; ++c) {
      float kf[8];
      Vec8<T>::to_float(raw[c], kf);
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int g = 0; g < GMAX; ++g) s[g] = __fadd_rn(s[g], __fmul_rn(qs[g][(c0 + c) * 8 + j], kf[j]));
    }
  }
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
    if (g < G) scores[(bh * G + g) * max_len + p] = s[g];
}

// Launches per_head_score_kernel over bh_count KV groups of G heads each (arguments as there).
template <class T, int DIMS>
inline void score_per_head(const T* K, int64_t max_len, int64_t bh_count, PrefixLengths lengths, const float* q,
                           int q_stride, int G, float* scores, cudaStream_t stream) {
  const dim3 grid(unsigned((max_len + kScoreThreads - 1) / kScoreThreads), unsigned(bh_count));
  dispatch_group(G, [&](auto gmax) {
    per_head_score_kernel<T, DIMS, decltype(gmax)::value>
        <<<grid, kScoreThreads, 0, stream>>>(K, max_len, lengths, q, q_stride, G, scores);
  });
  SAAP_CU_LAUNCHED();
}

// The rows of radix_topk::select for a per-head top-k: row b * Hq + hq is query head hq of
// sequence b, whose prefix is its KV head's (row / G), and takes budget.topk(n) of it.
struct PerHeadRows {
  PrefixLengths lengths;
  int G;
  rules::Budget budget;
  __device__ int64_t n(int64_t row) const { return lengths.of(row / G); }
  __device__ int64_t k(int64_t row) const { return budget.topk(n(row)); }
};

// Each head's own top k of its scores [rows][max_len] (ties to the lower position), positions
// [rows][max_len] ascending and counts [rows]; union_count [batch * n_kv_heads]: the positions
// any head of the group took, the K/V rows the group reads once. A grid over (prefix tile, head)
// (radix_topk.cuh); no host synchronisation.
// `list` (optional): the union as a list with each position's heads (radix_topk::UnionList), for
// union_attend_kernel.
inline void select_per_head(const float* scores, int64_t max_len, int64_t rows, int G, PrefixLengths lengths,
                            const rules::Budget& budget, radix_topk::Workspace& ws, int32_t* positions,
                            int32_t* counts, int32_t* union_count, cudaStream_t stream,
                            radix_topk::UnionList list = {}) {
  radix_topk::select(scores, max_len, rows, G, PerHeadRows{lengths, G, budget}, ws, positions, counts, union_count,
                     stream, list);
}

// A split's part of an attend block's list of `count` positions, [count * split / splits,
// count * (split + 1) / splits), and where this lane's 8 components (sub) of the K and V rows of
// (b, kv head) bh lie: k(p), v(p) for position p.
template <class T, int D>
struct SplitRows {
  int64_t j0, j1;
  const T* kb;
  int64_t kstride;
  const T* vb;
  template <class Keys>
  __device__ SplitRows(const Keys& keys, const T* V, int64_t max_len, int64_t bh, int sub, int64_t count, int split,
                       int splits)
      : j0(count * split / splits),
        j1(count * (split + 1) / splits),
        kb(keys.lane_base(bh, sub)),
        kstride(keys.stride(sub)),
        vb(V + bh * max_len * D + sub * 8) {}
  __device__ const T* k(int32_t p) const { return kb + int64_t(p) * kstride; }
  __device__ const T* v(int32_t p) const { return vb + int64_t(p) * D; }
};

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
  const SplitRows<T, D> rows(keys, V, max_len, bh, at.sub, counts[row], split, splits);
  const int32_t* pos = positions + row * max_len;
  for (int64_t s0 = rows.j0; s0 < rows.j1; s0 += kStage) {
    const int ns = int(min(int64_t(kStage), rows.j1 - s0));
    __syncthreads();  // the previous stage is no longer read
    if (int(threadIdx.x) < ns) stage[threadIdx.x] = pos[s0 + threadIdx.x];
    __syncthreads();
    at.run(ns, [&](int i) { return rows.k(stage[i]); }, [&](int i) { return rows.v(stage[i]); });
  }
  at.finish(sh, 1, part_out + (row * splits + split) * D, int64_t(splits) * D, part_lse + row * splits + split,
            splits);
}

// Launches per_head_attend_kernel over a dense cache k, v [b * n_kv_heads + h][max_len][D], each
// query head q [b * Hq + hq][D] attending to its own positions [b * Hq + hq][max_len] (the first
// counts[b * Hq + hq]), into ws's partials; returns the splits for combine_splits. The grid has a
// block row per query head, so it is split as if every head had its own KV head, for the
// budget's count of a full cache (at least 1) per head. `static`: each file keeps its own count
// of resident blocks, as it did when it launched the kernel itself.
template <class T, int D>
static int attend_dense_per_head(const DecodeShape& shape, const T* k, const T* v, int64_t max_len,
                                 const int32_t* positions, const int32_t* counts, const float* q, float scale,
                                 const rules::Budget& budget, SplitWorkspace& ws, cudaStream_t stream) {
  DecodeShape head_rows = shape;
  head_rows.n_kv_heads = shape.n_q_heads;
  const int64_t expect = std::max<int64_t>(1, budget.total(max_len));
  auto* kernel = per_head_attend_kernel<T, D, DenseKeys<T, D>>;
  static const int resident = resident_blocks(reinterpret_cast<const void*>(kernel), kDecodeWarps * 32);
  const int splits = choose_splits(head_rows, expect, resident, 64);
  ws.ensure(int64_t(shape.batch) * shape.n_q_heads, splits, shape.head_dim);
  kernel<<<dim3(unsigned(splits), unsigned(shape.n_q_heads), unsigned(shape.batch)), kDecodeWarps * 32, 0, stream>>>(
      DenseKeys<T, D>{k, max_len}, v, max_len, positions, counts, q, shape.n_q_heads, shape.group(), scale, splits,
      ws.out(), ws.lse());
  SAAP_CU_LAUNCHED();
  return splits;
}

// Block (split, b * n_kv_heads + h): the G heads of the group attend over the group's union list
// [count * split / splits, count * (split + 1) / splits) (select_per_head's UnionList), each head
// to the positions its bit of the mask marks, staged union_stage<GMAX>() at a time: each K/V row is
// read once for the group, not once per head that took it. q rows [b * Hq + h * G + g] in the
// keys' basis. The next stage's positions and masks are requested before this stage is attended,
// so a stage costs its rows' round trips and not one more for its list.
// At 3-4 heads a group (GMAX 4) each warp also requests its next tile's rows before it attends
// this one (run_masked<true>; 211 registers, two blocks an SM), over stages of 512 positions, so
// that a warp's pipeline drains once in 16 tiles: at 32x8x128 the attend 4-9% faster at 128k-512k
// than without (167 registers, three blocks an SM, stages of 128), and the step 3-4%. Elsewhere the
// loop of before: at 8 heads the prefetching loop spills (255 registers; the attend 17-41% slower
// at 28x4x128), and at one head (8x8x128) its attend was 0-3% slower. Two heads were not timed
// (results/gpu_loki_attend_ab_2026-12-04_h200_9a53e5a.md).
template <int GMAX>
constexpr bool union_prefetch() {
  return GMAX == 4;
}
template <int GMAX>
constexpr int union_stage() {  // positions an attend block stages at a time
  return (union_prefetch<GMAX>() ? 4 : 1) * kDecodeWarps * 32;
}
template <class T, int D, int GMAX, class Keys>
static __global__ void __launch_bounds__(kDecodeWarps * 32, union_prefetch<GMAX>() ? 2 : GMAX < 4 ? 3 : 1)
    union_attend_kernel(Keys keys, const T* __restrict__ V, int64_t max_len, const int32_t* __restrict__ union_pos,
                        const uint8_t* __restrict__ union_mask, const int32_t* __restrict__ union_count,
                        const float* __restrict__ q, int G, float scale, int splits, float* __restrict__ part_out,
                        float* __restrict__ part_lse) {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  __shared__ typename A::Shared sh;
  constexpr int kPer = union_stage<GMAX>() / (kDecodeWarps * 32);  // stage entries a thread holds
  __shared__ int32_t stage[union_stage<GMAX>()];
  __shared__ uint8_t stage_mask[union_stage<GMAX>()];
  const int split = blockIdx.x;
  const int64_t bh = blockIdx.y, row0 = bh * G;
  A at;
  at.init(q + row0 * D, G, scale);
  const SplitRows<T, D> rows(keys, V, max_len, bh, at.sub, union_count[bh], split, splits);
  const int32_t* pos = union_pos + bh * max_len;
  const uint8_t* msk = union_mask + bh * max_len;
  // This thread's entries of the stage at s0, e = threadIdx.x + j * (the block's threads) (past the
  // split's list: left as they are, never staged).
  int32_t next_pos[kPer] = {};
  uint8_t next_mask[kPer] = {};
  auto fetch = [&](int64_t s0) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int64_t i = s0 + threadIdx.x + j * kDecodeWarps * 32;
      if (i < rows.j1) {
        next_pos[j] = pos[i];
        next_mask[j] = msk[i];
      }
    }
  };
  fetch(rows.j0);
  for (int64_t s0 = rows.j0; s0 < rows.j1; s0 += union_stage<GMAX>()) {
    const int ns = int(min(int64_t(union_stage<GMAX>()), rows.j1 - s0));
    __syncthreads();  // the previous stage is no longer read
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int e = int(threadIdx.x) + j * kDecodeWarps * 32;
      if (e < ns) {
        stage[e] = next_pos[j];
        stage_mask[e] = next_mask[j];
      }
    }
    __syncthreads();
    fetch(s0 + union_stage<GMAX>());
    at.template run_masked<union_prefetch<GMAX>()>(
        ns, [&](int i) { return rows.k(stage[i]); }, [&](int i) { return rows.v(stage[i]); },
        [&](int i) { return uint32_t(stage_mask[i]); });
  }
  at.finish(sh, G, part_out + (row0 * splits + split) * D, int64_t(splits) * D, part_lse + row0 * splits + split,
            splits);
}

}  // namespace saap::cuda::per_head
