// Saap routing at decode: the per-query-head MLP classifier (logits over partitions) and the
// per-KV-group top-partition selection under a lookup budget, which writes the work segments.
#pragma once
#include <cub/block/block_scan.cuh>

#include "saap/core/selection_rules.h"
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
constexpr int kMaxPartitions = 4096;  // keys, ids and sizes of all partitions stay in shared memory

// Cuts [start, start + n) into segments of at most seg tokens at out[k...].
__device__ __forceinline__ int emit_range(int2* out, int k, int max_k, int start, int n, int seg) {
  for (int o = 0; o < n; o += seg, ++k)
    if (k < max_k) out[k] = make_int2(start + o, min(seg, n - o));
  return k;
}
__device__ __forceinline__ int ranges_of(int n, int seg) { return (n + seg - 1) / seg; }

// Block-wide sum in double; every thread gets the result. scratch: 32 doubles of shared memory.
__device__ inline double block_sum_double(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double r = lane < nw ? scratch[lane] : 0.0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
  return r;
}

// Sorts the first `n` (a power of two) (key, id) pairs into the ranking order of selection_rules.h
// (higher key first, ties to the lower id): a bitonic network over shared memory, every thread of
// the block taking part. n <= kMaxPartitions, so at most 78 steps of one compare-exchange per
// thread and pair.
__device__ inline void bitonic_rank(float* key, int16_t* id, int n) {
  for (int k = 2; k <= n; k <<= 1)
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int o = i ^ j;
        if (o <= i) continue;
        // Segments with (i & k) == 0 end in ranking order, the others reversed; the last merge
        // (k == n) leaves the whole array in ranking order.
        const bool first_ranks = rules::ranks_before(key[i], id[i], key[o], id[o]);
        if (((i & k) == 0) != first_ranks) {
          const float tk = key[i];
          key[i] = key[o];
          key[o] = tk;
          const int16_t ti = id[i];
          id[i] = id[o];
          id[o] = ti;
        }
      }
      __syncthreads();
    }
}

using SelectScan = cub::BlockScan<int, kSelectThreads>;

// rules::fill_in_order over the ranking ids[0..C) (ids[r]: the partition at rank r), sizes[c] the
// partition sizes, min_size the smallest positive size (exact): sets taken[c] = 1 for exactly the
// partitions the sequential walk takes (taken[] zeroed by the caller). Every thread of the block
// calls it; taken[] is complete after the caller's next __syncthreads.
// Why it is the same set. Let P_r be the sum of max(size, 0) over ranks < r (non-decreasing) and f
// the first rank with P_(f+1) > budget (C if none).
//  - The walk's guard (budget - used >= smallest) only ends walks that would take nothing more:
//    any smallest <= the smallest positive size leaves the result unchanged, so fill_in_order's
//    default (1), the reference's, and min_size here all give one set.
//  - Phase 1, ranks r < f: by induction the walk has used P_r at rank r (every positive size
//    before r was taken, sizes <= 0 are skipped and add nothing); a positive size at r fits since
//    P_r + size = P_(r+1) <= budget, so it is taken. Those are the ranks with P_(r+1) <= budget,
//    a prefix because P is non-decreasing: the block scan finds it.
//  - Phase 2, ranks r >= f: the walk continues from used = P_f, left = budget - P_f; it takes the
//    next rank with 0 < size <= left and lowers left. Warp 0 walks chunks of 32 ranks in order;
//    the lowest lane with 0 < size <= left is that next take (every lane before it is one the
//    walk skips at the same left); after it, only later lanes are re-tested with the new left.
__device__ inline void fill_ranked(const int16_t* ids, const int* sizes, int C, int64_t budget, int min_size,
                                   uint8_t* taken, SelectScan::TempStorage& scan_tmp) {
  __shared__ int64_t left_at_misfit;  // budget - P_f, written by the thread holding rank f
  int64_t carry = 0;                  // P at the start of the tile
  int first_misfit = 0;               // f, the same in every thread
  for (int r0 = 0; r0 < C; r0 += kSelectThreads) {
    const int r = r0 + int(threadIdx.x);
    const int size = r < C ? max(sizes[ids[r]], 0) : 0;
    int incl, tile_sum;
    SelectScan(scan_tmp).InclusiveSum(size, incl, tile_sum);
    const bool fits = r < C && carry + incl <= budget;  // P_(r+1) <= budget
    if (fits && size > 0) taken[ids[r]] = 1;
    if (r < C && !fits && carry + incl - size <= budget) left_at_misfit = budget - (carry + incl - size);
    const int n_fit = __syncthreads_count(fits);  // also the barrier before scan_tmp is reused
    first_misfit += n_fit;
    carry += tile_sum;
    if (n_fit < kSelectThreads) break;  // the misfit (or the end) lies in this tile
  }
  // Rank 0 is the misfit when budget < 0: no thread holds P_0 = 0 <= budget, left stays budget.
  if (first_misfit == 0 && threadIdx.x == 0) left_at_misfit = budget;
  __syncthreads();
  if (threadIdx.x >= 32 || first_misfit >= C) return;  // warp 0 whole, or nobody (uniform)
  const int lane = int(threadIdx.x);
  int64_t left = left_at_misfit;
  // left < min_size: no positive size fits any more (the guard above), so stopping changes nothing.
  for (int r0 = first_misfit; r0 < C && left >= min_size; r0 += 32) {
    const int r = r0 + lane;
    const int size = r < C ? sizes[ids[r]] : 0;
    unsigned fit = __ballot_sync(0xffffffffu, size > 0 && size <= left);
    while (fit) {
      const int l = __ffs(fit) - 1;  // the walk's next take
      left -= __shfl_sync(0xffffffffu, size, l);
      if (lane == l) taken[ids[r]] = 1;
      fit = __ballot_sync(0xffffffffu, lane > l && size > 0 && size <= left);
    }
  }
}

// Block per (b, h). The router gives log densities s_hc (attention per key); the group's key for
// partition c is rules::group_log_density over its heads, each normalised by
// rules::head_log_normaliser over the non-empty partitions: the attention the shared read gains
// per token it spends, as the CPU method (SaapAttention::group_scores) ranks. The budget is
// rules::selectable_budget (sinks and window paid first); the partitions are ranked by
// rules::ranks_before (bitonic_rank) and filled by the rule of rules::fill_in_order (fill_ranked:
// a block scan for the prefix that fits, then one warp for the rest). Then the segments are
// written: sinks, recent window, then every selected partition's prefill range and append pages.
static __global__ void __launch_bounds__(kSelectThreads)
    saap_select_kernel(const float* __restrict__ logits, int n_q_heads, int G, SaapGeom g, int segment, double lookup,
                       const int32_t* __restrict__ seq_len, const int32_t* __restrict__ part_start,
                       const int32_t* __restrict__ part_count, const int32_t* __restrict__ append_pages,
                       const int32_t* __restrict__ append_count, int64_t max_segments, int2* __restrict__ segments,
                       int32_t* __restrict__ segment_count, int32_t* __restrict__ selected_tokens) {
  using Scan = SelectScan;
  __shared__ typename Scan::TempStorage scan_tmp;
  // The ranking keys are dead once sorted; the taken flags reuse their memory (48 KiB of static
  // shared memory would not hold both).
  __shared__ union {
    float keys[kMaxPartitions];
    uint8_t taken[kMaxPartitions];
  } rank_mem;
  float* keys = rank_mem.keys;
  uint8_t* taken = rank_mem.taken;
  __shared__ int16_t ids[kMaxPartitions];
  __shared__ int sizes[kMaxPartitions];
  __shared__ float red[32];
  __shared__ double dred[32];
  __shared__ float lse[8];  // G <= 8
  __shared__ int min_size;  // the smallest non-empty partition, exact (fill_ranked's early stop)
  const int bh = blockIdx.x, b = bh / g.n_kv_heads, h = bh % g.n_kv_heads;
  const int tid = threadIdx.x;
  const int64_t pbase = int64_t(bh) * g.C;
  const float* lg = logits + (int64_t(b) * n_q_heads + int64_t(h) * G) * g.C;

  // The normalisers weigh each partition by its keys, so the sizes come first.
  if (tid == 0) min_size = INT32_MAX;
  __syncthreads();
  float total = 0.f;
  int smallest = INT32_MAX;
  for (int c = tid; c < g.C; c += kSelectThreads) {
    sizes[c] = part_count[pbase + c] + append_count[pbase + c];
    total += float(sizes[c]);
    if (sizes[c] > 0) smallest = min(smallest, sizes[c]);
  }
  atomicMin(&min_size, smallest);
  total = block_reduce<false>(total, red);
  __syncthreads();
  // Each head's normaliser: the block reduces the max and the terms of rules::head_log_normaliser.
  for (int gi = 0; gi < G; ++gi) {
    const float* s = lg + int64_t(gi) * g.C;
    float mx = -INFINITY;
    for (int c = tid; c < g.C; c += kSelectThreads)
      if (sizes[c] > 0) mx = fmaxf(mx, s[c]);
    mx = block_reduce<true>(mx, red);
    double z = 0.0;
    for (int c = tid; c < g.C; c += kSelectThreads) z += rules::normaliser_term(s[c], sizes[c], mx);
    z = block_sum_double(z, dred);
    if (tid == 0) lse[gi] = rules::log_normaliser(mx, z);
  }
  __syncthreads();

  const int64_t n = seq_len[bh];
  const rules::FixedReads fixed_reads = rules::fixed_reads(n, g.S, g.W);
  const int n_sink = int(fixed_reads.sink_end);
  const int n_win = int(n - fixed_reads.window_begin);
  const int64_t budget = rules::selectable_budget(lookup, n, g.S, g.W);
  const bool take_all = total <= float(budget);
  if (take_all) {
    for (int c = tid; c < g.C; c += kSelectThreads) taken[c] = sizes[c] > 0;
  } else {
    int n_sort = 1;
    while (n_sort < g.C) n_sort <<= 1;
    for (int c = tid; c < n_sort; c += kSelectThreads) {
      ids[c] = int16_t(c);
      if (c >= g.C || !sizes[c]) {
        keys[c] = -INFINITY;  // ranked after every partition with keys, and never taken
        continue;
      }
      float s[8];
      for (int gi = 0; gi < G; ++gi) s[gi] = lg[int64_t(gi) * g.C + c];
      keys[c] = rules::group_log_density(s, 1, lse, G);
    }
    __syncthreads();
    bitonic_rank(keys, ids, n_sort);
    for (int c = tid; c < g.C; c += kSelectThreads) taken[c] = 0;
    __syncthreads();
    fill_ranked(ids, sizes, g.C, budget, min_size, taken, scan_tmp);
  }
  __syncthreads();
  // Segments: each thread counts its selected partitions' pieces, a block scan gives offsets.
  const int fixed = ranges_of(n_sink, segment) + ranges_of(n_win, segment);
  int mine = 0, my_tokens = 0;
  for (int c = tid; c < g.C; c += kSelectThreads)
    if (taken[c]) {
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
    if (taken[c]) {
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
