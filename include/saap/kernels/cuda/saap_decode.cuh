// Saap sparse decode: block (split, kv head, sequence) attends the G query heads of the group to
// its share of the (b, h) selection, so each selected token is read once per KV group.
// select() numbers the selected tokens in segment order (sinks, recent window, the selected
// partitions' ranges and append pages) and cuts them into equal runs, one per split: the work is
// sized by the tokens selected, not by the context or the segment count, so a small selection
// spreads over as many blocks as a large one and no block waits on a long tail.
#pragma once
#include "saap/kernels/cuda/dense_decode.cuh"

namespace saap::cuda {

constexpr int kSaapSegmentTile = 256;  // segment descriptors staged at a time
constexpr int kSaapSlotChunk = 2048;   // token slots expanded at a time
constexpr int kSaapMinSplitTokens = 64;  // fewest tokens worth a block of their own
constexpr int kSaapMaxSplits = 4096;

template <class T, int D, int GMAX>
static __global__ void __launch_bounds__(kDecodeWarps * 32, decode_min_blocks(GMAX))
    saap_decode_kernel(const T* __restrict__ kpool, const T* __restrict__ vpool, int64_t rows,
                       const int2* __restrict__ segments, const int32_t* __restrict__ segment_count,
                       int64_t max_segments, const int2* __restrict__ split_begin, const float* __restrict__ q,
                       int n_kv_heads, int G, float scale, int splits, float* __restrict__ part_out,
                       float* __restrict__ part_lse) {
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
}

}  // namespace saap::cuda
