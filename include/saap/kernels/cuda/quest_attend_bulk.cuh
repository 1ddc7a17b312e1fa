// Quest's attend through the bulk-copy ring (SparseAttendTuning bulk=S): quest_attend_bulk_kernel.
// Why: quest_attend_kernel (quest_kernels.cuh) is a chain of dependent round trips (stage 64 chunk
// rows -> a register tile of K/V per warp -> the next), 0.30 of its K/V byte floor at 128k batch 8
// on the H200 at 116e8e7 (24.2 us for 7.2); Saap's attend, the same chain, reached 0.74 through
// this ring (saap_decode_bulk_kernel). Here a block stages its chunks' first rows once, and thread
// 0 issues the first S stages at once: a split of up to S stages has all its rows in flight after
// two round trips. Quest's selection is contiguous runs of rows (P-row chunks, partial runs), so a
// stage is one bulk copy of K and one of V per run or piece of a run that the stage holds.
#pragma once
#include "saap/kernels/cuda/bulk_ring.cuh"

namespace saap::cuda {

// Chunk rows a ring block stages in shared memory; the producer reads any further one from L2.
// 256 chunks of 16 rows cover a split of 4096 rows (a 512k 10% selection over 33 splits is ~1600),
// in 1 KiB, so that two blocks with 3 stages of 32 KiB (mma, head dim 128) still fit an SM.
constexpr int kQuestRingChunks = 256;

// Block (split, kv head h, sequence b) attends the G query heads of the group to its share of the
// (b, h) selection, numbered as quest_attend_item reads it: chunks [j0, j1) of chunk_rows[bh]
// (nch * split / splits ..; P rows each, from its first row), then in split 0 the partial runs
// partials[bh][k] = (first row, rows), k < partial_count[bh] <= QuestIndex::kMaxPartials.
// K, V [bh][max_len][D] (16-byte aligned); chunk_rows [bh][max_chunks]; chunk_count,
// partial_count [bh]; q [bh * G][D]; part_out [bh * G][splits][D], part_lse [bh * G][splits];
// tickets [bh] (0 on entry) or null: with them the last block of each group combines into out
// [bh * G][D] (fused). Dynamic shared memory: dense_bulk_smem<T, D, GMAX, MMA>(stages).
template <class T, int D, int GMAX, bool MMA>
static __global__ void __launch_bounds__(kDecodeWarps * 32, MMA ? 2 : decode_min_blocks(GMAX))
    quest_attend_bulk_kernel(const T* __restrict__ K, const T* __restrict__ V, int64_t max_len,
                             const int32_t* __restrict__ chunk_rows, const int32_t* __restrict__ chunk_count,
                             int64_t max_chunks, const int2* __restrict__ partials,
                             const int32_t* __restrict__ partial_count, int P, const float* __restrict__ q,
                             int n_kv_heads, int G, float scale, int splits, int stages, float* __restrict__ part_out,
                             float* __restrict__ part_lse, unsigned* __restrict__ tickets, float* __restrict__ out) {
  using Ring = BulkRing<T, D, GMAX, MMA>;
  constexpr int kMaxRuns = 4;  // QuestIndex::kMaxPartials
  extern __shared__ __align__(128) unsigned char ring[];  // [stages][K tile, V tile]
  __shared__ __align__(8) uint64_t full[kMaxBulkStages];
  __shared__ typename Ring::A::Shared sh;
  __shared__ int32_t staged[kQuestRingChunks];  // the share's first chunk rows
  __shared__ int2 runs[kMaxRuns];               // split 0: the partial runs
  const Ring rg{ring, full, stages};
  if (threadIdx.x == 0) rg.init();
  wait_prior_grid();  // the select wrote the lists
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = int64_t(b) * n_kv_heads + h;
  // The lists are read from L2 (__ldcg), as quest_attend_item reads them.
  const int64_t nch = __ldcg(chunk_count + bh);
  const int n_runs = split == 0 ? min(kMaxRuns, __ldcg(partial_count + bh)) : 0;
  const int64_t j0 = nch * split / splits, j1 = nch * (split + 1) / splits;
  const int n_chunks = int(j1 - j0);
  const int32_t* rows = chunk_rows + bh * max_chunks + j0;
  for (int i = threadIdx.x; i < min(n_chunks, kQuestRingChunks); i += kDecodeWarps * 32) staged[i] = __ldcg(rows + i);
  if (int(threadIdx.x) < n_runs) runs[threadIdx.x] = __ldcg(partials + bh * kMaxRuns + threadIdx.x);
  __syncthreads();  // staged, runs and the barriers are published
  int n = n_chunks * P;
  for (int k = 0; k < n_runs; ++k) n += runs[k].y;
  // Piece i of the share: chunk i (P rows), then partial run i - n_chunks.
  auto piece = [&](int i) {
    if (i >= n_chunks) return runs[i - n_chunks];
    return make_int2(i < kQuestRingChunks ? staged[i] : __ldcg(rows + i), P);
  };
  // Thread 0's cursor over the pieces: piece pi, its row po.
  int pi = 0, po = 0;
  const T* kh = K + bh * max_len * D;
  const T* vh = V + bh * max_len * D;
  auto issue = [&](int t) { rg.gather(t, n, kh, vh, pi, po, piece); };
  typename Ring::A at;
  rg.attend(at, q + bh * G * D, G, scale, n, issue);
  finish_dense_block<D, GMAX>(at, sh, G, bh, split, splits, part_out, part_lse, tickets, out);
}

}  // namespace saap::cuda
