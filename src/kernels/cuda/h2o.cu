// H2O decode (h2o.h): rank keys from the accumulated attention, the per-head top-k of
// per_head_topk.cuh, evictions, attention, and the step's weights added to the accumulators.
#include <cmath>

#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/h2o.h"
#include "saap/kernels/cuda/per_head_topk.cuh"

namespace saap::cuda {

using namespace per_head;

namespace {

constexpr int kTileThreads = 256;
constexpr int kWeighThreads = 256;

// The recent positions of an n-token prefix: [n - h2o_recent(k), n).
__device__ __forceinline__ int64_t h2o_recent_begin(const rules::Budget& budget, int64_t n) {
  return n - rules::h2o_recent(budget.topk(n));
}

// Block (index tile, row = b * Hq + hq): rank[row][j] for j < n = lengths[b], position p = n - 1 - j:
// +inf for a recent position, else its accumulator (-inf once evicted).
__global__ void __launch_bounds__(kTileThreads)
    h2o_rank_kernel(const float* __restrict__ acc, int64_t max_len, const int32_t* __restrict__ lengths, int Hq,
                    rules::Budget budget, float* __restrict__ rank) {
  const int64_t row = blockIdx.y, n = lengths[row / Hq];
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const int64_t p = n - 1 - j;
  rank[row * max_len + j] = p >= h2o_recent_begin(budget, n) ? INFINITY : acc[row * max_len + p];
}

// Block (index tile, row): each selected index j back to its position n - 1 - j, and j marked
// taken in the rank keys (NaN: the select that read them is done).
__global__ void __launch_bounds__(kTileThreads)
    h2o_mark_kernel(int64_t max_len, const int32_t* __restrict__ lengths, int Hq, const int32_t* __restrict__ counts,
                    int32_t* __restrict__ positions, float* __restrict__ rank) {
  const int64_t row = blockIdx.y, n = lengths[row / Hq];
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= counts[row]) return;
  const int32_t j = positions[row * max_len + i];
  rank[row * max_len + j] = NAN;
  positions[row * max_len + i] = int32_t(n - 1 - j);
}

// Block (position tile, row): every older position the head did not take (its rank key unmarked)
// evicted: accumulator -inf (already evicted ones stay so).
__global__ void __launch_bounds__(kTileThreads)
    h2o_evict_kernel(int64_t max_len, const int32_t* __restrict__ lengths, int Hq, rules::Budget budget,
                     const float* __restrict__ rank, float* __restrict__ acc) {
  const int64_t row = blockIdx.y, n = lengths[row / Hq];
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= h2o_recent_begin(budget, n)) return;
  if (!isnan(rank[row * max_len + (n - 1 - p)])) acc[row * max_len + p] = -INFINITY;
}

// Block per query head row = b * Hq + hq: its selected positions' softmax weights, as the CPU's
// H2OAttention::attend computes them (s = q.k summed in dimension order, times scale, in fp32;
// w = exp(s - max) in fp32; the sum in double), each w / sum added to the position's accumulator.
// w: [rows][max_len] scratch.
template <class T, int D>
__global__ void __launch_bounds__(kWeighThreads)
    h2o_weigh_kernel(const T* __restrict__ K, int64_t max_len, const int32_t* __restrict__ positions,
                     const int32_t* __restrict__ counts, const float* __restrict__ q, int G, float scale,
                     float* __restrict__ w, float* __restrict__ acc) {
  static_assert(D % 8 == 0, "keys are read 8 components at a time");
  __shared__ float qs[D];
  __shared__ float red[32];
  __shared__ double dred[32][1];
  const int64_t row = blockIdx.x, bh = row / G;
  for (int i = threadIdx.x; i < D; i += blockDim.x) qs[i] = q[row * D + i];
  __syncthreads();
  const int cnt = counts[row];
  const int32_t* pos = positions + row * max_len;
  float* wr = w + row * max_len;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < cnt; i += blockDim.x) {
    const uint4* key = reinterpret_cast<const uint4*>(K + (bh * max_len + pos[i]) * D);
    float s = 0.f;
    for (int c = 0; c < D / 8; ++c) {
      float kf[8];
      Vec8<T>::to_float(key[c], kf);
#pragma unroll
      for (int t = 0; t < 8; ++t) s = __fadd_rn(s, __fmul_rn(qs[c * 8 + t], kf[t]));
    }
    s = __fmul_rn(s, scale);
    wr[i] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_reduce<true>(mx, red);
  double sum[1] = {0.0};
  for (int i = threadIdx.x; i < cnt; i += blockDim.x) {
    const float e = expf(wr[i] - mx);
    wr[i] = e;
    sum[0] += double(e);
  }
  block_allreduce_n<false, 1>(sum, dred);  // dred: used once, no barrier needed before
  for (int i = threadIdx.x; i < cnt; i += blockDim.x) acc[row * max_len + pos[i]] += float(double(wr[i]) / sum[0]);
}

// Block per row: acc[row][0] = 1, the rest 0 (max_len >= 1).
__global__ void h2o_seed_kernel(int64_t max_len, float* __restrict__ acc) {
  const int64_t row = blockIdx.x;
  for (int64_t p = threadIdx.x; p < max_len; p += blockDim.x) acc[row * max_len + p] = p == 0 ? 1.f : 0.f;
}

}  // namespace

H2ODecoder::H2ODecoder(const DecodeShape& shape, int64_t max_len, const rules::Budget& budget)
    : shape_(shape), max_len_(max_len), budget_(budget), topk_ws_(new radix_topk::Workspace) {
  shape_.check(256);
  SAAP_CU_REQUIRE(max_len >= 1 && max_len < (int64_t(1) << 24), InvalidArgument, "max_len = %lld outside [1, 2^24)",
                  (long long)max_len);
  SAAP_CU_REQUIRE(budget.tokens >= 0, InvalidArgument, "budget tokens = %lld must be >= 0 (0: use lookup)",
                  (long long)budget.tokens);
  SAAP_CU_REQUIRE(budget.fixed() || rules::lookup_in_range(budget.lookup), InvalidArgument,
                  "lookup = %g must be in (0, 1] (no fixed budget of tokens given)", budget.lookup);
  const size_t rows = size_t(shape.batch) * shape.n_q_heads;
  acc_.resize(rows * size_t(max_len));
  scores_.resize(rows * size_t(max_len));
  positions_.resize(rows * size_t(max_len));
  counts_.resize(rows);
  union_.resize(size_t(shape.batch) * shape.n_kv_heads);
  topk_ws_->ensure(int64_t(rows), max_len);  // select() must not allocate inside a graph capture
  SAAP_CU(cudaMemset(counts_.get(), 0, counts_.bytes()));
  SAAP_CU(cudaMemset(union_.get(), 0, union_.bytes()));
  reset();
  SAAP_CU(cudaDeviceSynchronize());
}

H2ODecoder::~H2ODecoder() = default;

void H2ODecoder::reset(cudaStream_t stream) { SAAP_CU(cudaMemsetAsync(acc_.get(), 0, acc_.bytes(), stream)); }

void H2ODecoder::seed_first_query(cudaStream_t stream) {
  h2o_seed_kernel<<<unsigned(shape_.batch * shape_.n_q_heads), 256, 0, stream>>>(max_len_, acc_.get());
  SAAP_CU_LAUNCHED();
}

void H2ODecoder::decode(const void* k, const void* v, const int32_t* lengths, const float* q, float scale, float* out,
                        SplitWorkspace& ws, cudaStream_t stream) {
  SAAP_CU_REQUIRE(k && v && lengths && q && out, InvalidArgument, "null pointer among k=%p v=%p lengths=%p q=%p out=%p",
                  k, v, (const void*)lengths, (const void*)q, (void*)out);
  const unsigned rows = unsigned(shape_.batch * shape_.n_q_heads);
  const int G = shape_.group(), Hq = shape_.n_q_heads;
  const rules::Budget& budget = budget_;
  const dim3 tiles(unsigned((max_len_ + kTileThreads - 1) / kTileThreads), rows);
  int splits = 0;
  dispatch_decode(shape_, [&](auto t, auto d, auto) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    h2o_rank_kernel<<<tiles, kTileThreads, 0, stream>>>(acc_.get(), max_len_, lengths, Hq, budget, scores_.get());
    SAAP_CU_LAUNCHED();
    const PrefixLengths len{lengths, shape_.n_kv_heads};
    select_per_head(scores_.get(), max_len_, int64_t(rows), G, len, budget, *topk_ws_, positions_.get(),
                    counts_.get(), union_.get(), stream);
    h2o_mark_kernel<<<tiles, kTileThreads, 0, stream>>>(max_len_, lengths, Hq, counts_.get(), positions_.get(),
                                                        scores_.get());
    SAAP_CU_LAUNCHED();
    h2o_evict_kernel<<<tiles, kTileThreads, 0, stream>>>(max_len_, lengths, Hq, budget, scores_.get(), acc_.get());
    SAAP_CU_LAUNCHED();
    splits = attend_dense_per_head<T, D>(shape_, static_cast<const T*>(k), static_cast<const T*>(v), max_len_,
                                         positions_.get(), counts_.get(), q, scale, budget, ws, stream);
    h2o_weigh_kernel<T, D><<<rows, kWeighThreads, 0, stream>>>(static_cast<const T*>(k), max_len_, positions_.get(),
                                                               counts_.get(), q, G, scale, scores_.get(), acc_.get());
    SAAP_CU_LAUNCHED();
  });
  combine_splits(shape_, splits, ws, out, stream);
}

}  // namespace saap::cuda
