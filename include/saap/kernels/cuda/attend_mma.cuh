// The bulk ring's tensor-core attender (BulkRing with MMA: the mma=1 tunings of dense, Saap and
// Quest): the G <= 8 query heads of a KV group attend to 16-row tiles of K/V in shared memory with
// both products on the tensor cores, in FlashAttention-2's register layout.
//
// Why: GroupAttender's tensor-core tile (mma_tile) takes only the logits on the tensor cores. It
// then spreads the probabilities back to the value layout through shared memory, and each lane
// takes an exp2 per head and row and weights its 8 value components for every head: at head dim
// 128 and 8 heads, 64 exp2 and 512 FMAs per lane and tile, each exp2 repeated on the row's 16
// lanes. At 7-8 query heads a KV head that math bounded the step (dense at 0.66x SDPA at
// 28x4x128 and 64x8x128, results/gpu_dense_tunings_2026-12-03_h200_82286b7_dense.*). Here a lane
// takes 4 exp2 and no value FMAs per tile.
//
// Layout (mma m16n8k16, bf16 in, fp32 accumulate; lane = 4 gr + c):
//   S = Q K^T: M = query heads (row gr: head gr % G; rows 8..15 are zero), N = the tile's key rows
//     (n-tile h holds rows 8h..8h+7), K = head components, permuted as mma_query_fragments<D, true>
//     describes, so that a lane's key fragments are whole 16-byte pieces of its row.
//     Lane (gr, c) ends with S[head gr][rows 8h + 2c, 8h + 2c + 1], h = 0, 1.
//   O += P V: M = query heads, K = the tile's key rows, N = head components. Those S fragments are
//     exactly P's A fragment (a0: rows 2c, 2c+1; a2: rows 2c+8, 2c+9), with P split in two bf16
//     terms (an error of ~2^-17 of each probability, not bf16's 2^-9). V's B fragment pairs two
//     rows' elements of one component: a lane loads 16-byte pieces of its four rows (2c, 2c+1,
//     2c+8, 2c+9) and pairs them with byte permutes; the component order is permuted so that
//     those pieces are whole (value_component()).
// The softmax state of head gr lives in the quad: the running max is quad-uniform, each lane sums
// its own probabilities, and the quad's sums are added at the end.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "saap/kernels/cuda/attend.cuh"
#include "saap/kernels/cuda/mma.cuh"

namespace saap::cuda {

template <int D, int GMAX, int NWARPS>
struct MmaAttender {
  static_assert((D == 64 || D == 128) && GMAX <= 8, "the tensor-core attender: head dim 64 or 128, <= 8 heads");
  static constexpr int kRows = kMmaTileRows;
  static constexpr int KB = D / 16;      // k-steps of Q K^T
  static constexpr int KQ = D / 32;      // 16-byte key pieces of a lane's row (two k-steps each)
  static constexpr int VP = D / 64;      // 16-byte value pieces of a lane's row
  static constexpr int VT = D / 8;       // n-tiles of P V
  static constexpr uint32_t kRowBytes = D * sizeof(__nv_bfloat16);
  using Shared = BlockPartials<D, GMAX, NWARPS>;

  int lane, warp;
  uint32_t qa[KB][2][kMmaQueryTerms];  // Q's A fragments (a0, a2; a1 = a3 = 0)
  float m;                             // head gr's running max (base 2), the same on the quad
  float l;                             // this lane's part of head gr's sum
  float o[VT][4];                      // O: o[vt][i], i < 2: head gr, value_component(vt, 2c + i)

  // The component of a value row that column `col` of P V's n-tile vt holds: n-tiles 2t and 2t+1
  // take the low and high halves of word 4 (8 (t / 4) + col) + t % 4 of the row, so that a lane
  // (column gr) reads whole 16-byte pieces 8j + gr, j < VP: a quad's row in 128 contiguous bytes.
  __device__ static int value_component(int vt, int col) {
    const int t = vt >> 1;
    return 2 * (4 * (8 * (t >> 2) + col) + (t & 3)) + (vt & 1);
  }

  // qg: the G query rows of the group [G][D] (fp32), scale: the softmax scale.
  __device__ void init(const float* qg, int G, float scale) {
    lane = threadIdx.x & 31;
    warp = threadIdx.x >> 5;
    mma_query_fragments<D, true>(qg, G, scale * kLog2e, lane, qa);
    m = kNoMax;
    l = 0.f;
#pragma unroll
    for (int vt = 0; vt < VT; ++vt)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[vt][i] = 0.f;
  }

  // One tile: this warp's key rows at k_rows and value rows at v_rows (shared memory, kRowBytes
  // apart), rows base.. of the share; rows >= n are masked, and read as zeros whatever the memory
  // holds (0 x NaN would poison the output).
  __device__ void tile(const unsigned char* k_rows, const unsigned char* v_rows, int base, int n) {
    const int gr = lane >> 2, c = lane & 3;
    uint4 ka[2][KQ];  // key rows 8h + gr, pieces mma_key_piece<D, true>(c, j)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < KQ; ++j) {
        const int r = 8 * h + gr;
        ka[h][j] = load_row_piece(k_rows + r * kRowBytes + mma_key_piece<D, true>(c, j) * 16, base + r < n);
      }
    uint4 va[4][VP];  // value rows 2c, 2c+1, 2c+8, 2c+9, pieces 8j + gr
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < VP; ++j) {
        const int r = 2 * c + (i & 1) + 8 * (i >> 1);
        va[i][j] = load_row_piece(v_rows + r * kRowBytes + (8 * j + gr) * 16, base + r < n);
      }

    float s[2][4] = {};  // n-tile h: d0, d1 = head gr, rows 8h + 2c, 8h + 2c + 1
#pragma unroll
    for (int e = kMmaQueryTerms - 1; e >= 0; --e)  // smallest terms first
#pragma unroll
      for (int kb = 0; kb < KB; ++kb)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          mma_bf16_16816(s[h], qa[kb][0][e], 0u, qa[kb][1][e], 0u, word_of(ka[h][kb >> 1], 2 * (kb & 1)),
                         word_of(ka[h][kb >> 1], 2 * (kb & 1) + 1));
    float mx = m;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if (base + 8 * h + 2 * c + i >= n) s[h][i] = -INFINITY;
        mx = fmaxf(mx, s[h][i]);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    if (mx > m) {  // rescale only when the max grows (rare once it settles)
      const float alpha = exp2f(m - mx);
      m = mx;
      l *= alpha;
#pragma unroll
      for (int vt = 0; vt < VT; ++vt) o[vt][0] *= alpha, o[vt][1] *= alpha;
    }
    uint32_t pa[2][2];  // P's A fragments [term][a0, a2]
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float p0 = exp2f(s[h][0] - m), p1 = exp2f(s[h][1] - m);
      l += p0 + p1;
      pa[0][h] = split_bf16x2(p0, p1);
      pa[1][h] = split_bf16x2(p0, p1);
    }
#pragma unroll
    for (int t = 0; t < VT / 2; ++t) {
      const int j = t >> 2, w = t & 3;
      const uint32_t w0 = word_of(va[0][j], w), w1 = word_of(va[1][j], w);
      const uint32_t w2 = word_of(va[2][j], w), w3 = word_of(va[3][j], w);
      // n-tile 2t: the low halves (rows 2c | 2c+1, 2c+8 | 2c+9); n-tile 2t + 1: the high halves.
      const uint32_t lo0 = __byte_perm(w0, w1, 0x5410), lo1 = __byte_perm(w2, w3, 0x5410);
      const uint32_t hi0 = __byte_perm(w0, w1, 0x7632), hi1 = __byte_perm(w2, w3, 0x7632);
#pragma unroll
      for (int e = 1; e >= 0; --e) {
        mma_bf16_16816(o[2 * t], pa[e][0], 0u, pa[e][1], 0u, lo0, lo1);
        mma_bf16_16816(o[2 * t + 1], pa[e][0], 0u, pa[e][1], 0u, hi0, hi1);
      }
    }
  }

  // Merges the quads and warps of the block and writes, for each of the G heads, the normalised
  // partial output and its log2-sum-exp (write_block_partials).
  __device__ void finish(Shared& sh, int G, float* out, int64_t out_stride, float* lse, int64_t lse_stride) {
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int gr = lane >> 2, c = lane & 3;
    if (gr < G) {
      if (c == 0) {
        sh.m[warp][gr] = m;
        sh.l[warp][gr] = l;
      }
#pragma unroll
      for (int vt = 0; vt < VT; ++vt)
#pragma unroll
        for (int i = 0; i < 2; ++i) sh.acc[warp][gr][value_component(vt, 2 * c + i)] = o[vt][i];
    }
    __syncthreads();
    write_block_partials(sh, G, out, out_stride, lse, lse_stride);
  }
};

}  // namespace saap::cuda
