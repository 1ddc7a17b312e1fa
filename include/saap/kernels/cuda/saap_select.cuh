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
constexpr int kMaxPartitions = 4096;  // sizes, keys and candidates of all partitions stay in shared memory
constexpr int kMaxSelectGroup = 8;    // query heads per KV group the select kernel is instantiated for

// Threads of a select block for C partitions: one per partition, rounded up to a power of two (at
// least a warp), at most kSelectMaxThreads (past that, each thread takes every blockDim.x-th
// partition).
inline int select_threads(int C) {
  int t = 32;
  while (t < C && t < kSelectMaxThreads) t <<= 1;
  return t;
}

__device__ __forceinline__ int ranges_of(int n, int seg) { return (n + seg - 1) / seg; }

// The radix key of a partition's ranking key: order-preserving bits, -0 read as +0, so that the
// bits order exactly as rules::ranks_before compares the floats (ties then go to the lower id).
__device__ __forceinline__ uint32_t partition_rank_bits(float key) { return float_key(key == 0.f ? 0.f : key); }

constexpr int kFillDigitBits = 8;
constexpr int kFillBins = 1 << kFillDigitBits;

// What fill_by_threshold keeps in shared memory besides the caller's arrays.
struct FillScratch {
  union {
    int hist[2][kFillBins];      // size-weighted digit histograms, two so that one is cleared while one fills
    int16_t cand[kMaxPartitions];  // then the candidates of phase 2
  };
  uint32_t lo, hi;         // the smallest and largest key bits of a non-empty partition
  uint32_t prefix;         // the misfit's key bits found so far
  int left;                // the budget left above the current range, then after the misfit
  int misfit;              // the misfit's id
  int n_tied, n_cand;      // partitions with the misfit's key bits; phase-2 candidates
};

// rules::fill_in_order over the ranking of selection_rules.h (higher key first, ties to the lower
// id), without sorting: sets taken[c] = 1 for exactly the partitions the sequential walk takes.
// keys[c], sizes[c] (>= 0): shared memory; budget: below the sum of the sizes (the caller takes
// everything otherwise). Every thread of the block calls it; taken[] is
// complete after the caller's next __syncthreads.
// Why it is the same set. Let P_r be the sum of the sizes over ranks < r and f the first rank with
// P_(f+1) > budget (the misfit; it exists since the sizes sum past the budget).
//  - Phase 1, ranks r < f: the walk takes every one (P_(r+1) <= budget). The misfit's key bits
//    come from a size-weighted radix select, 8 bits a pass from the top: in each pass the digit at
//    which the sizes above it, summed from the top, pass what is left of the budget (warp_find_digit).
//    Partitions with those exact bits (ties) rank by id: the misfit is the first whose running sum
//    passes what is left; one tied partition, the usual case, is the misfit itself.
//  - Phase 2, ranks r > f: the walk continues with left = budget - P_f < size_f and takes, in rank
//    order, each partition with 0 < size <= left, lowering left. The next take is always the
//    best-ranked remaining partition that fits the current left: a better-ranked one that fits now
//    fitted when the walk passed it (left only falls), so it was taken. So one warp takes, while any
//    fits, the best-ranked fitting partition of a list of those after f with 0 < size <= left_f.
//    The walk's guard (left >= the smallest size) only ends walks that would take nothing more.
__device__ inline void fill_by_threshold(const float* keys, const int* sizes, int C, int budget, uint8_t* taken,
                                         FillScratch& fs) {
  const int T = blockDim.x, tid = threadIdx.x, lane = tid & 31;
  if (tid == 0) {
    fs.lo = ~0u;
    fs.hi = 0;
    fs.left = budget;
    fs.n_tied = 0;
    fs.n_cand = 0;
  }
  for (int i = tid; i < 2 * kFillBins; i += T) fs.hist[i / kFillBins][i % kFillBins] = 0;
  __syncthreads();
  // The keys' range: the bits every non-empty partition shares are the misfit's too, so the passes
  // start below them (log densities share sign and most of the exponent: a first digit of the top
  // 8 bits put every key in one bin).
  {
    uint32_t lo = ~0u, hi = 0;
#pragma unroll 1
    for (int c = tid; c < C; c += T)
      if (sizes[c] > 0) {
        const uint32_t u = partition_rank_bits(keys[c]);
        lo = min(lo, u);
        hi = max(hi, u);
      }
    lo = __reduce_min_sync(0xffffffffu, lo);
    hi = __reduce_max_sync(0xffffffffu, hi);
    if (lane == 0) {
      atomicMin(&fs.lo, lo);
      atomicMax(&fs.hi, hi);
    }
  }
  __syncthreads();
  const int shared_bits = __clz(fs.lo ^ fs.hi);  // 32 when every key is equal
  if (tid == 0) fs.prefix = shared_bits == 32 ? fs.lo : fs.lo & ~(~0u >> shared_bits);
  __syncthreads();
  // 1. The misfit's key bits below the shared ones, kFillDigitBits a pass. A warp's partitions with
  //    one digit add their sizes first and one lane adds the sum (the keys bunch in a few bins).
#pragma unroll 1
  for (int pass = 0, top = 32 - shared_bits; top > 0; ++pass) {
    const int shift = max(top - kFillDigitBits, 0);
    int* hist = fs.hist[pass & 1];
    const uint32_t prefix = fs.prefix;
    const uint32_t high = top < 32 ? ~0u << top : 0u;
#pragma unroll 1
    for (int c0 = tid - lane; c0 < C; c0 += T) {  // whole warps: __match_any_sync takes every lane
      const int c = c0 + lane;
      const uint32_t u = c < C ? partition_rank_bits(keys[c]) : 0u;
      const bool live = c < C && sizes[c] > 0 && (u & high) == prefix;
      const int digit = live ? int((u >> shift) & (kFillBins - 1)) : -1;
      const unsigned peers = __match_any_sync(0xffffffffu, digit);
      const int sum = __reduce_add_sync(peers, live ? sizes[c] : 0);
      if (live && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], sum);
    }
    // The other histogram was read in the last pass, before the barrier below: clear it for the next.
    for (int i = tid; i < kFillBins; i += T) fs.hist[(pass + 1) & 1][i] = 0;
    __syncthreads();
    if (tid < 32) {
      int digit;
      long long above;
      warp_find_digit(hist, kFillBins, fs.left, false, digit, above);
      if (lane == 0) {
        fs.prefix = prefix | uint32_t(digit) << shift;
        fs.left -= int(above);
      }
    }
    __syncthreads();
    top = shift;
  }
  // 2. The misfit among the partitions with its key bits.
  const uint32_t misfit_bits = fs.prefix;
#pragma unroll 1
  for (int c = tid; c < C; c += T)
    if (sizes[c] > 0 && partition_rank_bits(keys[c]) == misfit_bits) {
      atomicAdd(&fs.n_tied, 1);
      fs.misfit = c;  // the only one unless n_tied > 1
    }
  __syncthreads();
  if (fs.n_tied > 1 && tid < 32) {  // ties: walk them in id order, 32 ids at a time
    int left = fs.left, misfit = -1;
    for (int c0 = 0; c0 < C && misfit < 0; c0 += 32) {
      const int c = c0 + lane;
      const int size = c < C && sizes[c] > 0 && partition_rank_bits(keys[c]) == misfit_bits ? sizes[c] : 0;
      int incl = size;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int x = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += x;
      }
      const unsigned past = __ballot_sync(0xffffffffu, incl > left);
      if (past) {
        const int l = __ffs(past) - 1;
        misfit = c0 + l;
        left -= __shfl_sync(0xffffffffu, incl - size, l);
      } else {
        left -= __shfl_sync(0xffffffffu, incl, 31);
      }
    }
    if (lane == 0) {
      fs.misfit = misfit;
      fs.left = left;
    }
  }
  __syncthreads();
  // 3. Phase 1's takes, and phase 2's candidates (over the histograms, no longer read).
  int16_t* cand = fs.cand;
  const int misfit = fs.misfit, left_f = fs.left;
#pragma unroll 1
  for (int c0 = tid - lane; c0 < C; c0 += T) {  // whole warps: one atomic a warp for its candidates
    const int c = c0 + lane, size = c < C ? sizes[c] : 0;
    const uint32_t u = size > 0 ? partition_rank_bits(keys[c]) : 0u;
    const bool before = size > 0 && (u > misfit_bits || (u == misfit_bits && c < misfit));
    if (before) taken[c] = 1;
    const bool is_cand = size > 0 && !before && c != misfit && size <= left_f;
    const unsigned mask = __ballot_sync(0xffffffffu, is_cand);
    int base = 0;
    if (lane == 0 && mask) base = atomicAdd(&fs.n_cand, __popc(mask));
    base = __shfl_sync(0xffffffffu, base, 0);
    if (is_cand) cand[base + __popc(mask & ((1u << lane) - 1))] = int16_t(c);
  }
  __syncthreads();
  // 4. Phase 2: one warp takes the best-ranked candidate that fits, while one does.
  if (tid >= 32) return;
  const int n_cand = fs.n_cand;
  int left = left_f;
#pragma unroll 1
  while (true) {
    uint32_t best_u = 0;
    int best_c = INT32_MAX;
    for (int i = lane; i < n_cand; i += 32) {
      const int c = cand[i], size = sizes[c];
      const uint32_t u = partition_rank_bits(keys[c]);
      if (size <= left && !taken[c] && (u > best_u || (u == best_u && c < best_c))) best_u = u, best_c = c;
    }
    const uint32_t top = __reduce_max_sync(0xffffffffu, best_c == INT32_MAX ? 0u : best_u);
    const int c = int(__reduce_min_sync(0xffffffffu, uint32_t(best_c != INT32_MAX && best_u == top ? best_c : INT32_MAX)));
    if (c == INT32_MAX) break;
    left -= sizes[c];
    if (lane == 0) taken[c] = 1;
    __syncwarp();
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
// form; sinks and window paid first); the partitions are filled by the rule of
// rules::fill_in_order in the order of rules::ranks_before without a sort (fill_by_threshold: a
// size-weighted radix select of the first partition that does not fit, then one warp for the
// rest; at 512k tokens the bitonic sort it replaced took 10k of the kernel's 33k cycles). Then the segments are written: sinks, recent window, then every selected partition's
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
  __shared__ float keys[kMaxPartitions];  // each partition's ranking key
  __shared__ FillScratch fill_scratch;
  __shared__ float max_scratch[32][G];
  __shared__ int count_scratch[32];  // tokens per warp
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

  // 1. Sizes (to shared memory), the tokens of all partitions, and
  //    each head's largest log density over non-empty partitions: one barrier.
  float mx[G];
#pragma unroll
  for (int gi = 0; gi < G; ++gi) mx[gi] = -INFINITY;
  int tokens = 0;  // a sequence's tokens fit an int (segments count them so)
#pragma unroll 1
  for (int c = tid; c < C; c += T) {
    float s[G];
    load_logits(c, s);  // not behind the size: both loads in flight together
    const int size = c == tid ? pc0 + ac0 : part_count[pbase + c] + append_count[pbase + c];
    sizes[c] = size;
    taken[c] = 0;
    if (size > 0) {
      tokens += size;
#pragma unroll
      for (int gi = 0; gi < G; ++gi) mx[gi] = fmaxf(mx[gi], s[gi]);
    }
  }
#pragma unroll
  for (int gi = 0; gi < G; ++gi) mx[gi] = warp_max(mx[gi]);
  tokens = __reduce_add_sync(0xffffffffu, tokens);
  if (lane == 0) {
#pragma unroll
    for (int gi = 0; gi < G; ++gi) max_scratch[warp][gi] = mx[gi];
    count_scratch[warp] = tokens;
  }
  __syncthreads();  // also publishes sizes[] and taken[]
  const int nw = T >> 5;
#pragma unroll
  for (int gi = 0; gi < G; ++gi) mx[gi] = warp_max(lane < nw ? max_scratch[lane][gi] : -INFINITY);
  tokens = __reduce_add_sync(0xffffffffu, lane < nw ? count_scratch[lane] : 0);

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
  } else {  // 0 <= budget < tokens (rules::selectable_tokens is never negative)
#pragma unroll 1
    for (int c = tid; c < C; c += T) keys[c] = key_of(c);
    __syncthreads();
    fill_by_threshold(keys, sizes, C, int(budget), taken, fill_scratch);
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
