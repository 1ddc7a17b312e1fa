// Quest's kernels (host API: quest.h). The page geometry, the budget and the bound are the CPU
// method's (methods/quest_pages.h over saap::rules), so both backends choose the same pages.
#pragma once
#include <cuda_bf16.h>
#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "saap/kernels/cuda/dense_decode.cuh"
#include "saap/kernels/cuda/quest_fused_select.cuh"
#include "saap/kernels/cuda/quest_select.cuh"
#include "saap/kernels/cuda/reduce.cuh"
#include "saap/methods/quest_pages.h"

namespace saap::cuda {

constexpr int kQuestScoreWarps = 4;
constexpr int kQuestScorePasses = 4;  // page passes per warp whose loads are in flight together
constexpr int kQuestStageChunks = 64;  // chunk rows an attend block stages in shared memory at a time
// Histogram slots a score block counts in shared memory before adding them to hist[bh]: the keys of
// one (b, h) fall in a handful of 16-bit bins, and one global atomic per page serialised ~32768
// atomics on one L2 line per (b, h) at 512k (H200: ~40 us at batch 1, ~120 us at batch 8).
constexpr int kQuestScoreSlots = 256;

__device__ __forceinline__ float quest_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float quest_to_float(__half x) { return __half2float(x); }

// Page metadata of rows [c P, min((c + 1) P, len)) of one (b, h): block (page, bh), one thread per
// dimension. The stored bounds are elements of the page (compared as floats, kept as T).
template <class T>
static __global__ void quest_build_meta_kernel(const T* __restrict__ K, int64_t max_len,
                                               const int32_t* __restrict__ seq_len, int P, int64_t max_pages, int D,
                                               T* __restrict__ meta) {
  const int64_t c = blockIdx.x, bh = blockIdx.y;
  const int64_t len = seq_len[bh];
  const int i = threadIdx.x;
  if (c * P >= len || i >= D) return;
  const T* k = K + (bh * max_len + c * P) * D + i;
  T lo = k[0], hi = k[0];
  const int64_t rows = min(int64_t(P), len - c * P);
  for (int64_t p = 1; p < rows; ++p) {
    const T x = k[p * D];
    if (quest_to_float(x) < quest_to_float(lo)) lo = x;
    if (quest_to_float(x) > quest_to_float(hi)) hi = x;
  }
  T* m = meta + (bh * max_pages + c) * 2 * D;
  m[i] = lo;
  m[D + i] = hi;
}

// One token per (b, h) at row seq_len[bh]: block bh, one thread per dimension.
template <class T>
static __global__ void quest_append_kernel(T* __restrict__ K, T* __restrict__ V, int64_t max_len,
                                           const T* __restrict__ k_new, const T* __restrict__ v_new,
                                           int32_t* __restrict__ seq_len, int P, int64_t max_pages, int D,
                                           T* __restrict__ meta) {
  wait_prior_grid();  // launched dependent: the previous kernel may still be writing k_new, v_new
  const int64_t bh = blockIdx.x;
  const int i = threadIdx.x;
  const int64_t pos = seq_len[bh];
  if (i < D) {
    const T x = k_new[bh * D + i];
    K[(bh * max_len + pos) * D + i] = x;
    V[(bh * max_len + pos) * D + i] = v_new[bh * D + i];
    T* m = meta + (bh * max_pages + pos / P) * 2 * D;
    if (pos % P == 0) {  // the token opens a page: it is both bounds
      m[i] = x;
      m[D + i] = x;
    } else {
      if (quest_to_float(x) < quest_to_float(m[i])) m[i] = x;
      if (quest_to_float(x) > quest_to_float(m[D + i])) m[D + i] = x;
    }
  }
  __syncthreads();  // every thread has read seq_len[bh]
  if (i == 0) seq_len[bh] = int32_t(pos + 1);
}

// Bounds of the candidate pages of one (b, h), bh, slice s of S (contiguous runs of candidates):
// the block strides over its slice a block pass (PER_BLOCK pages) at a time. A page's 2 x D values
// are spread over D/8 lanes (16-byte streaming loads of min and of max); each lane sums its
// dimensions' group terms (quest::add_group_bound_term: the group's query split once into positive
// and negative parts, two FMAs per dimension instead of four operations per head), the lanes of a
// page then add up. keys[bh][r] is page range.first + r's key; each full page (P middle positions)
// also counts its key's top 16 bits in hist[bh], through a direct-mapped table of
// kQuestScoreSlots (bin, count) slots in shared memory: a slot's bin is set once, by the first page
// that maps to it; a page whose slot holds another bin counts in hist[bh] directly; the block adds
// its slots to hist[bh] at its end. With scratch (the fused select, quest_fused_select.cuh), the
// slice also adds to scratch[bh] its full keys' bit range and the full pages ranked before each
// partial page: warps 0 and 1 load the partial pages' bounds before the loop and score them after
// it, in the lanes and order of the loop, so they are the keys the loop writes, bit for bit; the
// slice's keys are then read back (from L2) and compared with them.
// Block-uniform control flow; every thread returns.
template <class T, int D, int GMAX, int WARPS>
__device__ inline void quest_score_slice(int64_t bh, int64_t s, int64_t S, const T* __restrict__ meta,
                                         int64_t max_pages, const int32_t* __restrict__ seq_len,
                                         const float* __restrict__ q, int G, QuestStep step, int64_t key_stride,
                                         float* __restrict__ keys, uint32_t* __restrict__ hist,
                                         QuestFusedScratch* __restrict__ scratch) {
  constexpr int LPT = D / 8, PPP = 32 / LPT, U = kQuestScorePasses, PER_BLOCK = WARPS * PPP * U;
  static_assert(WARPS >= 2, "warps 0 and 1 score the partial pages");
  __shared__ uint32_t slot_bin[kQuestScoreSlots], slot_count[kQuestScoreSlots];
  __shared__ float s_small[2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane % LPT, slot = lane / LPT;
  __syncthreads();  // the previous item's shared values are read
  // The length and the query are loaded together, in one round trip: the query's loads are not
  // conditional on g < G (a row past G reads row G - 1 again, counted as zeros), since loads
  // under a branch per row were issued one row at a time, each after the previous row's arrived,
  // and the length after them all (five dependent round trips before the first page load). Two
  // 16-byte loads a row (q is 16-byte aligned: checked by QuestIndex): with 8 scalar loads a row,
  // ptxas split the page loads of groups of 8 in two round trips (see quest_score_kernel).
  const int64_t len = seq_len[bh];
  float4 qv4[GMAX][2];
  const float* qb = q + bh * G * D + sub * 8;  // the group's rows: (b * Hkv + h) * G == b * Hq + h * G
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    const float4* row = reinterpret_cast<const float4*>(qb + min(g, G - 1) * D);
    qv4[g][0] = row[0];
    qv4[g][1] = row[1];
  }
  float qv[GMAX][8];
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
#pragma unroll
    for (int j = 0; j < 8; ++j) qv[g][j] = quest_component(qv4[g][j / 4], j % 4);
  float q_pos[8], q_neg[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) q_pos[j] = q_neg[j] = 0.f;
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float x = g < G ? qv[g][j] : 0.f;
      q_pos[j] += fmaxf(x, 0.f);
      q_neg[j] += fminf(x, 0.f);
    }
  int64_t budget;
  const quest::PageRange range = step.range(len, &budget);
  if (budget <= 0 || budget >= range.fixed.middle()) return;  // select() scores nothing then
  const int64_t c1 = range.count();
  int64_t lo, hi;
  quest_slice(0, c1, int(s), int(S), &lo, &hi);
  if (lo >= hi) return;  // the block's exits so far are block-uniform
  const T* mb = meta + (bh * max_pages + range.first) * 2 * D + sub * 8;
  // One page's bound in this lane's dimensions, added up over the page's LPT lanes.
  auto bound = [&](const uint4& lo4, const uint4& hi4) {
    float l[8], h[8];
    Vec8<T>::to_float(lo4, l);
    Vec8<T>::to_float(hi4, h);
    float key = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) key = quest::add_group_bound_term(key, q_pos[j], q_neg[j], l[j], h[j]);
#pragma unroll
    for (int off = LPT / 2; off > 0; off >>= 1) key += __shfl_xor_sync(0xffffffffu, key, off);
    return key;
  };
  // The partial pages e = 0 (first), 1 (last): warp e loads page e's bounds now, so that the loads
  // are in flight with the loop's, and scores it after the loop.
  const bool first_small = range.size(range.first) < step.P;
  const bool last_small = c1 > 1 && range.size(range.first + c1 - 1) < step.P;
  uint4 small_lo = make_uint4(0, 0, 0, 0), small_hi = small_lo;
  if (scratch && warp < 2) {
    const int64_t r = warp == 0 ? 0 : c1 - 1;
    small_lo = load_stream(mb + r * 2 * D);
    small_hi = load_stream(mb + r * 2 * D + D);
  }
  constexpr uint32_t kEmpty = 0xffffffffu;  // no 16-bit bin
  for (int i = threadIdx.x; i < kQuestScoreSlots; i += blockDim.x) slot_bin[i] = kEmpty, slot_count[i] = 0u;
  __syncthreads();
  float* kb = keys + bh * key_stride;
  uint32_t* hb = hist + bh * kQuestHistBins;
  uint32_t u_lo = ~0u, u_hi = 0u;
  for (int64_t r0 = lo + warp * PPP * U; r0 < hi; r0 += PER_BLOCK) {
    uint4 lo4[U], hi4[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t r = r0 + u * PPP + slot;
      if (r < hi) {
        lo4[u] = load_stream(mb + r * 2 * D);
        hi4[u] = load_stream(mb + r * 2 * D + D);
      } else {
        lo4[u] = hi4[u] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const float key = bound(lo4[u], hi4[u]);
      const int64_t r = r0 + u * PPP + slot;
      if (sub == 0 && r < hi) {
        kb[r] = key;
        if (range.size(range.first + r) == step.P) {
          const uint32_t ub = quest_rank_bits(key), bin = ub >> kQuestHistShift, hslot = bin % kQuestScoreSlots;
          const uint32_t held = atomicCAS(&slot_bin[hslot], kEmpty, bin);
          if (held == kEmpty || held == bin)
            atomicAdd(&slot_count[hslot], 1u);
          else
            atomicAdd(&hb[bin], 1u);
          u_lo = min(u_lo, ub);
          u_hi = max(u_hi, ub);
        }
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kQuestScoreSlots; i += blockDim.x)
    if (slot_count[i]) atomicAdd(&hb[slot_bin[i]], slot_count[i]);
  if (scratch) {
    if (warp < 2) {
      const float key = bound(small_lo, small_hi);
      if (lane == 0) s_small[warp] = key;
    }
    __syncthreads();  // and the block's keys written above are visible to the block
    // The slice's full pages ranked before each partial page (a missing one compares below every
    // key: bits all ones, id -1), over the keys just written.
    uint32_t small_u[2] = {~0u, ~0u};
    int64_t small_r[2] = {-1, -1};
    if (first_small) small_u[0] = quest_rank_bits(s_small[0]), small_r[0] = 0;
    if (last_small) small_u[1] = quest_rank_bits(s_small[1]), small_r[1] = c1 - 1;
    unsigned long long before = 0;  // partial page 0's count in the low 32 bits, page 1's in the high
    for (int64_t r = lo + threadIdx.x; r < hi; r += blockDim.x) {
      if (range.size(range.first + r) != step.P) continue;
      const uint32_t ub = quest_rank_bits(__ldcg(kb + r));
      before += (ub > small_u[0] || (ub == small_u[0] && r < small_r[0])) ? 1ull : 0ull;
      before += (ub > small_u[1] || (ub == small_u[1] && r < small_r[1])) ? 1ull << 32 : 0ull;
    }
    // One atomic of each per warp.
    u_lo = __reduce_min_sync(0xffffffffu, u_lo);
    u_hi = __reduce_max_sync(0xffffffffu, u_hi);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) before += __shfl_xor_sync(0xffffffffu, before, off);
    if (lane == 0) {
      if (u_lo <= u_hi) {
        atomicMin(&scratch[bh].u_lo, u_lo);
        atomicMax(&scratch[bh].u_hi, u_hi);
      }
      if (before) atomicAdd(&scratch[bh].before, before);
    }
  }
}

// The split select's score kernel: block (slice, bh) runs quest_score_slice. The launcher sizes
// the grid to one wave of resident blocks, so the group's query is loaded once per block, not once
// per 32 pages, and from the capacity, not the current length, so a captured step stays valid as
// sequences grow. At least kQuestScoreMinBlocks blocks per SM: with no minimum, ptxas (CUDA 13.0,
// sm_90) issued a block pass's 8 page loads per lane as 3, then the other 5 once the first had
// arrived (two DRAM round trips a pass), at 78-80 registers (6 blocks per SM); with it, all 8
// before the first use, at 66-68 registers (7 blocks per SM) for groups up to 4, 80 for groups of
// 8, no spills (the SASS of every head dim and group size, read with nvdisasm).
constexpr int kQuestScoreMinBlocks = 6;
template <class T, int D, int GMAX>
static __global__ void __launch_bounds__(kQuestScoreWarps * 32, kQuestScoreMinBlocks)
    quest_score_kernel(const T* __restrict__ meta, int64_t max_pages, const int32_t* __restrict__ seq_len,
                       const float* __restrict__ q, int G, QuestStep step, int64_t key_stride,
                       float* __restrict__ keys, uint32_t* __restrict__ hist) {
  wait_prior_grid();
  quest_score_slice<T, D, GMAX, kQuestScoreWarps>(blockIdx.y, blockIdx.x, gridDim.x, meta, max_pages, seq_len, q, G,
                                                  step, key_stride, keys, hist, nullptr);
}

// What the fused select's phases read and write (QuestIndex's buffers).
template <class T>
struct QuestFusedArgs {
  const T* meta;
  int64_t max_pages;
  const int32_t* seq_len;
  const float* q;
  int n_bh, G;
  QuestStep step;
  int64_t key_stride;
  float* keys;
  uint32_t* hist;
  int S;  // slices per (b, h)
  QuestFusedScratch* scratch;
  QuestFusedPlan* plan;
  uint32_t* above;
  unsigned long long* cand;
  int64_t max_chunks;
  int32_t* chunk_rows;
  int32_t* chunk_count;
  int2* partials;
  int32_t* partial_count;
  int32_t* selected_tokens;
  int32_t* scored_pages;
};

// The fused select: score, gather and compact phases (quest_fused_select.cuh) over the work items
// (bh, slice s of S), item = bh * S + s, the blocks striding over them, a grid barrier between
// phases. Its kernels are launched cooperatively (every block resident), so the barriers cannot
// deadlock; every block runs every phase.
template <class T, int D, int GMAX>
__device__ inline void quest_fused_select_phases(const QuestFusedArgs<T>& a) {
  namespace cg = cooperative_groups;
  const cg::grid_group grid = cg::this_grid();
  const int S = a.S;
  const int64_t items = int64_t(a.n_bh) * S;
  for (int64_t i = blockIdx.x; i < items; i += gridDim.x)
    quest_score_slice<T, D, GMAX, kQuestFusedThreads / 32>(i / S, i % S, S, a.meta, a.max_pages, a.seq_len, a.q, a.G,
                                                           a.step, a.key_stride, a.keys, a.hist, a.scratch);
  grid.sync();
  for (int64_t i = blockIdx.x; i < items; i += gridDim.x)
    quest_fused_gather(i / S, int(i % S), S, a.keys, a.key_stride, a.seq_len, a.step, a.hist, a.scratch, a.plan,
                       a.above, a.cand);
  grid.sync();
  for (int64_t i = blockIdx.x; i < items; i += gridDim.x)
    quest_fused_compact(i / S, int(i % S), S, a.keys, a.key_stride, a.seq_len, a.step, a.hist, a.scratch, a.plan,
                        a.above, a.cand, a.max_chunks, a.chunk_rows, a.chunk_count, a.partials, a.partial_count,
                        a.selected_tokens, a.scored_pages);
}

template <class T, int D, int GMAX>
static __global__ void __launch_bounds__(kQuestFusedThreads) quest_fused_select_kernel(QuestFusedArgs<T> a) {
  quest_fused_select_phases<T, D, GMAX>(a);
}

// The selection: block bh runs quest_select_row (quest_select.cuh) once the score kernel is done,
// with key_cap floats of dynamic shared memory for the keys.
static __global__ void __launch_bounds__(kQuestSelectThreads)
    quest_select_kernel(const float* __restrict__ keys, int64_t key_stride, const int32_t* __restrict__ seq_len,
                        QuestStep step, uint32_t* __restrict__ hist, int64_t max_chunks,
                        int32_t* __restrict__ chunk_rows, int32_t* __restrict__ chunk_count,
                        int2* __restrict__ partials, int32_t* __restrict__ partial_count,
                        int32_t* __restrict__ selected_tokens, int32_t* __restrict__ scored_pages, int key_cap) {
  extern __shared__ float4 cached4[];  // [key_cap / 4]
  wait_prior_grid();
  quest_select_row(blockIdx.x, keys, key_stride, seq_len, step, hist, max_chunks, chunk_rows, chunk_count, partials,
                   partial_count, selected_tokens, scored_pages, key_cap, cached4);
}

// The blocks of one thread-block cluster selecting one (b, h) together (quest_select_row): the
// cluster's barrier orders their shared memory, and each reads the others' through distributed
// shared memory.
struct QuestSelectCluster {
  static constexpr bool kMany = true;
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  __device__ int rank() const { return int(cluster.block_rank()); }
  __device__ int size() const { return int(cluster.num_blocks()); }
  __device__ void sync() const { cluster.sync(); }
  __device__ void arrive() const { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
  __device__ void wait() const { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
  template <class V>
  __device__ V* at(V* p, int r) const {
    return cluster.map_shared_rank(p, r);
  }
};

// The cluster select (QuestConfig::cluster_from_pages): block x of cluster bh runs the rank-x slice of
// quest_select_row for bh, once the score kernel is done, with key_cap floats of dynamic shared
// memory for its keys and a QuestClusterShared after them.
static __global__ void __launch_bounds__(kQuestSelectThreads)
    quest_select_cluster_kernel(const float* __restrict__ keys, int64_t key_stride,
                                const int32_t* __restrict__ seq_len, QuestStep step, uint32_t* __restrict__ hist,
                                int64_t max_chunks, int32_t* __restrict__ chunk_rows,
                                int32_t* __restrict__ chunk_count, int2* __restrict__ partials,
                                int32_t* __restrict__ partial_count, int32_t* __restrict__ selected_tokens,
                                int32_t* __restrict__ scored_pages, int key_cap) {
  extern __shared__ float4 cached4[];  // [key_cap / 4], then a QuestClusterShared
  const QuestSelectCluster x{};
  wait_prior_grid();
  quest_select_row(blockIdx.x / x.size(), keys, key_stride, seq_len, step, hist, max_chunks, chunk_rows, chunk_count,
                   partials, partial_count, selected_tokens, scored_pages, key_cap, cached4, x);
}

// Row i of a stage of P-row chunks (stage[c]: chunk c's first row) when P is not a power of two.
static __device__ __noinline__ int64_t quest_stage_row_div(const int32_t* stage, int i, int P) {
  return int64_t(stage[i / P]) + i % P;
}

// Attention of the G query heads of one KV group over its chunks (split evenly over blocks) and,
// in split 0, its partial runs: block (split, kv head, sequence); with tickets (one per (b, h), 0 on
// entry), the last block of each group also combines its splits into out (SparseAttendTuning::fused). The block stages its chunks'
// first rows in shared memory, kQuestStageChunks at a time, so that a K/V load never waits on the
// load of its row number. LOOP: the attender's loop over the chunks, Plain or Prefetch (and its
// register budget); the tensor-core loop never won here (H200, da2ee81), so it is not built.
// Work item (split, kv head h, sequence b) of the attention below, by a block of NWARPS warps; sh
// is the attender's shared state. Its list (chunk_rows, partials, counts) is read from L2, so the
// fused step may run it after writing the list in the same kernel.
template <class T, int D, int GMAX, DenseLoop LOOP, int NWARPS>
__device__ inline void quest_attend_item(int split, int h, int b, const T* __restrict__ K, const T* __restrict__ V,
                                         int64_t max_len, const int32_t* chunk_rows, const int32_t* chunk_count,
                                         int64_t max_chunks, const int2* partials, const int32_t* partial_count, int P,
                                         const float* __restrict__ q, int n_kv_heads, int G, float scale, int splits,
                                         float* __restrict__ part_out, float* __restrict__ part_lse,
                                         unsigned* __restrict__ tickets, float* __restrict__ out,
                                         typename GroupAttender<T, D, GMAX, NWARPS>::Shared& sh) {
  using A = GroupAttender<T, D, GMAX, NWARPS>;
  static_assert(kQuestStageChunks <= NWARPS * 32, "one thread stages one chunk row");
  __shared__ int32_t stage[kQuestStageChunks];
  __syncthreads();  // the previous item's shared state is read
  const int64_t bh = int64_t(b) * n_kv_heads + h;
  const int64_t row0 = bh * G;
  A at;
  at.init(q + row0 * D, G, scale);  // before the counts, so that their loads are in flight together
  const int64_t nch = __ldcg(chunk_count + bh);
  // Split 0 also reads the partial runs after its chunks: their descriptors are loaded now, with
  // the counts, not after the chunks (one dependent round trip less on the longest block).
  const int n_parts = split == 0 ? __ldcg(partial_count + bh) : 0;
  int2 part[4];  // at most QuestIndex::kMaxPartials = 4 runs per (b, h), as the select kernel writes them
#pragma unroll
  for (int k = 0; k < 4; ++k) part[k] = split == 0 ? __ldcg(partials + bh * 4 + k) : make_int2(0, 0);
  const int64_t j0 = nch * split / splits, j1 = nch * (split + 1) / splits;
  const T* kb = K + bh * max_len * D + at.sub * 8;
  const T* vb = V + bh * max_len * D + at.sub * 8;
  const int32_t* rows = chunk_rows + bh * max_chunks;
  // Row i of the stage; a power-of-two P (16 by default) shifts and masks, since two integer
  // divisions per row and lane were a large share of the loop's instructions; other sizes call
  // out, so that the unrolled loads do not each carry a division's code.
  const int p_shift = (P & (P - 1)) == 0 ? __ffs(P) - 1 : -1;
  auto row = [&](int i) {
    return p_shift >= 0 ? int64_t(stage[i >> p_shift]) + (i & (P - 1)) : quest_stage_row_div(stage, i, P);
  };
  auto kptr = [&](int i) { return kb + row(i) * D; };
  auto vptr = [&](int i) { return vb + row(i) * D; };
  // The chunks kQuestStageChunks at a time, then each partial run (shorter than P: staged as one
  // chunk, its row i is stage[0] + i), through one call of the attender's loop: a second call site
  // (or instance) for the runs doubled the kernel's code, which a decode step fetches cold.
  int64_t s0 = j0;
  for (int k = 0; s0 < j1 || k < n_parts;) {
    __syncthreads();  // the previous stage is no longer read
    int n;
    if (s0 < j1) {
      const int ns = int(min(int64_t(kQuestStageChunks), j1 - s0));
      if (int(threadIdx.x) < ns) stage[threadIdx.x] = __ldcg(rows + s0 + threadIdx.x);
      s0 += ns;
      n = ns * P;
    } else {
      if (threadIdx.x == 0) stage[0] = part[k].x;
      n = part[k++].y;
    }
    __syncthreads();
    if constexpr (LOOP == DenseLoop::Prefetch) {
      at.run_prefetch(n, kptr, vptr);
    } else {
      at.run(n, kptr, vptr);
    }
  }
  at.finish(sh, G, part_out + (row0 * splits + split) * D, int64_t(splits) * D, part_lse + row0 * splits + split,
            splits);
  if (tickets)
    combine_group_if_last<D, GMAX, NWARPS * 32>(part_out, part_lse, splits, G, row0, tickets + bh, out);
}

template <class T, int D, int GMAX, DenseLoop LOOP>
static __global__ void __launch_bounds__(kDecodeWarps * 32, dense_loop_min_blocks(LOOP, GMAX))
    quest_attend_kernel(const T* __restrict__ K, const T* __restrict__ V, int64_t max_len,
                        const int32_t* __restrict__ chunk_rows, const int32_t* __restrict__ chunk_count,
                        int64_t max_chunks, const int2* __restrict__ partials, const int32_t* __restrict__ partial_count,
                        int P, const float* __restrict__ q, int n_kv_heads, int G, float scale, int splits,
                        float* __restrict__ part_out, float* __restrict__ part_lse, unsigned* __restrict__ tickets,
                        float* __restrict__ out) {
  __shared__ typename GroupAttender<T, D, GMAX, kDecodeWarps>::Shared sh;
  wait_prior_grid();
  quest_attend_item<T, D, GMAX, LOOP, kDecodeWarps>(blockIdx.x, blockIdx.y, blockIdx.z, K, V, max_len, chunk_rows,
                                                    chunk_count, max_chunks, partials, partial_count, P, q, n_kv_heads,
                                                    G, scale, splits, part_out, part_lse, tickets, out, sh);
}

// The whole step but the append in one cooperative kernel: the fused select's phases, a grid
// barrier, then the attention's items (split, kv head, sequence) over the blocks, the last split
// of each group combining (tickets). The attender's shared state is dynamic shared memory
// (sizeof(GroupAttender<..., kQuestFusedThreads / 32>::Shared) bytes).
template <class T, int D, int GMAX>
static __global__ void __launch_bounds__(kQuestFusedThreads)
    quest_fused_step_kernel(QuestFusedArgs<T> a, const T* __restrict__ K, const T* __restrict__ V, int64_t max_len,
                            int n_kv_heads, int batch, float scale, int splits, float* __restrict__ part_out,
                            float* __restrict__ part_lse, unsigned* __restrict__ tickets, float* __restrict__ out) {
  constexpr int NW = kQuestFusedThreads / 32;
  using A = GroupAttender<T, D, GMAX, NW>;
  extern __shared__ float4 quest_step_dynamic[];
  quest_fused_select_phases<T, D, GMAX>(a);
  cooperative_groups::this_grid().sync();
  auto& sh = *reinterpret_cast<typename A::Shared*>(quest_step_dynamic);
  const int64_t items = int64_t(splits) * n_kv_heads * batch;
  for (int64_t i = blockIdx.x; i < items; i += gridDim.x) {
    const int split = int(i % splits), h = int(i / splits % n_kv_heads), b = int(i / (int64_t(splits) * n_kv_heads));
    quest_attend_item<T, D, GMAX, DenseLoop::Plain, NW>(split, h, b, K, V, max_len, a.chunk_rows, a.chunk_count,
                                                        a.max_chunks, a.partials, a.partial_count, a.step.P, a.q,
                                                        n_kv_heads, a.G, scale, splits, part_out, part_lse, tickets,
                                                        out, sh);
  }
}

}  // namespace saap::cuda
