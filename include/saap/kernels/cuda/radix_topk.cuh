// Exact top-k of many rows of fp32 keys at once, spread over the whole GPU: each row's k largest
// keys (ties to the lower position, rules::ranks_before), written in position order. Shared by the
// per-head top-k of the oracle, Loki and H2O (per_head_topk.cuh); any selection of "the k best of
// n scores, ties to the lower index" can call select().
//
// A row's k-th key is found by a radix select over the keys' order-preserving bits in three
// passes of 10, 11 and 11 bits (radix_digits.h: the digit layout and the per-row rules, replayed
// on the CPU by test_radix_digits). Pass 0's histogram is built per tile of keys in shared memory
// (warp-aggregated: the top digits of scores crowd into a few bins) and added into the row's global
// histogram with atomics, either by hist0_kernel or by the producer of the keys itself (Loki's and
// the oracle's score kernels: begin(), then the fused score kernel, then finish()), so the keys
// are not read for it. Then a filter grid reads each tile once: each of its blocks finds pass 0's
// boundary from the row's histogram (the digit at which the count from the top reaches k), counts
// the keys above the boundary bin and compacts the bin's keys (the candidates, a few percent of a
// row of scores) into the tile's segment, building pass 1's histogram from them. A refine block
// per row then finds passes 1 and 2 (pass 2's histogram from the candidates, in shared memory)
// and each tile's keys above the k-th and ties, reading only the candidates. A pass whose boundary
// bin holds exactly the keys still needed ends the search early. Last, a writing grid places each
// tile's taken positions at the offset the counts give (the ties taken are the lowest positions:
// the first `need` ties in position order). Rows may be grouped (the query heads of a KV group): the writing grid then also
// counts, per group, the positions any of its rows took, and can list them with the rows that took
// each (UnionList: written per tile, then moved into one ascending list by a compaction grid), so
// that an attention kernel reads each row once.
//
// Every launch has a grid fixed by the row count and the row stride, and nothing is read back to
// the host: select() may be recorded in a CUDA graph. Cost: the filter and the write read the
// row's keys (twice in all, three times without a fused producer); the refine reads the
// candidates. Launches: init, (hist0 or the producer), filter, refine, write (and the union's
// compaction).
#pragma once
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cstdint>

#include "saap/kernels/cuda/decode.h"
#include "saap/kernels/cuda/radix_digits.h"

namespace saap::cuda::radix_topk {

constexpr int kThreads = 256;
constexpr int kPerThread = 16;  // the filter and writing grids give each thread 16 consecutive positions
constexpr int64_t kTile = int64_t(kThreads) * kPerThread;

// The group unions as lists, an optional output of select(): pos[i][0, union_count[i]) are the
// positions any row of group i took, ascending, and bit r of mask[i][j] is set when row
// i * group + r took pos[i][j] (group <= 8). pos, mask: [groups][stride].
struct UnionList {
  int32_t* pos = nullptr;
  uint8_t* mask = nullptr;
};

// Pass 0 for a producer of keys (a block's share of rows in shared memory, h[row][kTopBins]):
// adds the top digit of `score` when `valid`. Every lane of the warp calls it together (the lanes
// with the same digit add once, by their lowest lane).
static __device__ __forceinline__ void top_digit_add(int32_t* h, float score, bool valid) {
  const uint32_t d = valid ? digit_of(rank_key(score), 0) : 0xffffffffu;
  const uint32_t peers = __match_any_sync(0xffffffffu, d);
  if (valid && int(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&h[d], __popc(peers));
}

// Adds a block's shared histogram h[bins] into the row's global one (after a __syncthreads()).
static __device__ __forceinline__ void flush_hist(const int32_t* h, int bins, int32_t* __restrict__ row_hist) {
  for (int i = threadIdx.x; i < bins; i += blockDim.x)
    if (h[i]) atomicAdd(&row_hist[i], h[i]);
}

// Scratch of select(), reused between calls (select() resets what it reads).
class Workspace {
 public:
  // rows and the row stride of the keys select() will be given; groups > 0 when it is to write a
  // UnionList of that many groups.
  void ensure(int64_t rows, int64_t stride, int64_t groups = 0) {
    tiles_ = int((stride + kTile - 1) / kTile);
    if (int64_t(state_.size()) < rows) {
      state_.resize(size_t(rows));
      hist0_.resize(size_t(rows) * kTopBins);
      hist_.resize(size_t(rows) * kBins);
    }
    if (int64_t(tile_counts_.size()) < rows * tiles_) {
      tile_counts_.resize(size_t(rows * tiles_));
      tile_filter_.resize(size_t(rows * tiles_));
    }
    if (int64_t(cand_.size()) < rows * stride) cand_.resize(size_t(rows * stride));
    if (int64_t(seg_pos_.size()) < groups * stride) {
      seg_pos_.resize(size_t(groups * stride));
      seg_mask_.resize(size_t(groups * stride));
    }
    if (int64_t(tile_union_.size()) < groups * tiles_) tile_union_.resize(size_t(groups * tiles_));
  }
  int tiles() const { return tiles_; }
  RowState* state() const { return state_.get(); }
  int32_t* hist0() const { return hist0_.get(); }
  int32_t* hist() const { return hist_.get(); }
  int2* tile_counts() const { return tile_counts_.get(); }
  int2* tile_filter() const { return tile_filter_.get(); }
  uint32_t* cand() const { return cand_.get(); }
  int32_t* seg_pos() const { return seg_pos_.get(); }
  uint8_t* seg_mask() const { return seg_mask_.get(); }
  int32_t* tile_union() const { return tile_union_.get(); }

 private:
  int tiles_ = 0;
  DeviceBuffer<RowState> state_;    // [rows]: init's until the refine grid writes the k-th key's
  DeviceBuffer<int32_t> hist0_;     // [rows][kTopBins]: pass 0's histogram
  DeviceBuffer<int32_t> hist_;      // [rows][kBins]: pass 1's histogram (the filter's)
  DeviceBuffer<int2> tile_counts_;  // [rows][tiles]: (keys above the k-th, ties)
  DeviceBuffer<int2> tile_filter_;  // [rows][tiles]: (keys above pass 0's bin, candidates: keys in it)
  // The candidates' keys in per-tile segments: tile t's at [row][t * kTile, + tile_filter[row][t].y),
  // in position order.
  DeviceBuffer<uint32_t> cand_;     // [rows][stride]
  // The union list in per-tile segments: tile t's at [group][t * kTile, + tile_union[group][t]).
  DeviceBuffer<int32_t> seg_pos_;     // [groups][stride]
  DeviceBuffer<uint8_t> seg_mask_;    // [groups][stride]
  DeviceBuffer<int32_t> tile_union_;  // [groups][tiles]
};

// Rows: a device functor with n(row) (keys in the row, <= stride) and k(row) (keys to take).
template <class Rows>
static __global__ void __launch_bounds__(kThreads)
    init_kernel(Rows rows, int group, RowState* __restrict__ state, int32_t* __restrict__ hist0,
                int32_t* __restrict__ hist, int32_t* __restrict__ counts, int32_t* __restrict__ union_count) {
  const int64_t row = blockIdx.x;
  for (int i = threadIdx.x; i < kTopBins; i += kThreads) hist0[row * kTopBins + i] = 0;
  for (int i = threadIdx.x; i < kBins; i += kThreads) hist[row * kBins + i] = 0;
  if (threadIdx.x != 0) return;
  const RowState s = row_start(rows.n(row), rows.k(row));
  state[row] = s;
  if (counts) counts[row] = s.need;
  if (union_count && row % group == 0) union_count[row / group] = 0;
}

// Stages a tile's keys kr[0, len) (len <= kTile) in shared memory, thread t's 16 consecutive keys
// at stage[t * (kPerThread + 1), + kPerThread) (padded: no bank conflicts when each thread reads
// its own); reads are coalesced, 16 in flight a thread. Callers synchronise before and after.
static __device__ __forceinline__ void stage_tile(const float* __restrict__ kr, int64_t len, float* stage) {
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int i = j * kThreads + int(threadIdx.x);
    if (i < len) stage[(i / kPerThread) * (kPerThread + 1) + i % kPerThread] = kr[i];
  }
}

// Grid (tile, row): pass 0's histogram of the tile's keys, for callers whose keys come from
// elsewhere than a fused producer.
static __global__ void __launch_bounds__(kThreads)
    hist0_kernel(const float* __restrict__ keys, int64_t stride, const RowState* __restrict__ state,
                 int32_t* __restrict__ hist0) {
  __shared__ int32_t h[kTopBins];
  const int64_t row = blockIdx.y, t0 = int64_t(blockIdx.x) * kTile;
  const RowState s = state[row];
  if (s.done || t0 >= s.n) return;  // uniform over the block
  for (int i = threadIdx.x; i < kTopBins; i += kThreads) h[i] = 0;
  __syncthreads();
  const int64_t len = min(int64_t(s.n) - t0, kTile);
  const float* kr = keys + row * stride + t0;
  float v[kPerThread];
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int i = j * kThreads + int(threadIdx.x);
    v[j] = i < len ? kr[i] : 0.f;
  }
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) top_digit_add(h, v[j], j * kThreads + int(threadIdx.x) < len);
  __syncthreads();
  flush_hist(h, kTopBins, hist0 + row * kTopBins);
}

// The boundary of pass `pass` from a row's histogram h[BINS] (global or shared), found by the
// whole block of NT threads together and returned to each: the digit at which the count from the
// top reaches the keys still needed (radix_digits.h's take_bin), or s itself when it is done.
template <int NT, int BINS>
static __device__ RowState block_find(const RowState& s, int pass, const int32_t* h) {
  constexpr int per = BINS / NT;
  static_assert(per >= 1 && BINS % NT == 0, "whole bins a thread");
  using Scan = cub::BlockScan<int, NT>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ RowState found;
  // Thread t holds digits BINS-1-t*per down to BINS-(t+1)*per: the scan runs from the top.
  int c[per], sum = 0;
#pragma unroll
  for (int j = 0; j < per; ++j) {
    c[j] = h[BINS - 1 - (threadIdx.x * per + j)];
    sum += c[j];
  }
  int before;
  Scan(tmp).ExclusiveSum(sum, before);
  if (threadIdx.x == 0) found = s;
  __syncthreads();
  if (!s.done && boundary_in(s, before, sum)) {
    int cum = before;
#pragma unroll
    for (int j = 0; j < per; ++j) {
      if (boundary_in(s, cum, c[j])) {
        found = take_bin(s, pass, uint32_t(BINS - 1 - (threadIdx.x * per + j)), cum, c[j]);
        break;
      }
      cum += c[j];
    }
  }
  __syncthreads();
  const RowState r = found;
  __syncthreads();  // `found` and the scan storage may be reused by the next call
  return r;
}

// Grid (tile, row), once pass 0's histogram is complete: each block finds pass 0's boundary
// itself (the same for every tile of the row; no launch for it), then reads its tile once: the
// keys above the boundary bin counted, the bin's keys (the candidates) compacted in position order
// into the tile's segment of cand, tile_filter[row][tile] = (above, candidates); while the search
// goes on, pass 1's histogram of the candidates. Rows that take all or none write (0, 0).
static __global__ void __launch_bounds__(kThreads)
    filter_kernel(const float* __restrict__ keys, int64_t stride, const RowState* __restrict__ state,
                  const int32_t* __restrict__ hist0, int tiles, int2* __restrict__ tile_filter,
                  uint32_t* __restrict__ cand, int32_t* __restrict__ hist) {
  using Scan = cub::BlockScan<int, kThreads>;
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } tmp;
  __shared__ float stage[kThreads * (kPerThread + 1)];
  __shared__ int32_t h[kBins];
  const int64_t row = blockIdx.y, t0 = int64_t(blockIdx.x) * kTile;
  int2* out = tile_filter + row * tiles + blockIdx.x;
  const RowState s0 = state[row];
  if (s0.done || t0 >= s0.n) {  // uniform: the row takes all or none, or no key in this tile
    if (threadIdx.x == 0) *out = make_int2(0, 0);
    return;
  }
  const int64_t len = min(int64_t(s0.n) - t0, kTile);
  stage_tile(keys + row * stride + t0, len, stage);  // issued before the boundary search
  const RowState s = block_find<kThreads, kTopBins>(s0, 0, hist0 + row * kTopBins);
  const bool histogram = !s.done;
  if (histogram)
    for (int i = threadIdx.x; i < kBins; i += kThreads) h[i] = 0;
  __syncthreads();
  const int e0 = int(threadIdx.x) * kPerThread;
  const int m = int(max(int64_t(0), min(int64_t(kPerThread), len - e0)));
  const float* mine = stage + threadIdx.x * (kPerThread + 1);
  uint32_t u[kPerThread];
  uint32_t is_cand = 0;
  int above = 0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    u[i] = i < m ? rank_key(mine[i]) : 0u;
    above += i < m && key_above(s, u[i]);
    is_cand |= uint32_t(i < m && key_matches(s, u[i])) << i;
  }
  int off, total;
  Scan(tmp.scan).ExclusiveSum(__popc(is_cand), off, total);
  uint32_t* seg = cand + row * stride + t0 + off;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i)
    if ((is_cand >> i) & 1u) {
      *seg++ = u[i];
      if (histogram) atomicAdd(&h[digit_of(u[i], 1)], 1);
    }
  __syncthreads();  // the scan storage is reused; h is complete
  const int above_total = Reduce(tmp.reduce).Sum(above);
  if (threadIdx.x == 0) *out = make_int2(above_total, total);
  if (histogram) flush_hist(h, kBins, hist + row * kBins);
}

// Block per row, after the filter: pass 0's boundary again (as the filter found it), pass 1's from
// the filter's histogram, pass 2's from a histogram of the candidates that match (in shared
// memory), then each tile's keys above the k-th and ties (the filter's count plus the tile's
// candidates): tile_counts[row][tile]; the row's final state is written for the write grid. Only
// candidates are read: a warp per tile, its lanes along the tile's segment.
constexpr int kRefineThreads = 1024;
static __global__ void __launch_bounds__(kRefineThreads)
    refine_kernel(int64_t stride, RowState* __restrict__ state, const int32_t* __restrict__ hist0,
                  const int32_t* __restrict__ hist, int tiles, const int2* __restrict__ tile_filter,
                  const uint32_t* __restrict__ cand, int2* __restrict__ tile_counts) {
  constexpr int kWarps = kRefineThreads / 32;
  __shared__ int32_t h[kBins];
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const RowState s0 = state[row];
  const int2* filt = tile_filter + row * tiles;
  int2* counts = tile_counts + row * tiles;
  const uint32_t* rc = cand + row * stride;
  if (s0.done) {  // uniform: all or none; the write grid needs no counts for them
    for (int t = threadIdx.x; t < tiles; t += kRefineThreads) counts[t] = make_int2(0, 0);
    return;
  }
  RowState s = block_find<kRefineThreads, kTopBins>(s0, 0, hist0 + row * kTopBins);
  s = block_find<kRefineThreads, kBins>(s, 1, hist + row * kBins);
  if (!s.done) {
    for (int i = threadIdx.x; i < kBins; i += kRefineThreads) h[i] = 0;
    __syncthreads();
    for (int t = warp; t < tiles; t += kWarps) {
      const int cnt = filt[t].y;
      for (int i = lane; i < cnt; i += 32) {
        const uint32_t u = rc[int64_t(t) * kTile + i];
        if (key_matches(s, u)) atomicAdd(&h[digit_of(u, 2)], 1);
      }
    }
    __syncthreads();
    s = block_find<kRefineThreads, kBins>(s, 2, h);
  }
  for (int t = warp; t < tiles; t += kWarps) {
    const int2 f = filt[t];
    int above = 0, ties = 0;
    for (int i = lane; i < f.y; i += 32) {
      const uint32_t u = rc[int64_t(t) * kTile + i];
      above += key_above(s, u);
      ties += key_matches(s, u);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      above += __shfl_xor_sync(0xffffffffu, above, o);
      ties += __shfl_xor_sync(0xffffffffu, ties, o);
    }
    if (lane == 0) counts[t] = make_int2(f.x + above, ties);
  }
  if (threadIdx.x == 0) state[row] = s;  // every thread read state[row] before the first block_find's barrier
}

// Grid (tile, group of `group` rows): each row's taken positions of the tile, at the row's output
// offset (positions [row][stride], ascending); per group, the positions any of its rows took are
// added to union_count[group index] (when given) and, when seg_pos is given, written with the
// rows that took them (bit r: row r of the group) as the tile's segment of the union list.
static __global__ void __launch_bounds__(kThreads)
    write_kernel(const float* __restrict__ keys, int64_t stride, const RowState* __restrict__ state,
                 const int2* __restrict__ tile_counts, int tiles, int group, int32_t* __restrict__ positions,
                 int32_t* __restrict__ union_count, int32_t* __restrict__ seg_pos, uint8_t* __restrict__ seg_mask,
                 int32_t* __restrict__ tile_union) {
  using Scan = cub::BlockScan<int, kThreads>;
  using Reduce = cub::BlockReduce<int2, kThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } tmp;
  __shared__ float stage[kThreads * (kPerThread + 1)];  // padded: thread t reads row t without bank conflicts
  __shared__ int2 s_before;
  const int tile = blockIdx.x;
  const int64_t t0 = int64_t(tile) * kTile, e0 = int64_t(threadIdx.x) * kPerThread;
  auto add = [](int2 a, int2 b) { return make_int2(a.x + b.x, a.y + b.y); };
  uint32_t any = 0;  // bit i: position t0 + e0 + i taken by some row of the group
  uint64_t by_lo = 0, by_hi = 0;  // byte i (of positions 0-7, then 8-15): the rows that took it
  for (int g = 0; g < group; ++g) {
    const int64_t row = int64_t(blockIdx.y) * group + g;
    const RowState s = state[row];
    if (t0 >= s.n) continue;  // uniform
    const int64_t len = min(int64_t(s.n) - t0, kTile);
    const int m = int(max(int64_t(0), min(int64_t(kPerThread), len - e0)));
    const float* kr = keys + row * stride + t0;
    __syncthreads();  // the previous row's stage, scan and reduce storage are no longer read
    stage_tile(kr, len, stage);
    // Keys above and ties in the tiles before this one.
    int2 before = make_int2(0, 0);
    if (!s.all)
      for (int j = threadIdx.x; j < tile; j += kThreads) before = add(before, tile_counts[row * tiles + j]);
    before = Reduce(tmp.reduce).Reduce(before, add);
    if (threadIdx.x == 0) s_before = before;
    __syncthreads();
    before = s_before;
    const float* mine = stage + threadIdx.x * (kPerThread + 1);
    uint32_t above = 0, tie = 0;
    for (int i = 0; i < m; ++i) {
      const uint32_t u = rank_key(mine[i]) & s.mask;
      above |= uint32_t(s.all || u > s.prefix) << i;
      tie |= uint32_t(!s.all && u == s.prefix) << i;
    }
    // The ties taken are the first `need` in position order: this thread's ties rank from
    // before.y + (the ties of the threads before it).
    int tie_off;
    Scan(tmp.scan).ExclusiveSum(__popc(tie), tie_off);
    const int64_t first_tie = int64_t(before.y) + tie_off;
    const int my_ties = ties_taken(s, first_tie, __popc(tie));
    uint32_t take = above;
    for (uint32_t rest = tie, t = 0; rest && int(t) < my_ties; ++t) {
      const uint32_t low = rest & (~rest + 1u);  // the lowest remaining tie
      take |= low;
      rest ^= low;
    }
    int off;
    __syncthreads();  // the scan storage is reused
    Scan(tmp.scan).ExclusiveSum(__popc(take), off);
    const int64_t base = s.all ? t0 : int64_t(before.x) + min(int64_t(before.y), int64_t(s.need));
    int32_t* out = positions + row * stride + base + off;
    for (uint32_t rest = take; rest; rest &= rest - 1) {
      const int i = __ffs(rest) - 1;
      *out++ = int32_t(t0 + e0 + i);
      if (i < 8)
        by_lo |= uint64_t(1u << g) << (8 * i);
      else
        by_hi |= uint64_t(1u << g) << (8 * (i - 8));
    }
    any |= take;
  }
  if (!union_count) return;
  __syncthreads();  // the scan storage is free
  int u_off, u_total;
  Scan(tmp.scan).ExclusiveSum(__popc(any), u_off, u_total);
  if (threadIdx.x == 0 && u_total) atomicAdd(&union_count[blockIdx.y], u_total);
  if (!seg_pos) return;
  int64_t seg = int64_t(blockIdx.y) * stride + t0 + u_off;  // this thread's first entry of the segment
  for (uint32_t rest = any; rest; rest &= rest - 1, ++seg) {
    const int i = __ffs(rest) - 1;
    seg_pos[seg] = int32_t(t0 + e0 + i);
    seg_mask[seg] = uint8_t((i < 8 ? by_lo >> (8 * i) : by_hi >> (8 * (i - 8))) & 0xffu);
  }
  if (threadIdx.x == 0) tile_union[int64_t(blockIdx.y) * tiles + tile] = u_total;
}

// Grid (tile, group): the tile's segment of the union list moved to its place in the group's
// list (after the segments of the tiles before it).
static __global__ void __launch_bounds__(kThreads)
    union_compact_kernel(const int32_t* __restrict__ seg_pos, const uint8_t* __restrict__ seg_mask,
                         const int32_t* __restrict__ tile_union, int tiles, int64_t stride, UnionList list) {
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ int s_before;
  const int tile = blockIdx.x;
  const int64_t grp = blockIdx.y;
  const int cnt = tile_union[grp * tiles + tile];
  if (cnt == 0) return;  // uniform
  int before = 0;
  for (int j = threadIdx.x; j < tile; j += kThreads) before += tile_union[grp * tiles + j];
  before = Reduce(tmp).Sum(before);
  if (threadIdx.x == 0) s_before = before;
  __syncthreads();
  const int64_t from = grp * stride + int64_t(tile) * kTile, to = grp * stride + s_before;
  for (int i = threadIdx.x; i < cnt; i += kThreads) {
    list.pos[to + i] = seg_pos[from + i];
    list.mask[to + i] = seg_mask[from + i];
  }
}

inline void check_select_args(int64_t stride, int64_t n_rows, int group) {
  SAAP_CU_REQUIRE(n_rows >= 1 && n_rows <= 65535 && group >= 1 && n_rows % group == 0, InvalidArgument,
                  "n_rows = %lld must be in [1, 65535] and a multiple of group = %d", (long long)n_rows, group);
  SAAP_CU_REQUIRE(stride >= 1 && stride < (int64_t(1) << 31), InvalidArgument, "stride = %lld outside [1, 2^31)",
                  (long long)stride);
}

// The first half of select() for a fused producer of the keys: sets each row's state and zeroes
// its histograms, counts and union count. The producer then adds pass 0's histogram of every row
// whose state is not done (the top digits of keys [0, n(row)): top_digit_add into a shared
// [row][kTopBins] histogram, flush_hist into ws.hist0() + row * kTopBins) and finish() does the rest.
template <class Rows>
inline void begin(int64_t stride, int64_t n_rows, int group, Rows rows, Workspace& ws, int32_t* counts,
                  int32_t* union_count, cudaStream_t stream) {
  check_select_args(stride, n_rows, group);
  ws.ensure(n_rows, stride);  // allocates only when smaller (not inside a graph capture, then)
  init_kernel<<<unsigned(n_rows), kThreads, 0, stream>>>(rows, group, ws.state(), ws.hist0(), ws.hist(), counts,
                                                         union_count);
  SAAP_CU_LAUNCHED();
}

// The rest of select() once pass 0's histogram is in ws (see begin()).
inline void finish(const float* keys, int64_t stride, int64_t n_rows, int group, Workspace& ws, int32_t* positions,
                   int32_t* union_count, cudaStream_t stream, UnionList list = {}) {
  const bool with_list = list.pos != nullptr;
  SAAP_CU_REQUIRE(!with_list || (list.mask && union_count && group <= 8), InvalidArgument,
                  "a union list needs its mask, union_count and group <= 8 (group = %d)", group);
  const int64_t groups = n_rows / group;
  ws.ensure(n_rows, stride, with_list ? groups : 0);
  const dim3 grid(unsigned(ws.tiles()), unsigned(n_rows));
  filter_kernel<<<grid, kThreads, 0, stream>>>(keys, stride, ws.state(), ws.hist0(), ws.tiles(), ws.tile_filter(),
                                               ws.cand(), ws.hist());
  SAAP_CU_LAUNCHED();
  refine_kernel<<<unsigned(n_rows), kRefineThreads, 0, stream>>>(stride, ws.state(), ws.hist0(), ws.hist(), ws.tiles(),
                                                                 ws.tile_filter(), ws.cand(), ws.tile_counts());
  SAAP_CU_LAUNCHED();
  const dim3 group_grid(unsigned(ws.tiles()), unsigned(groups));
  write_kernel<<<group_grid, kThreads, 0, stream>>>(keys, stride, ws.state(), ws.tile_counts(), ws.tiles(), group,
                                                    positions, union_count, with_list ? ws.seg_pos() : nullptr,
                                                    ws.seg_mask(), ws.tile_union());
  SAAP_CU_LAUNCHED();
  if (!with_list) return;
  union_compact_kernel<<<group_grid, kThreads, 0, stream>>>(ws.seg_pos(), ws.seg_mask(), ws.tile_union(),
                                                            ws.tiles(), stride, list);
  SAAP_CU_LAUNCHED();
}

// Each row's k best keys of keys[row][0, n(row)) (Rows: n(row), k(row) on the device; k >= n
// takes the whole row, k <= 0 none): positions[row][0, counts[row]) ascending. Rows
// [i * group, (i + 1) * group) form group i; union_count[i] (when given) is the number of
// positions any of them took. keys, positions [n_rows][stride]; counts [n_rows]; union_count
// [n_rows / group] or null; `list`, when given, the unions as lists (UnionList; needs
// union_count, group <= 8). No host synchronisation; select() allocates only when `ws` is smaller
// than (n_rows, stride, groups with a list), so a caller that records it in a CUDA graph calls
// ws.ensure() first.
template <class Rows>
inline void select(const float* keys, int64_t stride, int64_t n_rows, int group, Rows rows, Workspace& ws,
                   int32_t* positions, int32_t* counts, int32_t* union_count, cudaStream_t stream,
                   UnionList list = {}) {
  check_select_args(stride, n_rows, group);
  ws.ensure(n_rows, stride, list.pos != nullptr ? n_rows / group : 0);
  begin(stride, n_rows, group, rows, ws, counts, union_count, stream);
  hist0_kernel<<<dim3(unsigned(ws.tiles()), unsigned(n_rows)), kThreads, 0, stream>>>(keys, stride, ws.state(),
                                                                                      ws.hist0());
  SAAP_CU_LAUNCHED();
  finish(keys, stride, n_rows, group, ws, positions, union_count, stream, list);
}

}  // namespace saap::cuda::radix_topk
