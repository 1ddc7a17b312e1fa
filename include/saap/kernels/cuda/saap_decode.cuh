// Saap sparse decode: block (split, kv head, sequence) walks its share of the (b, h) segment list
// (contiguous slot ranges of the selected partitions, sinks and recent window) for the G query
// heads of the group, so each selected token is read once per KV group.
#pragma once
#include "saap/kernels/cuda/dense_decode.cuh"

namespace saap::cuda {

constexpr int kSaapSegmentTile = 256;

template <class T, int D, int GMAX>
static __global__ void __launch_bounds__(kDecodeWarps * 32, decode_min_blocks(GMAX))
    saap_decode_kernel(const T* __restrict__ kpool, const T* __restrict__ vpool, int64_t rows,
                       const int2* __restrict__ segments, const int32_t* __restrict__ segment_count,
                       int64_t max_segments, const float* __restrict__ q, int n_kv_heads, int G, float scale,
                       int splits, float* __restrict__ part_out, float* __restrict__ part_lse) {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  __shared__ typename A::Shared sh;
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = int64_t(b) * n_kv_heads + h;
  const int64_t nseg = segment_count[bh];
  const int64_t s0 = nseg * split / splits, s1 = nseg * (split + 1) / splits;
  const int64_t row0 = bh * G;
  A at;
  at.init(q + row0 * D, G, scale);
  const T* kb = kpool + bh * rows * D + at.sub * 8;
  const T* vb = vpool + bh * rows * D + at.sub * 8;
  // Segment descriptors are staged in shared memory, so walking them costs no global round trip.
  __shared__ int2 tile[kSaapSegmentTile];
  const int2* seg = segments + bh * max_segments;
  for (int64_t t0 = s0; t0 < s1; t0 += kSaapSegmentTile) {
    const int n = int(min(int64_t(kSaapSegmentTile), s1 - t0));
    for (int i = threadIdx.x; i < n; i += kDecodeWarps * 32) tile[i] = seg[t0 + i];
    __syncthreads();
    for (int i = 0; i < n; ++i) {
      const int2 sg = tile[i];
      const T* ks = kb + int64_t(sg.x) * D;
      const T* vs = vb + int64_t(sg.x) * D;
      at.run(sg.y, [&](int j) { return ks + int64_t(j) * D; }, [&](int j) { return vs + int64_t(j) * D; });
    }
    __syncthreads();
  }
  at.finish(sh, G, part_out + (row0 * splits + split) * D, int64_t(splits) * D, part_lse + row0 * splits + split,
            splits);
}

}  // namespace saap::cuda
