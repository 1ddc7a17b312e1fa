// Loki's attend: each KV group reads its heads' union of selected rows once, through the bulk-copy
// ring (bulk_ring.cuh), each head masked to its own selection (radix_topk::UnionList).
// Why the ring: the register loop that did this before (GroupAttender::run over the staged list)
// held one tile of K/V per warp in flight, at one block of 4 warps per SM's share of registers;
// Nsight Compute at 128k, batch 1: 138 us at 57% of DRAM peak for 375 MB (ae06b30, 57cb12e).
// Loki keeps a key row in two pieces (k_low: the first R PCA components, k_rest: the others), and
// the union is scattered rows, so a stage is filled 16 bytes at a time by every thread (cp.async,
// each thread arriving on the stage's mbarrier when its copies land): thread 0 issuing three bulk
// copies a row was 3.2x slower than the register loop (437 us at 18% of DRAM peak, dd4773f).
#pragma once
#include "saap/kernels/cuda/bulk_ring.cuh"
#include "saap/kernels/cuda/per_head_topk.cuh"

namespace saap::cuda::per_head {

// Rows of the union list a block stages in shared memory (positions and masks, 10 KiB: with the
// merge state of 8 heads at head dim 256 it stays under the 48 KiB of static shared memory): the
// launcher gives every split at most this many (union_attend_splits).
constexpr int kUnionStaged = 2048;
// The ring's depth: 3 stages (at head dim 128, 32 KiB each with the tensor cores, 16 KiB with FMAs).
constexpr int kUnionStages = 3;

// Splits of the union attend: choose_splits' count, raised so that no split's share of a union of
// at most `most_rows` rows exceeds kUnionStaged.
inline int union_attend_splits(int chosen, int64_t most_rows) {
  return std::max<int64_t>(chosen, (most_rows + kUnionStaged - 1) / kUnionStaged);
}

// Block (split, b * n_kv_heads + h): the G heads of the group attend over their union list
// [count * split / splits, count * (split + 1) / splits) (count = union_count[bh] <= splits *
// kUnionStaged), each head to the rows its bit of the mask marks. Keys as Loki stores them:
// components [0, R) in k_low [bh][max_len][R], the rest in k_rest [bh][max_len][D - R] (R a
// multiple of 8, < D); V [bh][max_len][D]; q [bh * G][D] in the keys' basis;
// part_out [bh * G][splits][D], part_lse [bh * G][splits]. MMA: both products on the tensor cores
// (MmaAttender; bf16 at head dim 64 and 128). Dynamic shared memory:
// dense_bulk_smem<T, D, GMAX, MMA>(stages).
template <class T, int D, int GMAX, bool MMA>
static __global__ void __launch_bounds__(kDecodeWarps * 32, MMA ? 2 : decode_min_blocks(GMAX))
    union_attend_bulk_kernel(const T* __restrict__ k_low, const T* __restrict__ k_rest, int R,
                             const T* __restrict__ V, int64_t max_len,
                             const int32_t* __restrict__ union_pos, const uint8_t* __restrict__ union_mask,
                             const int32_t* __restrict__ union_count, const float* __restrict__ q, int G, float scale,
                             int splits, int stages, float* __restrict__ part_out, float* __restrict__ part_lse) {
  using Ring = BulkRing<T, D, GMAX, MMA>;
  extern __shared__ __align__(128) unsigned char ring[];  // [stages][K tile, V tile]
  __shared__ __align__(8) uint64_t full[kMaxBulkStages];
  __shared__ typename Ring::A::Shared sh;
  __shared__ int32_t pos[kUnionStaged];  // the share's rows
  __shared__ uint8_t msk[kUnionStaged];  // and the heads that read each
  const Ring rg{ring, full, stages};
  if (threadIdx.x == 0) rg.init(kDecodeWarps * 32);
  const int split = blockIdx.x;
  const int64_t bh = blockIdx.y;
  const int64_t count = union_count[bh];
  const int64_t j0 = count * split / splits;
  const int n = int(count * (split + 1) / splits - j0);
  if (n > kUnionStaged) __trap();  // the launcher's splits bound it (union_attend_splits): never write past the list
  for (int i = threadIdx.x; i < n; i += kDecodeWarps * 32) {
    pos[i] = union_pos[bh * max_len + j0 + i];
    msk[i] = union_mask[bh * max_len + j0 + i];
  }
  __syncthreads();  // the list and the barriers are published
  const T* low = k_low + bh * max_len * R;
  const T* rest = k_rest + bh * max_len * (D - R);
  const T* vh = V + bh * max_len * D;
  // Every thread: stage t holds rows t*UNIT.. of the share, piece e of a row its 16 bytes e of K
  // (the low components, then the rest) for e < D/8, else of V.
  constexpr int kPieces = D / 8;
  auto issue = [&](int t) {
    unsigned char* st = rg.stage(t);
    const int first = t * Ring::UNIT, r = min(Ring::UNIT, n - first);
    for (int e = threadIdx.x; e < r * 2 * kPieces; e += kDecodeWarps * 32) {
      const int i = e / (2 * kPieces), c = e % (2 * kPieces);
      const int64_t p = pos[first + i];
      unsigned char* row = st + i * Ring::ROW_BYTES;
      if (c >= kPieces)
        cp_async16(row + Ring::TILE_BYTES + (c - kPieces) * 16, vh + p * D + (c - kPieces) * 8);
      else if (c * 8 < R)
        cp_async16(row + c * 16, low + p * R + c * 8);
      else
        cp_async16(row + c * 16, rest + p * (D - R) + c * 8 - R);
    }
    cp_async_arrive_noinc(rg.bar(t));
  };
  typename Ring::A at;
  rg.template attend<true>(at, q + bh * G * D, G, scale, n, issue, [&](int i) { return uint32_t(msk[i]); });
  finish_dense_block<D, GMAX>(at, sh, G, bh, split, splits, part_out, part_lse, nullptr, nullptr);
}

}  // namespace saap::cuda::per_head
