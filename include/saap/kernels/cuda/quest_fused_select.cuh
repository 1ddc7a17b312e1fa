// Quest's selection spread over every block of one persistent kernel (quest_kernels.cuh,
// quest_fused_select_kernel): the select kernel (quest_select.cuh) ran one block per (b, h), so at
// batch 1 eight SMs did all the per-key work of the top-k (H200, 0187b35: 39 us at 512k against a
// score of 38 us). Here each (b, h)'s candidate pages are cut into S slices, one work item each,
// and three phases separated by grid barriers each touch a slice's keys once:
//   score   (quest_kernels.cuh) - the slice's bounds into keys[bh], the full pages' top 16 bits
//            into hist[bh], and into QuestFusedScratch[bh] the full keys' bit range and the full
//            pages ranked before each partial page;
//   gather  (quest_fused_gather) - the fill rule (quest_fill_walk) gives K, the full pages taken,
//            the histogram the bin B of the K-th key; the slice counts its pages above B and
//            appends its pages in B to cand[bh] as 64-bit rank keys;
//   compact (quest_fused_compact) - the exact K-th rank key c_K: the need-th of cand[bh] sorted in
//            shared memory (more than kQuestCandCap candidates: radix passes over every key of
//            the (b, h), slow and exact); a page is taken iff its rank key >= c_K, and the slice
//            writes its taken pages in page order from the count of those before it.
// A page's rank key is (rank bits << 32) | (0x7fffffff - id): the larger key ranks first, and of
// equal keys the lower page id (saap::rules::ranks_before), so one 64-bit comparison is the rule.
// The list written is the select kernel's: sinks' and window's chunks, the taken pages in page
// order, then the partial runs.
#pragma once
#include <cstdint>

#include "saap/kernels/cuda/quest_select.cuh"

namespace saap::cuda {

constexpr int kQuestFusedThreads = 256;
constexpr int kQuestCandCap = 2048;     // candidates in the K-th key's 16-bit bin sorted in shared memory
constexpr int kQuestMaxSlices = 256;    // slices per (b, h)

// Per (b, h), accumulated by the score phase; reset by the compact phase of slice 0.
struct QuestFusedScratch {
  uint32_t u_lo, u_hi;      // the full keys' rank bits, min and max (reset: ~0u, 0)
  unsigned long long before;  // full pages ranked before partial page 0 (low 32 bits) and 1 (high)
  uint32_t cand_n, pad;     // candidates gathered (reset: 0)
};

// Per (b, h), written by the gather phase of slice 0 for the compact phase.
struct QuestFusedPlan {
  long long K;             // full pages taken
  long long bin;           // 16-bit bin of the K-th key when some full pages are left out
  long long need, at;      // K-th key's place in its bin (1-based), the bin's count
  long long small_taken;   // bit e: partial page e taken
  long long u_lo, u_hi;    // the score phase's bit range (the bins to zero)
};

__device__ __forceinline__ unsigned long long quest_rank_key(uint32_t u, int64_t r) {
  return (static_cast<unsigned long long>(u) << 32) | static_cast<unsigned long long>(0x7fffffff - r);
}

// Slice s of S of [lo, hi): [*a, *b).
__device__ __forceinline__ void quest_slice(int64_t lo, int64_t hi, int s, int S, int64_t* a, int64_t* b) {
  *a = lo + (hi - lo) * s / S;
  *b = lo + (hi - lo) * (s + 1) / S;
}

// What every phase derives from the length alone.
struct QuestFusedView {
  quest::PageRange range;
  int64_t budget, n;
  bool scored;  // pages are ranked (else: the whole prefix, or sinks and window only)
  int count, full_lo, full_hi;
  __device__ QuestFusedView(int64_t len, const QuestStep& step) : n(len) {
    range = step.range(len, &budget);
    scored = budget > 0 && budget < range.fixed.middle();
    count = scored ? int(range.count()) : 0;
    const bool first_small = count > 0 && range.size(range.first) < step.P;
    const bool last_small = count > 1 && range.size(range.first + count - 1) < step.P;
    full_lo = first_small ? 1 : 0;
    full_hi = count - (last_small ? 1 : 0);
    if (full_hi < full_lo) full_hi = full_lo;
  }
  __device__ int full() const { return full_hi - full_lo; }
  __device__ int small_r(int e) const {
    return e == 0 ? (full_lo == 1 ? 0 : -1) : (full_hi < count && count > 1 ? count - 1 : -1);
  }
};

// Gather phase, work item (bh, slice s of S). Block-uniform control flow; every thread returns.
__device__ inline void quest_fused_gather(int64_t bh, int s, int S, const float* __restrict__ keys, int64_t key_stride,
                                          const int32_t* __restrict__ seq_len, QuestStep step,
                                          const uint32_t* __restrict__ hist, QuestFusedScratch* __restrict__ scratch,
                                          QuestFusedPlan* __restrict__ plan, uint32_t* __restrict__ above,
                                          unsigned long long* __restrict__ cand) {
  __shared__ unsigned long long g_scan[32];
  __shared__ QuestBin g_bin;
  __shared__ long long g_K;
  __shared__ int g_small_taken;
  __syncthreads();  // the previous item's shared values are read
  const QuestFusedView v(__ldcg(seq_len + bh), step);
  if (!v.scored) return;
  const int tid = threadIdx.x, nt = blockDim.x;
  const float* key = keys + bh * key_stride;
  const unsigned long long before = __ldcg(&scratch[bh].before);
  const uint32_t u_lo = __ldcg(&scratch[bh].u_lo), u_hi = __ldcg(&scratch[bh].u_hi);
  if (tid == 0) {
    float small_key[2] = {0.f, 0.f};
    int small_r[2];
    for (int e = 0; e < 2; ++e) {
      small_r[e] = v.small_r(e);
      if (small_r[e] >= 0) small_key[e] = __ldcg(key + small_r[e]);
    }
    const int rank[2] = {int(before & 0xffffffffu), int(before >> 32)};
    const QuestFill fill = quest_fill_walk(v.range, v.budget, v.full(), small_key, small_r, rank);
    g_K = fill.full_taken;
    g_small_taken = fill.small_taken[0] | (fill.small_taken[1] << 1);
  }
  __syncthreads();
  const long long K = g_K;
  const bool take_some = K > 0 && K < v.full();
  QuestBin b{0, 0, 0};
  int B = -1;
  if (take_some) {
    const uint32_t* hb = hist + bh * kQuestHistBins;
    const int b_hi = int(u_hi >> kQuestHistShift), nbins = b_hi - int(u_lo >> kQuestHistShift) + 1;
    b = quest_block_find_bin(hb + b_hi, true, nbins, (unsigned long long)K, g_scan, &g_bin);
    B = b_hi - b.from_top;
    int64_t lo, hi;
    quest_slice(v.full_lo, v.full_hi, s, S, &lo, &hi);
    unsigned long long n_above = 0;
    unsigned long long* cb = cand + bh * kQuestCandCap;
    const int lane = tid & 31;
    // Warp-uniform trips, so that a warp appends its candidates with one atomic (pages of equal
    // bounds put thousands in one bin).
    for (int64_t base = lo; base < hi; base += nt) {
      const int64_t r = base + tid;
      uint32_t u = 0u;
      bool in = false;
      if (r < hi) {
        u = quest_rank_bits(__ldcg(key + r));
        const int bin = int(u >> kQuestHistShift);
        n_above += bin > B ? 1u : 0u;
        in = bin == B;
      }
      const unsigned mask = __ballot_sync(0xffffffffu, in);
      if (mask) {
        const int leader = __ffs(int(mask)) - 1;
        uint32_t first = 0u;
        if (lane == leader) first = atomicAdd(&scratch[bh].cand_n, uint32_t(__popc(mask)));
        first = __shfl_sync(0xffffffffu, first, leader);
        const uint32_t at = first + uint32_t(__popc(mask & ((1u << lane) - 1u)));
        if (in && at < uint32_t(kQuestCandCap)) cb[at] = quest_rank_key(u, r);
      }
    }
    unsigned long long total;
    quest_block_exclusive_scan(n_above, g_scan, &total);
    if (tid == 0) above[bh * kQuestMaxSlices + s] = uint32_t(total);
  }
  if (s == 0 && tid == 0) {
    QuestFusedPlan& p = plan[bh];
    p.K = K;
    p.bin = B;
    p.need = take_some ? (long long)(K - b.above) : 0;
    p.at = take_some ? (long long)b.count : 0;
    p.small_taken = g_small_taken;
    p.u_lo = u_lo;
    p.u_hi = u_hi;
  }
}

// Sorts a[0, m) (m a power of two) in decreasing order: a bitonic network in shared memory.
__device__ inline void quest_bitonic_sort_desc(unsigned long long* a, int m) {
  for (int k = 2; k <= m; k <<= 1)
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < m; i += blockDim.x) {
        const int p = i ^ j;
        if (p > i) {
          const unsigned long long x = a[i], y = a[p];
          if (((i & k) == 0) ? x < y : x > y) a[i] = y, a[p] = x;
        }
      }
      __syncthreads();
    }
}

// The K-th largest rank key when the bin holds more candidates than kQuestCandCap: the bin's keys'
// low 16 bits by two radix passes over every full key of the (b, h) (11 bits, then 5), then among
// the pages holding that exact key the need-th lowest id. Every thread gets it.
__device__ inline unsigned long long quest_fused_kth_slow(const float* key, int64_t full_lo, int64_t full_hi, int B,
                                                          unsigned long long need, uint32_t* radix,
                                                          unsigned long long* scan, QuestBin* bin_out,
                                                          long long* r_out) {
  const int tid = threadIdx.x, nt = blockDim.x;
  uint32_t prefix = uint32_t(B) << kQuestHistShift, mask = ~0u << kQuestHistShift;
  static_assert(kQuestHistShift == 16 && kQuestRadixBins == 2048, "the refinement covers 11 + 5 bits");
  for (int pass = 0; pass < 2; ++pass) {
    const int shift = pass == 0 ? 5 : 0, nb = pass == 0 ? 2048 : 32;
    __syncthreads();  // radix may still be read
    for (int i = tid; i < nb; i += nt) radix[i] = 0u;
    __syncthreads();
    for (int64_t r = full_lo + tid; r < full_hi; r += nt) {
      const uint32_t u = quest_rank_bits(__ldcg(key + r));
      if ((u & mask) == prefix) atomicAdd(&radix[(u >> shift) & uint32_t(nb - 1)], 1u);
    }
    __syncthreads();
    const QuestBin b = quest_block_find_bin(radix + nb - 1, false, nb, need, scan, bin_out);
    prefix |= uint32_t(nb - 1 - b.from_top) << shift;
    mask |= uint32_t(nb - 1) << shift;
    need -= b.above;
  }
  // prefix is the exact key; the need-th of its pages in page order: contiguous runs per thread.
  const int64_t len = full_hi - full_lo, per = (len + nt - 1) / nt;
  const int64_t a = full_lo + min(len, tid * per), e = full_lo + min(len, (tid + 1) * per);
  unsigned long long own = 0;
  for (int64_t r = a; r < e; ++r) own += quest_rank_bits(__ldcg(key + r)) == prefix ? 1u : 0u;
  unsigned long long total;
  const unsigned long long ex = quest_block_exclusive_scan(own, scan, &total);
  if (ex < need && ex + own >= need) {
    unsigned long long seen = ex;
    for (int64_t r = a; r < e; ++r)
      if (quest_rank_bits(__ldcg(key + r)) == prefix && ++seen == need) {
        *r_out = r;
        break;
      }
  }
  __syncthreads();
  return quest_rank_key(prefix, *r_out);
}

// Compact phase, work item (bh, slice s of S): the slice's taken pages into chunk_rows, and for
// slice 0 the sinks, the window, the partial runs, the counters and the resets.
__device__ inline void quest_fused_compact(int64_t bh, int s, int S, const float* __restrict__ keys,
                                           int64_t key_stride, const int32_t* __restrict__ seq_len, QuestStep step,
                                           uint32_t* __restrict__ hist, QuestFusedScratch* __restrict__ scratch,
                                           const QuestFusedPlan* __restrict__ plan,
                                           const uint32_t* __restrict__ above,
                                           const unsigned long long* __restrict__ cand, int64_t max_chunks,
                                           int32_t* __restrict__ chunk_rows, int32_t* __restrict__ chunk_count,
                                           int2* __restrict__ partials, int32_t* __restrict__ partial_count,
                                           int32_t* __restrict__ selected_tokens,
                                           int32_t* __restrict__ scored_pages) {
  __shared__ unsigned long long c_sorted[kQuestCandCap];
  __shared__ uint32_t c_radix[kQuestRadixBins];
  __shared__ unsigned long long c_scan[32];
  __shared__ QuestBin c_bin;
  __shared__ long long c_r;
  __syncthreads();  // the previous item's shared values are read
  const int tid = threadIdx.x, nt = blockDim.x;
  const QuestFusedView v(__ldcg(seq_len + bh), step);
  const int P = step.P;
  const rules::FixedReads& f = v.range.fixed;
  int32_t* rows = chunk_rows + bh * max_chunks;
  const int64_t fixed_chunks = v.scored ? f.sink_end / P + (v.n - f.window_begin) / P : 0;
  long long K = 0;
  int small_taken = 0;
  long long bin = -1, need = 0, at = 0;
  if (v.scored) {
    K = __ldcg(&plan[bh].K);
    small_taken = int(__ldcg(&plan[bh].small_taken));
    bin = __ldcg(&plan[bh].bin);
    need = __ldcg(&plan[bh].need);
    at = __ldcg(&plan[bh].at);
  }
  if (s == 0) {
    int2* parts = partials + bh * 4;
    int n_parts = 0;
    // Runs [begin, end) as whole chunks at rows[at ..] plus a tail; returns the chunks written.
    auto emit = [&](int64_t begin, int64_t end, int64_t at_row) -> int64_t {
      const int64_t whole = (end - begin) / P;
      for (int64_t c = tid; c < whole; c += nt) rows[at_row + c] = int32_t(begin + c * P);
      if (end - begin > whole * P) {
        if (tid == 0) parts[n_parts] = make_int2(int(begin + whole * P), int(end - begin - whole * P));
        ++n_parts;
      }
      return whole;
    };
    int64_t chunks, tokens;
    if (!v.scored && v.budget >= f.middle()) {  // the budget covers the middle: the prefix whole
      chunks = emit(0, v.n, 0);
      tokens = v.n;
    } else {
      chunks = emit(0, f.sink_end, 0);
      chunks += emit(f.window_begin, v.n, chunks);
      tokens = f.count() + K * P;
      chunks += K;
      for (int e = 0; e < 2; ++e)
        if ((small_taken >> e) & 1) {
          const int64_t c = v.range.first + v.small_r(e);
          if (tid == 0) parts[n_parts] = make_int2(int(v.range.begin(c)), int(v.range.size(c)));
          ++n_parts;
          tokens += v.range.size(c);
        }
    }
    if (tid == 0) {
      chunk_count[bh] = int32_t(chunks);
      partial_count[bh] = n_parts;
      selected_tokens[bh] = int32_t(tokens);
      scored_pages[bh] = v.count;
    }
    if (v.scored) {  // every read of the histogram and the scratch was before the grid barrier
      const uint32_t u_lo = uint32_t(__ldcg(&plan[bh].u_lo)), u_hi = uint32_t(__ldcg(&plan[bh].u_hi));
      if (v.full() > 0) {
        uint32_t* hb = hist + bh * kQuestHistBins;
        for (uint32_t i = (u_lo >> kQuestHistShift) + tid; i <= (u_hi >> kQuestHistShift); i += nt) hb[i] = 0u;
      }
      if (tid == 0) scratch[bh] = QuestFusedScratch{~0u, 0u, 0ull, 0u, 0u};
    }
  }
  if (!v.scored || K <= 0) return;
  const bool take_all = K >= v.full();
  int64_t lo, hi;
  quest_slice(v.full_lo, v.full_hi, s, S, &lo, &hi);
  const float* key = keys + bh * key_stride;
  unsigned long long c_K = 0;  // take_all: every rank key is >= 0
  unsigned long long offset = take_all ? (unsigned long long)(lo - v.full_lo) : 0;
  if (!take_all) {
    // Pages before the slice above the K-th key's bin: the gather phase's counts.
    unsigned long long own = 0;
    for (int i = tid; i < s; i += nt) own += __ldcg(above + bh * kQuestMaxSlices + i);
    unsigned long long total;
    quest_block_exclusive_scan(own, c_scan, &total);
    offset = total;
    unsigned long long in_bin = 0;  // pages before the slice in the bin and taken
    if (at <= kQuestCandCap) {
      int m = 1;
      while (m < at) m <<= 1;
      const unsigned long long* cb = cand + bh * kQuestCandCap;
      for (int i = tid; i < m; i += nt) c_sorted[i] = i < at ? __ldcg(cb + i) : 0ull;
      __syncthreads();
      quest_bitonic_sort_desc(c_sorted, m);
      c_K = c_sorted[need - 1];
      for (int i = tid; i < need; i += nt) in_bin += int64_t(0x7fffffff - (c_sorted[i] & 0xffffffffu)) < lo ? 1u : 0u;
    } else {
      c_K = quest_fused_kth_slow(key, v.full_lo, v.full_hi, int(bin), (unsigned long long)need, c_radix, c_scan,
                                 &c_bin, &c_r);
      for (int64_t r = v.full_lo + tid; r < lo; r += nt) {
        const uint32_t u = quest_rank_bits(__ldcg(key + r));
        in_bin += (long long)(u >> kQuestHistShift) == bin && quest_rank_key(u, r) >= c_K ? 1u : 0u;
      }
    }
    quest_block_exclusive_scan(in_bin, c_scan, &total);
    offset += total;
  }
  // The slice in contiguous runs per thread: one scan gives each run's first ordinal.
  const int64_t len = hi - lo, per = (len + nt - 1) / nt;
  const int64_t a = lo + min(len, tid * per), e = lo + min(len, (tid + 1) * per);
  unsigned long long own = 0;
  for (int64_t r = a; r < e; ++r) own += quest_rank_key(quest_rank_bits(__ldcg(key + r)), r) >= c_K ? 1u : 0u;
  unsigned long long total;
  unsigned long long o = fixed_chunks + offset + quest_block_exclusive_scan(own, c_scan, &total);
  const int32_t first_row = int32_t(v.range.first * P);
  for (int64_t r = a; r < e; ++r)
    if (quest_rank_key(quest_rank_bits(__ldcg(key + r)), r) >= c_K) rows[o++] = first_row + int32_t(r) * P;
}

}  // namespace saap::cuda
