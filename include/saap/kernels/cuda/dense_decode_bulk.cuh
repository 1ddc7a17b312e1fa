// Dense decode through the bulk-copy ring (DenseTuning bulk=S): dense_decode_bulk_kernel, the
// split-KV decode of dense_decode.cuh with its K/V read by bulk copies (bulk_ring.cuh).
#pragma once
#include "saap/kernels/cuda/bulk_ring.cuh"
#include "saap/kernels/cuda/dense_decode.cuh"

namespace saap::cuda {

// Tuning bulk=S: the K and V rows reach shared memory by bulk copies (cp.async.bulk, the copy
// engine) into a ring of S stages, each stage one interleaving unit (kDenseUnit rows: 8 KiB of K
// and 8 KiB of V at every head dim), completing on one mbarrier per stage. Why: the register loops
// keep at most ~1-2 tiles per warp in flight (the registers they hold), and the H200 runs at
// b5d1141 left the dense step at 0.91 of the read floor at batch 8 while the read kernel and SDPA
// reach it; here the bytes in flight are the ring's, (S - 1) x 16 KiB per block (bulk=4: 3 blocks
// of 64 KiB per SM, 144 KiB in flight; bulk=6: 2 blocks, 160 KiB), issued by one thread with two
// instructions per stage, and the warps' registers go to the math. The earlier cp.async ring
// (a5a7dc1, lost at da2ee81) issued one 16-byte copy per lane per row and waited per thread; this
// one has no per-lane copies. Thread 0 is the producer: it refills a stage after the barrier that
// ends every warp's reads of it (a stage is consumed by all warps at once: warp w takes rows
// w*TILE.. of the unit, as GroupAttender::run would). A partial last tile copies only its rows;
// rows past the share are read as zeros (the ring may hold stale or uninitialised bytes there).
// The K/V base must be 16-byte aligned (dense_decode_tuned checks).
// bulk=S;mma=1: the same ring, with the logits and the values on the tensor cores (MmaAttender;
// bf16 at head dim 64 and 128, else the FMA math runs): a stage is then kDecodeWarps x 16 rows (a
// warp's MMA tile), 32 KiB at head dim 128 (bulk=3: 2 blocks per SM, 128 KiB in flight).
template <class T, int D, int GMAX, bool MMA>
static __global__ void __launch_bounds__(kDecodeWarps * 32, MMA ? 2 : decode_min_blocks(GMAX))
    dense_decode_bulk_kernel(const T* __restrict__ K, const T* __restrict__ V, int64_t max_len,
                             const int32_t* __restrict__ lengths, const float* __restrict__ q, int n_kv_heads, int G,
                             float scale, int splits, int64_t chunk, int64_t window, bool interleave, int stages,
                             float* __restrict__ part_out, float* __restrict__ part_lse, unsigned* __restrict__ tickets,
                             float* __restrict__ out) {
  using Ring = BulkRing<T, D, GMAX, MMA>;
  constexpr int UNIT = Ring::UNIT;
  extern __shared__ __align__(128) unsigned char ring[];  // [stages][K tile, V tile]
  __shared__ __align__(8) uint64_t full[kMaxBulkStages];
  __shared__ typename Ring::A::Shared sh;
  const Ring rg{ring, full, stages};
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const DenseShare share = DenseShare::of<UNIT>(lengths[b], window, split, splits, chunk, interleave);
  const int64_t row0 = (int64_t(b) * n_kv_heads + h) * G;
  const T* kh = K + ((int64_t(b) * n_kv_heads + h) * max_len + share.start) * D;
  const T* vh = V + ((int64_t(b) * n_kv_heads + h) * max_len + share.start) * D;
  // Tile t: split rows t*UNIT.. (contiguous in the cache: a unit never straddles interleaving).
  auto issue = [&](int t) {
    unsigned char* st = rg.stage(t);
    const uint32_t bytes = uint32_t(min(UNIT, share.n - t * UNIT)) * Ring::ROW_BYTES;
    const int64_t r = share.row<UNIT>(t * UNIT);
    mbarrier_arrive_expect_tx(rg.bar(t), 2 * bytes);
    bulk_copy_to_shared(st, kh + r * D, bytes, rg.bar(t));
    bulk_copy_to_shared(st + Ring::TILE_BYTES, vh + r * D, bytes, rg.bar(t));
  };
  if (threadIdx.x == 0) rg.init();
  __syncthreads();
  typename Ring::A at;
  rg.attend(at, q + row0 * D, G, scale, share.n, issue);
  finish_dense_block<D, GMAX>(at, sh, G, int64_t(b) * n_kv_heads + h, split, splits, part_out, part_lse, tickets,
                              out);
}

}  // namespace saap::cuda
