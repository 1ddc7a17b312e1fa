// Dense split-KV flash-decoding: block (split, kv head, sequence) attends the G query heads of its
// KV group to one contiguous chunk of that head's cache and writes split partials. With a sliding
// window (window > 0) the chunks tile [max(0, len - window), len) instead of [0, len).
#pragma once
#include "saap/kernels/cuda/attend.cuh"

namespace saap::cuda {

constexpr int kDecodeWarps = 4;
// Resident blocks per SM: 4 (<= 128 registers, 16 warps of loads in flight) while the group's
// state fits; 8 query heads need more registers and would spill.
constexpr int decode_min_blocks(int gmax) { return gmax > 4 ? 2 : 4; }

template <class T, int D, int GMAX>
static __global__ void __launch_bounds__(kDecodeWarps * 32, decode_min_blocks(GMAX))
    dense_decode_kernel(const T* __restrict__ K, const T* __restrict__ V, int64_t max_len,
                        const int32_t* __restrict__ lengths, const float* __restrict__ q, int n_kv_heads, int G,
                        float scale, int splits, int64_t chunk, int64_t window, float* __restrict__ part_out,
                        float* __restrict__ part_lse) {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  __shared__ typename A::Shared sh;
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t len = lengths[b];
  const int64_t first = window > 0 && len > window ? len - window : 0;
  const int64_t start = first + split * chunk;
  const int n = int(max(int64_t(0), min(chunk, len - start)));
  const int64_t row0 = (int64_t(b) * n_kv_heads + h) * G;  // first query head row of the group
  A at;
  at.init(q + row0 * D, G, scale);
  const T* kb = K + ((int64_t(b) * n_kv_heads + h) * max_len + start) * D + at.sub * 8;
  const T* vb = V + ((int64_t(b) * n_kv_heads + h) * max_len + start) * D + at.sub * 8;
  at.run(n, [&](int i) { return kb + int64_t(i) * D; }, [&](int i) { return vb + int64_t(i) * D; });
  allow_next_grid();
  at.finish(sh, G, part_out + (row0 * splits + split) * D, int64_t(splits) * D, part_lse + row0 * splits + split,
            splits);
}

// The same attention with the K/V rows fetched through a cp.async ring (GroupAttender::run_async):
// STAGES - 1 tiles per warp in flight without holding registers. Dynamic shared memory: the ring
// (dense_async_smem), whose memory finish() reuses.
template <class T, int D, int GMAX, int STAGES>
constexpr size_t dense_async_smem() {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  const size_t ring = size_t(kDecodeWarps) * STAGES * A::ring_words() * 16;
  return ring > sizeof(typename A::Shared) ? ring : sizeof(typename A::Shared);
}

template <class T, int D, int GMAX, int STAGES>
static __global__ void __launch_bounds__(kDecodeWarps * 32, decode_min_blocks(GMAX))
    dense_decode_async_kernel(const T* __restrict__ K, const T* __restrict__ V, int64_t max_len,
                              const int32_t* __restrict__ lengths, const float* __restrict__ q, int n_kv_heads, int G,
                              float scale, int splits, int64_t chunk, int64_t window,
                              float* __restrict__ part_out, float* __restrict__ part_lse) {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  extern __shared__ uint4 dense_ring[];
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t len = lengths[b];
  const int64_t first = window > 0 && len > window ? len - window : 0;
  const int64_t start = first + split * chunk;
  const int n = int(max(int64_t(0), min(chunk, len - start)));
  const int64_t row0 = (int64_t(b) * n_kv_heads + h) * G;
  A at;
  at.init(q + row0 * D, G, scale);
  const T* kb = K + ((int64_t(b) * n_kv_heads + h) * max_len + start) * D + at.sub * 8;
  const T* vb = V + ((int64_t(b) * n_kv_heads + h) * max_len + start) * D + at.sub * 8;
  at.template run_async<STAGES>(n, [&](int i) { return kb + int64_t(i) * D; },
                                [&](int i) { return vb + int64_t(i) * D; },
                                dense_ring + at.warp * STAGES * A::ring_words());
  __syncthreads();  // every warp is done with the ring: finish() takes its memory
  at.finish(*reinterpret_cast<typename A::Shared*>(dense_ring), G, part_out + (row0 * splits + split) * D,
            int64_t(splits) * D, part_lse + row0 * splits + split, splits);
}

}  // namespace saap::cuda
