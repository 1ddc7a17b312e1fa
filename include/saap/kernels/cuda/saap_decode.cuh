// Saap sparse decode: block (split, kv head, sequence) attends the G query heads of the group to
// its share of the (b, h) selection, so each selected token is read once per KV group.
// select() numbers the selected tokens in segment order (sinks, recent window, the selected
// partitions' ranges and append pages) and cuts them into equal runs, one per split: the work is
// sized by the tokens selected, not by the context or the segment count, so a small selection
// spreads over as many blocks as a large one and no block waits on a long tail.
#pragma once
#include "saap/kernels/cuda/bulk_ring.cuh"
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


// Tuning bulk=S (SaapAttendTuning): the selected rows reach shared memory through a ring of S
// stages filled by bulk copies (cp.async.bulk on an mbarrier per stage), as dense's
// dense_decode_bulk_kernel reads its cache. Why: saap_decode_kernel is a chain of dependent round
// trips (split bounds -> segment tile -> slots -> one register tile of K/V per warp -> the next),
// with ~16 KiB in flight per block; at batch 1 a split holds ~100-200 rows, so its time is the
// chain's latency, not the bytes (ncu at 0187b35, 128k batch 1: 33.7% of DRAM peak). Here each
// block stages its run's segment pieces once, sums them (the rows of its run), and thread 0 issues
// the first S stages at once: a split of up to S stages has all its rows in flight after two
// round trips. A stage is UNIT rows of the run (kBulkUnit: the run numbered in segment order, as
// select() cut it), gathered from the pieces it covers, one bulk copy of K and one of V per piece
// (segments are contiguous slot ranges of the pool); the consumers take the stage as dense's do,
// since attention does not care where a row came from. The first kSaapStagedSegments pieces of the
// run sit in shared memory; the producer reads any further piece from the segment table itself.
// mma=1: the logits and the values on the tensor cores (MmaAttender; bf16 at head dim 64 and 128;
// elsewhere the FMA math).
// fused (tickets non-null): the last block of each (sequence, KV head) combines the splits.
constexpr int kSaapStagedSegments = 64;

template <class T, int D, int GMAX, bool MMA>
static __global__ void __launch_bounds__(kDecodeWarps * 32, MMA ? 2 : decode_min_blocks(GMAX))
    saap_decode_bulk_kernel(const T* __restrict__ kpool, const T* __restrict__ vpool, int64_t rows,
                            const int2* __restrict__ segments, const int32_t* __restrict__ segment_count,
                            int64_t max_segments, const int2* __restrict__ split_begin, const float* __restrict__ q,
                            int n_kv_heads, int G, float scale, int splits, int stages, float* __restrict__ part_out,
                            float* __restrict__ part_lse, unsigned* __restrict__ tickets, float* __restrict__ out) {
  using Ring = BulkRing<T, D, GMAX, MMA>;
  extern __shared__ __align__(128) unsigned char ring[];  // [stages][K tile, V tile]
  __shared__ __align__(8) uint64_t full[kMaxBulkStages];
  __shared__ typename Ring::A::Shared sh;
  __shared__ int2 staged[kSaapStagedSegments];  // the run's first pieces: (first slot, rows)
  __shared__ int run_rows;
  const Ring rg{ring, full, stages};
  if (threadIdx.x == 0) {
    rg.init();
    run_rows = 0;
  }
  wait_prior_grid();  // select() wrote the segments and the split bounds
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = int64_t(b) * n_kv_heads + h;
  const int nseg = segment_count[bh];
  const int2 from = split_begin[bh * (splits + 1) + split], to = split_begin[bh * (splits + 1) + split + 1];
  const int last = min(to.y > 0 ? to.x : to.x - 1, nseg - 1);  // the last segment the run touches
  const int n_pieces = max(0, last - from.x + 1);
  const int2* seg = segments + bh * max_segments;
  // Piece i of the run: the part of segment from.x + i that lies in [from, to).
  auto piece = [&](int i) {
    const int k = from.x + i;
    const int2 s = seg[k];
    const int begin = k == from.x ? from.y : 0, end = k == to.x ? to.y : s.y;
    return make_int2(s.x + begin, max(0, end - begin));
  };
  int mine = 0;
  for (int i = threadIdx.x; i < n_pieces; i += kDecodeWarps * 32) {
    const int2 p = piece(i);
    if (i < kSaapStagedSegments) staged[i] = p;
    mine += p.y;
  }
  __syncthreads();  // run_rows = 0 and the barriers are published
  mine = __reduce_add_sync(0xffffffffu, mine);
  if ((threadIdx.x & 31) == 0 && mine) atomicAdd(&run_rows, mine);
  __syncthreads();
  const int n = run_rows;
  // Thread 0's cursor over the pieces: piece pi, its row po.
  int pi = 0, po = 0;
  auto issue = [&](int t) {
    rg.gather(t, n, kpool + bh * rows * D, vpool + bh * rows * D, pi, po,
              [&](int i) { return i < kSaapStagedSegments ? staged[i] : piece(i); });
  };
  typename Ring::A at;
  rg.attend(at, q + bh * G * D, G, scale, n, issue);
  finish_dense_block<D, GMAX>(at, sh, G, bh, split, splits, part_out, part_lse, tickets, out);
}

}  // namespace saap::cuda
