// Saap sparse decode: block (split, kv head, sequence) attends the G query heads of the group to
// its share of the (b, h) selection, so each selected token is read once per KV group.
// select() numbers the selected tokens in segment order (sinks, recent window, the selected
// partitions' ranges and append pages) and cuts them into equal runs, one per split: the work is
// sized by the tokens selected, not by the context or the segment count, so a small selection
// spreads over as many blocks as a large one and no block waits on a long tail. Given `out` (the
// fused path, few splits), the last block of each (b, h) also combines the splits, instead of a
// combine launch after the kernel.
#pragma once
#include "saap/kernels/cuda/dense_decode.cuh"

namespace saap::cuda {

constexpr int kSaapSegmentTile = 256;  // segment descriptors staged at a time
constexpr int kSaapSlotChunk = 2048;   // token slots expanded at a time
constexpr int kSaapMinSplitTokens = 64;  // fewest tokens worth a block of their own
constexpr int kSaapMaxSplits = 4096;
// The fused path combines in the attend kernel up to this many splits: the last split block of a
// (b, h) reads every split's partials alone, which beats a combine launch only while they are few.
constexpr int kSaapFusedCombineMaxSplits = 32;

// The last split block of (b, h) (row0 = bh * G): out [G][D] from the G rows' split partials
// part_out [row][splits][D] and part_lse [row][splits] (log2 domain), as combine_splits_kernel
// weighs them (exp2 of each split's lse over the largest, a split without keys weighing 0), in
// one pass with a running maximum. A thread per (head, 4 dimensions); loads from L2 (ld.cg), since
// the other blocks wrote them.
template <int D>
__device__ inline void combine_group(const float* __restrict__ part_out, const float* __restrict__ part_lse,
                                     int64_t row0, int G, int splits, float* __restrict__ out) {
  constexpr int Q = D / 4;
  for (int t = threadIdx.x; t < G * Q; t += blockDim.x) {
    const int64_t row = row0 + t / Q;
    const int d4 = t % Q;
    const float* pl = part_lse + row * splits;
    const float4* po = reinterpret_cast<const float4*>(part_out + row * splits * D) + d4;
    float m = -INFINITY, L = 0.f;
    float4 A = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int sp = 0; sp < splits; ++sp) {
      const float l = __ldcg(pl + sp);
      const float4 v = __ldcg(po + int64_t(sp) * Q);
      const float mx = fmaxf(m, l);
      if (mx == -INFINITY) continue;  // no keys so far
      const float a = exp2f(m - mx), e = exp2f(l - mx);
      L = L * a + e;
      A.x = A.x * a + v.x * e;
      A.y = A.y * a + v.y * e;
      A.z = A.z * a + v.z * e;
      A.w = A.w * a + v.w * e;
      m = mx;
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
    reinterpret_cast<float4*>(out + row * D)[d4] = make_float4(A.x * inv, A.y * inv, A.z * inv, A.w * inv);
  }
}

template <class T, int D, int GMAX>
static __global__ void __launch_bounds__(kDecodeWarps * 32, decode_min_blocks(GMAX))
    saap_decode_kernel(const T* __restrict__ kpool, const T* __restrict__ vpool, int64_t rows,
                       const int2* __restrict__ segments, const int32_t* __restrict__ segment_count,
                       int64_t max_segments, const int2* __restrict__ split_begin, const float* __restrict__ q,
                       int n_kv_heads, int G, float scale, int splits, float* __restrict__ part_out,
                       float* __restrict__ part_lse, float* __restrict__ out, uint32_t* __restrict__ tickets) {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  __shared__ typename A::Shared sh;
  __shared__ int2 tile[kSaapSegmentTile];
  __shared__ int32_t slots[kSaapSlotChunk];
  wait_prior_grid();
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = int64_t(b) * n_kv_heads + h;
  const int nseg = segment_count[bh];
  const int2 from = split_begin[bh * (splits + 1) + split], to = split_begin[bh * (splits + 1) + split + 1];
  const int64_t row0 = bh * G;
  A at;
  at.init(q + row0 * D, G, scale);
  const T* kb = kpool + bh * rows * D + at.sub * 8;
  const T* vb = vpool + bh * rows * D + at.sub * 8;
  const int2* seg = segments + bh * max_segments;
  // The run is walked with a cursor (segment k, offset o) up to `to`: its slots are expanded into
  // shared memory a chunk at a time, so one run() keeps its loads in flight across segment ends.
  const int last = min(to.y > 0 ? to.x : to.x - 1, nseg - 1);  // the last segment the run touches
  int k = from.x, o = from.y;
  while (k <= last && (k < to.x || o < to.y)) {  // uniform over the block
    const int nt = min(kSaapSegmentTile, last - k + 1);
    for (int i = threadIdx.x; i < nt; i += kDecodeWarps * 32) tile[i] = seg[k + i];
    __syncthreads();
    int n = 0, next_k = k + nt, next_o = 0;
    for (int i = 0; i < nt; ++i) {
      const int begin = i == 0 ? o : 0;
      const int end = k + i == to.x ? to.y : tile[i].y;
      const int take = min(end - begin, kSaapSlotChunk - n);
      for (int j = threadIdx.x; j < take; j += kDecodeWarps * 32) slots[n + j] = tile[i].x + begin + j;
      n += take;
      if (begin + take < end) {  // the chunk is full: resume inside this segment
        next_k = k + i;
        next_o = begin + take;
        break;
      }
    }
    __syncthreads();
    at.run(n, [&](int i) { return kb + int64_t(slots[i]) * D; }, [&](int i) { return vb + int64_t(slots[i]) * D; });
    __syncthreads();  // tile and slots are rewritten next
    k = next_k;
    o = next_o;
  }
  allow_next_grid();
  at.finish(sh, G, part_out + (row0 * splits + split) * D, int64_t(splits) * D, part_lse + row0 * splits + split,
            splits);
  if (!out) return;  // combine_splits follows
  // Fused combine: the (b, h)'s last block to finish combines its splits. Each thread's partials
  // are fenced before the block counts itself.
  __shared__ bool last_split;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last_split = atomicAdd(tickets + bh, 1u) == uint32_t(splits - 1);
    if (last_split) tickets[bh] = 0;  // every split has counted; the next step starts at 0
  }
  __syncthreads();
  if (!last_split) return;
  __threadfence();  // the partials are read after the count that publishes them
  combine_group<D>(part_out, part_lse, row0, G, splits, out);
}

}  // namespace saap::cuda
