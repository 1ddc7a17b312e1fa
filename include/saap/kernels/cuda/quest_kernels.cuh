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

constexpr int kQuestSelectThreads = 1024;
constexpr int kQuestRadixBins = 2048;  // 11-bit digits: a 32-bit key in 3 passes
constexpr int kQuestScoreWarps = 4;
constexpr int kQuestScorePasses = 4;  // page passes per warp whose loads are in flight together

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

// Bounds of the candidate pages of one (b, h): block (page block, bh). A page's 2 x D values are
// spread over D/8 lanes (16-byte loads of min and of max); each lane sums its dimensions over the
// group's heads, the lanes of a page then add up. keys[bh][r] is page range.first + r's key.
template <class T, int D, int GMAX>
static __global__ void __launch_bounds__(kQuestScoreWarps * 32)
    quest_score_kernel(const T* __restrict__ meta, int64_t max_pages, const int32_t* __restrict__ seq_len,
                       const float* __restrict__ q, int n_kv_heads, int G, QuestStep step, float* __restrict__ keys) {
  constexpr int LPT = D / 8, PPP = 32 / LPT, U = kQuestScorePasses;
  wait_prior_grid();
  const int64_t bh = blockIdx.y;
  int64_t budget;
  const quest::PageRange range = step.range(seq_len[bh], &budget);
  if (budget <= 0 || budget >= range.fixed.middle()) return;  // select() scores nothing then
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane % LPT, slot = lane / LPT;
  const int64_t r0 = (int64_t(blockIdx.x) * kQuestScoreWarps + warp) * PPP * U;
  if (r0 >= range.count()) return;
  float qr[GMAX][8];
  const float* qb = q + bh * G * D;  // the group's query rows: (b * Hkv + h) * G == b * Hq + h * G
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
#pragma unroll
    for (int j = 0; j < 8; ++j) qr[g][j] = g < G ? qb[g * D + sub * 8 + j] : 0.f;
  uint4 lo[U], hi[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t r = r0 + u * PPP + slot;
    if (r < range.count()) {
      const T* m = meta + (bh * max_pages + range.first + r) * 2 * D + sub * 8;
      lo[u] = *reinterpret_cast<const uint4*>(m);
      hi[u] = *reinterpret_cast<const uint4*>(m + D);
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
    for (int g = 0; g < GMAX; ++g) {
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) s += quest::bound_term(qr[g][j], l[j], h[j]);
      key += s;
    }
#pragma unroll
    for (int off = LPT / 2; off > 0; off >>= 1) key += __shfl_xor_sync(0xffffffffu, key, off);
    const int64_t r = r0 + u * PPP + slot;
    if (sub == 0 && r < range.count()) keys[bh * max_pages + r] = key;
  }
}

// The radix key of a page's bound: order-preserving bits, with -0 read as +0 so that the bits
// order exactly as rules::ranks_before compares the floats.
__device__ __forceinline__ uint32_t quest_rank_bits(float key) { return float_key(key == 0.f ? 0.f : key); }

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

// Everything one (b, h) reads, as chunks of P rows (chunk_rows: their first rows) and at most
// QuestIndex::kMaxPartials shorter runs; block bh of kQuestSelectThreads threads.
static __global__ void __launch_bounds__(kQuestSelectThreads)
    quest_select_kernel(const float* __restrict__ keys, int64_t max_pages, const int32_t* __restrict__ seq_len,
                        QuestStep step, int64_t max_chunks, int32_t* __restrict__ chunk_rows,
                        int32_t* __restrict__ chunk_count, int2* __restrict__ partials,
                        int32_t* __restrict__ partial_count, int32_t* __restrict__ selected_tokens,
                        int32_t* __restrict__ scored_pages) {
  __shared__ int hist[kQuestRadixBins];
  __shared__ int scratch[32];
  __shared__ int s_rank[2];
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
  const float* key = keys + bh * max_pages;
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
  const int64_t full = count - n_small;
  // Full pages ranked before each partial page (saap::rules order), for the walk below.
  if (n_small > 0) {
    int before[2] = {0, 0};
    for (int r = tid; r < count; r += nt)
      if (!is_small(r))
        for (int e = 0; e < n_small; ++e) before[e] += rules::ranks_before(key[r], r, key[small[e]], small[e]);
    for (int e = 0; e < n_small; ++e) {  // counts below 2^24 are exact in a float
      const int b = int(block_reduce<false>(float(before[e]), reinterpret_cast<float*>(scratch)));
      if (tid == 0) s_rank[e] = b;
    }
  }
  // The fill rule walked in rank order: between two partial pages, full pages of P tokens are
  // taken while they fit, so the full pages taken are the first K of the order; a partial page is
  // taken if it fits when its turn comes.
  if (tid == 0) {
    int order[2] = {0, 1};
    if (n_small == 2 && !rules::ranks_before(key[small[0]], small[0], key[small[1]], small[1])) order[0] = 1, order[1] = 0;
    long long used = 0, seen = 0, taken = 0;
    for (int k = 0; k < n_small; ++k) {
      const int e = order[k];
      const long long fit = (budget - used) / P, more = s_rank[e] - seen;
      const long long t = more < fit ? more : fit;
      taken += t;
      used += t * P;
      seen = s_rank[e];
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
  // The K-th largest full-page key by radix select over its order-preserving bits, 11, 11 and 10
  // at a time; need is then how many pages holding exactly that key are taken (the lowest ids), of
  // the `at` pages that hold it.
  uint32_t prefix = 0, mask = 0;
  long long need = K, at = 0;
  if (K > 0 && K < full) {
    for (int shift = 21; shift >= 0; shift -= shift > 10 ? 11 : 10) {
      const int bits = shift == 0 ? 10 : 11, nb = 1 << bits;
      for (int i = tid; i < nb; i += nt) hist[i] = 0;
      __syncthreads();
      for (int r = tid; r < count; r += nt) {
        const uint32_t u = quest_rank_bits(key[r]);
        if (!is_small(r) && (u & mask) == prefix) atomicAdd(&hist[(u >> shift) & (nb - 1)], 1);
      }
      __syncthreads();
      if (tid < 32) {
        int d;
        long long above;
        warp_find_digit(hist, nb, need, true, d, above);
        if (tid == 0) {
          s_prefix = prefix | (uint32_t(d) << shift);
          s_need = need - above;
          s_at = hist[d];
        }
      }
      __syncthreads();
      prefix = s_prefix;
      need = s_need;
      at = s_at;
      mask |= uint32_t(nb - 1) << shift;
    }
  }
  // Compaction: thread t owns pages [t per, (t + 1) per), so the taken ones come out in page order.
  const int per = (count + nt - 1) / nt;
  const int r0 = min(count, tid * per), r1 = min(count, r0 + per);
  auto takes = [&](int r, uint32_t u, bool tie_ok) {
    if (is_small(r)) return false;
    if (K >= full) return true;
    if (K <= 0) return false;
    return u > prefix || (u == prefix && tie_ok);
  };
  // Pages holding the K-th key are ranked by id only when some of them are left out (rare).
  const bool rank_ties = K > 0 && K < full && need < at;
  int ties = 0;
  if (rank_ties)
    for (int r = r0; r < r1; ++r) ties += !is_small(r) && quest_rank_bits(key[r]) == prefix;
  int total;
  int tie = rank_ties ? quest_block_exclusive_scan(ties, scratch, &total) : 0;
  int mine = 0;
  for (int r = r0; r < r1; ++r) {
    const uint32_t u = quest_rank_bits(key[r]);
    const bool is_tie = K > 0 && K < full && !is_small(r) && u == prefix;
    mine += takes(r, u, is_tie && (!rank_ties || tie < need));
    tie += is_tie;
  }
  int taken_pages;
  int at_row = quest_block_exclusive_scan(mine, scratch, &taken_pages);
  tie -= ties;
  for (int r = r0; r < r1; ++r) {
    const uint32_t u = quest_rank_bits(key[r]);
    const bool is_tie = K > 0 && K < full && !is_small(r) && u == prefix;
    if (takes(r, u, is_tie && (!rank_ties || tie < need))) rows[chunks + at_row++] = int32_t((range.first + r) * P);
    tie += is_tie;
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
// in split 0, its partial runs: block (split, kv head, sequence).
template <class T, int D, int GMAX>
static __global__ void __launch_bounds__(kDecodeWarps * 32, decode_min_blocks(GMAX))
    quest_attend_kernel(const T* __restrict__ K, const T* __restrict__ V, int64_t max_len,
                        const int32_t* __restrict__ chunk_rows, const int32_t* __restrict__ chunk_count,
                        int64_t max_chunks, const int2* __restrict__ partials, const int32_t* __restrict__ partial_count,
                        int P, const float* __restrict__ q, int n_kv_heads, int G, float scale, int splits,
                        float* __restrict__ part_out, float* __restrict__ part_lse) {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  __shared__ typename A::Shared sh;
  wait_prior_grid();
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = int64_t(b) * n_kv_heads + h;
  const int64_t nch = chunk_count[bh];
  const int64_t j0 = nch * split / splits, j1 = nch * (split + 1) / splits;
  const int64_t row0 = bh * G;
  A at;
  at.init(q + row0 * D, G, scale);
  const T* kb = K + bh * max_len * D + at.sub * 8;
  const T* vb = V + bh * max_len * D + at.sub * 8;
  const int32_t* rows = chunk_rows + bh * max_chunks + j0;
  auto row = [&](int i) { return int64_t(rows[i / P]) + i % P; };
  at.run(int((j1 - j0) * P), [&](int i) { return kb + row(i) * D; }, [&](int i) { return vb + row(i) * D; });
  if (split == 0)
    for (int k = 0; k < partial_count[bh]; ++k) {
      const int2 p = partials[bh * 4 + k];
      const T* ks = kb + int64_t(p.x) * D;
      const T* vs = vb + int64_t(p.x) * D;
      at.run(p.y, [&](int i) { return ks + int64_t(i) * D; }, [&](int i) { return vs + int64_t(i) * D; });
    }
  at.finish(sh, G, part_out + (row0 * splits + split) * D, int64_t(splits) * D, part_lse + row0 * splits + split,
            splits);
}

}  // namespace saap::cuda
