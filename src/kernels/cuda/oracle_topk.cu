// Oracle top-k decode (oracle_topk.h): score every prefix key, select each head's k best, attend.
// A baseline written to choose exactly what the CPU method chooses, not for speed.
#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/oracle_topk.h"
#include "saap/kernels/cuda/per_head_topk.cuh"

namespace saap::cuda {

using namespace per_head;

OracleTopKDecoder::OracleTopKDecoder(const DecodeShape& shape, int64_t max_len)
    : shape_(shape), max_len_(max_len), topk_ws_(new radix_topk::Workspace) {
  shape_.check(256);
  SAAP_CU_REQUIRE(max_len >= 1 && max_len < (int64_t(1) << 24), InvalidArgument, "max_len = %lld outside [1, 2^24)",
                  (long long)max_len);
  const size_t rows = size_t(shape.batch) * shape.n_q_heads;
  scores_.resize(rows * size_t(max_len));
  positions_.resize(rows * size_t(max_len));
  counts_.resize(rows);
  union_.resize(size_t(shape.batch) * shape.n_kv_heads);
  topk_ws_->ensure(int64_t(rows), max_len);
  SAAP_CU(cudaMemset(counts_.get(), 0, counts_.bytes()));
  SAAP_CU(cudaMemset(union_.get(), 0, union_.bytes()));
}

OracleTopKDecoder::~OracleTopKDecoder() = default;

void OracleTopKDecoder::decode(const void* k, const void* v, const int32_t* lengths, const float* q, float scale,
                               const rules::Budget& budget, float* out, SplitWorkspace& ws, cudaStream_t stream) {
  SAAP_CU_REQUIRE(k && v && lengths && q && out, InvalidArgument, "null pointer among k=%p v=%p lengths=%p q=%p out=%p",
                  k, v, (const void*)lengths, (const void*)q, (void*)out);
  SAAP_CU_REQUIRE(budget.tokens >= 0, InvalidArgument, "budget tokens = %lld must be >= 0 (0: use lookup)",
                  (long long)budget.tokens);
  SAAP_CU_REQUIRE(budget.fixed() || rules::lookup_in_range(budget.lookup), InvalidArgument,
                  "lookup = %g must be in (0, 1] (no fixed budget of tokens given)", budget.lookup);
  const unsigned bh = unsigned(shape_.batch * shape_.n_kv_heads);
  const int G = shape_.group();
  int splits = 0;
  dispatch_decode(shape_, [&](auto t, auto d, auto) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    const PrefixLengths len{lengths, shape_.n_kv_heads};
    score_per_head<T, D>(static_cast<const T*>(k), max_len_, bh, len, q, D, G, scores_.get(), stream);
    select_per_head(scores_.get(), max_len_, int64_t(shape_.batch) * shape_.n_q_heads, G, len, budget, *topk_ws_,
                    positions_.get(), counts_.get(), union_.get(), stream);
    splits = attend_dense_per_head<T, D>(shape_, static_cast<const T*>(k), static_cast<const T*>(v), max_len_,
                                         positions_.get(), counts_.get(), q, scale, budget, ws, stream);
  });
  combine_splits(shape_, splits, ws, out, stream);
}

}  // namespace saap::cuda
