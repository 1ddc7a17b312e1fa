// Quest's selection of pages on the GPU (the select kernel's body; quest_kernels.cuh launches it,
// the score kernel there fills its histogram): the CPU method's fill rule over the page bounds
// (methods/quest_pages.h over saap::rules), computed exactly without a sort. Kept apart from the
// score and attend kernels: it needs no K/V types, only the rules and the radix bits.
#pragma once
#include <cstdint>

#include "saap/kernels/cuda/reduce.cuh"
#include "saap/methods/quest_pages.h"

namespace saap::cuda {

constexpr int kQuestSelectThreads = 512;
constexpr int kQuestRadixBins = 2048;  // the select kernel's 11-bit digits below the histogram's bits
// The score kernel histograms the top 16 bits of every full page's radix key per (b, h), so that
// the select kernel finds the K-th key's bin without a pass over the keys (sign, exponent and 7
// mantissa bits: an 11-bit digit put nearly all keys of similar size into 2-4 bins).
constexpr int kQuestHistShift = 16;
constexpr int kQuestHistBins = 1 << (32 - kQuestHistShift);
// Keys the select kernel keeps in shared memory after its first pass (128 KB: 512k tokens at P = 16),
// so that its later passes do not wait on L2; longer candidate lists are read from global memory.
constexpr int kQuestCachedKeys = 32768;

// The step's budget and pages at a (b, h)'s length, as the score and select kernels both read them.
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
// Component c of v (selects, not a local-memory array, for a runtime c).
__device__ __forceinline__ float quest_component(const float4& v, int c) {
  return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
}

// Exclusive prefix sum over the block (blockDim.x a multiple of 32); *total gets the sum.
// scratch: 32 values of shared memory. Not inlined: the select kernel scans in six places, and
// its code is fetched cold from DRAM after other kernels' traffic evicts it from L2.
static __device__ __noinline__ unsigned long long quest_block_exclusive_scan(unsigned long long v,
                                                                             unsigned long long* scratch,
                                                                             unsigned long long* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  unsigned long long incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long x = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += x;
  }
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    unsigned long long w = lane < nw ? scratch[lane] : 0ull;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned long long x = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += x;
    }
    if (lane < nw) scratch[lane] = w;  // inclusive totals of the warps
  }
  __syncthreads();
  *total = scratch[nw - 1];
  return (warp ? scratch[warp - 1] : 0ull) + incl - v;
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

// A bin of a histogram walked from the top: its index from the top, the count of the bins above
// it, its own count.
struct QuestBin {
  int from_top;
  unsigned long long above, count;
};

// The bin where the running total of top[-i], i = 0 (the top bin) .. nbins - 1, first reaches
// `need` (1 <= need <= the total); block-wide, every thread gets it. top points into shared memory,
// or into global memory (in_global: read from L2, where the previous kernel's atomics left it),
// read twice. Thread t sums its own run of bins (its loads in flight together), one block scan
// finds the run that crosses, and that run's thread walks it.
static __device__ __noinline__ QuestBin quest_block_find_bin(const uint32_t* top, bool in_global, int nbins,
                                                             unsigned long long need, unsigned long long* scratch,
                                                             QuestBin* result) {
  const int nt = blockDim.x, per = (nbins + nt - 1) / nt;
  const int i0 = min(nbins, int(threadIdx.x) * per), i1 = min(nbins, i0 + per);
  auto bin = [&](int i) { return in_global ? __ldcg(top - i) : top[-i]; };
  unsigned long long own = 0;
#pragma unroll 4
  for (int i = i0; i < i1; ++i) own += bin(i);
  unsigned long long total;
  const unsigned long long above = quest_block_exclusive_scan(own, scratch, &total);
  if (above < need && above + own >= need) {
    unsigned long long cum = above;
    for (int i = i0; i < i1; ++i) {
      const unsigned long long c = bin(i);
      if (cum + c >= need) {
        *result = QuestBin{i, cum, c};
        break;
      }
      cum += c;
    }
  }
  __syncthreads();
  return *result;
}

// The fill rule of saap::rules walked in rank order over the candidates: between two partial pages
// (small_r[e] >= 0: candidate index of the first (e = 0) and last (e = 1) page when shorter than
// P, else -1), full pages of P tokens are taken while they fit, so the full pages taken are the
// first full_taken of the ranking; a partial page is taken if it fits when its turn comes.
// rank[e]: the full pages ranked before partial page e. One thread runs it.
struct QuestFill {
  long long full_taken;
  int small_taken[2];
};
__device__ inline QuestFill quest_fill_walk(const quest::PageRange& range, int64_t budget, long long full,
                                            const float small_key[2], const int small_r[2], const int rank[2]) {
  const int64_t P = range.page_size;
  int order[2], n_small = 0;
  if (small_r[0] >= 0) order[n_small++] = 0;
  if (small_r[1] >= 0) order[n_small++] = 1;
  if (n_small == 2 && !rules::ranks_before(small_key[0], small_r[0], small_key[1], small_r[1]))
    order[0] = 1, order[1] = 0;
  QuestFill out{0, {0, 0}};
  long long used = 0, seen = 0;
  for (int k = 0; k < n_small; ++k) {
    const int e = order[k];
    const long long fit = (budget - used) / P, more = rank[e] - seen;
    const long long t = more < fit ? more : fit;
    out.full_taken += t;
    used += t * P;
    seen = rank[e];
    const int64_t sz = range.size(range.first + small_r[e]);
    out.small_taken[e] = used + sz <= budget;
    if (out.small_taken[e]) used += sz;
  }
  const long long fit = (budget - used) / P, more = full - seen;
  out.full_taken += more < fit ? more : fit;
  return out;
}

// How the blocks that select one (b, h) share their sums: one block alone (the select kernel),
// nothing to share. quest_kernels.cuh has the other, a thread-block cluster (QuestSelectCluster):
// rank() of size() blocks, sync() a barrier of the cluster that orders shared memory (arrive()
// then wait(): the same barrier in two halves), at(p, r) block r's copy of the shared variable *p.
struct QuestSelectAlone {
  static constexpr bool kMany = false;
  __device__ int rank() const { return 0; }
  __device__ int size() const { return 1; }
  __device__ void sync() const {}
  __device__ void arrive() const {}
  __device__ void wait() const {}
  template <class V>
  __device__ V* at(V* p, int) const {
    return p;
  }
};

// What a block of a cluster publishes after its pass over its slice (read by every rank).
struct QuestSliceSums {
  unsigned long long before;  // full pages ranked before partial page 0 (low 32 bits) and 1 (high)
  uint32_t u_lo, u_hi;        // the full keys' rank bits, min and max
};

// A cluster's shared values, in each block's dynamic shared memory after its cached keys (only
// these are read across blocks): rank 0's sum of every rank's radix counts and its digit, and
// each block's sums and counts.
struct QuestClusterShared {
  uint32_t radix_sum[kQuestRadixBins];  // rank 0's
  QuestBin bin;                         // rank 0's: the refinement pass's digit
  QuestSliceSums sums;                  // pass 1 over this block's slice
  unsigned long long counts;            // this slice's pages taken (low 32 bits) and tied (high)
};

// The selection of one (b, h), bh: everything it reads, as chunks of P rows (chunk_rows: their first
// rows, in page order) and at most QuestIndex::kMaxPartials shorter runs. Run by one block of
// kQuestSelectThreads threads (X = QuestSelectAlone), or by the x.size() blocks of a cluster
// (QuestSelectCluster), block x.rank() taking the rank-th of x.size() contiguous slices of the keys
// (in float4s), with cached4: key_cap floats of shared memory (the block's keys, cached when they
// fit), and for a cluster a QuestClusterShared after them (all that is read across blocks). The
// fill rule of saap::rules over the ranking, exactly, without a sort: the candidates
// are `count` pages, of which the first and the last may be partial (shorter than P) and the others
// are full.
//  1. one pass over the keys (16-byte loads, four in flight per thread): the full pages ranked
//     before each partial page and the range of the full keys' radix bits; keys cached; a cluster's
//     ranks then read each other's sums;
//  2. the fill rule walked in rank order: the full pages taken are the first K of the order;
//  3. the K-th key: its top 16 bits from the score kernel's histogram (read over the keys' range
//     only, and zeroed for the next step); when that bin is taken in part, its keys' next 11 bits
//     and last 5 bits (two passes over the cached keys) fix the exact key, and `need` of the pages
//     holding exactly that key are taken: the lowest ids. A cluster's ranks add their counts into
//     rank 0's, which finds the digit for all;
//  4. compaction: tiles of 16 keys per thread, one block scan per tile (the four 16-byte loads'
//     counts packed in 16-bit fields of one 64-bit value), the taken pages written in page order.
//     A cluster's ranks first count their slice's taken and tied pages and read the counts of the
//     ranks before them: where their pages go, and the ordinal of their first tie.
// Every loop over the keys reads float4 i4 = tile + m * blockDim.x + thread, m < 4, so global and
// shared loads are contiguous across a warp; page order within a tile is (m, thread, component).
template <class X = QuestSelectAlone>
__device__ inline void quest_select_row(int64_t bh, const float* __restrict__ keys, int64_t key_stride,
                                        const int32_t* __restrict__ seq_len, QuestStep step,
                                        uint32_t* __restrict__ hist, int64_t max_chunks,
                                        int32_t* __restrict__ chunk_rows, int32_t* __restrict__ chunk_count,
                                        int2* __restrict__ partials, int32_t* __restrict__ partial_count,
                                        int32_t* __restrict__ selected_tokens, int32_t* __restrict__ scored_pages,
                                        int key_cap, float4* cached4, const X& x = X{}) {
  constexpr int M = 4;  // 16-byte loads per thread per tile
  static_assert(M * 4 * kQuestSelectThreads < 65536, "a tile's counts per load fit 16 bits");
  __shared__ uint32_t radix[kQuestRadixBins];
  __shared__ unsigned long long scratch[32];
  __shared__ uint32_t ext[64];
  __shared__ long long s_take_full;
  __shared__ int s_small_taken[2];
  __shared__ QuestBin s_bin;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int rank = x.rank(), C = x.size();
  const bool lead = rank == 0;  // writes the sinks' and window's chunks, the partial runs and the counters
  const int P = step.P;
  const int64_t n = seq_len[bh];
  int64_t budget;
  const quest::PageRange range = step.range(n, &budget);
  const rules::FixedReads& f = range.fixed;
  int32_t* rows = chunk_rows + bh * max_chunks;
  int2* parts = partials + bh * 4;
  // Runs [begin, end) as whole chunks at rows[at ..] plus a tail; returns the chunks, written when
  // `write` (by the lead).
  auto emit = [&](int64_t begin, int64_t end, int64_t at, int* n_parts, bool write) -> int64_t {
    const int64_t whole = (end - begin) / P;
    if (lead && write)
      for (int64_t c = tid; c < whole; c += nt) rows[at + c] = int32_t(begin + c * P);
    if (end - begin > whole * P) {
      if (lead && write && tid == 0) parts[*n_parts] = make_int2(int(begin + whole * P), int(end - begin - whole * P));
      ++*n_parts;
    }
    return whole;
  };
  int n_parts = 0;
  if (budget >= f.middle()) {  // the budget covers the middle: read the prefix whole
    const int64_t whole = emit(0, n, 0, &n_parts, true);
    if (lead && tid == 0) {
      chunk_count[bh] = int32_t(whole);
      partial_count[bh] = n_parts;
      selected_tokens[bh] = int32_t(n);
      scored_pages[bh] = 0;
    }
    return;
  }
  // A cluster's lead writes them after the last exchange: a cluster barrier first waits for the
  // block's stores to reach L2.
  int64_t chunks = emit(0, f.sink_end, 0, &n_parts, !X::kMany);
  chunks += emit(f.window_begin, n, chunks, &n_parts, !X::kMany);
  int64_t tokens = f.count();
  const int count = budget > 0 ? int(range.count()) : 0;
  // Candidates r in [full_lo, full_hi) are full pages; r = 0 and r = count - 1 may be partial.
  const bool first_small = count > 0 && range.size(range.first) < P;
  const bool last_small = count > 1 && range.size(range.first + count - 1) < P;
  const int full_lo = first_small ? 1 : 0, full_hi = count - (last_small ? 1 : 0), full = max(0, full_hi - full_lo);
  const float* key = keys + bh * key_stride;  // 16-byte aligned rows, padded to a multiple of 4
  const float4* key4 = reinterpret_cast<const float4*>(key);
  // A cluster's shared values, after the block's cached keys.
  QuestClusterShared* cs = reinterpret_cast<QuestClusterShared*>(cached4 + key_cap / 4);
  if constexpr (X::kMany)
    if (lead)  // zeroed before the barrier after pass 1, so before any rank adds to it
      for (int i = tid; i < kQuestRadixBins; i += nt) cs->radix_sum[i] = 0u;
  // The partial pages e = 0 (first), 1 (last): their rank bits and ids; a missing one compares
  // below every key (bits all ones, id -1), so it counts nothing.
  uint32_t small_u[2] = {~0u, ~0u};
  int small_r[2] = {-1, -1};
  float small_key[2] = {0.f, 0.f};
  if (first_small) small_key[0] = __ldcg(key), small_u[0] = quest_rank_bits(small_key[0]), small_r[0] = 0;
  if (last_small)
    small_key[1] = __ldcg(key + count - 1), small_u[1] = quest_rank_bits(small_key[1]), small_r[1] = count - 1;
  // This block's slice of the keys, float4s [s_lo, s_hi): all of them when alone.
  const int count4 = (count + 3) / 4;
  const int s_lo = int(int64_t(count4) * rank / C), s_hi = int(int64_t(count4) * (rank + 1) / C);
  // 1. Full pages ranked before each partial page (rules::ranks_before on the rank bits), the full
  // keys' bit range, and the cache.
  const bool cache = (s_hi - s_lo) * 4 <= key_cap;
  uint32_t u_lo = ~0u, u_hi = 0u;
  unsigned long long before = 0;  // partial page 0's count in the low 32 bits, page 1's in the high
#pragma unroll 1
  for (int t4 = s_lo; t4 < s_hi; t4 += M * nt) {
    float4 v[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const int i4 = t4 + m * nt + tid;
      v[m] = i4 < s_hi ? __ldcg(key4 + i4) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const int i4 = t4 + m * nt + tid;
      if (i4 >= s_hi) continue;
      if (cache) cached4[i4 - s_lo] = v[m];
#pragma unroll 1
      for (int c = 0; c < 4; ++c) {
        const int r = 4 * i4 + c;
        if (r < full_lo || r >= full_hi) continue;
        const uint32_t u = quest_rank_bits(quest_component(v[m], c));
        u_lo = min(u_lo, u);
        u_hi = max(u_hi, u);
        before += (u > small_u[0] || (u == small_u[0] && r < small_r[0])) ? 1ull : 0ull;
        before += (u > small_u[1] || (u == small_u[1] && r < small_r[1])) ? 1ull << 32 : 0ull;
      }
    }
  }
  quest_block_exclusive_scan(before, scratch, &before);
  quest_block_min_max(u_lo, u_hi, ext, &u_lo, &u_hi);
  if constexpr (X::kMany) {  // the cluster's sums: each warp reads the ranks' (lane r: rank r's)
    if (tid == 0) cs->sums = QuestSliceSums{before, u_lo, u_hi};
    x.sync();
    const int lane = tid & 31;
    QuestSliceSums o{0ull, ~0u, 0u};
    if (lane < C) o = x.at(cs, lane)->sums;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) o.before += __shfl_xor_sync(0xffffffffu, o.before, off);
    before = o.before;
    u_lo = __reduce_min_sync(0xffffffffu, o.u_lo);
    u_hi = __reduce_max_sync(0xffffffffu, o.u_hi);
  }
  const int rank_before[2] = {int(before & 0xffffffffu), int(before >> 32)};
  // 2. The fill rule walked in rank order: between two partial pages, full pages of P tokens are
  // taken while they fit, so the full pages taken are the first K of the order; a partial page is
  // taken if it fits when its turn comes.
  if (tid == 0) {
    const QuestFill fill = quest_fill_walk(range, budget, full, small_key, small_r, rank_before);
    s_small_taken[0] = fill.small_taken[0];
    s_small_taken[1] = fill.small_taken[1];
    s_take_full = fill.full_taken;
  }
  __syncthreads();
  const long long K = s_take_full;
  // 3. The K-th largest full key. The score kernel counted every full key's top 16 bits in
  // hist[bh], all within [u_lo, u_hi] >> 16: those bins are read from the top and zeroed behind
  // (a cluster's ranks zero them at the end, once every rank has read them).
  const bool take_all = K >= full, take_some = K > 0 && !take_all;
  uint32_t prefix = 0, mask = 0;
  unsigned long long need = 0, at = 0;
  uint32_t* hb = hist + bh * kQuestHistBins;
  const int b_hi = int(u_hi >> kQuestHistShift), nbins = full > 0 ? b_hi - int(u_lo >> kQuestHistShift) + 1 : 0;
  if (full > 0) {
    if (take_some) {
      const QuestBin b = quest_block_find_bin(hb + b_hi, true, nbins, (unsigned long long)K, scratch, &s_bin);
      prefix = uint32_t(b_hi - b.from_top) << kQuestHistShift;
      mask = ~0u << kQuestHistShift;
      need = K - b.above;
      at = b.count;
    }
    if constexpr (!X::kMany)
      for (int i = tid; i < nbins; i += nt) hb[b_hi - i] = 0u;  // after the last read (the find's barrier)
  }
  // The bin is taken in part: its keys' next 11 bits, then the last 5, fix the exact K-th key.
  static_assert(kQuestHistShift == 16 && kQuestRadixBins == 2048, "the refinement covers 11 + 5 bits");
  // Every later pass reads float4 i4 at src4[i4 - off4] (the barriers above order the cache), and
  // counts the full pages of this block's slice only: r < slice_end. A thread's loads past the slice
  // read zeros, and their ids are the next rank's pages (alone, past count: full_hi bounds them).
  const float4* src4 = cache ? cached4 : key4;
  const int off4 = cache ? s_lo : 0;
  const int slice_end = min(full_hi, 4 * s_hi);
#pragma unroll 1
  for (int pass = 0; pass < 2 && take_some && need < at; ++pass) {
    const int shift = pass == 0 ? 5 : 0, nb = pass == 0 ? 2048 : 32;
    for (int i = tid; i < nb; i += nt) radix[i] = 0u;
    __syncthreads();
#pragma unroll 1
    for (int t4 = s_lo; t4 < s_hi; t4 += M * nt) {
      float4 v[M];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const int i4 = t4 + m * nt + tid;
        v[m] = i4 < s_hi ? (cache ? src4[i4 - off4] : __ldcg(src4 + i4)) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int m = 0; m < M; ++m) {
#pragma unroll 1
        for (int c = 0; c < 4; ++c) {
          const int r = 4 * (t4 + m * nt + tid) + c;
          const uint32_t u = quest_rank_bits(quest_component(v[m], c));
          if (r >= full_lo && r < slice_end && (u & mask) == prefix) atomicAdd(&radix[(u >> shift) & (nb - 1)], 1u);
        }
      }
    }
    __syncthreads();
    QuestBin b;
    if constexpr (X::kMany) {  // every rank's counts into rank 0's, which finds the digit
      QuestClusterShared* lead_cs = x.at(cs, 0);
      for (int i = tid; i < nb; i += nt)
        if (radix[i]) atomicAdd(&lead_cs->radix_sum[i], radix[i]);
      x.sync();
      if (lead) {
        quest_block_find_bin(cs->radix_sum + nb - 1, false, nb, need, scratch, &cs->bin);
        for (int i = tid; i < nb; i += nt) cs->radix_sum[i] = 0u;  // for the next pass (the find's barrier)
      }
      x.sync();
      b = lead_cs->bin;
    } else {
      b = quest_block_find_bin(radix + nb - 1, false, nb, need, scratch, &s_bin);
    }
    prefix |= uint32_t(nb - 1 - b.from_top) << shift;
    mask |= uint32_t(nb - 1) << shift;
    need -= b.above;
    at = b.count;
  }
  // 4. Compaction. Pages holding the K-th key exactly are ranked by id only when some of them are
  // left out (rare): then need of the at pages holding it are taken.
  const bool rank_ties = take_some && need < at;
  // Tile t4's full pages taken outright (take) and tied at the K-th key when ties are ranked (tie):
  // bit 4 m + c is component c of this thread's load m.
  auto classify = [&](int t4, uint32_t* take, uint32_t* tie) {
    *take = 0u, *tie = 0u;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const int i4 = t4 + m * nt + tid;
      const float4 v = i4 < s_hi ? (cache ? src4[i4 - off4] : __ldcg(src4 + i4)) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 1
      for (int c = 0; c < 4; ++c) {
        const int r = 4 * i4 + c;
        if (r < full_lo || r >= slice_end) continue;
        const uint32_t um = quest_rank_bits(quest_component(v, c)) & mask;
        if (take_all || um > prefix || (um == prefix && !rank_ties)) *take |= 1u << (4 * m + c);
        if (!take_all && um == prefix && rank_ties) *tie |= 1u << (4 * m + c);
      }
    }
  };
  // Pages taken and ties seen before this block's slice (the ranks before it in a cluster).
  long long taken_pages = 0, ties_seen = 0;
  if constexpr (X::kMany) {
    if (K > 0) {
      unsigned long long mine = 0;  // taken outright in the low 32 bits, tied in the high
#pragma unroll 1
      for (int t4 = s_lo; t4 < s_hi; t4 += M * nt) {
        uint32_t take, tie;
        classify(t4, &take, &tie);
        mine += (unsigned long long)__popc(take) | ((unsigned long long)__popc(tie) << 32);
      }
      quest_block_exclusive_scan(mine, scratch, &mine);
      if (tid == 0) cs->counts = mine;
      x.sync();
      const int lane = tid & 31;
      unsigned long long pre = lane < rank ? x.at(cs, lane)->counts : 0ull;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) pre += __shfl_xor_sync(0xffffffffu, pre, off);
      ties_seen = (long long)(pre >> 32);
      taken_pages = (long long)(pre & 0xffffffffu) + (rank_ties ? min(ties_seen, (long long)need) : 0ll);
    }
    // Every read of another rank's shared memory and of the histogram is done: the arrival now,
    // the wait (before the exit and the histogram's zeroing) after this block's stores.
    x.arrive();
    int fixed_parts = 0;
    const int64_t sink_chunks = emit(0, f.sink_end, 0, &fixed_parts, true);
    emit(f.window_begin, n, sink_chunks, &fixed_parts, true);
  }
  const int32_t first_row = int32_t(range.first * P);
#pragma unroll 1
  for (int t4 = s_lo; K > 0 && t4 < s_hi; t4 += M * nt) {
    uint32_t take, tie;
    classify(t4, &take, &tie);
    // Ordinals in page order: a 64-bit block scan of the per-load counts (16 bits each).
    auto pack = [](uint32_t bits) {
      unsigned long long p = 0;
#pragma unroll
      for (int m = 0; m < M; ++m) p |= (unsigned long long)__popc((bits >> (4 * m)) & 15u) << (16 * m);
      return p;
    };
    auto field = [](unsigned long long p, int m) { return (long long)((p >> (16 * m)) & 0xffffu); };
    if (rank_ties) {  // the tied pages' ordinals: the first `need` of them are taken
      unsigned long long tot;
      const unsigned long long ex = quest_block_exclusive_scan(pack(tie), scratch, &tot);
      long long base = ties_seen;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        long long o = base + field(ex, m);
#pragma unroll 1
        for (int c = 0; c < 4; ++c)
          if ((tie >> (4 * m + c)) & 1u) take |= uint32_t((unsigned long long)(o++) < need) << (4 * m + c);
        base += field(tot, m);
      }
      ties_seen = base;
    }
    unsigned long long tot;
    const unsigned long long ex = quest_block_exclusive_scan(pack(take), scratch, &tot);
    long long base = chunks + taken_pages;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      long long o = base + field(ex, m);
#pragma unroll 1
      for (int c = 0; c < 4; ++c)
        if ((take >> (4 * m + c)) & 1u) rows[o++] = first_row + (4 * (t4 + m * nt + tid) + c) * P;
      base += field(tot, m);
    }
    taken_pages = base - chunks;
  }
  if constexpr (X::kMany) {
    // Every rank's shared values read, and the histogram read by every rank: each zeroes a share
    // of its bins. The full pages taken over the cluster are the K of the fill rule.
    x.wait();
    for (int i = rank * nt + tid; i < nbins; i += C * nt) hb[b_hi - i] = 0u;
    taken_pages = K;
  }
  tokens += taken_pages * P;
  if (lead && tid == 0) {
    for (int e = 0; e < 2; ++e)
      if (small_r[e] >= 0 && s_small_taken[e]) {
        const int64_t c = range.first + small_r[e];
        parts[n_parts++] = make_int2(int(range.begin(c)), int(range.size(c)));
        tokens += range.size(c);
      }
    chunk_count[bh] = int32_t(chunks + taken_pages);
    partial_count[bh] = n_parts;
    selected_tokens[bh] = int32_t(tokens);
    scored_pages[bh] = count;
  }
}

}  // namespace saap::cuda
