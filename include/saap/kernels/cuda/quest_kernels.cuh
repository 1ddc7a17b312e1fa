// Quest's kernels (host API: quest.h). The page geometry, the budget and the bound are the CPU
// method's (methods/quest_pages.h over saap::rules), so both backends choose the same pages.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "saap/kernels/cuda/dense_decode.cuh"
#include "saap/kernels/cuda/reduce.cuh"
#include "saap/methods/quest_pages.h"

namespace saap::cuda {

constexpr int kQuestSelectThreads = 512;
constexpr int kQuestRadixBins = 2048;  // 11-bit digits for the bits below the histogram's
// The score kernel histograms the top 16 bits of every full page's radix key per (b, h), so that
// the select kernel finds the K-th key's bin without a pass over the keys (sign, exponent and 7
// mantissa bits: an 11-bit digit put nearly all keys of similar size into 2-4 bins).
constexpr int kQuestHistShift = 16;
constexpr int kQuestHistBins = 1 << (32 - kQuestHistShift);
constexpr int kQuestTileKeys = 16;  // keys per thread per tile of the select kernel (loads in flight together)
// Keys the select kernel keeps in shared memory after its first pass (128 KB: 512k tokens at P = 16),
// so that its later passes do not wait on L2; longer candidate lists are read from global memory.
constexpr int kQuestCachedKeys = 32768;
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

struct QuestStep {
  int P, sinks, window;
  double lookup;
  int64_t budget_tokens;
  __device__ quest::PageRange range(int64_t n, int64_t* budget) const {
    const rules::FixedReads f = rules::fixed_reads(n, sinks, window);
    *budget = quest::page_budget(lookup, budget_tokens, n, sinks, window);
    return quest::page_range(f, P);
  }
};

// The radix key of a page's bound: order-preserving bits, with -0 read as +0 so that the bits
// order exactly as rules::ranks_before compares the floats.
__device__ __forceinline__ uint32_t quest_rank_bits(float key) { return float_key(key == 0.f ? 0.f : key); }

// Bounds of the candidate pages of one (b, h): block (page block, bh), the blocks of a bh striding
// over its candidates a block pass (PER_BLOCK pages) at a time. The launcher sizes the grid to one
// wave of resident blocks, so the group's query is loaded once per block, not once per 32 pages,
// and from the capacity, not the current length, so a captured step stays valid as sequences
// grow. A page's 2 x D values are spread over D/8 lanes (16-byte streaming loads of min and of
// max); each lane sums its dimensions' group terms (quest::add_group_bound_term: the group's query
// split once into positive and negative parts, two FMAs per dimension instead of four operations
// per head), the lanes of a page then add up. keys[bh][r] is page range.first + r's key; each
// full page (P middle positions) also counts its key's top 16 bits in hist[bh], through a
// direct-mapped table of kQuestScoreSlots (bin, count) slots in shared memory: a slot's bin is set
// once, by the first page that maps to it; a page whose slot holds another bin counts in hist[bh]
// directly; the block adds its slots to hist[bh] at its end.
template <class T, int D, int GMAX>
static __global__ void __launch_bounds__(kQuestScoreWarps * 32)
    quest_score_kernel(const T* __restrict__ meta, int64_t max_pages, const int32_t* __restrict__ seq_len,
                       const float* __restrict__ q, int n_kv_heads, int G, QuestStep step, int64_t key_stride,
                       float* __restrict__ keys, uint32_t* __restrict__ hist) {
  constexpr int LPT = D / 8, PPP = 32 / LPT, U = kQuestScorePasses, PER_BLOCK = kQuestScoreWarps * PPP * U;
  wait_prior_grid();
  const int64_t bh = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane % LPT, slot = lane / LPT;
  // The query is read before the length is known, so that the two loads are in flight together.
  float q_pos[8], q_neg[8];
  const float* qb = q + bh * G * D;  // the group's query rows: (b * Hkv + h) * G == b * Hq + h * G
#pragma unroll
  for (int j = 0; j < 8; ++j) q_pos[j] = q_neg[j] = 0.f;
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float x = g < G ? qb[g * D + sub * 8 + j] : 0.f;
      q_pos[j] += fmaxf(x, 0.f);
      q_neg[j] += fminf(x, 0.f);
    }
  int64_t budget;
  const quest::PageRange range = step.range(seq_len[bh], &budget);
  if (budget <= 0 || budget >= range.fixed.middle()) return;  // select() scores nothing then
  const int64_t c1 = range.count();
  if (int64_t(blockIdx.x) * PER_BLOCK >= c1) return;  // the block's exits so far are block-uniform
  __shared__ uint32_t slot_bin[kQuestScoreSlots], slot_count[kQuestScoreSlots];
  constexpr uint32_t kEmpty = 0xffffffffu;  // no 16-bit bin
  for (int i = threadIdx.x; i < kQuestScoreSlots; i += blockDim.x) slot_bin[i] = kEmpty, slot_count[i] = 0u;
  __syncthreads();
  const T* mb = meta + (bh * max_pages + range.first) * 2 * D + sub * 8;
  float* kb = keys + bh * key_stride;
  uint32_t* hb = hist + bh * kQuestHistBins;
  for (int64_t r0 = int64_t(blockIdx.x) * PER_BLOCK + warp * PPP * U; r0 < c1; r0 += int64_t(gridDim.x) * PER_BLOCK) {
    uint4 lo[U], hi[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t r = r0 + u * PPP + slot;
      if (r < c1) {
        lo[u] = load_stream(mb + r * 2 * D);
        hi[u] = load_stream(mb + r * 2 * D + D);
      } else {
        lo[u] = hi[u] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float l[8], h[8];
      Vec8<T>::to_float(lo[u], l);
      Vec8<T>::to_float(hi[u], h);
      float key = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) key = quest::add_group_bound_term(key, q_pos[j], q_neg[j], l[j], h[j]);
#pragma unroll
      for (int off = LPT / 2; off > 0; off >>= 1) key += __shfl_xor_sync(0xffffffffu, key, off);
      const int64_t r = r0 + u * PPP + slot;
      if (sub == 0 && r < c1) {
        kb[r] = key;
        if (range.size(range.first + r) == step.P) {
          const uint32_t bin = quest_rank_bits(key) >> kQuestHistShift, hslot = bin % kQuestScoreSlots;
          const uint32_t held = atomicCAS(&slot_bin[hslot], kEmpty, bin);
          if (held == kEmpty || held == bin)
            atomicAdd(&slot_count[hslot], 1u);
          else
            atomicAdd(&hb[bin], 1u);
        }
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kQuestScoreSlots; i += blockDim.x)
    if (slot_count[i]) atomicAdd(&hb[slot_bin[i]], slot_count[i]);
}

// Exclusive prefix sum over the block (blockDim.x a multiple of 32); *total gets the sum.
// scratch: 32 ints of shared memory.
__device__ inline int quest_block_exclusive_scan(int v, int* scratch, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int x = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += x;
  }
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = lane < nw ? scratch[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int x = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += x;
    }
    if (lane < nw) scratch[lane] = w;  // inclusive totals of the warps
  }
  __syncthreads();
  *total = scratch[nw - 1];
  return (warp ? scratch[warp - 1] : 0) + incl - v;
}

// Block-wide min and max of unsigned values; every thread gets both. scratch: 64 words of shared memory.
__device__ inline void quest_block_min_max(uint32_t lo, uint32_t hi, uint32_t* scratch, uint32_t* lo_out,
                                           uint32_t* hi_out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  lo = __reduce_min_sync(0xffffffffu, lo);
  hi = __reduce_max_sync(0xffffffffu, hi);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = lo, scratch[32 + warp] = hi;
  __syncthreads();
  *lo_out = __reduce_min_sync(0xffffffffu, lane < nw ? scratch[lane] : 0xffffffffu);
  *hi_out = __reduce_max_sync(0xffffffffu, lane < nw ? scratch[32 + lane] : 0u);
}

// Ordinals in page order of the flagged keys of one tile: the block's tile holds keys
// base + j * blockDim.x + threadIdx.x for j < J, and bit j of `flags` marks this thread's j-th.
// ord[j] gets the number of flagged keys of the tile before it (ordered by j, then thread, which
// is page order); returns the tile's flagged count. counts: J * (blockDim.x / 32) <= blockDim.x
// ints of shared memory; scratch: 32 ints.
template <int J>
__device__ inline int quest_tile_ordinals(uint32_t flags, int (&ord)[J], int* counts, int* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const uint32_t before = (1u << lane) - 1u;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const uint32_t b = __ballot_sync(0xffffffffu, (flags >> j) & 1u);
    ord[j] = __popc(b & before);
    if (lane == 0) counts[j * nw + warp] = __popc(b);
  }
  __syncthreads();
  const int n = J * nw, v = int(threadIdx.x) < n ? counts[threadIdx.x] : 0;
  int total;
  const int ex = quest_block_exclusive_scan(v, scratch, &total);
  if (int(threadIdx.x) < n) counts[threadIdx.x] = ex;  // every read of counts came before the scan's barriers
  __syncthreads();
#pragma unroll
  for (int j = 0; j < J; ++j) ord[j] += counts[j * nw + warp];
  __syncthreads();  // counts may be reused at once
  return total;
}

// Everything one (b, h) reads, as chunks of P rows (chunk_rows: their first rows, in page order)
// and at most QuestIndex::kMaxPartials shorter runs; block bh of kQuestSelectThreads threads, with
// key_cap floats of dynamic shared memory (the keys, when count <= key_cap). Every pass over the
// keys goes in tiles of J keys per thread, loaded together.
//  1. one pass over the keys: the full pages ranked before each partial page (at most two: the
//     first and last candidates) and the range of the full pages' radix keys; keys cached;
//  2. the fill rule walked in rank order gives K, the full pages taken (the top K of the order);
//  3. the K-th key's 16-bit bin from the score kernel's histogram (only the bins within the keys'
//     range are read, and zeroed for the next step), then, when that bin is taken in part, two
//     radix passes over its keys' low 16 bits fix the exact key;
//  4. compaction in tiles of J keys per thread: ballots and one block scan per tile put the taken
//     pages in page order (ties at the exact key ranked by page id the same way).
static __global__ void __launch_bounds__(kQuestSelectThreads)
    quest_select_kernel(const float* __restrict__ keys, int64_t key_stride, const int32_t* __restrict__ seq_len,
                        QuestStep step, uint32_t* __restrict__ hist, int64_t max_chunks,
                        int32_t* __restrict__ chunk_rows, int32_t* __restrict__ chunk_count,
                        int2* __restrict__ partials, int32_t* __restrict__ partial_count,
                        int32_t* __restrict__ selected_tokens, int32_t* __restrict__ scored_pages, int key_cap) {
  constexpr int J = kQuestTileKeys;
  extern __shared__ float4 cached4[];  // [key_cap / 4]
  float* cached = reinterpret_cast<float*>(cached4);
  static_assert(J * (kQuestSelectThreads / 32) <= kQuestRadixBins && J <= 32, "tile counts live in the radix bins");
  __shared__ int radix[kQuestRadixBins];  // radix digits, then the tiles' counts
  __shared__ int scratch[32];
  __shared__ uint32_t ext[64];
  __shared__ long long s_take_full;
  __shared__ int s_small_taken[2];
  __shared__ uint32_t s_prefix;
  __shared__ long long s_need, s_at;
  wait_prior_grid();
  const int64_t bh = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int P = step.P;
  const int64_t n = seq_len[bh];
  int64_t budget;
  const quest::PageRange range = step.range(n, &budget);
  const rules::FixedReads& f = range.fixed;
  int32_t* rows = chunk_rows + bh * max_chunks;
  int2* parts = partials + bh * 4;
  const float* key = keys + bh * key_stride;  // 16-byte aligned
  // Runs [begin, end) as whole chunks at rows[at ..] plus a tail; returns the chunks written.
  auto emit = [&](int64_t begin, int64_t end, int64_t at, int* n_parts) -> int64_t {
    const int64_t whole = (end - begin) / P;
    for (int64_t c = tid; c < whole; c += nt) rows[at + c] = int32_t(begin + c * P);
    if (end - begin > whole * P) {
      if (tid == 0) parts[*n_parts] = make_int2(int(begin + whole * P), int(end - begin - whole * P));
      ++*n_parts;
    }
    return whole;
  };
  int n_parts = 0;
  if (budget >= f.middle()) {  // the budget covers the middle: read the prefix whole
    const int64_t whole = emit(0, n, 0, &n_parts);
    if (tid == 0) {
      chunk_count[bh] = int32_t(whole);
      partial_count[bh] = n_parts;
      selected_tokens[bh] = int32_t(n);
      scored_pages[bh] = 0;
    }
    return;
  }
  int64_t chunks = emit(0, f.sink_end, 0, &n_parts);
  chunks += emit(f.window_begin, n, chunks, &n_parts);
  int64_t tokens = f.count();
  const int count = budget > 0 ? int(range.count()) : 0;
  // The partial pages (smaller than P: the first and the last candidate at most) and the full ones.
  int small[2], n_small = 0;
  if (count > 0 && range.size(range.first) < P) small[n_small++] = 0;
  if (count > 1 && range.size(range.first + count - 1) < P) small[n_small++] = count - 1;
  auto is_small = [&](int r) { return (n_small > 0 && small[0] == r) || (n_small > 1 && small[1] == r); };
  const int full = count - n_small;
  // 1. Full pages ranked before each partial page (saap::rules order), and the full keys' range.
  float small_key[2] = {0.f, 0.f};
  for (int e = 0; e < n_small; ++e) small_key[e] = key[small[e]];
  int before[2] = {0, 0};
  uint32_t u_lo = 0xffffffffu, u_hi = 0u;
  // 16-byte loads, 4 keys each (order does not matter here); the last load may read up to 3 keys
  // past count, inside the row's padding, and ignores them. key_cap is a multiple of 4.
  const bool cache = count <= key_cap;
  const int count4 = (count + 3) / 4;
  const float4* key4 = reinterpret_cast<const float4*>(key);
  for (int base = 0; base < count4; base += nt * J) {
    float4 k4[J];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int i = base + j * nt + tid;
      k4[j] = i < count4 ? key4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int i = base + j * nt + tid;
      if (i >= count4) continue;
      if (cache) cached4[i] = k4[j];
      const float k[4] = {k4[j].x, k4[j].y, k4[j].z, k4[j].w};
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int r = 4 * i + c;
        if (r >= count || is_small(r)) continue;
        const uint32_t u = quest_rank_bits(k[c]);
        u_lo = min(u_lo, u);
        u_hi = max(u_hi, u);
        for (int e = 0; e < n_small; ++e) before[e] += rules::ranks_before(k[c], r, small_key[e], small[e]);
      }
    }
  }
  const float* src = cache ? cached : key;  // the later passes' keys (the scans below order the stores)
  int rank[2] = {0, 0};
  for (int e = 0; e < n_small; ++e) quest_block_exclusive_scan(before[e], scratch, &rank[e]);
  quest_block_min_max(u_lo, u_hi, ext, &u_lo, &u_hi);
  // 2. The fill rule walked in rank order: between two partial pages, full pages of P tokens are
  // taken while they fit, so the full pages taken are the first K of the order; a partial page is
  // taken if it fits when its turn comes.
  if (tid == 0) {
    int order[2] = {0, 1};
    if (n_small == 2 && !rules::ranks_before(small_key[0], small[0], small_key[1], small[1])) order[0] = 1, order[1] = 0;
    long long used = 0, seen = 0, taken = 0;
    for (int k = 0; k < n_small; ++k) {
      const int e = order[k];
      const long long fit = (budget - used) / P, more = rank[e] - seen;
      const long long t = more < fit ? more : fit;
      taken += t;
      used += t * P;
      seen = rank[e];
      const int64_t sz = range.size(range.first + small[e]);
      s_small_taken[e] = used + sz <= budget;
      if (s_small_taken[e]) used += sz;
    }
    const long long fit = (budget - used) / P, more = full - seen;
    taken += more < fit ? more : fit;
    s_take_full = taken;
  }
  __syncthreads();
  const long long K = s_take_full;
  // 3. The K-th largest full key: its 16-bit bin from the histogram, read over the keys' range
  // [u_lo, u_hi] only (where every count of this step landed) and zeroed behind. Thread t owns
  // `per` bins from the top down; the thread whose bins cross K walks them.
  uint32_t prefix = 0, mask = 0;
  long long need = K, at = 0;
  if (full > 0) {
    // In 16-byte quads of bins, eight loads in flight: the range can be wide (keys of both signs
    // span ~32k bins), and one load at a time cost ~50 us there. Every bin outside [lo, hi] is
    // zero, so whole quads are read and zeroed.
    constexpr int QF = 8;  // quad loads in flight per thread
    const int q_lo = int(u_lo >> kQuestHistShift) >> 2, q_hi = int(u_hi >> kQuestHistShift) >> 2;
    const int per = (q_hi - q_lo + nt) / nt;
    const int top = q_hi - tid * per, bottom = max(q_lo - 1, top - per);  // quads (bottom, top]
    uint4* hq = reinterpret_cast<uint4*>(hist + bh * kQuestHistBins);
    auto load = [&](int q0, uint4 (&v)[QF]) {
#pragma unroll
      for (int i = 0; i < QF; ++i) v[i] = q0 - i > bottom ? __ldcg(&hq[q0 - i]) : make_uint4(0u, 0u, 0u, 0u);
    };
    int own = 0;
    for (int q0 = top; q0 > bottom; q0 -= QF) {
      uint4 v[QF];
      load(q0, v);
#pragma unroll
      for (int i = 0; i < QF; ++i) own += int(v[i].x + v[i].y + v[i].z + v[i].w);
    }
    int total;
    const int above = quest_block_exclusive_scan(own, scratch, &total);
    if (K > 0 && K < full && above < K && above + own >= K) {
      long long cum = above;
      bool found = false;
      for (int q0 = top; q0 > bottom && !found; q0 -= QF) {
        uint4 v[QF];
        load(q0, v);
        for (int i = 0; i < QF && !found; ++i) {
          const uint32_t h4[4] = {v[i].w, v[i].z, v[i].y, v[i].x};  // bins 4q + 3 down to 4q
          for (int c = 0; c < 4; ++c) {
            const int h = int(h4[c]);
            if (cum + h >= K) {
              s_prefix = uint32_t(4 * (q0 - i) + 3 - c) << kQuestHistShift;
              s_need = K - cum;
              s_at = h;
              found = true;
              break;
            }
            cum += h;
          }
        }
      }
    }
    for (int q0 = top; q0 > bottom; --q0) hq[q0] = make_uint4(0u, 0u, 0u, 0u);
    __syncthreads();
    if (K > 0 && K < full) {
      prefix = s_prefix;
      need = s_need;
      at = s_at;
      mask = ~uint32_t(0) << kQuestHistShift;
    }
  }
  // The bin is taken in part: its keys' low bits, 11 then 5 at a time, fix the exact K-th key;
  // need is then how many pages holding exactly that key are taken (the lowest ids), of the `at`
  // pages that hold it.
  if (K > 0 && K < full && need < at) {
    static_assert(kQuestHistShift == 16, "the two passes below cover 11 + 5 bits");
    for (int pass = 0; pass < 2; ++pass) {
      const int shift = pass == 0 ? 5 : 0, nb = pass == 0 ? 2048 : 32;
      for (int i = tid; i < nb; i += nt) radix[i] = 0;
      __syncthreads();
      for (int base = 0; base < count; base += nt * J) {
        float k[J];
#pragma unroll
        for (int j = 0; j < J; ++j) {
          const int r = base + j * nt + tid;
          k[j] = r < count ? src[r] : 0.f;
        }
#pragma unroll
        for (int j = 0; j < J; ++j) {
          const int r = base + j * nt + tid;
          const uint32_t u = quest_rank_bits(k[j]);
          if (r < count && !is_small(r) && (u & mask) == prefix) atomicAdd(&radix[(u >> shift) & (nb - 1)], 1);
        }
      }
      __syncthreads();
      if (tid < 32) {
        int d;
        long long above;
        warp_find_digit(radix, nb, need, true, d, above);
        if (tid == 0) {
          s_prefix = prefix | (uint32_t(d) << shift);
          s_need = need - above;
          s_at = radix[d];
        }
      }
      __syncthreads();
      prefix = s_prefix;
      need = s_need;
      at = s_at;
      mask |= uint32_t(nb - 1) << shift;
    }
  }
  // 4. Compaction. Pages holding the K-th key exactly are ranked by id only when some of them are
  // left out (rare).
  const bool take_all = K >= full, rank_ties = K > 0 && !take_all && need < at;
  int taken_pages = 0, ties_seen = 0;
  for (int base = 0; K > 0 && base < count; base += nt * J) {
    uint32_t u[J], valid = 0u;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int r = base + j * nt + tid;
      const bool ok = r < count && !is_small(r);
      u[j] = ok ? quest_rank_bits(src[r]) : 0u;
      valid |= uint32_t(ok) << j;
    }
    int ord[J];
    uint32_t take = 0u;
    if (rank_ties) {
      uint32_t tie = 0u;
#pragma unroll
      for (int j = 0; j < J; ++j) tie |= uint32_t(((valid >> j) & 1u) && u[j] == prefix) << j;
      const int tile_ties = quest_tile_ordinals<J>(tie, ord, radix, scratch);
#pragma unroll
      for (int j = 0; j < J; ++j) take |= uint32_t(((tie >> j) & 1u) && ties_seen + ord[j] < need) << j;
      ties_seen += tile_ties;
    }
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const uint32_t m = u[j] & mask;
      const bool above = take_all || m > prefix || (m == prefix && !rank_ties);
      take |= uint32_t(((valid >> j) & 1u) && above) << j;
    }
    const int tile_taken = quest_tile_ordinals<J>(take, ord, radix, scratch);
#pragma unroll
    for (int j = 0; j < J; ++j)
      if ((take >> j) & 1u) rows[chunks + taken_pages + ord[j]] = int32_t((range.first + base + j * nt + tid) * P);
    taken_pages += tile_taken;
  }
  tokens += int64_t(taken_pages) * P;
  if (tid == 0) {
    for (int e = 0; e < n_small; ++e)
      if (s_small_taken[e]) {
        const int64_t c = range.first + small[e];
        parts[n_parts++] = make_int2(int(range.begin(c)), int(range.size(c)));
        tokens += range.size(c);
      }
    chunk_count[bh] = int32_t(chunks + taken_pages);
    partial_count[bh] = n_parts;
    selected_tokens[bh] = int32_t(tokens);
    scored_pages[bh] = count;
  }
}

// Attention of the G query heads of one KV group over its chunks (split evenly over blocks) and,
// in split 0, its partial runs: block (split, kv head, sequence). The block stages its chunks'
// first rows in shared memory, kQuestStageChunks at a time, so that a K/V load never waits on the
// load of its row number. LOOP: the attender's loop over the chunks, Plain or Prefetch (and its
// register budget); the tensor-core loop never won here (H200, da2ee81), so it is not built.
template <class T, int D, int GMAX, DenseLoop LOOP>
static __global__ void __launch_bounds__(kDecodeWarps * 32, dense_loop_min_blocks(LOOP, GMAX))
    quest_attend_kernel(const T* __restrict__ K, const T* __restrict__ V, int64_t max_len,
                        const int32_t* __restrict__ chunk_rows, const int32_t* __restrict__ chunk_count,
                        int64_t max_chunks, const int2* __restrict__ partials, const int32_t* __restrict__ partial_count,
                        int P, const float* __restrict__ q, int n_kv_heads, int G, float scale, int splits,
                        float* __restrict__ part_out, float* __restrict__ part_lse) {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  static_assert(kQuestStageChunks <= kDecodeWarps * 32, "one thread stages one chunk row");
  __shared__ typename A::Shared sh;
  __shared__ int32_t stage[kQuestStageChunks];
  wait_prior_grid();
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = int64_t(b) * n_kv_heads + h;
  const int64_t row0 = bh * G;
  A at;
  at.init(q + row0 * D, G, scale);  // before the counts, so that their loads are in flight together
  const int64_t nch = chunk_count[bh];
  // Split 0 also reads the partial runs after its chunks: their descriptors are loaded now, with
  // the counts, not after the chunks (one dependent round trip less on the longest block).
  const int n_parts = split == 0 ? partial_count[bh] : 0;
  int2 part[4];  // at most QuestIndex::kMaxPartials = 4 runs per (b, h), as the select kernel writes them
#pragma unroll
  for (int k = 0; k < 4; ++k) part[k] = split == 0 ? partials[bh * 4 + k] : make_int2(0, 0);
  const int64_t j0 = nch * split / splits, j1 = nch * (split + 1) / splits;
  const T* kb = K + bh * max_len * D + at.sub * 8;
  const T* vb = V + bh * max_len * D + at.sub * 8;
  const int32_t* rows = chunk_rows + bh * max_chunks;
  // Row i of the stage; a power-of-two P (16 by default) shifts and masks, since two integer
  // divisions per row and lane were a large share of the loop's instructions.
  const int p_shift = (P & (P - 1)) == 0 ? __ffs(P) - 1 : -1;
  auto row = [&](int i) {
    return p_shift >= 0 ? int64_t(stage[i >> p_shift]) + (i & (P - 1)) : int64_t(stage[i / P]) + i % P;
  };
  for (int64_t s0 = j0; s0 < j1; s0 += kQuestStageChunks) {
    const int ns = int(min(int64_t(kQuestStageChunks), j1 - s0));
    __syncthreads();  // the previous stage is no longer read
    if (int(threadIdx.x) < ns) stage[threadIdx.x] = rows[s0 + threadIdx.x];
    __syncthreads();
    auto kptr = [&](int i) { return kb + row(i) * D; };
    auto vptr = [&](int i) { return vb + row(i) * D; };
    if constexpr (LOOP == DenseLoop::Prefetch) {
      at.run_prefetch(ns * P, kptr, vptr);
    } else {
      at.run(ns * P, kptr, vptr);
    }
  }
  for (int k = 0; k < n_parts; ++k) {
    const int2 p = part[k];
    const T* ks = kb + int64_t(p.x) * D;
    const T* vs = vb + int64_t(p.x) * D;
    at.run(p.y, [&](int i) { return ks + int64_t(i) * D; }, [&](int i) { return vs + int64_t(i) * D; });
  }
  at.finish(sh, G, part_out + (row0 * splits + split) * D, int64_t(splits) * D, part_lse + row0 * splits + split,
            splits);
}

}  // namespace saap::cuda
