// Dense split-KV flash-decoding: block (split, kv head, sequence) attends the G query heads of its
// KV group to its share of that head's cache and writes split partials. A share is one contiguous
// chunk, or (interleave) every splits-th unit of kDenseUnit<D> rows, so that the grid reads a
// narrow moving window of the cache. With a sliding window (window > 0) the shares tile
// [max(0, len - window), len) instead of [0, len).
#pragma once
#include <type_traits>

#include "saap/kernels/cuda/async_copy.cuh"
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

// Tuning fused=1: the split combine inside the decode kernel, by the last block of each (sequence,
// KV head) to finish (last-block-done): every block writes its partials, fences them and takes a
// ticket; the block that takes the last one reads all of its group's partials back from L2 and
// writes the G outputs. This replaces the second launch (combine_splits_kernel, ~4.7 us in the ncu
// profile at da2ee81 against a 28 us step at 16k, batch 1) with a tail of one block per group, and
// lets a step use more splits without paying a wider combine. The last block resets its ticket,
// so the next call (or graph replay) starts from zero with no memset in the step.
// part_out [rows][splits][D], part_lse [rows][splits] as finish() wrote them; row0: the group's
// first query head row; ticket: this group's counter (0 on entry to the grid); out [rows][D].
template <int D, int GMAX, int NTHREADS>
__device__ void combine_group_if_last(const float* part_out, const float* part_lse, int splits, int G, int64_t row0,
                                      unsigned* ticket, float* out) {
  __shared__ bool last;
  __shared__ float head_max[GMAX], head_sum[GMAX];
  __threadfence();  // this thread's partials are visible device-wide before the ticket is taken
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(ticket, 1u) == unsigned(splits - 1);
    if (last) *ticket = 0;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();  // the other blocks' partials are read after their tickets (loads below go to L2)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int g = warp; g < G; g += NTHREADS / 32) {
    const float* pl = part_lse + (row0 + g) * splits;
    float mx = -INFINITY;
    for (int s = lane; s < splits; s += 32) mx = fmaxf(mx, __ldcg(pl + s));
    mx = warp_max(mx);
    float L = 0.f;
    if (mx > -INFINITY)
      for (int s = lane; s < splits; s += 32) L += exp2f(__ldcg(pl + s) - mx);
    L = warp_sum(L);
    if (lane == 0) head_max[g] = mx, head_sum[g] = L;
  }
  __syncthreads();
  // One float4 column of one head per thread, every split's loads independent (unrolled).
  constexpr int Q = D / 4;
  for (int c = threadIdx.x; c < G * Q; c += NTHREADS) {
    const int g = c / Q, d4 = c % Q;
    const float mx = head_max[g], L = head_sum[g];
    const float* pl = part_lse + (row0 + g) * splits;
    const float4* po = reinterpret_cast<const float4*>(part_out + (row0 + g) * splits * D) + d4;
    float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
    if (L > 0.f) {
#pragma unroll 16
      for (int s = 0; s < splits; ++s) {
        const float w = exp2f(__ldcg(pl + s) - mx);
        const float4 p = __ldcg(po + int64_t(s) * Q);
        a.x = fmaf(w, p.x, a.x);
        a.y = fmaf(w, p.y, a.y);
        a.z = fmaf(w, p.z, a.z);
        a.w = fmaf(w, p.w, a.w);
      }
      const float inv = 1.f / L;
      a = make_float4(a.x * inv, a.y * inv, a.z * inv, a.w * inv);
    }
    reinterpret_cast<float4*>(out + (row0 + g) * D)[d4] = a;
  }
}

// The end of a dense decode block, after its attender's loop: the next grid's blocks may be placed
// (allow_next_grid), the group's partials of this split written (rows row0 = bh * G.., bh =
// b * n_kv_heads + h), and with fused=1 (tickets [batch * n_kv_heads] given) the group's splits
// combined into out by the block that finishes last.
template <int D, int GMAX, class Attender>
__device__ __forceinline__ void finish_dense_block(Attender& at, typename Attender::Shared& sh, int G, int64_t bh,
                                                   int split, int splits, float* part_out, float* part_lse,
                                                   unsigned* tickets, float* out) {
  const int64_t row0 = bh * G;
  allow_next_grid();
  at.finish(sh, G, part_out + (row0 * splits + split) * D, int64_t(splits) * D, part_lse + row0 * splits + split,
            splits);
  if (tickets)  // fused=1
    combine_group_if_last<D, GMAX, kDecodeWarps * 32>(part_out, part_lse, splits, G, row0, tickets + bh, out);
}

// LOOP: the attender's loop (and its register budget).
template <class T, int D, int GMAX, DenseLoop LOOP>
static __global__ void __launch_bounds__(kDecodeWarps * 32, dense_loop_min_blocks(LOOP, GMAX))
    dense_decode_kernel(const T* __restrict__ K, const T* __restrict__ V, int64_t max_len,
                        const int32_t* __restrict__ lengths, const float* __restrict__ q, int n_kv_heads, int G,
                        float scale, int splits, int64_t chunk, int64_t window, bool interleave,
                        float* __restrict__ part_out, float* __restrict__ part_lse, unsigned* __restrict__ tickets,
                        float* __restrict__ out) {
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
  finish_dense_block<D, GMAX>(at, sh, G, int64_t(b) * n_kv_heads + h, split, splits, part_out, part_lse, tickets,
                              out);
}

}  // namespace saap::cuda
