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
// mma=1: the logits on the tensor cores (bf16 at head dim 64 and 128; elsewhere the FMA math).
// fused (tickets non-null): the last block of each (sequence, KV head) combines the splits.
constexpr int kSaapStagedSegments = 64;

template <class T, int D, int GMAX, bool MMA>
static __global__ void __launch_bounds__(kDecodeWarps * 32, MMA ? 2 : decode_min_blocks(GMAX))
    saap_decode_bulk_kernel(const T* __restrict__ kpool, const T* __restrict__ vpool, int64_t rows,
                            const int2* __restrict__ segments, const int32_t* __restrict__ segment_count,
                            int64_t max_segments, const int2* __restrict__ split_begin, const float* __restrict__ q,
                            int n_kv_heads, int G, float scale, int splits, int stages, float* __restrict__ part_out,
                            float* __restrict__ part_lse, unsigned* __restrict__ tickets, float* __restrict__ out) {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  static_assert(!MMA || dense_mma_supported<T, D>(), "the tensor-core ring: bf16 at head dim 64 or 128");
  constexpr int UNIT = kBulkUnit<T, D, GMAX, MMA>;
  constexpr uint32_t ROW_BYTES = D * sizeof(T);
  constexpr uint32_t TILE_BYTES = UNIT * ROW_BYTES;  // one stage's K (or V) rows
  extern __shared__ __align__(128) unsigned char ring[];  // [stages][K tile, V tile]
  __shared__ __align__(8) uint64_t full[kMaxBulkStages];
  __shared__ typename A::Shared sh;
  __shared__ int2 staged[kSaapStagedSegments];  // the run's first pieces: (first slot, rows)
  __shared__ int run_rows;
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) mbarrier_init(&full[s], 1);
    fence_mbarrier_init();
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
  const int n = run_rows, tiles = (n + UNIT - 1) / UNIT;
  const int64_t row0 = bh * G;
  const T* kh = kpool + bh * rows * D;
  const T* vh = vpool + bh * rows * D;
  // Thread 0's cursor over the pieces: piece pi, its row po.
  int pi = 0, po = 0;
  auto issue = [&](int t) {
    unsigned char* st = ring + size_t(t % stages) * 2 * TILE_BYTES;
    uint64_t* bar = &full[t % stages];
    const int r = min(UNIT, n - t * UNIT);
    mbarrier_arrive_expect_tx(bar, 2 * uint32_t(r) * ROW_BYTES);
    for (int filled = 0; filled < r;) {
      const int2 p = pi < kSaapStagedSegments ? staged[pi] : piece(pi);
      const int take = min(p.y - po, r - filled);
      if (take > 0) {
        const int64_t src = (int64_t(p.x) + po) * D;
        const uint32_t at = uint32_t(filled) * ROW_BYTES, bytes = uint32_t(take) * ROW_BYTES;
        bulk_copy_to_shared(st + at, kh + src, bytes, bar);
        bulk_copy_to_shared(st + TILE_BYTES + at, vh + src, bytes, bar);
        filled += take;
        po += take;
      }
      if (po >= p.y) {
        ++pi;
        po = 0;
      }
    }
  };
  if (threadIdx.x == 0)
    for (int t = 0; t < min(stages, tiles); ++t) issue(t);
  // The query (overlapping the first copies).
  A at;
  at.init(q + row0 * D, G, scale);
  [[maybe_unused]] typename A::MmaQuery bq;
  __shared__ float scores[MMA ? kDecodeWarps : 1][A::kMmaRows * 8];
  if constexpr (MMA) at.template mma_query<true>(q + row0 * D, G, scale, bq);
  auto lds = [](const unsigned char* p) { return *reinterpret_cast<const uint4*>(p); };
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int t = 0; t < tiles; ++t) {
    const unsigned char* st = ring + size_t(t % stages) * 2 * TILE_BYTES;
    mbarrier_wait(&full[t % stages], (t / stages) & 1);
    if constexpr (MMA) {
      const int r0 = at.warp * A::kMmaRows, base = t * UNIT + r0;  // stage row and run index of the warp's rows
      const int gr = at.lane >> 2, c = at.lane & 3;
      uint4 ka[2][A::kMmaKQ], vr[A::kMmaMU];
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int r = gr + 8 * hh;
#pragma unroll
        for (int j = 0; j < A::kMmaKQ; ++j)
          ka[hh][j] = base + r < n ? lds(st + (r0 + r) * ROW_BYTES + A::template mma_piece<true>(c, j) * 16) : zero;
      }
#pragma unroll
      for (int u = 0; u < A::kMmaMU; ++u) {
        const int r = u * A::TPP + at.slot;
        vr[u] = base + r < n ? lds(st + TILE_BYTES + (r0 + r) * ROW_BYTES + at.sub * 16) : zero;
      }
      at.template mma_tile<true>(bq, ka, vr, base, n, scores[at.warp]);
    } else {
      const int r0 = at.warp * A::TILE, base = t * UNIT + r0;
      uint4 kr[A::U], vr[A::U];
#pragma unroll
      for (int u = 0; u < A::U; ++u) {
        const int r = u * A::TPP + at.slot;
        const uint32_t off = (r0 + r) * ROW_BYTES + at.sub * 16;
        const bool in = base + r < n;  // rows past the run: zeros, whatever the ring holds
        kr[u] = in ? lds(st + off) : zero;
        vr[u] = in ? lds(st + TILE_BYTES + off) : zero;
      }
      at.step(kr, vr, base, n);
    }
    __syncthreads();  // every warp is done with this stage: it may be refilled
    if (threadIdx.x == 0 && t + stages < tiles) issue(t + stages);
  }
  finish_dense_block<D, GMAX>(at, sh, G, bh, split, splits, part_out, part_lse, tickets, out);
}

}  // namespace saap::cuda
