// Loki gather decode: block (split, kv head, sequence) attends the G query heads of the group to
// its share of the selected tokens; each lane reads its 16 bytes of the key from k_low or k_rest.
#pragma once
#include "saap/kernels/cuda/dense_decode.cuh"

namespace saap::cuda {

constexpr int kLokiIndexTile = 2048;

// LOOP: the attender's loop (and its register budget). The tensor-core loop needs R = D / 4: a
// lane's quarter of a key is then all of k_low (quarter 0) or one contiguous part of k_rest.
template <class T, int D, int GMAX, DenseLoop LOOP>
static __global__ void __launch_bounds__(kDecodeWarps * 32, LOOP == DenseLoop::Plain      ? decode_min_blocks(GMAX)
                                                            : LOOP == DenseLoop::Prefetch ? prefetch_min_blocks(GMAX)
                                                                                          : 2)
    loki_decode_kernel(const T* __restrict__ k_low, const T* __restrict__ k_rest, const T* __restrict__ v, int R,
                       int64_t max_len, const int32_t* __restrict__ sel, const int32_t* __restrict__ sel_count,
                       const float* __restrict__ q_rot, int n_kv_heads, int G, float scale, int splits,
                       float* __restrict__ part_out, float* __restrict__ part_lse) {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  __shared__ typename A::Shared sh;
  wait_prior_grid();
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = int64_t(b) * n_kv_heads + h;
  const int64_t k = sel_count[bh];
  const int64_t i0 = k * split / splits, i1 = k * (split + 1) / splits;
  const int64_t row0 = bh * G;
  A at;
  at.init(q_rot + row0 * D, G, scale);
  // This lane's 8 key components live in k_low (row stride R) or k_rest (row stride D - R).
  const bool low = at.sub * 8 < R;
  const T* kb = low ? k_low + bh * max_len * R + at.sub * 8 : k_rest + bh * max_len * (D - R) + at.sub * 8 - R;
  const int64_t kstride = low ? R : D - R;
  const T* vb = v + bh * max_len * D + at.sub * 8;
  // Indices are staged in shared memory a tile at a time, so each step waits on one global
  // round trip (the K/V rows) instead of two (index, then row).
  __shared__ int32_t tile[kLokiIndexTile];
  const int32_t* idx = sel + bh * max_len;
  for (int64_t t0 = i0; t0 < i1; t0 += kLokiIndexTile) {
    const int n = int(min(int64_t(kLokiIndexTile), i1 - t0));
    for (int i = threadIdx.x; i < n; i += kDecodeWarps * 32) tile[i] = idx[t0 + i];
    __syncthreads();
    auto kptr = [&](int i) { return kb + int64_t(tile[i]) * kstride; };
    auto vptr = [&](int i) { return vb + int64_t(tile[i]) * D; };
    if constexpr (LOOP == DenseLoop::Mma) {
      __shared__ float scores[kDecodeWarps][A::kMmaRows * 8];
      const int c = at.lane & 3;
      const T* kq = c == 0 ? k_low + bh * max_len * R : k_rest + bh * max_len * (D - R) + (c - 1) * (D / 4);
      const int64_t kq_stride = c == 0 ? R : D - R;
      at.run_mma(n, q_rot + row0 * D, G, scale, [&](int i) { return kq + int64_t(tile[i]) * kq_stride; }, vptr,
                 scores[at.warp]);
    } else if constexpr (LOOP == DenseLoop::Prefetch) {
      at.run_prefetch(n, kptr, vptr);
    } else {
      at.run(n, kptr, vptr);
    }
    __syncthreads();
  }
  at.finish(sh, G, part_out + (row0 * splits + split) * D, int64_t(splits) * D, part_lse + row0 * splits + split,
            splits);
}

}  // namespace saap::cuda
