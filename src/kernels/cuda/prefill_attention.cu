// Causal prefill attention (see prefill_attention.h): a tensor-core flash-attention kernel and a
// CUDA-core reference kernel with the same contract.
#include <cuda_bf16.h>

#include <cstdint>

#include "saap/kernels/cuda/async_copy.cuh"
#include "saap/kernels/cuda/attend.cuh"
#include "saap/kernels/cuda/check.h"
#include "saap/kernels/cuda/prefill_attention.h"

namespace saap::cuda {

void PrefillShape::check() const {
  SAAP_CU_REQUIRE(batch >= 1 && batch <= 65535, InvalidArgument, "batch = %d must be in [1, 65535]", batch);
  SAAP_CU_REQUIRE(n_kv_heads >= 1 && n_q_heads >= n_kv_heads && n_q_heads % n_kv_heads == 0 && n_q_heads <= 65535,
                  InvalidArgument, "n_q_heads = %d must be a positive multiple of n_kv_heads = %d", n_q_heads,
                  n_kv_heads);
  SAAP_CU_REQUIRE(head_dim == 64 || head_dim == 256, Unsupported,
                  "head_dim = %d; the prefill attention supports 64 and 256", head_dim);
  SAAP_CU_REQUIRE(window >= 0, InvalidArgument, "window = %lld must be >= 0 (0: no window)", (long long)window);
  SAAP_CU_REQUIRE(n >= 1 && pos0 >= 0 && pos0 + n <= max_len, InvalidArgument,
                  "n = %lld queries at pos0 = %lld must fit the cache rows max_len = %lld", (long long)n,
                  (long long)pos0, (long long)max_len);
  SAAP_CU_REQUIRE(max_len <= (int64_t(1) << 31), InvalidArgument, "max_len = %lld exceeds 2^31", (long long)max_len);
}

namespace {

constexpr int kD = 64;

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel. Block = W warps = 16W query rows of one (sequence, query head); each warp
// owns 16 rows. Key/value tiles of 64 rows are double-buffered in shared memory by cp.async.
// Per tile, each warp computes S = Q Kᵀ (16 x 64) with mma.m16n8k16 (bf16 in, fp32 out), the
// online softmax in fp32 (base 2, scale folded in), and O += P V with P rounded to bf16 (the
// FlashAttention-2 scheme: the fp32 S accumulator layout is the A-operand layout of P).
//
// mma.m16n8k16 fragments (g = lane / 4, t = lane % 4):
//   A (16x16 row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16x8, "col"):     b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C (16x8 fp32):       c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// Shared rows are padded to 72 elements (144 bytes) so the 8 row addresses of one ldmatrix
// phase fall in 8 different 16-byte bank groups.

// W warps per block own 16 query rows each (W = 4: 64 rows; W = 8: 128 rows, half the key/value
// tile loads per query, in dynamic shared memory past the 48 KB static limit).
//
// Head dim D = 64 (SmolLM2) or 256 (Gemma-3). At 256 the 16 x 256 output of a warp alone takes 128
// fp32 registers a thread, so the query fragments are read from shared memory at each tile rather
// than kept in registers, and key tiles are 32 rows (2 blocks of 100 KB fit an SM).
// Sliding window (PrefillShape::window > 0): a query at position p sees keys [p - window + 1, p];
// tiles wholly before a block's first window are never loaded.
constexpr int kTcKeys = 64;  // keys per tile at head dim 64 (and of the other kernels)
constexpr int kPitch = kD + 8;
template <int D>
constexpr int tc_keys() { return D <= 64 ? 64 : 32; }

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared; src_bytes = 0 writes zeros (rows outside the valid range).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
// c += a · b (m16n8k16, bf16 inputs, fp32 accumulators).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low 16 bits) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

// The first key a query row may see: the start of its window (0 without one; may be negative).
template <bool WINDOW>
__device__ __forceinline__ int64_t low_of_first_row(const PrefillShape& s, int64_t row) {
  return WINDOW ? s.pos0 + row - s.window + 1 : 0;
}

// Rows padded by 8 elements (16 bytes): at pitch D + 8 the 8 row addresses of one ldmatrix phase
// fall in 8 different 16-byte bank groups for D = 64 and 256 alike.
template <int ROWS, int D>
struct alignas(16) TcShared {
  static constexpr int kKeys = tc_keys<D>();
  __nv_bfloat16 q[ROWS][D + 8];
  __nv_bfloat16 k[2][kKeys][D + 8];
  __nv_bfloat16 v[2][kKeys][D + 8];
};

// WINDOW: compiled with the sliding-window tests (for s.window > 0); without them the kernel is the
// plain causal one. At D = 64 the register budget is held at 128 (16 warps an SM, as before the
// kernel took D and the window); at D = 256 the output fragments alone take 128.
template <int W, int D, bool WINDOW>
__global__ void __launch_bounds__(W * 32, D <= 64 ? 16 / W : 1)
    prefill_tc_kernel(PrefillShape s, const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                      const __nv_bfloat16* __restrict__ v, float scale_log2, __nv_bfloat16* __restrict__ out) {
  constexpr int kTcRows = 16 * W;  // queries per block
  constexpr int KEYS = tc_keys<D>();  // keys per tile
  constexpr int CHUNKS = D / 8;       // 16-byte chunks per row
  constexpr bool kQInRegisters = D <= 64;
  extern __shared__ uint4 smem_raw[];  // TcShared<kTcRows, D>, 16-byte aligned
  TcShared<kTcRows, D>& sh = *reinterpret_cast<TcShared<kTcRows, D>*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  // Largest tiles first: the causal work grows with the tile index, so the long blocks start early.
  const int64_t q0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kTcRows;
  const int hq = blockIdx.y, b = blockIdx.z;
  const int hkv = hq / (s.n_q_heads / s.n_kv_heads);
  const int64_t kv_len = s.pos0 + s.n;
  const int64_t last_q = q0 + kTcRows - 1 < s.n - 1 ? q0 + kTcRows - 1 : s.n - 1;
  const int n_tiles = int((s.pos0 + last_q) / KEYS) + 1;
  // The first key of the block's first query's window (0 without a window): earlier tiles are skipped.
  const int64_t window_key0 = WINDOW && s.pos0 + q0 - s.window + 1 > 0 ? s.pos0 + q0 - s.window + 1 : 0;
  const int first_tile = int(window_key0 / KEYS);
  const __nv_bfloat16* kh = k + (int64_t(b) * s.n_kv_heads + hkv) * s.max_len * D;
  const __nv_bfloat16* vh = v + (int64_t(b) * s.n_kv_heads + hkv) * s.max_len * D;

  // The threads move the KEYS * D / 8 16-byte chunks of a K or V tile, chunk c = row c / CHUNKS,
  // column (c % CHUNKS) * 8, and the CHUNKS chunks of each of the block's query rows.
  auto load_kv = [&](int tile, int buf) {
#pragma unroll
    for (int i = 0; i < KEYS * CHUNKS / (W * 32); ++i) {
      const int c = tid + i * W * 32, row = c / CHUNKS, col = (c % CHUNKS) * 8;
      const int64_t key = int64_t(tile) * KEYS + row;
      const bool ok = key < kv_len;
      const int64_t off = (ok ? key : 0) * D + col;
      cp_async16(&sh.k[buf][row][col], kh + off, ok ? 16 : 0);
      cp_async16(&sh.v[buf][row][col], vh + off, ok ? 16 : 0);
    }
  };
#pragma unroll
  for (int i = 0; i < CHUNKS / 2; ++i) {  // 16 W rows x CHUNKS over W * 32 threads
    const int c = tid + i * W * 32, row = c / CHUNKS, col = (c % CHUNKS) * 8;
    const bool ok = q0 + row < s.n;
    const int64_t off = ((int64_t(b) * s.n + (ok ? q0 + row : 0)) * s.n_q_heads + hq) * D + col;
    cp_async16(&sh.q[row][col], q + off, ok ? 16 : 0);
  }
  load_kv(first_tile, 0);
  cp_async_commit();

  const int64_t row_lo = q0 + warp * 16 + g, row_hi = row_lo + 8;  // this thread's two query rows
  // The last key each row may see (its own position; kv_len - 1 for padding rows past n), and the
  // first (the start of its window; 0 without one).
  const int64_t lim_lo = min(s.pos0 + row_lo, kv_len - 1), lim_hi = min(s.pos0 + row_hi, kv_len - 1);
  const int64_t low_lo = WINDOW ? s.pos0 + row_lo - s.window + 1 : 0;
  const int64_t low_hi = WINDOW ? s.pos0 + row_hi - s.window + 1 : 0;
  // The largest first key among the warp's rows: tiles starting before it need the window mask.
  const int64_t warp_low = WINDOW ? s.pos0 + q0 + warp * 16 + 15 - s.window + 1 : 0;
  // A fragments of the warp's 16 x D query block by k-steps of 16 dims (at D = 64; at larger D they
  // are read from shared memory at each use).
  uint32_t qf[kQInRegisters ? D / 16 : 1][4];
  float o[D / 8][4];  // C fragments of the 16 x D output, tiles of 8 dims
  float m_lo = kNoMax, m_hi = kNoMax, l_lo = 0.f, l_hi = 0.f;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  const int q_row = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;  // this lane's ldmatrix row of Q

  for (int kt = first_tile; kt < n_tiles; ++kt) {
    const int buf = (kt - first_tile) & 1;
    if (kt + 1 < n_tiles) {
      load_kv(kt + 1, buf ^ 1);  // its buffer was last read in iteration kt - 1, before the barrier
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if constexpr (kQInRegisters) {
      if (kt == first_tile) {
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) ldmatrix_x4(qf[ks], &sh.q[q_row][ks * 16 + (lane >> 4) * 8]);
      }
    }

    // A warp whose 16 rows all sit before the tile's first key, or whose windows all start after its
    // last key, has nothing to add; it still takes part in the barriers.
    const int64_t key0 = int64_t(kt) * KEYS;
    if (key0 <= s.pos0 + q0 + warp * 16 + 15 && key0 + KEYS - 1 >= low_of_first_row<WINDOW>(s, q0 + warp * 16)) {
      // S = Q Kᵀ: n-tile j holds keys 8j..8j+7 of the tile; k-steps 2 half, 2 half + 1 cover dims
      // 32 half .. 32 half + 31. Query fragments in registers: n-tile by n-tile (as few live scores
      // as possible); from shared memory: each query fragment is read once per tile.
      float sc[KEYS / 8][4];
#pragma unroll
      for (int j = 0; j < KEYS / 8; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
      if constexpr (kQInRegisters) {
#pragma unroll
        for (int j = 0; j < KEYS / 8; ++j) {
#pragma unroll
          for (int half = 0; half < D / 32; ++half) {
            uint32_t kb[4];
            ldmatrix_x4(kb, &sh.k[buf][j * 8 + (lane & 7)][half * 32 + (lane >> 3) * 8]);
            mma_bf16(sc[j], qf[2 * half], kb[0], kb[1]);
            mma_bf16(sc[j], qf[2 * half + 1], kb[2], kb[3]);
          }
        }
      } else {
#pragma unroll
        for (int half = 0; half < D / 32; ++half) {
          uint32_t qa[4], qb[4];
          ldmatrix_x4(qa, &sh.q[q_row][half * 32 + (lane >> 4) * 8]);
          ldmatrix_x4(qb, &sh.q[q_row][half * 32 + 16 + (lane >> 4) * 8]);
#pragma unroll
          for (int j = 0; j < KEYS / 8; ++j) {
            uint32_t kb[4];
            ldmatrix_x4(kb, &sh.k[buf][j * 8 + (lane & 7)][half * 32 + (lane >> 3) * 8]);
            mma_bf16(sc[j], qa, kb[0], kb[1]);
            mma_bf16(sc[j], qb, kb[2], kb[3]);
          }
        }
      }

      // Online softmax (base 2). Keys past a row's limit, or before its window, are masked; only
      // tiles that reach past the block's first query, or start before the warp's last window
      // start, need the test.
      const bool diagonal = key0 + KEYS - 1 > s.pos0 + q0;
      const bool window_edge = WINDOW && key0 < warp_low;
      float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
      for (int j = 0; j < KEYS / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = sc[j][e] * scale_log2;
          if (diagonal || window_edge) {
            const int64_t key = key0 + j * 8 + 2 * t + (e & 1);
            if (key > (e < 2 ? lim_lo : lim_hi) || key < (e < 2 ? low_lo : low_hi)) x = -INFINITY;
          }
          sc[j][e] = x;
        }
        mx_lo = fmaxf(mx_lo, fmaxf(sc[j][0], sc[j][1]));
        mx_hi = fmaxf(mx_hi, fmaxf(sc[j][2], sc[j][3]));
      }
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
      const float new_lo = fmaxf(m_lo, mx_lo), new_hi = fmaxf(m_hi, mx_hi);
      const float alpha_lo = exp2f(m_lo - new_lo), alpha_hi = exp2f(m_hi - new_hi);
      m_lo = new_lo;
      m_hi = new_hi;
      l_lo *= alpha_lo;
      l_hi *= alpha_hi;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[j][0] *= alpha_lo;
        o[j][1] *= alpha_lo;
        o[j][2] *= alpha_hi;
        o[j][3] *= alpha_hi;
      }
#pragma unroll
      for (int j = 0; j < KEYS / 8; ++j) {
        sc[j][0] = exp2f(sc[j][0] - m_lo);
        sc[j][1] = exp2f(sc[j][1] - m_lo);
        sc[j][2] = exp2f(sc[j][2] - m_hi);
        sc[j][3] = exp2f(sc[j][3] - m_hi);
        l_lo += sc[j][0] + sc[j][1];
        l_hi += sc[j][2] + sc[j][3];
      }

      // O += P V: k-step kk covers keys 16kk..16kk+15 = S n-tiles 2kk, 2kk+1.
#pragma unroll
      for (int kk = 0; kk < KEYS / 16; ++kk) {
        uint32_t pa[4];
        pa[0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
        pa[1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
        pa[2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
        pa[3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {  // dims 16dp..16dp+15 = output tiles 2dp, 2dp+1
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, &sh.v[buf][kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][dp * 16 + (lane >> 4) * 8]);
          mma_bf16(o[2 * dp], pa, vb[0], vb[1]);
          mma_bf16(o[2 * dp + 1], pa, vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with buffer `buf` before it is refilled
  }

  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  const float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f, inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    const int d = j * 8 + 2 * t;
    if (row_lo < s.n)
      *reinterpret_cast<uint32_t*>(out + ((int64_t(b) * s.n + row_lo) * s.n_q_heads + hq) * D + d) =
          pack_bf16(o[j][0] * inv_lo, o[j][1] * inv_lo);
    if (row_hi < s.n)
      *reinterpret_cast<uint32_t*>(out + ((int64_t(b) * s.n + row_hi) * s.n_q_heads + hq) * D + d) =
          pack_bf16(o[j][2] * inv_hi, o[j][3] * inv_hi);
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel with MT m16 tiles (16 MT query rows) per warp; MT = 2 is the
// FlashAttention-2 tiling for head_dim 64: block = 4 warps = 128 query rows of one (sequence,
// query head); warp w owns rows 32w .. 32w+31 as two m16 tiles, so every K/V fragment read from
// shared memory by ldmatrix feeds two mma (the kernels above feed one: shared-memory bandwidth,
// not the tensor cores, bounds them), and every 64-key tile loaded from L2 serves 128 queries.
// MT = 1 (64 queries per block, fewer registers: 3 blocks per SM instead of 2) keeps the rest:
// the scale folded into one FFMA per score (exp2(s c - m c)); lazy rescaling (below); one barrier
// per key tile (the next tile is requested after the barrier that frees its buffer, and lands
// while this one is computed); blocks ordered longest first across all (sequence, head) pairs, the
// G query heads of a KV group next to each other (they read the same keys and values at about the
// same time, from L2).

constexpr int kWideWarps = 4;
constexpr float kRescaleLog2 = 8.f;  // lazy rescaling threshold (base-2 exponent): probabilities <= 256

template <int ROWS>
struct alignas(16) WideShared {
  __nv_bfloat16 q[ROWS][kPitch];
  __nv_bfloat16 k[2][kTcKeys][kPitch];
  __nv_bfloat16 v[2][kTcKeys][kPitch];
};

__device__ __forceinline__ float fast_exp2(float x) {  // one MUFU.EX2; exp2(-inf) = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Blocks per SM the registers must allow: MT = 2 needs ~250 per thread (2 blocks); MT = 1 spills
// at 128 (4 blocks), so 3.
template <int MT>
__global__ void __launch_bounds__(kWideWarps * 32, MT == 2 ? 2 : 3)
    prefill_wide_kernel(PrefillShape s, int64_t q_tiles, const __nv_bfloat16* __restrict__ q,
                        const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v, float scale_log2,
                        __nv_bfloat16* __restrict__ out) {
  constexpr int kWarpRows = 16 * MT, kWideRows = kWarpRows * kWideWarps;  // queries per warp, per block
  extern __shared__ uint4 smem_raw[];  // WideShared<kWideRows>, 16-byte aligned
  WideShared<kWideRows>& sh = *reinterpret_cast<WideShared<kWideRows>*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  // blockIdx.x = (tile rank * batch + b) * n_q_heads + hq, tile rank 0 = the last (longest) query tile.
  const int hq = int(blockIdx.x % unsigned(s.n_q_heads));
  const int64_t rest = blockIdx.x / unsigned(s.n_q_heads);
  const int b = int(rest % s.batch);
  const int64_t q0 = (q_tiles - 1 - rest / s.batch) * kWideRows;
  const int hkv = hq / (s.n_q_heads / s.n_kv_heads);
  const int64_t kv_len = s.pos0 + s.n;
  const int64_t last_q = q0 + kWideRows - 1 < s.n - 1 ? q0 + kWideRows - 1 : s.n - 1;
  const int n_tiles = int((s.pos0 + last_q) / kTcKeys) + 1;
  const __nv_bfloat16* kh = k + (int64_t(b) * s.n_kv_heads + hkv) * s.max_len * kD;
  const __nv_bfloat16* vh = v + (int64_t(b) * s.n_kv_heads + hkv) * s.max_len * kD;

  // 16-byte chunks: a 64 x 64 K or V tile is 512 (4 per thread), the query rows 8 each (4 MT per thread).
  auto load_kv = [&](int tile, int buf) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int c = tid + i * kWideWarps * 32, row = c >> 3, col = (c & 7) * 8;
      const int64_t key = int64_t(tile) * kTcKeys + row;
      const bool ok = key < kv_len;
      const int64_t off = (ok ? key : 0) * kD + col;
      cp_async16(&sh.k[buf][row][col], kh + off, ok ? 16 : 0);
      cp_async16(&sh.v[buf][row][col], vh + off, ok ? 16 : 0);
    }
  };
#pragma unroll
  for (int i = 0; i < 4 * MT; ++i) {
    const int c = tid + i * kWideWarps * 32, row = c >> 3, col = (c & 7) * 8;
    const bool ok = q0 + row < s.n;
    const int64_t off = ((int64_t(b) * s.n + (ok ? q0 + row : 0)) * s.n_q_heads + hq) * kD + col;
    cp_async16(&sh.q[row][col], q + off, ok ? 16 : 0);
  }
  load_kv(0, 0);
  cp_async_commit();

  // This thread's rows: m-tile i holds rows 16 MT w + 16i + g (e = 0, 1) and + 8 (e = 2, 3).
  const int64_t warp_q0 = q0 + warp * kWarpRows;
  // The last key each row may see (its position; kv_len - 1 for padding rows past n), counted from
  // the block's first query position pos0 + q0: 32 bits, since only diagonal tiles compare with it.
  const int64_t base = s.pos0 + q0;
  int lim[MT][2];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) lim[i][h] = int(min(warp_q0 - q0 + 16 * i + 8 * h + g, kv_len - 1 - base));
  uint32_t qf[MT][4][4];  // A fragments: m-tile, k-step of 16 dims
  float o[MT][8][4];      // C fragments of the 16 MT x 64 output: m-tile, 8 dims
  float m[MT][2], l[MT][2];  // running max (raw score units) and sum per m-tile and row half
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    m[i][0] = m[i][1] = kNoMax;
    l[i][0] = l[i][1] = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) o[i][j][0] = o[i][j][1] = o[i][j][2] = o[i][j][3] = 0.f;
  }

  for (int kt = 0; kt < n_tiles; ++kt) {
    const int buf = kt & 1;
    cp_async_wait<0>();  // this thread's copies of tile kt (and, at kt = 0, of Q) have landed
    __syncthreads();     // everyone's have; and everyone is done with buffer buf ^ 1 (tile kt - 1)
    if (kt + 1 < n_tiles) {
      load_kv(kt + 1, buf ^ 1);
      cp_async_commit();
    }
    if (kt == 0) {
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
          ldmatrix_x4(qf[i][ks],
                      &sh.q[warp * kWarpRows + i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][ks * 16 + (lane >> 4) * 8]);
    }
    // A warp whose rows all sit before the tile's first key has nothing to add.
    const int64_t key0 = int64_t(kt) * kTcKeys;
    if (key0 > s.pos0 + warp_q0 + kWarpRows - 1) continue;

    // S = Q Kᵀ: n-tile j holds keys 8j..8j+7 of the tile; each K fragment serves every m-tile.
    float sc[MT][8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int i = 0; i < MT; ++i) sc[i][j][0] = sc[i][j][1] = sc[i][j][2] = sc[i][j][3] = 0.f;
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // dims 32*half .. 32*half+31: k-steps 2*half, 2*half+1
        uint32_t kb[4];
        ldmatrix_x4(kb, &sh.k[buf][j * 8 + (lane & 7)][half * 32 + (lane >> 3) * 8]);
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          mma_bf16(sc[i][j], qf[i][2 * half], kb[0], kb[1]);
          mma_bf16(sc[i][j], qf[i][2 * half + 1], kb[2], kb[3]);
        }
      }
    }

    // Online softmax (base 2). Only tiles that reach past the warp's first query need the mask.
    const bool diagonal = key0 + kTcKeys - 1 > s.pos0 + warp_q0;
    const int key_rel = int(key0 - base);  // in (-64, 128) on diagonal tiles
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (diagonal && key_rel + j * 8 + 2 * t + (e & 1) > lim[i][e >> 1]) sc[i][j][e] = -INFINITY;
          mx[e >> 1] = fmaxf(mx[e >> 1], sc[i][j][e]);
        }
      }
      // Lazy rescaling: the running max m moves (and O, l are rescaled by exp2((m_old - m_new) c))
      // only when some row of the warp sees a score above m by more than kRescaleLog2 in base 2;
      // otherwise m stays, probabilities reach up to 2^kRescaleLog2 (exact in fp32, the same
      // relative rounding in bf16), and the final division by l cancels whichever m was used.
      // Most tiles after the first few skip the 64 multiplies of O per thread.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      }
      const bool grow = (mx[0] - m[i][0]) * scale_log2 > kRescaleLog2 || (mx[1] - m[i][1]) * scale_log2 > kRescaleLog2;
      if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float new_m = fmaxf(m[i][h], mx[h]);
          const float alpha = fast_exp2((m[i][h] - new_m) * scale_log2);
          m[i][h] = new_m;
          l[i][h] *= alpha;
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            o[i][j][2 * h] *= alpha;
            o[i][j][2 * h + 1] *= alpha;
          }
        }
      }
      const float ms[2] = {m[i][0] * scale_log2, m[i][1] * scale_log2};  // exp2(s c - m c)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          sc[i][j][e] = fast_exp2(fmaf(sc[i][j][e], scale_log2, -ms[e >> 1]));
          l[i][e >> 1] += sc[i][j][e];
        }
      }
    }

    // O += P V: k-step kk covers keys 16kk..16kk+15 = S n-tiles 2kk, 2kk+1; each V fragment serves
    // every m-tile.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        pa[i][0] = pack_bf16(sc[i][2 * kk][0], sc[i][2 * kk][1]);
        pa[i][1] = pack_bf16(sc[i][2 * kk][2], sc[i][2 * kk][3]);
        pa[i][2] = pack_bf16(sc[i][2 * kk + 1][0], sc[i][2 * kk + 1][1]);
        pa[i][3] = pack_bf16(sc[i][2 * kk + 1][2], sc[i][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < 4; ++dp) {  // dims 16dp..16dp+15 = output tiles 2dp, 2dp+1
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, &sh.v[buf][kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][dp * 16 + (lane >> 4) * 8]);
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          mma_bf16(o[i][2 * dp], pa[i], vb[0], vb[1]);
          mma_bf16(o[i][2 * dp + 1], pa[i], vb[2], vb[3]);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = l[i][h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      const int64_t row = warp_q0 + 16 * i + 8 * h + g;
      if (row >= s.n) continue;
      __nv_bfloat16* dst = out + ((int64_t(b) * s.n + row) * s.n_q_heads + hq) * kD + 2 * t;
#pragma unroll
      for (int j = 0; j < 8; ++j)
        *reinterpret_cast<uint32_t*>(dst + j * 8) = pack_bf16(o[i][j][2 * h] * inv, o[i][j][2 * h + 1] * inv);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// CUDA-core reference kernel. Block = 4 warps = 16 query rows (4 per warp) of one (sequence,
// query head). Key/value tiles of 64 rows are widened to fp32 in shared memory; for each of its
// rows a warp scores keys lane and lane + 32, updates the online softmax, and accumulates the
// output dims 2*lane, 2*lane + 1.

constexpr int kSimpleWarps = 4;
constexpr int kSimpleRowsPerWarp = 4;
constexpr int kSimpleRows = kSimpleWarps * kSimpleRowsPerWarp;
constexpr int kSimpleKeys = 64;

__global__ void __launch_bounds__(kSimpleWarps * 32)
    prefill_simple_kernel(PrefillShape s, const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                          const __nv_bfloat16* __restrict__ v, float scale_log2, __nv_bfloat16* __restrict__ out) {
  __shared__ float sq[kSimpleRows][kD];
  __shared__ float sk[kSimpleKeys][kD + 1];  // +1: lanes reading different keys hit different banks
  __shared__ float sv[kSimpleKeys][kD];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t q0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kSimpleRows;
  const int hq = blockIdx.y, b = blockIdx.z;
  const int hkv = hq / (s.n_q_heads / s.n_kv_heads);
  const int64_t kv_len = s.pos0 + s.n;
  const int64_t last_q = min(q0 + kSimpleRows - 1, s.n - 1);
  const int64_t n_keys = s.pos0 + last_q + 1;
  const __nv_bfloat16* kh = k + (int64_t(b) * s.n_kv_heads + hkv) * s.max_len * kD;
  const __nv_bfloat16* vh = v + (int64_t(b) * s.n_kv_heads + hkv) * s.max_len * kD;

  for (int i = tid; i < kSimpleRows * kD; i += blockDim.x) {
    const int r = i / kD, d = i % kD;
    sq[r][d] = q0 + r < s.n ? __bfloat162float(q[((int64_t(b) * s.n + q0 + r) * s.n_q_heads + hq) * kD + d]) : 0.f;
  }
  float m[kSimpleRowsPerWarp], l[kSimpleRowsPerWarp], acc[kSimpleRowsPerWarp][2];
#pragma unroll
  for (int r = 0; r < kSimpleRowsPerWarp; ++r) {
    m[r] = kNoMax;
    l[r] = 0.f;
    acc[r][0] = acc[r][1] = 0.f;
  }
  for (int64_t key0 = 0; key0 < n_keys; key0 += kSimpleKeys) {
    __syncthreads();  // the previous tile is no longer read
    for (int i = tid; i < kSimpleKeys * kD; i += blockDim.x) {
      const int r = i / kD, d = i % kD;
      const int64_t key = key0 + r;
      const bool ok = key < kv_len;
      sk[r][d] = ok ? __bfloat162float(kh[key * kD + d]) : 0.f;
      sv[r][d] = ok ? __bfloat162float(vh[key * kD + d]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kSimpleRowsPerWarp; ++r) {
      const int row = warp * kSimpleRowsPerWarp + r;
      const int64_t lim = min(s.pos0 + q0 + row, kv_len - 1);
      float s0 = 0.f, s1 = 0.f;
      for (int d = 0; d < kD; ++d) {
        s0 = fmaf(sq[row][d], sk[lane][d], s0);
        s1 = fmaf(sq[row][d], sk[lane + 32][d], s1);
      }
      s0 = key0 + lane <= lim ? s0 * scale_log2 : -INFINITY;
      s1 = key0 + lane + 32 <= lim ? s1 * scale_log2 : -INFINITY;
      const float mx = fmaxf(m[r], warp_max(fmaxf(s0, s1)));
      const float alpha = exp2f(m[r] - mx);
      m[r] = mx;
      const float p0 = exp2f(s0 - mx), p1 = exp2f(s1 - mx);
      l[r] = l[r] * alpha + warp_sum(p0 + p1);
      float a0 = acc[r][0] * alpha, a1 = acc[r][1] * alpha;
      for (int j = 0; j < 32; ++j) {
        const float pj = __shfl_sync(0xffffffffu, p0, j), pk = __shfl_sync(0xffffffffu, p1, j);
        a0 = fmaf(pj, sv[j][2 * lane], a0);
        a1 = fmaf(pj, sv[j][2 * lane + 1], a1);
        a0 = fmaf(pk, sv[j + 32][2 * lane], a0);
        a1 = fmaf(pk, sv[j + 32][2 * lane + 1], a1);
      }
      acc[r][0] = a0;
      acc[r][1] = a1;
    }
  }
#pragma unroll
  for (int r = 0; r < kSimpleRowsPerWarp; ++r) {
    const int64_t row = q0 + warp * kSimpleRowsPerWarp + r;
    if (row >= s.n) continue;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    *reinterpret_cast<uint32_t*>(out + ((int64_t(b) * s.n + row) * s.n_q_heads + hq) * kD + 2 * lane) =
        pack_bf16(acc[r][0] * inv, acc[r][1] * inv);
  }
}

template <int W, int D, bool WINDOW>
void launch_tc(const PrefillShape& s, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
               float scale_log2, __nv_bfloat16* out, cudaStream_t stream) {
  constexpr int rows = 16 * W;
  constexpr size_t smem = sizeof(TcShared<rows, D>);
  static const bool configured = [] {  // once per process, before the first launch (not inside a capture)
    SAAP_CU(cudaFuncSetAttribute(prefill_tc_kernel<W, D, WINDOW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(smem)));
    return true;
  }();
  (void)configured;
  const int64_t tiles = (s.n + rows - 1) / rows;
  SAAP_CU_REQUIRE(tiles <= INT32_MAX, InvalidArgument, "n = %lld queries is too many", (long long)s.n);
  dim3 grid(unsigned(tiles), unsigned(s.n_q_heads), unsigned(s.batch));
  prefill_tc_kernel<W, D, WINDOW><<<grid, W * 32, smem, stream>>>(s, q, k, v, scale_log2, out);
}

// tc (4 warps) or tc128 (8 warps) at the shape's head dim, with or without a window.
void launch_tc_any(int warps, const PrefillShape& s, const __nv_bfloat16* q, const __nv_bfloat16* k,
                   const __nv_bfloat16* v, float scale_log2, __nv_bfloat16* out, cudaStream_t stream) {
  const bool window = s.window > 0;
  if (warps == 4) {
    if (s.head_dim == 64)
      window ? launch_tc<4, 64, true>(s, q, k, v, scale_log2, out, stream)
             : launch_tc<4, 64, false>(s, q, k, v, scale_log2, out, stream);
    else
      window ? launch_tc<4, 256, true>(s, q, k, v, scale_log2, out, stream)
             : launch_tc<4, 256, false>(s, q, k, v, scale_log2, out, stream);
  } else {
    if (s.head_dim == 64)
      window ? launch_tc<8, 64, true>(s, q, k, v, scale_log2, out, stream)
             : launch_tc<8, 64, false>(s, q, k, v, scale_log2, out, stream);
    else
      window ? launch_tc<8, 256, true>(s, q, k, v, scale_log2, out, stream)
             : launch_tc<8, 256, false>(s, q, k, v, scale_log2, out, stream);
  }
}

template <int MT>
void launch_wide(const PrefillShape& s, const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                 float scale_log2, __nv_bfloat16* out, cudaStream_t stream) {
  constexpr int rows = 16 * MT * kWideWarps;
  constexpr size_t smem = sizeof(WideShared<rows>);
  static const bool configured = [] {  // once per process, before the first launch (not inside a capture)
    SAAP_CU(cudaFuncSetAttribute(prefill_wide_kernel<MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    return true;
  }();
  (void)configured;
  const int64_t tiles = (s.n + rows - 1) / rows;
  const int64_t blocks = tiles * s.batch * s.n_q_heads;
  SAAP_CU_REQUIRE(blocks <= INT32_MAX, InvalidArgument, "n = %lld queries x batch %d x %d heads is too many",
                  (long long)s.n, s.batch, s.n_q_heads);
  prefill_wide_kernel<MT><<<unsigned(blocks), kWideWarps * 32, smem, stream>>>(s, tiles, q, k, v, scale_log2, out);
}

}  // namespace

// What Auto runs at head_dim 64 without a window. tcw32: half the shared-memory reads per mma of
// tc, ~4.5 FP32 ops per score instead of ~12 (SASS), longest-first blocks; it passed the float64
// test and the runner test on the H200 at 2df0f1e (speed compared by e2e_bench in the same run).
constexpr PrefillKernel kAutoHeadDim64 = PrefillKernel::TensorCoreWarp32;

PrefillKernel resolve_prefill_kernel(const PrefillShape& s, PrefillKernel kernel) {
  if (kernel != PrefillKernel::Auto) return kernel;
  return s.head_dim == 64 && s.window == 0 ? kAutoHeadDim64 : PrefillKernel::TensorCore;
}

PrefillKernel prefill_kernel_from_name(const std::string& name) {
  if (name == "auto") return PrefillKernel::Auto;
  if (name == "tc") return PrefillKernel::TensorCore;
  if (name == "tc128") return PrefillKernel::TensorCore128;
  if (name == "tcw32") return PrefillKernel::TensorCoreWarp32;
  if (name == "tcw16") return PrefillKernel::TensorCoreWarp16;
  if (name == "simple") return PrefillKernel::Simple;
  fail(ErrorKind::InvalidArgument, __func__, "prefill attention kernel \"%s\": expected auto, tc, tc128, tcw32, tcw16 or simple",
       name.c_str());
}

const char* prefill_kernel_name(PrefillKernel kernel) {
  switch (kernel) {
    case PrefillKernel::Auto: return "auto";
    case PrefillKernel::TensorCore: return "tc";
    case PrefillKernel::TensorCore128: return "tc128";
    case PrefillKernel::TensorCoreWarp32: return "tcw32";
    case PrefillKernel::TensorCoreWarp16: return "tcw16";
    case PrefillKernel::Simple: return "simple";
  }
  return "unknown";
}

void prefill_attention(const PrefillShape& s, const __nv_bfloat16* q, const __nv_bfloat16* k,
                       const __nv_bfloat16* v, float scale, __nv_bfloat16* out, cudaStream_t stream,
                       PrefillKernel kernel) {
  s.check();
  kernel = resolve_prefill_kernel(s, kernel);
  SAAP_CU_REQUIRE(q && k && v && out, InvalidArgument, "null pointer among q=%p k=%p v=%p out=%p", (const void*)q,
                  (const void*)k, (const void*)v, (void*)out);
  SAAP_CU_REQUIRE(
      (s.head_dim == 64 && s.window == 0) || kernel == PrefillKernel::TensorCore ||
          kernel == PrefillKernel::TensorCore128,
      Unsupported, "the %s prefill kernel supports head_dim 64 without a window (head_dim = %d, window = %lld): use tc",
      prefill_kernel_name(kernel), s.head_dim, (long long)s.window);
  const float scale_log2 = scale * kLog2e;
  if (kernel == PrefillKernel::TensorCore || kernel == PrefillKernel::TensorCore128) {
    launch_tc_any(kernel == PrefillKernel::TensorCore ? 4 : 8, s, q, k, v, scale_log2, out, stream);
  } else if (kernel == PrefillKernel::TensorCoreWarp32) {
    launch_wide<2>(s, q, k, v, scale_log2, out, stream);
  } else if (kernel == PrefillKernel::TensorCoreWarp16) {
    launch_wide<1>(s, q, k, v, scale_log2, out, stream);
  } else {
    const int64_t tiles = (s.n + kSimpleRows - 1) / kSimpleRows;
    SAAP_CU_REQUIRE(tiles <= INT32_MAX, InvalidArgument, "n = %lld queries is too many", (long long)s.n);
    dim3 grid(unsigned(tiles), unsigned(s.n_q_heads), unsigned(s.batch));
    prefill_simple_kernel<<<grid, kSimpleWarps * 32, 0, stream>>>(s, q, k, v, scale_log2, out);
  }
  SAAP_CU_LAUNCHED();
}

}  // namespace saap::cuda
