// Exact top-k of many rows of fp32 keys at once, spread over the whole GPU: each row's k largest
// keys (ties to the lower position, rules::ranks_before), written in position order. Shared by the
// per-head top-k of the oracle and Loki (per_head_topk.cuh); any selection of "the k best of n
// scores, ties to the lower index" can call select().
//
// A row's k-th key is found by a radix select over the keys' order-preserving bits in three
// passes (bits 31..21, 20..10, 9..0). A pass is a grid over (tile of 4096 keys, row): each block
// builds a histogram of its tile's digits among the keys that match the digits found so far, in
// shared memory, and adds it into the row's global histogram of the pass with atomics. Then the
// digit at which the count from the top reaches the keys still needed is found (find_digit: one
// warp walks the histogram by its coarse sums): by a small find kernel per pass, or, where a pass's
// grid fits in four waves of the GPU, at the head of the next grid, each of the row's blocks while
// its own keys load (the row's tile 0 stores the result for the grids after it). A pass whose
// boundary bin holds exactly the keys still needed ends the search early. Then a counting grid
// (which finds the last digit where the finds are folded) stores each tile's keys above the
// boundary and its ties, and a writing grid places each tile's taken positions at the offset those
// counts give (the ties taken are the lowest positions: the first `need` ties in position order).
// Rows may be grouped (the query heads of a KV group): the writing grid then also counts, per
// group, the positions any of its rows took, and can list them with the rows that took each
// (UnionList: written per tile, then moved into one ascending list by a compaction grid), so that
// an attention kernel reads each row once.
//
// Every launch has a grid fixed by the row count and the row stride, and nothing is read back to
// the host: select() may be recorded in a CUDA graph. Cost: each pass and the count and write
// read the row's keys once (five reads of n floats per row), whatever k. Nine launches (ten with a
// union list), six (seven) with the finds folded. Why both: a find kernel costs its launch and two
// dependent round trips (3-5 us each at 128k, batch 1, Nsight Compute at 57cb12e), while a folded
// find costs every block of the next grid a warp's walk behind a barrier. On the H200 (792 blocks
// of the pass kernel resident) the folded finds took the select 16 / 8 / 5% less time at pass
// grids of 128 / 1024 / 2048 blocks, the same at 4096 and 3% more at 8192
// (cuda_test_radix_topk's timing: results/gpu_radix_finds_2026-12-04_h200_70c144d.log).
#pragma once
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cstdint>

#include "saap/kernels/cuda/decode.h"
#include "saap/kernels/cuda/reduce.cuh"

namespace saap::cuda::radix_topk {

constexpr int kThreads = 256;
constexpr int kPerThread = 16;  // the writing grid gives each thread 16 consecutive positions
constexpr int64_t kTile = int64_t(kThreads) * kPerThread;
constexpr int kPasses = 3;
constexpr int kBins = 2048;  // the widest digit: 11 bits
constexpr int kCoarseWidth = 32;  // bins a coarse sum covers (find_digit)
__host__ __device__ constexpr int pass_shift(int pass) { return pass == 0 ? 21 : pass == 1 ? 10 : 0; }
__host__ __device__ constexpr int pass_bins(int pass) { return pass == 2 ? 1024 : 2048; }

// The radix key of a score: order-preserving bits, with -0 read as +0 so that the bits order
// exactly as rules::ranks_before compares the floats.
static __device__ __forceinline__ uint32_t rank_bits(float s) { return float_key(s == 0.f ? 0.f : s); }

// Thread threadIdx.x's elements of a tile of `len` at kt: v[i] = kt[threadIdx.x + i * kThreads]
// (coalesced) for i < the count returned (0 past the tile). Every load is issued before any is
// used: a loop that used each key as it came waited a round trip per key (Nsight Compute at 128k,
// batch 1: the tile grids stalled on long_scoreboard at 8-45% of DRAM peak).
template <class T>
static __device__ __forceinline__ int load_tile(const T* __restrict__ kt, int64_t len, T (&v)[kPerThread]) {
  const int64_t first = threadIdx.x;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t e = first + int64_t(i) * kThreads;
    v[i] = e < len ? kt[e] : T(0);
  }
  return first < len ? int((len - first + kThreads - 1) / kThreads) : 0;
}

// One row's search. A key u is above the k-th when (u & mask) > prefix, a tie when equal.
struct RowState {
  uint32_t prefix;  // the digits of the k-th key found so far
  uint32_t mask;    // the bits prefix holds
  int32_t need;     // keys still to take among the ties
  int32_t n;        // keys in the row
  int32_t all;      // the budget covers the row: every key is taken
  int32_t done;     // no further pass needed (all, k = 0, or a boundary bin of exactly `need` keys)
};

// The search as the kernels see it: a Workspace's row states and histograms.
struct Search {
  RowState* states;  // [kPasses + 1][rows]: before each pass, then after the last
  int32_t* hists;    // [kPasses][rows][kBins]
  int32_t* coarse;   // [kPasses][rows][kBins / kCoarseWidth]: sums of kCoarseWidth bins
  int64_t rows;      // the rows each pass has a state for (the workspace's capacity)
  __device__ RowState* state(int pass) const { return states + pass * rows; }
  __device__ int32_t* hist(int pass, int64_t row) const { return hists + (pass * rows + row) * kBins; }
  __device__ int32_t* sums(int pass, int64_t row) const {
    return coarse + (pass * rows + row) * (kBins / kCoarseWidth);
  }
};

// The group unions as lists, an optional output of select(): pos[i][0, union_count[i]) are the
// positions any row of group i took, ascending, and bit r of mask[i][j] is set when row
// i * group + r took pos[i][j] (group <= 8). pos, mask: [groups][stride].
struct UnionList {
  int32_t* pos = nullptr;
  uint8_t* mask = nullptr;
};

// Scratch of select(), reused between calls (select() resets what it reads).
class Workspace {
 public:
  // rows and the row stride of the keys select() will be given; groups > 0 when it is to write a
  // UnionList of that many groups.
  void ensure(int64_t rows, int64_t stride, int64_t groups = 0) {
    tiles_ = int((stride + kTile - 1) / kTile);
    if (rows_ < rows) {
      rows_ = rows;
      state_.resize(size_t(rows) * (kPasses + 1));
      hist_.resize(size_t(rows) * kPasses * kBins);
      coarse_.resize(size_t(rows) * kPasses * (kBins / kCoarseWidth));
    }
    if (int64_t(tile_counts_.size()) < rows * tiles_) tile_counts_.resize(size_t(rows * tiles_));
    if (int64_t(seg_pos_.size()) < groups * stride) {
      seg_pos_.resize(size_t(groups * stride));
      seg_mask_.resize(size_t(groups * stride));
    }
    if (int64_t(tile_union_.size()) < groups * tiles_) tile_union_.resize(size_t(groups * tiles_));
  }
  int tiles() const { return tiles_; }
  // The rows' states before pass `pass` (kPasses: after the last).
  RowState* state(int pass) const { return state_.get() + size_t(pass) * size_t(rows_); }
  Search search() const { return Search{state_.get(), hist_.get(), coarse_.get(), rows_}; }
  int2* tile_counts() const { return tile_counts_.get(); }
  int32_t* seg_pos() const { return seg_pos_.get(); }
  uint8_t* seg_mask() const { return seg_mask_.get(); }
  int32_t* tile_union() const { return tile_union_.get(); }

 private:
  int tiles_ = 0;
  int64_t rows_ = 0;
  DeviceBuffer<RowState> state_;    // [kPasses + 1][rows]
  DeviceBuffer<int32_t> hist_;      // [kPasses][rows][kBins]
  DeviceBuffer<int32_t> coarse_;    // [kPasses][rows][kBins / kCoarseWidth]
  DeviceBuffer<int2> tile_counts_;  // [rows][tiles]: (keys above the k-th, ties)
  // The union list in per-tile segments: tile t's at [group][t * kTile, + tile_union[group][t]).
  DeviceBuffer<int32_t> seg_pos_;     // [groups][stride]
  DeviceBuffer<uint8_t> seg_mask_;    // [groups][stride]
  DeviceBuffer<int32_t> tile_union_;  // [groups][tiles]
};

// Rows: a device functor with n(row) (keys in the row, <= stride) and k(row) (keys to take).
template <class Rows>
static __global__ void __launch_bounds__(kThreads)
    init_kernel(Rows rows, int group, Search sr, int32_t* __restrict__ counts, int32_t* __restrict__ union_count) {
  const int64_t row = blockIdx.x;
  for (int p = 0; p < kPasses; ++p) {
    for (int i = threadIdx.x; i < kBins; i += kThreads) sr.hist(p, row)[i] = 0;
    for (int i = threadIdx.x; i < kBins / kCoarseWidth; i += kThreads) sr.sums(p, row)[i] = 0;
  }
  if (threadIdx.x != 0) return;
  const int64_t n = rows.n(row), k = rows.k(row);
  RowState s;
  s.prefix = 0;
  s.mask = 0;
  s.n = int32_t(n);
  s.all = k >= n;
  s.need = int32_t(s.all ? n : (k > 0 ? k : 0));
  s.done = s.all || s.need == 0;
  sr.state(0)[row] = s;
  if (counts) counts[row] = s.need;
  if (union_count && row % group == 0) union_count[row / group] = 0;
}

// Warp 0's copy of a row's coarse sums of pass PASS (Search::sums), lane l holding coarse bins
// nc-1-(l*kPer + j), the highest first. A kernel reads them at its head, beside its state, so
// that find_digit's first read does not wait behind the state's.
template <int PASS>
struct CoarseSums {
  static constexpr int kCoarse = pass_bins(PASS) / kCoarseWidth, kPer = kCoarse / 32;
  static_assert(kCoarseWidth == 32 && kCoarse % 32 == 0, "a lane per fine bin, whole coarse bins per lane");
  int c[kPer];
  __device__ void read(const int32_t* __restrict__ coarse) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) c[j] = threadIdx.x < 32 ? coarse[kCoarse - 1 - (int(threadIdx.x) * kPer + j)] : 0;
  }
};

// Every thread of a block: the row's state after pass PASS, from its state before it (s, uniform)
// and the pass's histogram h [kBins] with its coarse sums cs: the digit of the k-th key (the first
// bin, from the highest, at which the count from the top reaches the keys still needed) and the
// keys still needed among those sharing it. Warp 0 walks the coarse sums, then the 32 bins of the
// coarse bin that holds the boundary: reads of 256 bytes and 128, where a whole-histogram scan by
// every block of the grid read 8 KiB each (at 512k and batch 8, 268 MB a pass, and the grid was
// slower than a find kernel of its own: f866e6f). `found`: block-shared, where warp 0 leaves the
// result.
template <int PASS>
static __device__ RowState find_digit(const RowState& s, const int32_t* __restrict__ h, const CoarseSums<PASS>& cs,
                                      RowState& found) {
  constexpr int bins = pass_bins(PASS), shift = pass_shift(PASS), per = CoarseSums<PASS>::kPer;
  if (threadIdx.x < 32) {
    const int lane = int(threadIdx.x);
    constexpr unsigned all = 0xffffffffu;
    // Inclusive sums from the top across the warp.
    auto scan = [&](int x) {
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(all, x, o);
        if (lane >= o) x += y;
      }
      return x;
    };
    RowState o = s;  // kept if done, or if no bin reaches `need` (counts that do not add up)
    int sum = 0;
#pragma unroll
    for (int j = 0; j < per; ++j) sum += cs.c[j];
    const int upto = scan(sum);
    const unsigned reach = s.done ? 0u : __ballot_sync(all, upto >= s.need);
    if (reach) {  // uniform
      const int at = __ffs(reach) - 1;
      int cb = 0, before = upto - sum;  // lane `at`: its coarse bin that reaches `need`, and the count above it
#pragma unroll
      for (int j = 0; j < per; ++j) {
        if (before + cs.c[j] >= s.need) {
          cb = CoarseSums<PASS>::kCoarse - 1 - (lane * per + j);
          break;
        }
        before += cs.c[j];
      }
      cb = __shfl_sync(all, cb, at);
      before = __shfl_sync(all, before, at);
      // Lane l holds bin cb*32 + 31 - l.
      const int f = h[cb * kCoarseWidth + kCoarseWidth - 1 - lane];
      const int fin = scan(f);
      const unsigned fine = __ballot_sync(all, before + fin >= s.need);
      if (fine) {  // uniform; always, when the coarse sums are the bins' sums
        const int fl = __ffs(fine) - 1;
        const int above = before + __shfl_sync(all, fin - f, fl), count = __shfl_sync(all, f, fl);
        o.prefix |= uint32_t(cb * kCoarseWidth + kCoarseWidth - 1 - fl) << shift;
        o.mask |= uint32_t(bins - 1) << shift;
        o.need = s.need - above;
        o.done = count == o.need;  // the whole boundary bin is taken: no need to tell its keys apart
      }
    }
    if (lane == 0) found = o;
  }
  __syncthreads();
  return found;
}

// Grid (tile, row): the tile's histogram of digit PASS among the keys matching the prefix. FOLD,
// from pass 1 on: each block first finds the previous pass's digit (find_digit, while its keys
// load), and the row's tile 0 stores the state for the grids after it; else find_kernel did.
template <int PASS, bool FOLD>
static __global__ void __launch_bounds__(kThreads)
    hist_kernel(const float* __restrict__ keys, int64_t stride, Search sr) {
  constexpr int bins = pass_bins(PASS), shift = pass_shift(PASS);
  __shared__ int32_t h[bins];
  __shared__ RowState found;
  const int64_t row = blockIdx.y, t0 = int64_t(blockIdx.x) * kTile;
  constexpr bool find_here = FOLD && PASS > 0;
  constexpr int prev_pass = find_here ? PASS - 1 : PASS;
  CoarseSums<prev_pass> cs;
  if constexpr (find_here) cs.read(sr.sums(prev_pass, row));
  const RowState prev = sr.state(prev_pass)[row];
  if (prev.done || (t0 > 0 && t0 >= prev.n)) {  // uniform; a row's tile 0 stores its state
    if constexpr (find_here)
      if (prev.done && t0 == 0 && threadIdx.x == 0) sr.state(PASS)[row] = prev;
    return;
  }
  float v[kPerThread];
  const int m = load_tile(keys + row * stride + t0, min(int64_t(prev.n) - t0, kTile), v);
  RowState s = prev;
  if constexpr (find_here) {
    s = find_digit<prev_pass>(prev, sr.hist(prev_pass, row), cs, found);
    if (t0 == 0 && threadIdx.x == 0) sr.state(PASS)[row] = s;
  }
  if (s.done) return;  // uniform
  for (int i = threadIdx.x; i < bins; i += kThreads) h[i] = 0;
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const uint32_t u = rank_bits(v[i]);
    if (i < m && (u & s.mask) == s.prefix) atomicAdd(&h[(u >> shift) & uint32_t(bins - 1)], 1);
  }
  __syncthreads();
  // Thread t adds bins t*per.. into the row's histogram, and with the threads beside it their
  // coarse sum.
  constexpr int per = bins / kThreads, share = kCoarseWidth / per;
  int32_t* hist = sr.hist(PASS, row);
  int sum = 0;
#pragma unroll
  for (int j = 0; j < per; ++j) {
    const int b = int(threadIdx.x) * per + j, c = h[b];
    if (c) atomicAdd(&hist[b], c);
    sum += c;
  }
#pragma unroll
  for (int o = 1; o < share; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (threadIdx.x % share == 0 && sum) atomicAdd(&sr.sums(PASS, row)[threadIdx.x / share], sum);
}

// A warp per row (finds not folded): the row's state after pass PASS, sr.state(PASS + 1).
template <int PASS>
static __global__ void __launch_bounds__(32) find_kernel(Search sr) {
  __shared__ RowState found;
  const int64_t row = blockIdx.x;
  CoarseSums<PASS> cs;
  cs.read(sr.sums(PASS, row));
  const RowState s = find_digit<PASS>(sr.state(PASS)[row], sr.hist(PASS, row), cs, found);
  if (threadIdx.x == 0) sr.state(PASS + 1)[row] = s;
}

// Grid (tile, row): per tile, the keys above the k-th and the ties; FOLD: after finding the last
// pass's digit as hist_kernel does (the row's tile 0 stores the final state, sr.state(kPasses)).
template <bool FOLD>
static __global__ void __launch_bounds__(kThreads)
    count_kernel(const float* __restrict__ keys, int64_t stride, Search sr, int tiles, int2* __restrict__ tile_counts) {
  using Reduce = cub::BlockReduce<int2, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ RowState found;
  const int64_t row = blockIdx.y, t0 = int64_t(blockIdx.x) * kTile;
  CoarseSums<kPasses - 1> cs;
  if constexpr (FOLD) cs.read(sr.sums(kPasses - 1, row));
  const RowState prev = sr.state(FOLD ? kPasses - 1 : kPasses)[row];
  float v[kPerThread];
  const int m = prev.all ? 0 : load_tile(keys + row * stride + t0, min(int64_t(prev.n) - t0, kTile), v);
  RowState s = prev;
  if constexpr (FOLD) {
    s = find_digit<kPasses - 1>(prev, sr.hist(kPasses - 1, row), cs, found);
    if (t0 == 0 && threadIdx.x == 0) sr.state(kPasses)[row] = s;
  }
  int2 c = make_int2(0, 0);
  if (!s.all) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const uint32_t u = rank_bits(v[i]) & s.mask;
      c.x += i < m && u > s.prefix;
      c.y += i < m && u == s.prefix;
    }
  }
  const int2 total = Reduce(tmp).Reduce(c, [](int2 a, int2 b) { return make_int2(a.x + b.x, a.y + b.y); });
  if (threadIdx.x == 0) tile_counts[row * tiles + blockIdx.x] = total;
}

// Grid (tile, group of `group` rows): each row's taken positions of the tile, at the row's output
// offset (positions [row][stride], ascending); per group, the positions any of its rows took are
// added to union_count[group index] (when given) and, when seg_pos is given, written with the
// rows that took them (bit r: row r of the group) as the tile's segment of the union list.
// Positions go out through shared memory: each thread's run of taken positions sits where the
// block's scan puts it, and the block then stores the tile's list in coalesced rows. Stored
// straight from each thread's run, a warp's store touched up to 32 sectors, one a lane.
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
  // The tile's keys, padded so that thread t reads its row without bank conflicts; then its taken
  // positions, in scan order.
  __shared__ union {
    float keys[kThreads * (kPerThread + 1)];
    int32_t pos[kTile];
  } stage;
  __shared__ uint8_t s_mask[kTile];
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
    // The tile's keys and the counts of the tiles before it (keys above, ties), loaded together.
    float v[kPerThread];
    const int loaded = load_tile(keys + row * stride + t0, len, v);
    int2 before = make_int2(0, 0);
    if (!s.all)
      for (int j = threadIdx.x; j < tile; j += kThreads) before = add(before, tile_counts[row * tiles + j]);
    __syncthreads();  // the previous row's stage, scan and reduce storage are no longer read
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int e = int(threadIdx.x) + i * kThreads;  // transposed: thread t reads positions 16t.. below
      if (i < loaded) stage.keys[(e / kPerThread) * (kPerThread + 1) + e % kPerThread] = v[i];
    }
    before = Reduce(tmp.reduce).Reduce(before, add);
    if (threadIdx.x == 0) s_before = before;
    __syncthreads();
    before = s_before;
    const float* mine = stage.keys + threadIdx.x * (kPerThread + 1);
    uint32_t above = 0, tie = 0;
    for (int i = 0; i < m; ++i) {
      const uint32_t u = rank_bits(mine[i]) & s.mask;
      above |= uint32_t(s.all || u > s.prefix) << i;
      tie |= uint32_t(!s.all && u == s.prefix) << i;
    }
    // The ties taken are the first `need` in position order: this thread's ties rank from
    // before.y + (the ties of the threads before it).
    int tie_off;
    Scan(tmp.scan).ExclusiveSum(__popc(tie), tie_off);
    const int64_t first_tie = int64_t(before.y) + tie_off;
    const int my_ties = int(max(int64_t(0), min(int64_t(__popc(tie)), int64_t(s.need) - first_tie)));
    uint32_t take = above;
    for (uint32_t rest = tie, t = 0; rest && int(t) < my_ties; ++t) {
      const uint32_t low = rest & (~rest + 1u);  // the lowest remaining tie
      take |= low;
      rest ^= low;
    }
    int off, taken;
    __syncthreads();  // the scan storage is reused; every thread has read its keys from the stage
    Scan(tmp.scan).ExclusiveSum(__popc(take), off, taken);
    for (uint32_t rest = take; rest; rest &= rest - 1) {
      const int i = __ffs(rest) - 1;
      stage.pos[off++] = int32_t(t0 + e0 + i);
      if (i < 8)
        by_lo |= uint64_t(1u << g) << (8 * i);
      else
        by_hi |= uint64_t(1u << g) << (8 * (i - 8));
    }
    any |= take;
    __syncthreads();
    const int64_t base = s.all ? t0 : int64_t(before.x) + min(int64_t(before.y), int64_t(s.need));
    int32_t* out = positions + row * stride + base;
    for (int e = threadIdx.x; e < taken; e += kThreads) out[e] = stage.pos[e];
  }
  if (!union_count) return;
  __syncthreads();  // the scan storage is free
  int u_off, u_total;
  Scan(tmp.scan).ExclusiveSum(__popc(any), u_off, u_total);
  if (threadIdx.x == 0 && u_total) atomicAdd(&union_count[blockIdx.y], u_total);
  if (!seg_pos) return;
  // The stage is free: the barrier before the scan came after the last row's stores read it.
  for (uint32_t rest = any; rest; rest &= rest - 1, ++u_off) {
    const int i = __ffs(rest) - 1;
    stage.pos[u_off] = int32_t(t0 + e0 + i);
    s_mask[u_off] = uint8_t((i < 8 ? by_lo >> (8 * i) : by_hi >> (8 * (i - 8))) & 0xffu);
  }
  __syncthreads();
  const int64_t seg = int64_t(blockIdx.y) * stride + t0;  // the tile's segment
  for (int e = threadIdx.x; e < u_total; e += kThreads) {
    seg_pos[seg + e] = stage.pos[e];
    seg_mask[seg + e] = s_mask[e];
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
  int32_t pos[kPerThread];
  uint8_t msk[kPerThread];
  const int m = load_tile(seg_pos + from, cnt, pos);
  load_tile(seg_mask + from, cnt, msk);
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int e = int(threadIdx.x) + i * kThreads;
    if (i < m) {
      list.pos[to + e] = pos[i];
      list.mask[to + e] = msk[i];
    }
  }
}

// Where select() finds each pass's digit: Auto, by the size of a pass's grid (the header says
// why); Folded or Separate to choose (the tests run both on every case).
enum class Finds { Auto, Folded, Separate };

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
                   UnionList list = {}, Finds finds = Finds::Auto) {
  SAAP_CU_REQUIRE(n_rows >= 1 && n_rows <= 65535 && group >= 1 && n_rows % group == 0, InvalidArgument,
                  "n_rows = %lld must be in [1, 65535] and a multiple of group = %d", (long long)n_rows, group);
  SAAP_CU_REQUIRE(stride >= 1 && stride < (int64_t(1) << 31), InvalidArgument, "stride = %lld outside [1, 2^31)",
                  (long long)stride);
  const bool with_list = list.pos != nullptr;
  SAAP_CU_REQUIRE(!with_list || (list.mask && union_count && group <= 8), InvalidArgument,
                  "a union list needs its mask, union_count and group <= 8 (group = %d)", group);
  const int64_t groups = n_rows / group;
  ws.ensure(n_rows, stride, with_list ? groups : 0);
  const dim3 grid(unsigned(ws.tiles()), unsigned(n_rows));
  const Search sr = ws.search();
  init_kernel<<<unsigned(n_rows), kThreads, 0, stream>>>(rows, group, sr, counts, union_count);
  SAAP_CU_LAUNCHED();
  static_assert(kPasses == 3, "one hist_kernel launch per pass");
  // The finds folded into the next grids where a pass's grid fits in four waves (the header says why).
  static const int resident = resident_blocks(reinterpret_cast<const void*>(hist_kernel<1, true>), kThreads);
  const bool fold = finds == Finds::Folded ||
                    (finds == Finds::Auto && int64_t(grid.x) * grid.y <= 4 * int64_t(resident));
  if (fold) {
    hist_kernel<0, true><<<grid, kThreads, 0, stream>>>(keys, stride, sr);
    hist_kernel<1, true><<<grid, kThreads, 0, stream>>>(keys, stride, sr);
    hist_kernel<2, true><<<grid, kThreads, 0, stream>>>(keys, stride, sr);
    count_kernel<true><<<grid, kThreads, 0, stream>>>(keys, stride, sr, ws.tiles(), ws.tile_counts());
  } else {
    hist_kernel<0, false><<<grid, kThreads, 0, stream>>>(keys, stride, sr);
    find_kernel<0><<<unsigned(n_rows), 32, 0, stream>>>(sr);
    hist_kernel<1, false><<<grid, kThreads, 0, stream>>>(keys, stride, sr);
    find_kernel<1><<<unsigned(n_rows), 32, 0, stream>>>(sr);
    hist_kernel<2, false><<<grid, kThreads, 0, stream>>>(keys, stride, sr);
    find_kernel<2><<<unsigned(n_rows), 32, 0, stream>>>(sr);
    count_kernel<false><<<grid, kThreads, 0, stream>>>(keys, stride, sr, ws.tiles(), ws.tile_counts());
  }
  SAAP_CU_LAUNCHED();
  const dim3 group_grid(unsigned(ws.tiles()), unsigned(groups));
  write_kernel<<<group_grid, kThreads, 0, stream>>>(keys, stride, ws.state(kPasses), ws.tile_counts(), ws.tiles(), group,
                                                    positions, union_count, with_list ? ws.seg_pos() : nullptr,
                                                    ws.seg_mask(), ws.tile_union());
  SAAP_CU_LAUNCHED();
  if (!with_list) return;
  union_compact_kernel<<<group_grid, kThreads, 0, stream>>>(ws.seg_pos(), ws.seg_mask(), ws.tile_union(),
                                                            ws.tiles(), stride, list);
  SAAP_CU_LAUNCHED();
}

}  // namespace saap::cuda::radix_topk
