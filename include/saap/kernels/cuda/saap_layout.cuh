// Kernels that place tokens into the Saap slot layout (see saap.h): prefill build (count, scan,
// slot, copy) and the decode append that moves the token leaving the recent window into its
// partition's append pages.
#pragma once
#include <cub/block/block_scan.cuh>

#include "saap/kernels/cuda/saap_assign.cuh"

namespace saap::cuda {

struct SaapGeom {
  int C, S, W, P, A, D, n_kv_heads;
  int64_t rows, max_prefill;
};

// Which tokens of a length-n sequence are partitioned: [S, n - W) when n > S + W.
__device__ __forceinline__ bool in_partition(int64_t t, int64_t n, const SaapGeom& g) {
  return t >= g.S && t < n - g.W;
}
__device__ __forceinline__ int64_t ring_slot(int64_t t, const SaapGeom& g) { return g.S + (t - g.S) % g.W; }

static __global__ void saap_count_kernel(const int32_t* __restrict__ assign, const int32_t* __restrict__ lengths,
                                  int64_t max_len, SaapGeom g, int32_t* __restrict__ part_count,
                                  int32_t* __restrict__ flags) {
  const int bh = blockIdx.y, b = bh / g.n_kv_heads;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = lengths[b];
  if (t >= n || !in_partition(t, n, g)) return;
  const int c = assign[int64_t(bh) * max_len + t];
  if (c < 0 || c >= g.C) {
    flags[0] = 1;
    return;
  }
  atomicAdd(&part_count[int64_t(bh) * g.C + c], 1);
}

// One block of 1024 threads per (b, h): part_start = exclusive scan of part_count after the fixed
// regions; resets the append state.
static __global__ void __launch_bounds__(1024)
    saap_scan_kernel(const int32_t* __restrict__ lengths, SaapGeom g, const int32_t* __restrict__ part_count,
                     int32_t* __restrict__ part_start, int32_t* __restrict__ cursor, int32_t* __restrict__ append_count,
                     int32_t* __restrict__ next_page, int32_t* __restrict__ seq_len) {
  using Scan = cub::BlockScan<int, 1024>;
  __shared__ typename Scan::TempStorage tmp;
  const int bh = blockIdx.x, b = bh / g.n_kv_heads;
  const int64_t base = int64_t(bh) * g.C;
  int carry = g.S + g.W;
  for (int c0 = 0; c0 < g.C; c0 += 1024) {
    const int c = c0 + threadIdx.x;
    const int v = c < g.C ? part_count[base + c] : 0;
    int ex, total;
    Scan(tmp).ExclusiveSum(v, ex, total);
    if (c < g.C) {
      part_start[base + c] = carry + ex;
      cursor[base + c] = 0;
      append_count[base + c] = 0;
    }
    carry += total;
    __syncthreads();  // tmp is reused by the next tile
  }
  if (threadIdx.x == 0) {
    next_page[bh] = int32_t(g.S + g.W + g.max_prefill);
    seq_len[bh] = lengths[b];
  }
}

// Destination slot of every prefill token.
static __global__ void saap_slot_kernel(const int32_t* __restrict__ assign, const int32_t* __restrict__ lengths,
                                 int64_t max_len, SaapGeom g, const int32_t* __restrict__ part_start,
                                 int32_t* __restrict__ cursor, int32_t* __restrict__ slot_of) {
  const int bh = blockIdx.y, b = bh / g.n_kv_heads;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = lengths[b];
  if (t >= n) return;
  int64_t slot;
  if (t < g.S) {
    slot = t;
  } else if (!in_partition(t, n, g)) {
    slot = ring_slot(t, g);
  } else {
    const int c = assign[int64_t(bh) * max_len + t];
    slot = (c < 0 || c >= g.C) ? -1 : part_start[int64_t(bh) * g.C + c] + atomicAdd(&cursor[int64_t(bh) * g.C + c], 1);
  }
  slot_of[int64_t(bh) * max_len + t] = int32_t(slot);
}

// Copies K and V rows to their slots, 16 bytes per thread.
static __global__ void saap_copy_kernel(const uint4* __restrict__ k, const uint4* __restrict__ v,
                                 const int32_t* __restrict__ lengths, int64_t max_len, SaapGeom g,
                                 const int32_t* __restrict__ slot_of, uint4* __restrict__ kpool,
                                 uint4* __restrict__ vpool) {
  const int bh = blockIdx.y, b = bh / g.n_kv_heads;
  const int vpr = g.D / 8;  // 16-byte vectors per row
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t t = i / vpr;
  if (t >= lengths[b]) return;
  const int32_t slot = slot_of[int64_t(bh) * max_len + t];
  if (slot < 0) return;
  const int64_t src = (int64_t(bh) * max_len + t) * vpr + i % vpr;
  const int64_t dst = (int64_t(bh) * g.rows + slot) * vpr + i % vpr;
  kpool[dst] = k[src];
  vpool[dst] = v[src];
}

// Decode append, one launch of blocks (part, b*h):
// 1. each block searches C / kSearchParts centroids (the search spreads over many SMs) for the
//    nearest one to a key, merged by atomicMax into best[bh]. The key is the token that the new
//    token pushes out of the recent window (n - W), read from the pool; or, when keys are assigned
//    by a separate routing key (route_new non-null, e.g. pre-RoPE keys), the new token's routing
//    key, whose partition is kept with it in ring_part until it leaves the window;
// 2. the last block of (b, h) to finish (a ticket, not a second launch: at batch 1 a launch costs
//    more than the work) moves the leaving token into its partition's append pages, stores the new
//    token in the ring (or the sinks while n < S), advances seq_len and leaves best[bh] and its
//    ticket zeroed for the next step.
// ring_part [bh][W]: the partition of the token in each ring slot (routing-key mode), else null.
// Blocks of 128 threads, 32 parts: each warp scores as many centroids as 16 parts of 256 threads
// did, and the blocks fit on an SM beside two blocks of the router (saap_classify_kernel, 110
// registers a thread), which append_select() runs at the same time. On the H200 (738a344) no
// step time moved with it: at 512k the router's weight loads already ran beside the append.
constexpr int kSearchParts = 32;
constexpr int kAppendThreads = 128;
template <class T, int D>
static __global__ void __launch_bounds__(kAppendThreads)
    saap_append_kernel(SaapGeom g, const float* __restrict__ centroids, const float* __restrict__ half_norm,
                       const uint4* __restrict__ k_new, const uint4* __restrict__ v_new,
                       const uint4* __restrict__ route_new, uint4* __restrict__ kpool, uint4* __restrict__ vpool,
                       int32_t* __restrict__ append_pages, int32_t* __restrict__ append_count,
                       int32_t* __restrict__ next_page, int32_t* __restrict__ seq_len,
                       unsigned long long* __restrict__ best, int32_t* __restrict__ ring_part,
                       uint32_t* __restrict__ tickets, int32_t* __restrict__ flags) {
  __shared__ float kf[D];
  __shared__ float red_v[32];
  __shared__ int red_i[32];
  __shared__ bool last;
  __shared__ int64_t dst_slot;
  constexpr int VPR = D / 8;
  wait_prior_grid();
  const int bh = blockIdx.y, h = bh % g.n_kv_heads;
  const int64_t n = seq_len[bh];
  const int64_t slot = n < g.S ? n : ring_slot(n, g);  // where the new token goes
  uint4* krow = kpool + int64_t(bh) * g.rows * VPR;
  uint4* vrow = vpool + int64_t(bh) * g.rows * VPR;
  // 1. The search: the new routing key once past the sinks, else the leaving key once the ring is full.
  if (route_new ? n >= g.S : n >= g.S + g.W) {
    const T* key = route_new ? reinterpret_cast<const T*>(route_new + int64_t(bh) * VPR)
                             : reinterpret_cast<const T*>(krow + slot * VPR);
    for (int j = threadIdx.x; j < D; j += blockDim.x) kf[j] = elem_to_float(key[j]);
    __syncthreads();
    const int per = (g.C + kSearchParts - 1) / kSearchParts;
    const int c0 = blockIdx.x * per, c1 = min(g.C, c0 + per);
    if (c0 < c1) {  // uniform over the block
      float v;
      int c;
      nearest_centroid<D>(kf, centroids + int64_t(h) * g.C * D, half_norm + int64_t(h) * g.C, c0, c1, red_v,
                             red_i, v, c);
      if (threadIdx.x == 0) atomicMax(&best[bh], pack_best(v, c));
    }
  }
  // 2. The last block of (b, h) appends.
  allow_next_grid();
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&tickets[bh], 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int nearest = unpack_index(__ldcg(&best[bh]));  // from L2, where the blocks' atomics landed
  if (n >= g.S + g.W) {
    if (threadIdx.x == 0) {
      // The leaving token's partition: kept with it in routing-key mode, else just searched.
      const int c = ring_part ? ring_part[int64_t(bh) * g.W + (slot - g.S)] : nearest;
      const int64_t pc = int64_t(bh) * g.C + c;
      const int cnt = append_count[pc];
      const int page = cnt / g.P;
      int64_t dst = -1;
      if (page < g.A) {
        int32_t* pg = append_pages + pc * g.A + page;
        if (cnt % g.P == 0) {
          if (next_page[bh] + int64_t(g.P) <= g.rows) {
            *pg = next_page[bh];
            next_page[bh] += g.P;
          } else {
            *pg = -1;
          }
        }
        if (*pg >= 0) dst = *pg + cnt % g.P;
      }
      if (dst >= 0)
        append_count[pc] = cnt + 1;
      else
        flags[1] = 1;
      dst_slot = dst;
    }
    __syncthreads();
    const int64_t dst = dst_slot;
    if (dst >= 0)
      for (int j = threadIdx.x; j < VPR; j += blockDim.x) {
        krow[dst * VPR + j] = krow[slot * VPR + j];
        vrow[dst * VPR + j] = vrow[slot * VPR + j];
      }
    __syncthreads();
  }
  for (int j = threadIdx.x; j < VPR; j += blockDim.x) {
    krow[slot * VPR + j] = k_new[int64_t(bh) * VPR + j];
    vrow[slot * VPR + j] = v_new[int64_t(bh) * VPR + j];
  }
  if (threadIdx.x == 0) {
    if (ring_part && n >= g.S) ring_part[int64_t(bh) * g.W + (slot - g.S)] = nearest;  // entering
    best[bh] = 0;
    tickets[bh] = 0;
    seq_len[bh] = int32_t(n + 1);
  }
}

// Re-pack into a new pool (g_new.rows rows per (b, h)): block (c, bh) writes partition c's prefill
// range, then its append pages in order, as one contiguous range at new_start[bh][c]; block
// (C, bh) copies the sinks and the ring, whose slots do not move. 16 bytes per thread.
static __global__ void saap_repack_kernel(SaapGeom g_old, SaapGeom g_new, const int32_t* __restrict__ part_start,
                                          const int32_t* __restrict__ part_count,
                                          const int32_t* __restrict__ append_pages,
                                          const int32_t* __restrict__ append_count,
                                          const int32_t* __restrict__ new_start, const uint4* __restrict__ k_old,
                                          const uint4* __restrict__ v_old, uint4* __restrict__ k_new,
                                          uint4* __restrict__ v_new) {
  const int c = blockIdx.x, bh = blockIdx.y, vpr = g_old.D / 8;
  const uint4* ks = k_old + int64_t(bh) * g_old.rows * vpr;
  const uint4* vs = v_old + int64_t(bh) * g_old.rows * vpr;
  uint4* kd = k_new + int64_t(bh) * g_new.rows * vpr;
  uint4* vd = v_new + int64_t(bh) * g_new.rows * vpr;
  if (c == g_old.C) {
    for (int64_t i = threadIdx.x; i < int64_t(g_old.S + g_old.W) * vpr; i += blockDim.x) {
      kd[i] = ks[i];
      vd[i] = vs[i];
    }
    return;
  }
  const int64_t pc = int64_t(bh) * g_old.C + c;
  const int n0 = part_count[pc], na = append_count[pc];
  const int64_t s0 = part_start[pc], d0 = new_start[pc];
  for (int64_t i = threadIdx.x; i < int64_t(n0 + na) * vpr; i += blockDim.x) {
    const int j = int(i / vpr), e = int(i % vpr);
    const int64_t src = j < n0 ? s0 + j : append_pages[pc * g_old.A + (j - n0) / g_old.P] + (j - n0) % g_old.P;
    kd[(d0 + j) * vpr + e] = ks[src * vpr + e];
    vd[(d0 + j) * vpr + e] = vs[src * vpr + e];
  }
}

}  // namespace saap::cuda
