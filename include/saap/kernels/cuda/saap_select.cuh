// Saap routing at decode: the per-query-head MLP classifier (logits over partitions) and the
// per-KV-group top-partition selection under a lookup budget, which writes the work segments.
#pragma once
#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/async_copy.cuh"
#include "saap/kernels/cuda/launch.cuh"
#include "saap/kernels/cuda/reduce.cuh"
#include "saap/kernels/cuda/saap_layout.cuh"

namespace saap::cuda {

constexpr int kClassifyThreads = 256;
constexpr int kClassifyWarps = kClassifyThreads / 32;
constexpr int kClassifyStageBytes = 65536;     // the most of W2 a block stages (dynamic shared memory)
constexpr int kClassifyMinStageBytes = 32768;  // the least, when W2 is large enough
constexpr int kClassifyMaxRows = 256;
// Logit rows per block. Every block recomputes its head's hidden layer from W1, so fewer, larger
// blocks read less; but at batch 1 a block is a chain of round trips, and a second wave of blocks
// repeats the chain (512k on the H200, 32 query heads, C = 1024: 512 blocks of 64 rows were two
// waves, 14 us). So: the fewest rows for which the n_q_heads * ceil(C / rows) blocks fit in one
// wave of `resident` blocks, at least kClassifyMinStageBytes of W2, at most
// kClassifyStageBytes and kClassifyMaxRows.
inline int classify_rows_per_block(int C, int hidden, int n_q_heads, int resident) {
  auto rows_in = [&](int bytes) { return bytes / (4 * hidden) < kClassifyMaxRows ? bytes / (4 * hidden) : kClassifyMaxRows; };
  const int tiles = resident / n_q_heads > 1 ? resident / n_q_heads : 1;  // blocks per head in one wave
  int rows = (C + tiles - 1) / tiles;
  if (rows < rows_in(kClassifyMinStageBytes)) rows = rows_in(kClassifyMinStageBytes);
  return rows < rows_in(kClassifyStageBytes) ? rows : rows_in(kClassifyStageBytes);
}

// Block (logit chunk, query head), for every sequence of the batch in turn: hidden = relu(W1 q +
// b1) (recomputed per block; W1 is small and L2 resident), then rows_per_block logits = W2 hidden +
// b2. The weights are fp32, as the CPU router reads them. They are the same for every sequence,
// so a block stages its W2 slice once for the whole batch (it was read once per sequence).
// At batch 1 the step is a chain of memory round trips, so the weights, which no kernel of the
// step writes, are fetched before the kernel waits for the previous one (programmatic dependent
// launch): the block's W2 slice and the biases by cp.async into shared memory, the first W1 rows
// into registers, 32 bytes a lane, all in flight together. Only q waits.
template <int D>
static __global__ void __launch_bounds__(kClassifyThreads)
    saap_classify_kernel(const float* __restrict__ q, const float* __restrict__ w1, const float* __restrict__ b1,
                         const float* __restrict__ w2, const float* __restrict__ b2, int batch, int n_q_heads,
                         int hidden, int C, int rows_per_block, float* __restrict__ logits) {
  extern __shared__ __align__(16) uint4 w2s[];  // [rows_per_block * hidden / 4], dynamic
  __shared__ float qs[D];
  __shared__ float hs[1024];
  __shared__ float b1s[1024];
  __shared__ float b2s[kClassifyMaxRows];
  const int hq = blockIdx.y, tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int c0 = blockIdx.x * rows_per_block, n_rows = min(C, c0 + rows_per_block) - c0;
  const uint4* w2src = reinterpret_cast<const uint4*>(w2 + (int64_t(hq) * C + c0) * hidden);
  // Not unrolled (the compiler made 16-, 8- and 4-copy bodies of each): the kernel runs from a
  // cold instruction cache, and issuing asynchronous copies from a loop costs little.
#pragma unroll 1
  for (int i = tid; i < n_rows * hidden / 4; i += kClassifyThreads) cp_async16(&w2s[i], &w2src[i]);
#pragma unroll 1
  for (int i = tid; i < hidden; i += kClassifyThreads) cp_async4(&b1s[i], &b1[int64_t(hq) * hidden + i]);
#pragma unroll 1
  for (int i = tid; i < n_rows; i += kClassifyThreads) cp_async4(&b2s[i], &b2[int64_t(hq) * C + c0 + i]);
  // W1: a row of D weights over LPR lanes (8 weights, two 16-byte loads each), RPI rows per load,
  // U loads in flight. When one round covers every hidden unit, the rows stay in registers for
  // the whole batch.
  constexpr int LPR = D / 8, RPI = 32 / LPR, U = 8, ROWS = RPI * U, STRIDE = kClassifyWarps * ROWS;
  const int sub = lane % LPR, slot = lane / LPR;
  const bool one_round = hidden <= STRIDE;
  const float* w1h = w1 + int64_t(hq) * hidden * D + sub * 8;
  float4 w[U][2];
  auto load_w1 = [&](int r0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int r = r0 + u * RPI + slot;
      const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
      const float4* p = reinterpret_cast<const float4*>(w1h + int64_t(r) * D);
      w[u][0] = r < hidden ? p[0] : zero;
      w[u][1] = r < hidden ? p[1] : zero;
    }
  };
  load_w1(warp * ROWS);
#pragma unroll 1
  for (int i = tid; i < batch * (D / 32); i += kClassifyThreads)  // q's lines (written before this kernel) into L2
    prefetch_l2(q + (int64_t(i / (D / 32)) * n_q_heads + hq) * D + (i % (D / 32)) * 32);
  // The select kernel's blocks may be placed from now on (they wait for this grid's end anyway):
  // resident early, they prefetch their tables while this kernel works.
  allow_next_grid();
  wait_prior_grid();
  const float* w2l = reinterpret_cast<const float*>(w2s);
  for (int b = 0; b < batch; ++b) {
    const int64_t row = int64_t(b) * n_q_heads + hq;
    if (b > 0) __syncthreads();  // the previous sequence's qs and hs are no longer read
    for (int j = tid; j < D; j += kClassifyThreads) qs[j] = q[row * D + j];
    if (b == 0) cp_async_wait_all();
    __syncthreads();
    float ql[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) ql[j] = qs[sub * 8 + j];
    for (int r0 = warp * ROWS; r0 < hidden; r0 += STRIDE) {
      if (!one_round && (b > 0 || r0 != warp * ROWS)) load_w1(r0);
      float d[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float4 a = w[u][0], c = w[u][1];
        d[u] = fmaf(a.x, ql[0], fmaf(a.y, ql[1], fmaf(a.z, ql[2], fmaf(a.w, ql[3], 0.f))));
        d[u] = fmaf(c.x, ql[4], fmaf(c.y, ql[5], fmaf(c.z, ql[6], fmaf(c.w, ql[7], d[u]))));
      }
#pragma unroll
      for (int off = LPR / 2; off > 0; off >>= 1)
#pragma unroll
        for (int u = 0; u < U; ++u) d[u] += __shfl_xor_sync(0xffffffffu, d[u], off);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int r = r0 + u * RPI + slot;
        if (sub == 0 && r < hidden) hs[r] = fmaxf(0.f, d[u] + b1s[r]);
      }
    }
    __syncthreads();
    // Logits from the staged slice: a warp per 4 rows at a time, the lanes over pairs of hidden units.
    for (int c = warp * 4; c < n_rows; c += kClassifyWarps * 4) {
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
      for (int j = lane * 2; j < hidden; j += 64) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          if (c + r < n_rows) {
            const float2 f = *reinterpret_cast<const float2*>(w2l + (c + r) * hidden + j);
            acc[r] = fmaf(f.x, hs[j], fmaf(f.y, hs[j + 1], acc[r]));
          }
        }
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float sum = warp_sum(acc[r]);
        if (lane == 0 && c + r < n_rows) logits[row * C + c0 + c + r] = sum + b2s[c + r];
      }
    }
  }
}

constexpr int kSelectMaxThreads = 1024;
constexpr int kMaxPartitions = 4096;  // sizes, keys and ids of all partitions stay in shared memory
constexpr int kMaxSelectGroup = 8;    // query heads per KV group the select kernel is instantiated for

// Threads of a select block for C partitions: one per partition, rounded up to a power of two (at
// least a warp; bitonic_rank4 takes up to a quarter of them), at most kSelectMaxThreads (past
// that, each thread takes every blockDim.x-th partition).
inline int select_threads(int C) {
  int t = 32;
  while (t < C && t < kSelectMaxThreads) t <<= 1;
  return t;
}

__device__ __forceinline__ int ranges_of(int n, int seg) { return (n + seg - 1) / seg; }

// The compare-exchange of one bitonic step, seen from element t holding (mk, mi) whose partner
// t ^ j holds (ok, oi): segments with (t & k) == 0 end in ranking order, the others reversed; the
// last merge (k == n) leaves the whole array in ranking order.
__device__ __forceinline__ void bitonic_keep(int t, int k, int j, float& mk, int& mi, float ok, int oi) {
  const bool lower = (t & j) == 0, ascending = (t & k) == 0;
  const bool mine_first = rules::ranks_before(mk, mi, ok, oi);
  if ((lower == ascending) != mine_first) {
    mk = ok;
    mi = oi;
  }
}

constexpr int kRankPerThread = 4;                   // (key, id) pairs a ranking thread holds
constexpr int kMinRankSize = kRankPerThread * 32;  // the ranking sorts at least one warp's worth

// Sorts the n pairs (keys[i], id i) (n a power of two, kMinRankSize..kMaxPartitions) into the
// ranking order of selection_rules.h (higher key first, ties to the lower id) and writes ids[r],
// the id at rank r. A bitonic network over the registers of threads [0, n / 4), four consecutive
// elements each: steps between a thread's own elements (j < 4) are register swaps, steps between
// lanes of one warp (j < 128) shuffles, and each run of steps across warps (j >= 128) goes through
// keys[] and ids[] in place, a pair exchanged by the thread holding its lower element, with one
// barrier among the ranking threads per step (n = 1024: 256 threads; 19 register, 30 shuffle and
// 6 shared-memory steps; one element per thread took 40 shuffle and 15 barrier steps of 32 warps).
// The other threads return at once; ids[] is complete after the caller's next __syncthreads.
// keys and ids: 16-byte aligned shared memory.
__device__ inline void bitonic_rank4(float* keys, int16_t* ids, int n) {
  constexpr int E = kRankPerThread;
  const int S = n / E, s = threadIdx.x;
  if (s >= S) return;  // whole warps: S is a multiple of 32
  float4* keys4 = reinterpret_cast<float4*>(keys);
  short4* ids4 = reinterpret_cast<short4*>(ids);
  auto sync = [&] { asm volatile("bar.sync 1, %0;" ::"r"(S) : "memory"); };
  float mk[E];
  int mi[E];
  auto unpack = [](float4 kv, short4 iv, float (&k4)[E], int (&i4)[E]) {
    k4[0] = kv.x, k4[1] = kv.y, k4[2] = kv.z, k4[3] = kv.w;
    i4[0] = iv.x, i4[1] = iv.y, i4[2] = iv.z, i4[3] = iv.w;
  };
  auto pack_keys = [](const float (&k4)[E]) { return make_float4(k4[0], k4[1], k4[2], k4[3]); };
  auto pack_ids = [](const int (&i4)[E]) {
    return make_short4(short(i4[0]), short(i4[1]), short(i4[2]), short(i4[3]));
  };
  {
    const float4 kv = keys4[s];
    mk[0] = kv.x, mk[1] = kv.y, mk[2] = kv.z, mk[3] = kv.w;
#pragma unroll
    for (int e = 0; e < E; ++e) mi[e] = E * s + e;
  }
  // Elements a < b of this thread (constants once inlined) at distance j < E.
  auto swap_own = [&](int k, int a, int b) {
    if ((((E * s + a) & k) == 0) != rules::ranks_before(mk[a], mi[a], mk[b], mi[b])) {
      const float tk = mk[a];
      mk[a] = mk[b];
      mk[b] = tk;
      const int ti = mi[a];
      mi[a] = mi[b];
      mi[b] = ti;
    }
  };
  for (int k = 2; k <= n; k <<= 1) {
    int j = k >> 1;
    if (j >= E * 32) {
      keys4[s] = pack_keys(mk);
      ids4[s] = pack_ids(mi);
      sync();
      for (; j >= E * 32; j >>= 1) {
        if (((E * s) & j) == 0) {  // the lower four of four pairs (i, i + j)
          const int o = (E * s + j) / E;
          float a[E], b[E];
          int ia[E], ib[E];
          unpack(keys4[s], ids4[s], a, ia);
          unpack(keys4[o], ids4[o], b, ib);
          const bool ascending = ((E * s) & k) == 0;
#pragma unroll
          for (int e = 0; e < E; ++e)
            if (ascending != rules::ranks_before(a[e], ia[e], b[e], ib[e])) {
              const float tk = a[e];
              a[e] = b[e];
              b[e] = tk;
              const int ti = ia[e];
              ia[e] = ib[e];
              ib[e] = ti;
            }
          keys4[s] = pack_keys(a);
          ids4[s] = pack_ids(ia);
          keys4[o] = pack_keys(b);
          ids4[o] = pack_ids(ib);
        }
        sync();
      }
      unpack(keys4[s], ids4[s], mk, mi);
    }
    for (; j >= E; j >>= 1) {
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float ok = __shfl_xor_sync(0xffffffffu, mk[e], j / E);
        const int oi = __shfl_xor_sync(0xffffffffu, mi[e], j / E);
        bitonic_keep(E * s + e, k, j, mk[e], mi[e], ok, oi);
      }
    }
    if (j == 2) {
      swap_own(k, 0, 2);
      swap_own(k, 1, 3);
    }
    swap_own(k, 0, 1);
    swap_own(k, 2, 3);
  }
  ids4[s] = pack_ids(mi);
}

// rules::fill_in_order over the ranking ids[0..C) (ids[r]: the partition at rank r), sizes[c] the
// partition sizes, min_size the smallest positive size (exact): sets taken[c] = 1 for exactly the
// partitions the sequential walk takes (taken[] zeroed by the caller). Every thread of the block
// calls it; taken[] is complete after the caller's next __syncthreads. rank_size: [C] of shared
// memory for the sizes in rank order (warp 0's walk reads one load a chunk, not two dependent
// ones). scan_scratch: as block_inclusive_sum2 needs; free again when this returns.
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
                                   uint8_t* taken, int* rank_size, int2* scan_scratch) {
  __shared__ int64_t left_at_misfit;  // budget - P_f, written by the thread holding rank f
  const int T = blockDim.x;
  int64_t carry = 0;                  // P at the start of the tile
  int first_misfit = 0;               // f, the same in every thread
  for (int r0 = 0; r0 < C; r0 += T) {
    const int r = r0 + int(threadIdx.x);
    const int size = r < C ? max(sizes[ids[r]], 0) : 0;
    const BlockScan2 scan = block_inclusive_sum2(make_int2(size, 0), scan_scratch);
    const int incl = scan.incl.x;
    const bool fits = r < C && carry + incl <= budget;  // P_(r+1) <= budget
    if (fits && size > 0) taken[ids[r]] = 1;
    if (r < C && !fits && carry + incl - size <= budget) left_at_misfit = budget - (carry + incl - size);
    if (r < C) rank_size[r] = size;
    const int n_fit = __syncthreads_count(fits);  // also the barrier before scan_scratch is reused
    first_misfit += n_fit;
    carry += scan.total.x;
    // No early exit past the misfit's tile: its sizes go to rank_size too (nothing fits there).
  }
  // Rank 0 is the misfit when budget < 0: no thread holds P_0 = 0 <= budget, left stays budget.
  if (first_misfit == 0 && threadIdx.x == 0) left_at_misfit = budget;
  __syncthreads();
  if (threadIdx.x >= 32 || first_misfit >= C) return;  // warp 0 whole, or nobody (uniform)
  const int lane = int(threadIdx.x);
  int64_t left = left_at_misfit;
  // left < min_size: no positive size fits any more (the guard above), so stopping changes nothing.
  // Each chunk's sizes are loaded while the chunk before is walked.
  int next = first_misfit + lane < C ? rank_size[first_misfit + lane] : 0;
  for (int r0 = first_misfit; r0 < C && left >= min_size; r0 += 32) {
    const int r = r0 + lane, size = next;
    next = r + 32 < C ? rank_size[r + 32] : 0;
    unsigned fit = __ballot_sync(0xffffffffu, size > 0 && size <= left);
    while (fit) {
      const int l = __ffs(fit) - 1;  // the walk's next take
      left -= __shfl_sync(0xffffffffu, size, l);
      if (lane == l) taken[ids[r]] = 1;
      fit = __ballot_sync(0xffffffffu, lane > l && size > 0 && size <= left);
    }
  }
}

// The select kernel runs from a cold instruction cache (the bench flushes L2 before each step, as a
// model's layer weights do), so its code is kept small: the double-precision rules are called, one
// copy each, from every head's unrolled step rather than inlined G times, and so is the segment
// writer from its three call sites.
static __device__ __noinline__ double normaliser_term_call(float s, int count, float mx) {
  return rules::normaliser_term(s, count, mx);
}
static __device__ __noinline__ float log_normaliser_call(float mx, double z) { return rules::log_normaliser(mx, z); }

// Writes segment k = (slot, len), which holds tokens [t, t + len) of the selection, unless k is
// past max_k, and points every attend split that starts inside it (split j starts at token
// j * per) at it: starts[j] = (k, offset).
static __device__ __noinline__ void put_segment(int2* out, int2* starts, int max_k, int per, int k, int slot, int len,
                                                int t) {
  if (k >= max_k) return;
  out[k] = make_int2(slot, len);
  for (int j = (t + per - 1) / per; int64_t(j) * per < t + len; ++j) starts[j] = make_int2(k, j * per - t);
}

// What saap_select_kernel reads and writes (SaapIndex's tables, the selection's parameters).
struct SaapSelectArgs {
  const float* logits;  // [batch][n_q_heads][C], G rows per KV group (G: the kernel's template parameter)
  int n_q_heads;
  SaapGeom g;
  int segment;
  rules::Budget budget;  // a lookup fraction or a fixed token count, per sequence on the device
  const int32_t *seq_len, *part_start, *part_count, *append_pages, *append_count;
  int64_t max_segments;
  int2* segments;
  int32_t *segment_count, *selected_tokens;
  int splits;
  int2* split_begin;
};

// Block per (b, h) of select_threads(C) threads, after the kernel that wrote the logits (the Saap
// router, or the KMeans / PartitionOracle rank kernels, which write one key per KV group: G = 1).
// The router gives log densities s_hc (attention per key); the group's key for partition c is
// rules::group_log_density over its G heads, each normalised by rules::head_log_normaliser over
// the non-empty partitions: the attention the shared read gains per token it spends, as the CPU
// method (SaapAttention::group_scores) ranks. The budget is rules::Budget::selectable (either
// form; sinks and window paid first); the partitions are ranked by rules::ranks_before
// (bitonic_rank4) and filled by the rule of
// rules::fill_in_order (fill_ranked: a block scan for the prefix that fits, then one warp for the
// rest). Then the segments are written: sinks, recent window, then every selected partition's
// prefill range and append pages. The selected tokens, numbered in segment order, are cut into
// `splits` equal runs for attend(): split j starts at token j * ceil(total / splits), at
// split_begin[bh][j] = (segment, offset), and split_begin[bh][splits] (and any split past the
// end) is (segment count, 0).
// At batch 1 the kernel is a chain of round trips and barriers, not of arithmetic, and it runs
// from a cold instruction cache: G is a template parameter so that each head's values live in
// registers (no stack frame) and the code holds no loop over absent heads. A thread's partitions
// are a loop (not unrolled: one partition per thread up to 1024), re-reading their logits (L1
// hits after the first pass) rather than holding them.
template <int G>
static __global__ void __launch_bounds__(kSelectMaxThreads) saap_select_kernel(SaapSelectArgs a) {
  __shared__ int sizes[kMaxPartitions];
  __shared__ uint8_t taken[kMaxPartitions];
  __shared__ __align__(16) int16_t ids[kMaxPartitions];  // the ranking: ids[r] is the partition at rank r
  __shared__ __align__(16) union {
    float keys[kMaxPartitions];    // each partition's ranking key
    int rank_size[kMaxPartitions];  // then (dead keys) the sizes in rank order, for the fill
  } rank_mem;
  float* keys = rank_mem.keys;
  __shared__ float max_scratch[32][G];
  __shared__ int2 count_scratch[32];  // (tokens, smallest non-empty size) per warp
  __shared__ double z_scratch[32][G];
  __shared__ int2 scan_scratch[32];
  const SaapGeom& g = a.g;
  const int C = g.C, T = blockDim.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int segment = a.segment, splits = a.splits;
  const int32_t *part_start = a.part_start, *part_count = a.part_count, *append_count = a.append_count;
  const int bh = blockIdx.x, b = bh / g.n_kv_heads, h = bh % g.n_kv_heads;
  const int64_t pbase = int64_t(bh) * C;
  const float* lg = a.logits + (int64_t(b) * a.n_q_heads + int64_t(h) * G) * C;
  // The tables (append wrote them, before the router) come into L2 while the router runs.
  if (tid < C) {
    prefetch_l2(part_count + pbase + tid);
    prefetch_l2(append_count + pbase + tid);
    prefetch_l2(part_start + pbase + tid);
    prefetch_l2(a.append_pages + (pbase + tid) * g.A);
  }
  if (tid == 0) prefetch_l2(a.seq_len + bh);
  allow_next_grid();  // attend's blocks may be placed now; they wait for this grid's end
  wait_prior_grid();
  auto load_logits = [&](int c, float (&s)[G]) {
#pragma unroll
    for (int gi = 0; gi < G; ++gi) s[gi] = __ldg(lg + int64_t(gi) * C + c);
  };

  // The thread's first partition's counts, start and first append page slot, kept for the
  // segments (C <= blockDim.x: its only one): their loads fly with the logits' instead of a round
  // trip of their own after the fill.
  const bool own = tid < C;
  const int pc0 = own ? part_count[pbase + tid] : 0, ac0 = own ? append_count[pbase + tid] : 0;
  const int start0 = own ? part_start[pbase + tid] : 0;
  const int page0 = own ? a.append_pages[(pbase + tid) * g.A] : 0;
  const int64_t n = a.seq_len[bh];

  // 1. Sizes (to shared memory), the tokens of all partitions, the smallest non-empty size, and
  //    each head's largest log density over non-empty partitions: one barrier.
  float mx[G];
#pragma unroll
  for (int gi = 0; gi < G; ++gi) mx[gi] = -INFINITY;
  int tokens = 0, smallest = INT32_MAX;  // a sequence's tokens fit an int (segments count them so)
#pragma unroll 1
  for (int c = tid; c < C; c += T) {
    float s[G];
    load_logits(c, s);  // not behind the size: both loads in flight together
    const int size = c == tid ? pc0 + ac0 : part_count[pbase + c] + append_count[pbase + c];
    sizes[c] = size;
    taken[c] = 0;
    if (size > 0) {
      tokens += size;
      smallest = min(smallest, size);
#pragma unroll
      for (int gi = 0; gi < G; ++gi) mx[gi] = fmaxf(mx[gi], s[gi]);
    }
  }
#pragma unroll
  for (int gi = 0; gi < G; ++gi) mx[gi] = warp_max(mx[gi]);
  tokens = __reduce_add_sync(0xffffffffu, tokens);
  smallest = __reduce_min_sync(0xffffffffu, smallest);
  if (lane == 0) {
#pragma unroll
    for (int gi = 0; gi < G; ++gi) max_scratch[warp][gi] = mx[gi];
    count_scratch[warp] = make_int2(tokens, smallest);
  }
  __syncthreads();  // also publishes sizes[] and taken[]
  const int nw = T >> 5;
#pragma unroll
  for (int gi = 0; gi < G; ++gi) mx[gi] = warp_max(lane < nw ? max_scratch[lane][gi] : -INFINITY);
  const int2 counts = lane < nw ? count_scratch[lane] : make_int2(0, INT32_MAX);
  tokens = __reduce_add_sync(0xffffffffu, counts.x);
  smallest = __reduce_min_sync(0xffffffffu, counts.y);

  // 2. Each head's normaliser: the terms of rules::head_log_normaliser, reduced in double.
  double z[G];
#pragma unroll
  for (int gi = 0; gi < G; ++gi) z[gi] = 0.0;
#pragma unroll 1
  for (int c = tid; c < C; c += T) {
    float s[G];
    load_logits(c, s);
    const int size = sizes[c];
#pragma unroll
    for (int gi = 0; gi < G; ++gi) z[gi] += normaliser_term_call(s[gi], size, mx[gi]);
  }
  block_allreduce_n<false>(z, z_scratch);
  // Every thread holds every head's max and sum: lane gi takes head gi's log (one call a lane, in
  // parallel, instead of G in a row) and the others read it from there.
  float head_mx = mx[0];
  double head_z = z[0];
#pragma unroll
  for (int gi = 1; gi < G; ++gi)
    if (lane == gi) head_mx = mx[gi], head_z = z[gi];
  const float head_lse = log_normaliser_call(head_mx, head_z);
  float lse[G];
#pragma unroll
  for (int gi = 0; gi < G; ++gi) lse[gi] = __shfl_sync(0xffffffffu, head_lse, gi);
  // An empty partition ranks after every partition with keys, and is never taken.
  auto key_of = [&](int c) {
    float s[G];
    load_logits(c, s);
    return sizes[c] > 0 ? rules::group_log_density(s, 1, lse, G) : -INFINITY;
  };

  // 3. Rank and fill (everything fits: take every non-empty partition, in no order).
  const rules::FixedReads fixed_reads = rules::fixed_reads(n, g.S, g.W);
  const int n_sink = int(fixed_reads.sink_end);
  const int n_win = int(n - fixed_reads.window_begin);
  const int64_t budget = a.budget.selectable(n, g.S, g.W);
  if (tokens <= budget) {
#pragma unroll 1
    for (int c = tid; c < C; c += T) taken[c] = sizes[c] > 0;  // the thread's own partitions
  } else {
    int n_sort = kMinRankSize;
    while (n_sort < C) n_sort <<= 1;
#pragma unroll 1
    for (int c = tid; c < n_sort; c += T) keys[c] = c < C ? key_of(c) : -INFINITY;  // padding ranks last (id >= C)
    __syncthreads();
    bitonic_rank4(keys, ids, n_sort);
    __syncthreads();
    fill_ranked(ids, sizes, C, budget, smallest, taken, rank_mem.rank_size, scan_scratch);
    __syncthreads();
  }

  // 4. Segments: each thread counts its selected partitions' pieces and tokens; one block scan
  //    gives each thread its first segment and its first token.
  const int fixed = ranges_of(n_sink, segment) + ranges_of(n_win, segment);
  int mine = 0, my_tokens = 0;
#pragma unroll 1
  for (int c = tid; c < C; c += T)
    if (taken[c]) {
      const int pc = c == tid ? pc0 : part_count[pbase + c], ac = c == tid ? ac0 : append_count[pbase + c];
      mine += ranges_of(pc, segment) + ranges_of(ac, g.P);
      my_tokens += pc + ac;
    }
  const BlockScan2 scan = block_inclusive_sum2(make_int2(mine, my_tokens), scan_scratch);
  const int off = scan.incl.x - mine, all = scan.total.x;
  const int tok_off = scan.incl.y - my_tokens, tok_all = scan.total.y;
  int2* out = a.segments + int64_t(bh) * a.max_segments;
  int2* starts = a.split_begin + int64_t(bh) * (splits + 1);
  const int max_k = int(a.max_segments);
  const int n_segments = min(fixed + all, max_k);
  const int total_tokens = n_sink + n_win + tok_all;
  const int per = max(1, (total_tokens + splits - 1) / splits);
  auto put = [&](int k, int slot, int len, int t) { put_segment(out, starts, max_k, per, k, slot, len, t); };
  auto put_range = [&](int k, int start, int len, int t) {
    for (int o = 0; o < len; o += segment, ++k) put(k, start + o, min(segment, len - o), t + o);
    return k;
  };
  if (tid == 0) {
    const int k = put_range(0, 0, n_sink, 0);
    put_range(k, g.S, n_win, n_sink);
  }
  int k = fixed + off, t = n_sink + n_win + tok_off;
#pragma unroll 1
  for (int c = tid; c < C; c += T)
    if (taken[c]) {
      const int pc = c == tid ? pc0 : part_count[pbase + c], ac = c == tid ? ac0 : append_count[pbase + c];
      k = put_range(k, c == tid ? start0 : part_start[pbase + c], pc, t);
      t += pc;
      const int32_t* pages = a.append_pages + (pbase + c) * g.A;
      for (int p = 0; p * g.P < ac; ++p, ++k) {
        const int len = min(g.P, ac - p * g.P);
        put(k, p == 0 && c == tid ? page0 : pages[p], len, t);
        t += len;
      }
    }
#pragma unroll 1
  for (int j = tid; j <= splits; j += T)
    if (int64_t(j) * per >= total_tokens) starts[j] = make_int2(n_segments, 0);
  if (tid == 0) {
    a.segment_count[bh] = n_segments;
    a.selected_tokens[bh] = total_tokens;
  }
}

// The select kernel for a group of G query heads (1..kMaxSelectGroup; the index refuses more).
using SaapSelectKernel = void (*)(SaapSelectArgs);
inline SaapSelectKernel saap_select_kernel_for(int G) {
  switch (G) {
    case 1: return saap_select_kernel<1>;
    case 2: return saap_select_kernel<2>;
    case 3: return saap_select_kernel<3>;
    case 4: return saap_select_kernel<4>;
    case 5: return saap_select_kernel<5>;
    case 6: return saap_select_kernel<6>;
    case 7: return saap_select_kernel<7>;
    default: return saap_select_kernel<8>;
  }
}

}  // namespace saap::cuda
