// The two non-learned routings of a partitioned index: the symmetric k-means baseline and the
// partition oracle. Each writes one ranking key per (sequence, KV head, partition) into the
// logits buffer; select() then ranks and fills with the same kernel as Saap, fed one "head" per
// KV group (for one head the summed-density key is the key minus a constant, so the order is the
// key's). Both are baselines, written to match their CPU methods rather than for speed.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/reduce.cuh"
#include "saap/kernels/cuda/saap_layout.cuh"
#include "saap_impl.h"

namespace saap::cuda {

namespace {

constexpr int kRankThreads = 1024;

// Block per (b, kv head). Head g of the group scores partition c by q.c (spherical centroids) or
// 2 q.c - ||c||^2 (L2), summed in order in fp32 without fused multiply-adds, as the CPU method
// (SymmetricKMeansAttention::score) computes it, so both see the same scores. Its rank r_g(c)
// counts the partitions that rank before c (rules::ranks_before). The CPU merges the heads'
// rankings round-robin (every head's first choice, then every head's second, ...), each partition
// at its first appearance: c's place is min over g of r_g(c) * G + g, and its key minus that
// place. O(C^2) per head: fine for a baseline (C = 4096, G = 8: about 1 ms).
// Dynamic shared memory: scores [C] floats, place [C] ints, the query [D] floats.
__global__ void __launch_bounds__(kRankThreads)
    kmeans_rank_kernel(const float* __restrict__ q, const float* __restrict__ centroids, int n_q_heads, int n_kv_heads,
                       int C, int D, bool spherical, float* __restrict__ keys) {
  extern __shared__ float smem[];
  float* scores = smem;
  int* place = reinterpret_cast<int*>(smem + C);
  float* qs = smem + 2 * C;
  const int bh = blockIdx.x, b = bh / n_kv_heads, h = bh % n_kv_heads, G = n_q_heads / n_kv_heads;
  const float* cent = centroids + int64_t(h) * C * D;
  for (int g = 0; g < G; ++g) {
    const float* qrow = q + (int64_t(b) * n_q_heads + int64_t(h) * G + g) * D;
    __syncthreads();  // the previous head's scores and query are no longer read
    for (int i = threadIdx.x; i < D; i += blockDim.x) qs[i] = qrow[i];
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      const float* m = cent + int64_t(c) * D;
      float qm = 0.f, mm = 0.f;
      for (int i = 0; i < D; ++i) {
        qm = __fadd_rn(qm, __fmul_rn(qs[i], m[i]));
        mm = __fadd_rn(mm, __fmul_rn(m[i], m[i]));
      }
      scores[c] = spherical ? qm : __fsub_rn(__fmul_rn(2.0f, qm), mm);
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      int rank = 0;
      for (int o = 0; o < C; ++o) rank += rules::ranks_before(scores[o], o, scores[c], c);
      const int p = rank * G + g;
      if (g == 0 || p < place[c]) place[c] = p;
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) keys[int64_t(bh) * C + c] = -float(place[c]);
}

constexpr int kOracleThreads = 256;
constexpr int kMaxGroup = 8;

// Calls f(slot) for every slot of partition c (its prefill range, then its append pages), the
// lanes of one warp taking every 32nd token.
template <class F>
__device__ void for_partition_slots(const SaapGeom& g, int64_t pc, const int32_t* part_start,
                                    const int32_t* part_count, const int32_t* append_pages,
                                    const int32_t* append_count, int lane, F&& f) {
  const int n0 = part_count[pc], na = append_count[pc], s0 = part_start[pc];
  for (int j = lane; j < n0 + na; j += 32)
    f(j < n0 ? int64_t(s0) + j : int64_t(append_pages[pc * g.A + (j - n0) / g.P]) + (j - n0) % g.P);
}

// Block per (b, kv head): the exact attention of each of the group's heads over the whole prefix
// (sinks, window and every partition; logits scale * q.k from the stored keys in fp32), and from
// it each partition's share of each head's attention, mass[g][c]. The key of partition c is
// log(sum_g mass[g][c] / n_c): the group's summed true density, the score
// PartitionOracleAttention ranks by. Three passes over the keys: the max logit per head, the
// softmax sums (per partition and in total), then the keys.
template <class T, int D>
__global__ void __launch_bounds__(kOracleThreads)
    oracle_rank_kernel(const float* __restrict__ q, float scale, const T* __restrict__ kpool, SaapGeom g,
                       int n_q_heads, const int32_t* __restrict__ seq_len, const int32_t* __restrict__ part_start,
                       const int32_t* __restrict__ part_count, const int32_t* __restrict__ append_pages,
                       const int32_t* __restrict__ append_count, float* __restrict__ mass,
                       float* __restrict__ keys) {
  __shared__ float qs[kMaxGroup][D];
  __shared__ float red[32];
  __shared__ float head_max[kMaxGroup], head_sum[kMaxGroup];
  const int bh = blockIdx.x, b = bh / g.n_kv_heads, h = bh % g.n_kv_heads, G = n_q_heads / g.n_kv_heads;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  for (int i = threadIdx.x; i < G * D; i += blockDim.x)
    qs[i / D][i % D] = q[(int64_t(b) * n_q_heads + int64_t(h) * G) * D + i] * scale;
  __syncthreads();
  const T* keys_bh = kpool + int64_t(bh) * g.rows * D;
  const int64_t n = seq_len[bh];
  const int n_sink = int(min(int64_t(g.S), n));
  const int n_win = int(min(int64_t(g.W), max(int64_t(0), n - g.S)));
  const int64_t pbase = int64_t(bh) * g.C;
  auto logits = [&](int64_t slot, float* out) {
    const T* k = keys_bh + slot * D;
    for (int gi = 0; gi < G; ++gi) out[gi] = 0.f;
    for (int i = 0; i < D; ++i) {
      const float x = elem_to_float(k[i]);
      for (int gi = 0; gi < G; ++gi) out[gi] = fmaf(qs[gi][i], x, out[gi]);
    }
  };
  auto fixed_slot = [&](int i) { return i < n_sink ? int64_t(i) : int64_t(g.S) + (i - n_sink); };
  float s[kMaxGroup], acc[kMaxGroup], part[kMaxGroup];

  // 1. The max logit of each head.
  for (int gi = 0; gi < kMaxGroup; ++gi) acc[gi] = -INFINITY;
  auto take_max = [&](int64_t slot) {
    logits(slot, s);
    for (int gi = 0; gi < G; ++gi) acc[gi] = fmaxf(acc[gi], s[gi]);
  };
  for (int i = threadIdx.x; i < n_sink + n_win; i += blockDim.x) take_max(fixed_slot(i));
  for (int c = warp; c < g.C; c += n_warps)
    for_partition_slots(g, pbase + c, part_start, part_count, append_pages, append_count, lane, take_max);
  for (int gi = 0; gi < G; ++gi) {
    const float m = block_reduce<true>(acc[gi], red);
    if (threadIdx.x == 0) head_max[gi] = m;
  }
  __syncthreads();

  // 2. Softmax numerators: each partition's (a warp sums it) and the total.
  for (int gi = 0; gi < kMaxGroup; ++gi) acc[gi] = 0.f;
  for (int i = threadIdx.x; i < n_sink + n_win; i += blockDim.x) {
    logits(fixed_slot(i), s);
    for (int gi = 0; gi < G; ++gi) acc[gi] += expf(s[gi] - head_max[gi]);
  }
  for (int c = warp; c < g.C; c += n_warps) {
    for (int gi = 0; gi < kMaxGroup; ++gi) part[gi] = 0.f;
    for_partition_slots(g, pbase + c, part_start, part_count, append_pages, append_count, lane, [&](int64_t slot) {
      logits(slot, s);
      for (int gi = 0; gi < G; ++gi) part[gi] += expf(s[gi] - head_max[gi]);
    });
    for (int gi = 0; gi < G; ++gi) {
      const float m = warp_sum(part[gi]);
      if (lane == 0) mass[(int64_t(bh) * G + gi) * g.C + c] = m;
      acc[gi] += lane == 0 ? m : 0.f;
    }
  }
  for (int gi = 0; gi < G; ++gi) {
    const float z = block_reduce<false>(acc[gi], red);
    if (threadIdx.x == 0) head_sum[gi] = z;
  }
  __syncthreads();

  // 3. Keys. An empty partition is never taken (select skips it), whatever its key.
  for (int c = threadIdx.x; c < g.C; c += blockDim.x) {
    const int n_c = part_count[pbase + c] + append_count[pbase + c];
    float density = 0.f;
    for (int gi = 0; gi < G; ++gi) density += mass[(int64_t(bh) * G + gi) * g.C + c] / head_sum[gi];
    keys[pbase + c] = n_c > 0 ? logf(density) - logf(float(n_c)) : -INFINITY;
  }
}

}  // namespace

const char* routing_name(PartitionRouting r) {
  switch (r) {
    case PartitionRouting::Saap: return "saap";
    case PartitionRouting::KMeans: return "kmeans";
    case PartitionRouting::PartitionOracle: return "partition-oracle";
  }
  return "?";
}

void SaapIndex::rank_kmeans(const float* q_route, cudaStream_t stream) {
  auto& m = *impl_;
  const int C = cfg_.n_partitions, D = shape_.head_dim;
  const size_t smem = (2 * size_t(C) + D) * sizeof(float);
  if (smem > 48 * 1024)
    SAAP_CU(cudaFuncSetAttribute(kmeans_rank_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kmeans_rank_kernel<<<shape_.batch * shape_.n_kv_heads, kRankThreads, smem, stream>>>(
      q_route, m.centroids.get(), shape_.n_q_heads, shape_.n_kv_heads, C, D, spherical_, m.logits.get());
  SAAP_CU_LAUNCHED();
}

void SaapIndex::rank_by_attention(const float* q, cudaStream_t stream) {
  auto& m = *impl_;
  const int64_t bh = int64_t(shape_.batch) * shape_.n_kv_heads;
  m.oracle_mass.resize(size_t(bh) * shape_.group() * cfg_.n_partitions);
  const SaapGeom g{cfg_.n_partitions, cfg_.sinks, cfg_.window, cfg_.append_page, cfg_.append_pages_per_partition,
                   shape_.head_dim, shape_.n_kv_heads, rows_, cfg_.max_prefill};
  // The CPU oracle's softmax scale, 1/sqrt(head_dim), whatever scale attend() is given.
  const float scale = 1.f / std::sqrt(float(shape_.head_dim));
  dispatch_decode(shape_, [&](auto t, auto d, auto) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    oracle_rank_kernel<T, D><<<unsigned(bh), kOracleThreads, 0, stream>>>(
        q, scale, reinterpret_cast<const T*>(m.kpool.get()), g, shape_.n_q_heads, m.seq_len.get(), m.part_start.get(),
        m.part_count.get(), m.append_pages.get(), m.append_count.get(), m.oracle_mass.get(), m.logits.get());
  });
  SAAP_CU_LAUNCHED();
}

}  // namespace saap::cuda
