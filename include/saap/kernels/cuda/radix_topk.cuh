// Exact top-k of many rows of fp32 keys at once, spread over the whole GPU: each row's k largest
// keys (ties to the lower position, rules::ranks_before), written in position order. Shared by the
// per-head top-k of the oracle and Loki (per_head_topk.cuh); any selection of "the k best of n
// scores, ties to the lower index" can call select().
//
// A row's k-th key is found by a radix select over the keys' order-preserving bits in three
// passes (bits 31..21, 20..10, 9..0). A pass is a grid over (tile of 4096 keys, row): each block
// builds a histogram of its tile's digits among the keys that match the digits found so far, in
// shared memory, and adds it into the row's global histogram with atomics; then one small block
// per row finds the digit at which the count from the top reaches the keys still needed. A pass
// whose boundary bin holds exactly the keys still needed ends the search early. Then a counting
// grid stores each tile's keys above the boundary and its ties, and a writing grid places each
// tile's taken positions at the offset those counts give (the ties taken are the lowest
// positions: the first `need` ties in position order). Rows may be grouped (the query heads of a
// KV group): the writing grid then also counts, per group, the positions any of its rows took,
// and can list them with the rows that took each (UnionList: written per tile, then moved into
// one ascending list by a compaction grid), so that an attention kernel reads each row once.
//
// Every launch has a grid fixed by the row count and the row stride, and nothing is read back to
// the host: select() may be recorded in a CUDA graph. Cost: each pass and the count and write
// read the row's keys once (five reads of n floats per row), whatever k.
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
__host__ __device__ constexpr int pass_shift(int pass) { return pass == 0 ? 21 : pass == 1 ? 10 : 0; }
__host__ __device__ constexpr int pass_bins(int pass) { return pass == 2 ? 1024 : 2048; }

// The radix key of a score: order-preserving bits, with -0 read as +0 so that the bits order
// exactly as rules::ranks_before compares the floats.
static __device__ __forceinline__ uint32_t rank_bits(float s) { return float_key(s == 0.f ? 0.f : s); }

// Thread threadIdx.x's keys of a tile of `len` keys at kt: v[i] = kt[threadIdx.x + i * kThreads]
// (coalesced) for i < the count returned (0 past the tile). Every load is issued before any is
// used: a loop that used each key as it came waited a round trip per key (Nsight Compute at 128k,
// batch 1: the tile grids stalled on long_scoreboard at 8-45% of DRAM peak).
static __device__ __forceinline__ int load_tile(const float* __restrict__ kt, int64_t len, float (&v)[kPerThread]) {
  const int64_t first = threadIdx.x;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t e = first + int64_t(i) * kThreads;
    v[i] = e < len ? kt[e] : 0.f;
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
    if (int64_t(state_.size()) < rows) {
      state_.resize(size_t(rows));
      hist_.resize(size_t(rows) * kBins);
    }
    if (int64_t(tile_counts_.size()) < rows * tiles_) tile_counts_.resize(size_t(rows * tiles_));
    if (int64_t(seg_pos_.size()) < groups * stride) {
      seg_pos_.resize(size_t(groups * stride));
      seg_mask_.resize(size_t(groups * stride));
    }
    if (int64_t(tile_union_.size()) < groups * tiles_) tile_union_.resize(size_t(groups * tiles_));
  }
  int tiles() const { return tiles_; }
  RowState* state() const { return state_.get(); }
  int32_t* hist() const { return hist_.get(); }
  int2* tile_counts() const { return tile_counts_.get(); }
  int32_t* seg_pos() const { return seg_pos_.get(); }
  uint8_t* seg_mask() const { return seg_mask_.get(); }
  int32_t* tile_union() const { return tile_union_.get(); }

 private:
  int tiles_ = 0;
  DeviceBuffer<RowState> state_;    // [rows]
  DeviceBuffer<int32_t> hist_;      // [rows][kBins]
  DeviceBuffer<int2> tile_counts_;  // [rows][tiles]: (keys above the k-th, ties)
  // The union list in per-tile segments: tile t's at [group][t * kTile, + tile_union[group][t]).
  DeviceBuffer<int32_t> seg_pos_;     // [groups][stride]
  DeviceBuffer<uint8_t> seg_mask_;    // [groups][stride]
  DeviceBuffer<int32_t> tile_union_;  // [groups][tiles]
};

// Rows: a device functor with n(row) (keys in the row, <= stride) and k(row) (keys to take).
template <class Rows>
static __global__ void __launch_bounds__(kThreads)
    init_kernel(Rows rows, int group, RowState* __restrict__ state, int32_t* __restrict__ hist,
                int32_t* __restrict__ counts, int32_t* __restrict__ union_count) {
  const int64_t row = blockIdx.x;
  for (int i = threadIdx.x; i < kBins; i += kThreads) hist[row * kBins + i] = 0;
  if (threadIdx.x != 0) return;
  const int64_t n = rows.n(row), k = rows.k(row);
  RowState s;
  s.prefix = 0;
  s.mask = 0;
  s.n = int32_t(n);
  s.all = k >= n;
  s.need = int32_t(s.all ? n : (k > 0 ? k : 0));
  s.done = s.all || s.need == 0;
  state[row] = s;
  if (counts) counts[row] = s.need;
  if (union_count && row % group == 0) union_count[row / group] = 0;
}

// Grid (tile, row): the tile's histogram of digit PASS among the keys matching the prefix.
template <int PASS>
static __global__ void __launch_bounds__(kThreads)
    hist_kernel(const float* __restrict__ keys, int64_t stride, const RowState* __restrict__ state,
                int32_t* __restrict__ hist) {
  constexpr int bins = pass_bins(PASS), shift = pass_shift(PASS);
  __shared__ int32_t h[bins];
  const int64_t row = blockIdx.y, t0 = int64_t(blockIdx.x) * kTile;
  const RowState s = state[row];
  if (s.done || t0 >= s.n) return;  // uniform over the block
  for (int i = threadIdx.x; i < bins; i += kThreads) h[i] = 0;
  __syncthreads();
  float v[kPerThread];
  const int m = load_tile(keys + row * stride + t0, min(int64_t(s.n) - t0, kTile), v);
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const uint32_t u = rank_bits(v[i]);
    if (i < m && (u & s.mask) == s.prefix) atomicAdd(&h[(u >> shift) & uint32_t(bins - 1)], 1);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < bins; i += kThreads)
    if (h[i]) atomicAdd(&hist[row * kBins + i], h[i]);
}

// Block per row: the digit of the k-th key from the row's histogram (counted from the highest
// digit), the keys still needed among those sharing it; the histogram is zeroed for the next pass.
template <int PASS>
static __global__ void __launch_bounds__(kThreads) find_kernel(RowState* __restrict__ state, int32_t* __restrict__ hist) {
  constexpr int bins = pass_bins(PASS), shift = pass_shift(PASS), per = bins / kThreads;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const int64_t row = blockIdx.x;
  const RowState s = state[row];
  if (s.done) return;  // uniform
  int32_t* h = hist + row * kBins;
  // Thread t holds digits bins-1-t*per down to bins-(t+1)*per: the scan runs from the top.
  int c[per], sum = 0;
#pragma unroll
  for (int j = 0; j < per; ++j) {
    c[j] = h[bins - 1 - (threadIdx.x * per + j)];
    sum += c[j];
  }
  int before;
  Scan(tmp).ExclusiveSum(sum, before);  // its barrier orders every read of state[row] before the write
#pragma unroll
  for (int j = 0; j < per; ++j) h[bins - 1 - (threadIdx.x * per + j)] = 0;
  if (!(before < s.need && s.need <= before + sum)) return;
  int cum = before;
#pragma unroll
  for (int j = 0; j < per; ++j) {
    if (cum + c[j] >= s.need) {
      RowState o = s;
      o.prefix |= uint32_t(bins - 1 - (threadIdx.x * per + j)) << shift;
      o.mask |= uint32_t(bins - 1) << shift;
      o.need = s.need - cum;
      o.done = c[j] == o.need;  // the whole boundary bin is taken: no need to tell its keys apart
      state[row] = o;
      return;
    }
    cum += c[j];
  }
}

// Grid (tile, row): per tile, the keys above the k-th and the ties.
static __global__ void __launch_bounds__(kThreads)
    count_kernel(const float* __restrict__ keys, int64_t stride, const RowState* __restrict__ state, int tiles,
                 int2* __restrict__ tile_counts) {
  using Reduce = cub::BlockReduce<int2, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t row = blockIdx.y, t0 = int64_t(blockIdx.x) * kTile;
  const RowState s = state[row];
  int2 c = make_int2(0, 0);
  if (!s.all && t0 < s.n) {
    float v[kPerThread];
    const int m = load_tile(keys + row * stride + t0, min(int64_t(s.n) - t0, kTile), v);
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
      if (i < loaded) stage[(e / kPerThread) * (kPerThread + 1) + e % kPerThread] = v[i];
    }
    before = Reduce(tmp.reduce).Reduce(before, add);
    if (threadIdx.x == 0) s_before = before;
    __syncthreads();
    before = s_before;
    const float* mine = stage + threadIdx.x * (kPerThread + 1);
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
  int32_t pos[kPerThread];  // every load issued before the first store (as load_tile)
  uint8_t msk[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int e = int(threadIdx.x) + i * kThreads;
    pos[i] = e < cnt ? seg_pos[from + e] : 0;
    msk[i] = e < cnt ? seg_mask[from + e] : 0;
  }
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int e = int(threadIdx.x) + i * kThreads;
    if (e < cnt) {
      list.pos[to + e] = pos[i];
      list.mask[to + e] = msk[i];
    }
  }
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
  init_kernel<<<unsigned(n_rows), kThreads, 0, stream>>>(rows, group, ws.state(), ws.hist(), counts, union_count);
  SAAP_CU_LAUNCHED();
  hist_kernel<0><<<grid, kThreads, 0, stream>>>(keys, stride, ws.state(), ws.hist());
  find_kernel<0><<<unsigned(n_rows), kThreads, 0, stream>>>(ws.state(), ws.hist());
  hist_kernel<1><<<grid, kThreads, 0, stream>>>(keys, stride, ws.state(), ws.hist());
  find_kernel<1><<<unsigned(n_rows), kThreads, 0, stream>>>(ws.state(), ws.hist());
  hist_kernel<2><<<grid, kThreads, 0, stream>>>(keys, stride, ws.state(), ws.hist());
  find_kernel<2><<<unsigned(n_rows), kThreads, 0, stream>>>(ws.state(), ws.hist());
  SAAP_CU_LAUNCHED();
  count_kernel<<<grid, kThreads, 0, stream>>>(keys, stride, ws.state(), ws.tiles(), ws.tile_counts());
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

}  // namespace saap::cuda::radix_topk
