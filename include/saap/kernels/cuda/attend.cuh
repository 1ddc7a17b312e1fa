// The inner loop shared by every decode kernel (dense, Saap, Loki): the G query heads of one KV
// group attend to a stream of token rows, each K/V row read once for the whole group.
//
// Decode is memory bound (one FMA per loaded element per query head), so the loop is built for
// bytes in flight: a token row of D elements is spread over D/8 lanes (16-byte loads), a warp
// covers 32/(D/8) rows per pass and issues U passes of K and V loads before the first use.
// Softmax is online in base 2 (q is pre-scaled by scale*log2 e) with fp32 state per lane.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "saap/kernels/cuda/launch.cuh"
#include "saap/kernels/cuda/mma.cuh"
#include "saap/kernels/cuda/reduce.cuh"

namespace saap::cuda {

constexpr float kLog2e = 1.4426950408889634f;
// Running max before any token: finite, so exp2(m_old - m_new) never evaluates inf - inf.
constexpr float kNoMax = -1e30f;

template <class T>
struct Vec8;  // eight elements of T in one 16-byte load, widened to float

template <>
struct Vec8<__nv_bfloat16> {
  __device__ static void to_float(const uint4& u, float* f) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};

template <>
struct Vec8<__half> {
  __device__ static void to_float(const uint4& u, float* f) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2 h = *reinterpret_cast<const __half2*>(&w[i]);
      float2 p = __half22float2(h);
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    }
  }
};

// Streaming load: the KV cache is read once per step, so keep it out of L1.
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// 16 bytes of a ring stage in shared memory, or zeros for a row past the share: the stage may hold
// stale or uninitialised bytes there, and 0 x NaN would poison the output.
__device__ __forceinline__ uint4 load_row_piece(const unsigned char* p, bool in_share) {
  return in_share ? *reinterpret_cast<const uint4*>(p) : make_uint4(0, 0, 0, 0);
}

// Each warp's online-softmax state of the block's G <= GMAX query heads, in shared memory, for the
// block's merge: running max m and sum l (base 2), unnormalised output acc.
template <int D, int GMAX, int NWARPS>
struct BlockPartials {
  float m[NWARPS][GMAX];
  float l[NWARPS][GMAX];
  float acc[NWARPS][GMAX][D];
};

// The block's merge of its warps' states (published by a __syncthreads()): for each of the G heads
// the normalised partial output out_g[D] and its log2-sum-exp lse_g (-inf when the block saw no
// token), where head g's destinations are out + g*out_stride, lse + g*lse_stride.
template <int D, int GMAX, int NWARPS>
__device__ void write_block_partials(const BlockPartials<D, GMAX, NWARPS>& sh, int G, float* out, int64_t out_stride,
                                     float* lse, int64_t lse_stride) {
  for (int t = threadIdx.x; t < G * D; t += NWARPS * 32) {
    const int g = t / D, d = t % D;
    float mx = kNoMax;
#pragma unroll
    for (int w = 0; w < NWARPS; ++w) mx = fmaxf(mx, sh.m[w][g]);
    float L = 0.f, A = 0.f;
#pragma unroll
    for (int w = 0; w < NWARPS; ++w) {
      const float e = exp2f(sh.m[w][g] - mx);
      L += sh.l[w][g] * e;
      A += sh.acc[w][g][d] * e;
    }
    out[g * out_stride + d] = L > 0.f ? A / L : 0.f;
    if (d == 0) lse[g * lse_stride] = L > 0.f ? mx + log2f(L) : -INFINITY;
  }
}

// run()'s row mask: every head reads every row (GroupAttender::run_masked leaves the masking out
// for it, so run() and run_prefetch() compile to the loops they were before they shared it).
struct EveryHead {
  __device__ uint32_t operator()(int) const { return ~0u; }
};

// Per-lane online-softmax state of GMAX query heads (G <= GMAX used; the rest carry zeros).
template <class T, int D, int GMAX, int NWARPS>
struct GroupAttender {
  static constexpr int LPT = D / 8;     // lanes per token row
  static constexpr int TPP = 32 / LPT;  // token rows per warp pass
  static constexpr int U = 4;           // passes whose loads are in flight together
  static constexpr int TILE = TPP * U;  // token rows per warp iteration
  static_assert(D % 8 == 0 && 32 % LPT == 0, "head dim must be 64, 128 or 256");

  int lane, warp, sub, slot;
  float q[GMAX][8];
  float m[GMAX], l[GMAX], acc[GMAX][8];

  // qg: the G query rows of the group [G][D] (fp32), scale: softmax scale. The loads do not depend
  // on g < G (a row past G reads row G - 1 again and is then zeroed), so they are in flight
  // together: under a branch per row, ptxas issued each row's loads after the previous row's
  // arrived, one round trip per query head before a block's first K/V load (as in Quest's score
  // kernel before 91c8a28).
  __device__ void init(const float* qg, int G, float scale) {
    lane = threadIdx.x & 31;
    warp = threadIdx.x >> 5;
    sub = lane % LPT;
    slot = lane / LPT;
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      const float* row = qg + min(g, G - 1) * D + sub * 8;
#pragma unroll
      for (int j = 0; j < 8; ++j) q[g][j] = row[j];
    }
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      m[g] = kNoMax;
      l[g] = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        acc[g][j] = 0.f;
        q[g][j] = g < G ? q[g][j] * scale * kLog2e : 0.f;
      }
    }
  }

  // Attends to token rows 0..n-1; kptr(i)/vptr(i) give this lane's 16 bytes of row i (the lane's
  // element offset sub*8 is the caller's to apply, so split layouts such as Loki's work too).
  template <class KPtr, class VPtr>
  __device__ void run(int n, KPtr kptr, VPtr vptr) {
    run_masked<false>(n, kptr, vptr, EveryHead{});
  }

  // run() software-pipelined in registers: the next tile's K/V loads are issued before this tile's
  // math, so the warp always has a tile in flight (run() has none while it computes). Costs
  // 8 * U more registers per lane; the caller's launch bounds must allow them.
  template <class KPtr, class VPtr>
  __device__ void run_prefetch(int n, KPtr kptr, VPtr vptr) {
    run_masked<true>(n, kptr, vptr, EveryHead{});
  }

  static constexpr int kMmaRows = kMmaTileRows;
  static constexpr int kMmaKB = D / 16, kMmaKQ = D / 32, kMmaMU = kMmaRows / TPP;
  // The query heads as the B operands of the kMmaKB MMAs of a tile (mma_query_fragments).
  using MmaQuery = uint32_t[kMmaKB][2][kMmaQueryTerms];
  // One tile of kMmaRows rows at split index `base`: ka[h][j] this lane's piece
  // mma_key_piece<D, false>(c, j) of row base + gr + 8h (zeros past n), vr[u] the value words of
  // rows base + u*TPP + slot (zeros past n); sc: this warp's kMmaRows x 8 floats of shared memory.
  __device__ void mma_tile(const MmaQuery& b, const uint4 (&ka)[2][kMmaKQ], const uint4 (&vr)[kMmaMU], int base, int n,
                           float* sc) {
    const int gr = lane >> 2, c = lane & 3;
    float d[4] = {};
#pragma unroll
    for (int e = kMmaQueryTerms - 1; e >= 0; --e)  // smallest terms first
#pragma unroll
      for (int kb = 0; kb < kMmaKB; ++kb)
        mma_bf16_16816(d, word_of(ka[0][(2 * kb) >> 2], (2 * kb) & 3), word_of(ka[1][(2 * kb) >> 2], (2 * kb) & 3),
                       word_of(ka[0][(2 * kb + 1) >> 2], (2 * kb + 1) & 3),
                       word_of(ka[1][(2 * kb + 1) >> 2], (2 * kb + 1) & 3), b[kb][0][e], b[kb][1][e]);
    // d: rows gr (d0, d1) and gr + 8 (d2, d3) of the tile, columns 2c and 2c + 1.
    sc[gr * 8 + 2 * c] = d[0];
    sc[gr * 8 + 2 * c + 1] = d[1];
    sc[(gr + 8) * 8 + 2 * c] = d[2];
    sc[(gr + 8) * 8 + 2 * c + 1] = d[3];
    __syncwarp();
    float s[kMmaMU][GMAX];
#pragma unroll
    for (int u = 0; u < kMmaMU; ++u)
#pragma unroll
      for (int g = 0; g < GMAX; ++g) s[u][g] = sc[(u * TPP + slot) * 8 + g];
    __syncwarp();  // the next tile rewrites sc
    accumulate<kMmaMU>(s, vr, base, n);
  }
  // run() with the logits on the tensor cores (bf16 keys, head dim 64 or 128): a warp takes tiles
  // of kMmaRows rows; q'.k for the tile is an m16n8k16 MMA per 16 key components (A = the tile's
  // keys, B = the query heads as columns, column n holding head n % G, the fp32 query split into
  // three bf16 terms so that its 24 bits all count, fp32 accumulation), written to `sc` and read
  // back in the value layout; softmax and values as run(). A lane loads one contiguous quarter of
  // each of its two key rows (16-byte loads) and B is permuted to match: a dot product does not
  // care which component each k slot holds as long as A and B agree. The loop does ~half of
  // run()'s instructions per byte (no per-element FMAs or shuffles for the logits).
  // kq(i): this lane's quarter of row i's key, components c*D/4 .. (c+1)*D/4 - 1 with c = lane & 3
  // (16-byte aligned); vptr(i) as in run(). qg, G, scale: as init() took them. sc: this warp's
  // kMmaRows x 8 floats of shared memory.
  // The next tile's loads are issued before this tile's MMAs and math (as run_prefetch): the H200
  // run at da2ee81 found the loop without that prefetch never the fastest (results/
  // gpu_decode_report_2026-12-03_h200_da2ee81.md).
  template <class KQuarter, class VPtr>
  __device__ void run_mma(int n, const float* qg, int G, float scale, KQuarter kq, VPtr vptr, float* sc) {
    static_assert(std::is_same<T, __nv_bfloat16>::value && (D == 64 || D == 128) && GMAX <= 8,
                  "tensor-core logits: bf16 keys, head dim 64 or 128");
    constexpr int KQ = kMmaKQ, MU = kMmaMU;
    const int gr = lane >> 2;  // fragment row group of this lane
    MmaQuery b;
    mma_query_fragments<D, false>(qg, G, scale * kLog2e, lane, b);
    // Key quarters of rows gr and gr + 8 of the tile at `base`, and the value words of its passes.
    auto load = [&](int base, uint4 (&ka)[2][KQ], uint4 (&vr)[MU]) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int t = base + gr + 8 * h;
#pragma unroll
        for (int j = 0; j < KQ; ++j)
          ka[h][j] = t < n ? load_stream(kq(t) + j * 8) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < MU; ++u) {
        const int i = base + u * TPP + slot;
        vr[u] = i < n ? load_stream(vptr(i)) : make_uint4(0, 0, 0, 0);
      }
    };
    constexpr int stride = NWARPS * kMmaRows;
    int base = warp * kMmaRows;
    if (base >= n) return;
    uint4 kn[2][KQ], vn[MU];
    load(base, kn, vn);
    for (; base < n; base += stride) {
      uint4 ka[2][KQ], vr[MU];
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int j = 0; j < KQ; ++j) ka[h][j] = kn[h][j];
#pragma unroll
      for (int u = 0; u < MU; ++u) vr[u] = vn[u];
      if (base + stride < n) load(base + stride, kn, vn);
      mma_tile(b, ka, vr, base, n, sc);
    }
  }

  // One warp iteration: rows base + u*TPP + slot (u < U) with this lane's K and V words.
  __device__ void step(const uint4 (&kr)[U], const uint4 (&vr)[U], int base, int n) {
    float s[U][GMAX];
    logits(kr, s);
    accumulate<U>(s, vr, base, n);
  }

  // The loop of run() and run_prefetch() (PREFETCH), over rows that only some of the heads may
  // read: bit g of mask(i) is set when head g reads row i, and a head's logit of a row it does not
  // read is -inf, as for rows past n. Loki's group union: each K/V row read once for the heads that
  // selected it. With PREFETCH a non-constant mask costs U more registers a lane.
  template <bool PREFETCH, class KPtr, class VPtr, class Mask>
  __device__ void run_masked(int n, KPtr kptr, VPtr vptr, Mask mask) {
    auto load = [&](int base, uint4 (&kr)[U], uint4 (&vr)[U], uint32_t (&mk)[U]) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int i = base + u * TPP + slot;
        if (i < n) {
          kr[u] = load_stream(kptr(i));
          vr[u] = load_stream(vptr(i));
          mk[u] = mask(i);
        } else {
          kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
          mk[u] = 0;
        }
      }
    };
    auto step = [&](int base, const uint4(&kr)[U], const uint4(&vr)[U], const uint32_t(&mk)[U]) {
      float s[U][GMAX];
      logits(kr, s);
      if constexpr (!std::is_same_v<Mask, EveryHead>)  // rows past n: accumulate masks them either way
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
          for (int g = 0; g < GMAX; ++g)
            if (!((mk[u] >> g) & 1u)) s[u][g] = -INFINITY;
      accumulate<U>(s, vr, base, n);
    };
    if constexpr (PREFETCH) {
      int base = warp * TILE;
      if (base >= n) return;
      uint4 kn[U], vn[U];
      uint32_t mn[U];
      load(base, kn, vn, mn);
      for (; base < n; base += NWARPS * TILE) {
        uint4 kr[U], vr[U];
        uint32_t mk[U];
#pragma unroll
        for (int u = 0; u < U; ++u) kr[u] = kn[u], vr[u] = vn[u], mk[u] = mn[u];
        if (base + NWARPS * TILE < n) load(base + NWARPS * TILE, kn, vn, mn);
        step(base, kr, vr, mk);
      }
    } else {
      for (int base = warp * TILE; base < n; base += NWARPS * TILE) {
        uint4 kr[U], vr[U];
        uint32_t mk[U];
        load(base, kr, vr, mk);
        step(base, kr, vr, mk);
      }
    }
  }

  // The (scaled, base-2) logits s[u][g] of rows base + u*TPP + slot from this lane's K words,
  // summed over the row's lanes.
  __device__ void logits(const uint4 (&kr)[U], float (&s)[U][GMAX]) const {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      Vec8<T>::to_float(kr[u], kf);
#pragma unroll
      for (int g = 0; g < GMAX; ++g) {
        float d = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) d = fmaf(q[g][j], kf[j], d);
        s[u][g] = d;
      }
    }
#pragma unroll
    for (int off = LPT / 2; off > 0; off >>= 1)
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int g = 0; g < GMAX; ++g) s[u][g] += __shfl_xor_sync(0xffffffffu, s[u][g], off);
  }

  // The softmax and value half of an iteration of UU passes: s[u][g] are the (scaled, base-2)
  // logits of rows base + u*TPP + slot, vr their value words; rows >= n are masked here.
  template <int UU>
  __device__ void accumulate(float (&s)[UU][GMAX], const uint4 (&vr)[UU], int base, int n) {
#pragma unroll
    for (int u = 0; u < UU; ++u)
      if (base + u * TPP + slot >= n)
#pragma unroll
        for (int g = 0; g < GMAX; ++g) s[u][g] = -INFINITY;
    // s becomes the probabilities; V is widened one row at a time to keep registers low. The state
    // is rescaled only when the running max grows (rare once it settles; the rescale is an exp2 and
    // 9 multiplies per head and tile); an unchanged max would rescale by exactly 1.
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < UU; ++u) mx = fmaxf(mx, s[u][g]);
      if (mx > m[g]) {
        const float alpha = exp2f(m[g] - mx);
        m[g] = mx;
        l[g] *= alpha;
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] *= alpha;
      }
#pragma unroll
      for (int u = 0; u < UU; ++u) {
        s[u][g] = exp2f(s[u][g] - mx);
        l[g] += s[u][g];
      }
    }
#pragma unroll
    for (int u = 0; u < UU; ++u) {
      float vf[8];
      Vec8<T>::to_float(vr[u], vf);
#pragma unroll
      for (int g = 0; g < GMAX; ++g)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(s[u][g], vf[j], acc[g][j]);
    }
  }

  using Shared = BlockPartials<D, GMAX, NWARPS>;

  // Merges the lanes and warps of the block and writes, for each of the G heads, the normalised
  // partial output and its log2-sum-exp (write_block_partials).
  __device__ void finish(Shared& sh, int G, float* out, int64_t out_stride, float* lse, int64_t lse_stride) {
#pragma unroll
    for (int off = LPT; off < 32; off <<= 1) {
#pragma unroll
      for (int g = 0; g < GMAX; ++g) {
        const float mo = __shfl_xor_sync(0xffffffffu, m[g], off);
        const float lo = __shfl_xor_sync(0xffffffffu, l[g], off);
        const float mx = fmaxf(m[g], mo);
        const float a = exp2f(m[g] - mx), b = exp2f(mo - mx);
        l[g] = l[g] * a + lo * b;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float ao = __shfl_xor_sync(0xffffffffu, acc[g][j], off);
          acc[g][j] = acc[g][j] * a + ao * b;
        }
        m[g] = mx;
      }
    }
    if (slot == 0) {
#pragma unroll
      for (int g = 0; g < GMAX; ++g) {
        if (sub == 0) {
          sh.m[warp][g] = m[g];
          sh.l[warp][g] = l[g];
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) sh.acc[warp][g][sub * 8 + j] = acc[g][j];
      }
    }
    __syncthreads();
    write_block_partials(sh, G, out, out_stride, lse, lse_stride);
  }
};

// Combines the split partials of one (sequence, query head): part_out [splits][D], part_lse
// [splits] (log2 domain) -> out [D]. One block of kCombineThreads per row: the split weights are
// computed once into shared memory (dynamic, splits floats), then kCombineThreads / D groups of D
// threads each sum every P-th split, with eight loads in flight, and add up in shared memory: a
// row over 512 splits (few heads, long context) was one thread per element walking all 512.
constexpr int kCombineThreads = 512;
template <int D>
static __global__ void __launch_bounds__(kCombineThreads)
    combine_splits_kernel(const float* __restrict__ part_out, const float* __restrict__ part_lse, int splits,
                          float* __restrict__ out) {
  constexpr int P = kCombineThreads / D;
  extern __shared__ float w[];
  __shared__ float red[32];
  __shared__ float part[P][D];
  wait_prior_grid();
  const int64_t row = blockIdx.x;
  const float* po = part_out + row * splits * D;
  const float* pl = part_lse + row * splits;
  float mx = -INFINITY;
  for (int s = threadIdx.x; s < splits; s += kCombineThreads) mx = fmaxf(mx, pl[s]);
  mx = block_reduce<true>(mx, red);
  float L = 0.f;
  for (int s = threadIdx.x; s < splits; s += kCombineThreads) {
    const float e = mx > -INFINITY ? exp2f(pl[s] - mx) : 0.f;
    w[s] = e;
    L += e;
  }
  L = block_reduce<false>(L, red);  // its barriers also publish w
  const int d = threadIdx.x % D, p = threadIdx.x / D;
  float A = 0.f;
#pragma unroll 8
  for (int s = p; s < splits; s += P) A = fmaf(w[s], po[int64_t(s) * D + d], A);
  part[p][d] = A;
  __syncthreads();
  if (p == 0) {
#pragma unroll
    for (int i = 1; i < P; ++i) A += part[i][d];
    out[row * D + d] = L > 0.f ? A / L : 0.f;
  }
}

}  // namespace saap::cuda
