// The bulk-copy ring that dense_decode_bulk_kernel, saap_decode_bulk_kernel and
// quest_attend_bulk_kernel read their K/V through (why a ring: see dense_decode_bulk_kernel): S
// stages of kBulkUnit rows of K and of V in dynamic shared memory, each completing on its own
// mbarrier; thread 0 fills them (the kernel's producer, passed to attend() as a callable), the
// kDecodeWarps warps consume them. One consumer loop for the three kernels, so a change to how a
// stage is read (its zero rows, its MMA pieces) reaches them all.
#pragma once
#include <type_traits>

#include "saap/kernels/cuda/attend_mma.cuh"
#include "saap/kernels/cuda/dense_decode.cuh"

namespace saap::cuda {

// A ring's sizes: its stages (a tuning's bulk=S, 2..kMaxBulkStages), the rows of one stage
// (kBulkUnit: dense's interleaving unit, or with MMA one kMmaTileRows tile per warp) and its dynamic
// shared memory (K and V rows of every stage).
constexpr int kMaxBulkStages = 8;
template <class T, int D, int GMAX, bool MMA>
constexpr int kBulkUnit =
    MMA ? kDecodeWarps * kMmaTileRows : kDenseUnit<T, D, GMAX>;
template <class T, int D, int GMAX, bool MMA>
constexpr size_t dense_bulk_smem(int stages) {
  return size_t(stages) * 2 * kBulkUnit<T, D, GMAX, MMA> * D * sizeof(T);
}

template <class T, int D, int GMAX, bool MMA>
struct BulkRing {
  static_assert(!MMA || dense_mma_supported<T, D>(), "the tensor-core ring: bf16 at head dim 64 or 128");
  // The consumer's math: with MMA both products on the tensor cores, else GroupAttender's FMAs.
  using A = std::conditional_t<MMA, MmaAttender<D, GMAX, kDecodeWarps>, GroupAttender<T, D, GMAX, kDecodeWarps>>;
  static constexpr int UNIT = kBulkUnit<T, D, GMAX, MMA>;  // rows of one stage
  static constexpr uint32_t ROW_BYTES = D * sizeof(T);
  static constexpr uint32_t TILE_BYTES = UNIT * ROW_BYTES;  // one stage's K (or V) rows

  unsigned char* ring;  // [stages][K tile, V tile]: dense_bulk_smem<T, D, GMAX, MMA>(stages) bytes
  uint64_t* full;       // [stages]: stage s's mbarrier
  int stages;           // 2..kMaxBulkStages

  __device__ unsigned char* stage(int t) const { return ring + size_t(t % stages) * 2 * TILE_BYTES; }
  __device__ uint64_t* bar(int t) const { return &full[t % stages]; }
  // Thread 0, before any issue: the barriers, visible to the copy engine; a __syncthreads() after
  // it publishes them to the block.
  __device__ void init() const {
    for (int s = 0; s < stages; ++s) mbarrier_init(&full[s], 1);
    fence_mbarrier_init();
  }

  // Thread 0's producer for a share made of pieces, runs of contiguous rows of one (b, h)'s K and V
  // (kh, vh: row 0 of it): fills tile t, rows t*UNIT .. min(n, (t + 1)*UNIT) of the share numbered
  // in piece order, with one bulk copy of K and one of V per piece or part of a piece that the
  // stage holds. piece(i) = (first row, rows) of piece i; (pi, po) the cursor, piece pi's row po,
  // (0, 0) before tile 0; tiles are filled in order.
  template <class Piece>
  __device__ void gather(int t, int n, const T* kh, const T* vh, int& pi, int& po, Piece&& piece) const {
    unsigned char* st = stage(t);
    const int r = min(UNIT, n - t * UNIT);
    mbarrier_arrive_expect_tx(bar(t), 2 * uint32_t(r) * ROW_BYTES);
    for (int filled = 0; filled < r;) {
      const int2 p = piece(pi);
      const int take = min(p.y - po, r - filled);
      if (take > 0) {
        const int64_t src = (int64_t(p.x) + po) * D;
        const uint32_t dst = uint32_t(filled) * ROW_BYTES, bytes = uint32_t(take) * ROW_BYTES;
        bulk_copy_to_shared(st + dst, kh + src, bytes, bar(t));
        bulk_copy_to_shared(st + TILE_BYTES + dst, vh + src, bytes, bar(t));
        filled += take;
        po += take;
      }
      if (po >= p.y) {
        ++pi;
        po = 0;
      }
    }
  }

  // Every thread of the block: attends `at` (the group's G query heads at qg [G][D], scale) to the
  // n rows of the block's share through the ring. issue(t) (thread 0 only, tiles in order) fills
  // stage t % stages with tile t, rows t*UNIT.., and announces its bytes on bar(t). The barriers
  // must be initialised and published; the query is loaded while the first stages are in flight.
  // Warp w takes rows w*TILE.. of a stage (w*MmaAttender::kRows.. with MMA), as GroupAttender::run
  // would; a stage is refilled after the barrier that ends every warp's reads of it. Rows past n
  // are read as zeros (the ring may hold stale or uninitialised bytes there).
  template <class Issue>
  __device__ void attend(A& at, const float* qg, int G, float scale, int n, Issue&& issue) const {
    const int tiles = (n + UNIT - 1) / UNIT;
    if (threadIdx.x == 0)
      for (int t = 0; t < min(stages, tiles); ++t) issue(t);
    at.init(qg, G, scale);
    for (int t = 0; t < tiles; ++t) {
      const unsigned char* st = stage(t);
      mbarrier_wait(bar(t), (t / stages) & 1);
      if constexpr (MMA) {
        const uint32_t off = at.warp * A::kRows * ROW_BYTES;
        at.tile(st + off, st + TILE_BYTES + off, t * UNIT + at.warp * A::kRows, n);
      } else {
        const int r0 = at.warp * A::TILE, base = t * UNIT + r0;
        uint4 kr[A::U], vr[A::U];
#pragma unroll
        for (int u = 0; u < A::U; ++u) {
          const int r = u * A::TPP + at.slot;
          const uint32_t off = (r0 + r) * ROW_BYTES + at.sub * 16;
          const bool in = base + r < n;  // rows past the share: zeros, whatever the ring holds
          kr[u] = load_row_piece(st + off, in);
          vr[u] = load_row_piece(st + TILE_BYTES + off, in);
        }
        at.step(kr, vr, base, n);
      }
      __syncthreads();  // every warp is done with this stage: it may be refilled
      if (threadIdx.x == 0 && t + stages < tiles) issue(t + stages);
    }
  }
};

}  // namespace saap::cuda
