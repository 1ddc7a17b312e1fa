// Dense split-KV flash-decoding: block (split, kv head, sequence) attends the G query heads of its
// KV group to its share of that head's cache and writes split partials. A share is one contiguous
// chunk, or (interleave) every splits-th unit of kDenseUnit<D> rows, so that the grid reads a
// narrow moving window of the cache. With a sliding window (window > 0) the shares tile
// [max(0, len - window), len) instead of [0, len).
#pragma once
#include <type_traits>

#include "saap/kernels/cuda/attend.cuh"

namespace saap::cuda {

constexpr int kDecodeWarps = 4;
// Resident blocks per SM: 4 (<= 128 registers, 16 warps of loads in flight) while the group's
// state fits; 8 query heads need more registers and would spill.
constexpr int decode_min_blocks(int gmax) { return gmax > 4 ? 2 : 4; }
// The prefetching loop holds a second tile of K/V words (32 more registers): 3 blocks (<= 168
// registers) for up to 4 query heads, 2 for 8. The tensor-core loop (run_mma) holds the query's
// B fragments and a 16-row tile: the same budget.
constexpr int prefetch_min_blocks(int gmax) { return gmax > 4 ? 2 : gmax > 2 ? 3 : 4; }

// A decode kernel's inner loop: GroupAttender::run, run_prefetch or run_mma (which prefetches too).
enum class DenseLoop { Plain = 0, Prefetch = 1, Mma = 2 };
// Resident blocks the loop is built for: the tensor-core loop holds two tiles beside the query's
// fragments (2 blocks, <= 255 registers).
constexpr int dense_loop_min_blocks(DenseLoop loop, int gmax) {
  return loop == DenseLoop::Plain ? decode_min_blocks(gmax) : loop == DenseLoop::Mma ? 2 : prefetch_min_blocks(gmax);
}
// Where run_mma applies (bf16 keys, head dim 64 or 128); elsewhere a tuning asking for it runs Prefetch.
template <class T, int D>
constexpr bool dense_mma_supported() {
  return std::is_same<T, __nv_bfloat16>::value && (D == 64 || D == 128);
}

// Rows one block pass of the attender covers (kDecodeWarps tiles): the interleaving unit.
template <class T, int D, int GMAX>
constexpr int kDenseUnit = kDecodeWarps * GroupAttender<T, D, GMAX, kDecodeWarps>::TILE;

// The rows of one split: n rows, row i of the split at cache row start + (i / unit) * unit_stride
// + i % unit (unit a power of two).
struct DenseShare {
  int64_t start, unit_stride;
  int n;
  template <int UNIT>
  __device__ static DenseShare of(int64_t len, int64_t window, int split, int splits, int64_t chunk, bool interleave) {
    static_assert((UNIT & (UNIT - 1)) == 0, "the unit is a power of two");
    const int64_t first = window > 0 && len > window ? len - window : 0;
    DenseShare r;
    if (!interleave) {
      r.start = first + split * chunk;
      r.n = int(max(int64_t(0), min(chunk, len - r.start)));
      r.unit_stride = UNIT;  // consecutive units: row i is start + i
      return r;
    }
    // Units split, split + splits, ... of the span; the last, partial unit belongs to the split
    // whose turn it is.
    const int64_t span = len - first, full = span / UNIT, rem = span % UNIT;
    const int64_t mine = full > split ? (full - split + splits - 1) / splits : 0;
    r.start = first + int64_t(split) * UNIT;
    r.n = int(mine * UNIT + (full % splits == split ? rem : 0));
    r.unit_stride = int64_t(splits) * UNIT;
    return r;
  }
  template <int UNIT>
  __device__ int64_t row(int i) const {
    return int64_t(i / UNIT) * unit_stride + (i % UNIT);
  }
};

// LOOP: the attender's loop (and its register budget).
template <class T, int D, int GMAX, DenseLoop LOOP>
static __global__ void __launch_bounds__(kDecodeWarps * 32, dense_loop_min_blocks(LOOP, GMAX))
    dense_decode_kernel(const T* __restrict__ K, const T* __restrict__ V, int64_t max_len,
                        const int32_t* __restrict__ lengths, const float* __restrict__ q, int n_kv_heads, int G,
                        float scale, int splits, int64_t chunk, int64_t window, bool interleave,
                        float* __restrict__ part_out, float* __restrict__ part_lse) {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  constexpr int UNIT = kDenseUnit<T, D, GMAX>;
  __shared__ typename A::Shared sh;
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const DenseShare share = DenseShare::of<UNIT>(lengths[b], window, split, splits, chunk, interleave);
  const int64_t row0 = (int64_t(b) * n_kv_heads + h) * G;  // first query head row of the group
  A at;
  at.init(q + row0 * D, G, scale);
  const T* kb = K + ((int64_t(b) * n_kv_heads + h) * max_len + share.start) * D + at.sub * 8;
  const T* vb = V + ((int64_t(b) * n_kv_heads + h) * max_len + share.start) * D + at.sub * 8;
  auto kptr = [&](int i) { return kb + share.row<UNIT>(i) * D; };
  auto vptr = [&](int i) { return vb + share.row<UNIT>(i) * D; };
  if constexpr (LOOP == DenseLoop::Mma) {
    __shared__ float scores[kDecodeWarps][A::kMmaRows * 8];
    const T* kq = kb - at.sub * 8 + (at.lane & 3) * (D / 4);  // this lane's quarter of each row
    at.run_mma(
        share.n, q + row0 * D, G, scale, [&](int i) { return kq + share.row<UNIT>(i) * D; }, vptr, scores[at.warp]);
  } else if constexpr (LOOP == DenseLoop::Prefetch) {
    at.run_prefetch(share.n, kptr, vptr);
  } else {
    at.run(share.n, kptr, vptr);
  }
  allow_next_grid();
  at.finish(sh, G, part_out + (row0 * splits + split) * D, int64_t(splits) * D, part_lse + row0 * splits + split,
            splits);
}

}  // namespace saap::cuda
