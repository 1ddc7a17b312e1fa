// H2O (heavy-hitter oracle) on the GPU; the CPU method is methods/h2o.h, and this is its rule:
// per query head a budget of k = rules::Budget::topk(n) keys (a lookup fraction or a fixed count), the most recent
// rules::h2o_recent(k) positions plus the "heavy hitters", the older positions with the largest
// attention weight accumulated over every earlier query of the sequence; when the heavy hitters
// overflow their half, the lightest (ties: the older) are evicted for good.
//
// The state is one fp32 accumulator per (sequence, query head, position), evicted positions held
// at -inf (they can never be selected again, and adding weights never reaches them). A step is
// per_head_topk.cuh's per-head top-k (the oracle's and Loki's select, radix_topk.cuh) on rank keys
// built from it:
//   rank    - block (position tile, query head row): position p = n - 1 - j at index j (reversed,
//             so that the select's tie rule, the lower index, keeps the newer position as H2O
//             does); +inf for the recent positions, the accumulator for the older ones (-inf once
//             evicted). The top k of these are the recent half plus the heaviest surviving older
//             positions: what the CPU selects, its evictions included (a step never needs more
//             than the non-evicted candidates: it evicts down to the heavy half).
//   select  - select_per_head at the budget (the union of the group counted for the bytes)
//   mark    - indices back to positions, each taken index marked (NaN) in the rank keys
//   evict   - every older position whose rank key is unmarked (not taken by its head) is evicted
//   attend  - per_head_attend_kernel over each head's positions, the splits combined
//   weigh   - block per query head: this step's exact softmax weights over its selection (q.k in
//             fp32 in dimension order without fused multiply-adds, as the CPU method computes
//             them; the sum in double, as the CPU does), added to the accumulators.
// No host synchronisation (graph-capturable). Every query of a sequence must come through
// decode(), in position order, as on the CPU; a sequence starts at reset() (no query seen: the
// CPU's state after an exact prefill) or at seed_first_query() (the CPU's state after position 0
// went through the method).
#pragma once
#include <cstdint>
#include <memory>

#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/decode.h"

namespace saap::cuda {

namespace radix_topk {
class Workspace;  // radix_topk.cuh
}

class H2ODecoder {
 public:
  // max_len: the cache's row stride and the longest prefix (>= every length). budget: a lookup in
  // (0, 1] or tokens > 0.
  H2ODecoder(const DecodeShape& shape, int64_t max_len, const rules::Budget& budget);
  ~H2ODecoder();
  H2ODecoder(const H2ODecoder&) = delete;
  H2ODecoder& operator=(const H2ODecoder&) = delete;

  // New sequences, no query seen: every accumulator 0, nothing evicted.
  void reset(cudaStream_t stream = 0);
  // New sequences whose position 0 went through the method (it read itself alone, weight 1): the
  // CPU's state before the query at position 1.
  void seed_first_query(cudaStream_t stream = 0);

  // One query per sequence at position lengths[b] - 1. k, v: the dense cache [batch][n_kv_heads]
  // [max_len][head_dim]; lengths [batch] (device); q, out [batch][n_q_heads][head_dim] (post-RoPE,
  // fp32). Selects, attends with `scale` into out, then adds the step's weights to the state.
  void decode(const void* k, const void* v, const int32_t* lengths, const float* q, float scale, float* out,
              SplitWorkspace& ws, cudaStream_t stream = 0);

  const DecodeShape& shape() const { return shape_; }
  int64_t max_len() const { return max_len_; }
  const rules::Budget& budget() const { return budget_; }
  // Device views of the last decode (tests): per query head row r = b * n_q_heads + hq, its count[r]
  // positions at positions() + r * max_len (in no particular order); per (b, kv head) the union's
  // size; the accumulators [batch][n_q_heads][max_len] (-inf: evicted).
  const int32_t* positions() const { return positions_.get(); }
  const int32_t* counts() const { return counts_.get(); }
  const int32_t* selected_tokens() const { return union_.get(); }
  const float* accumulators() const { return acc_.get(); }

 private:
  DecodeShape shape_;
  int64_t max_len_;
  rules::Budget budget_;
  DeviceBuffer<float> acc_;           // [batch][n_q_heads][max_len] the state
  DeviceBuffer<float> scores_;        // [batch][n_q_heads][max_len] rank keys, then the step's weights
  DeviceBuffer<int32_t> positions_;   // [batch][n_q_heads][max_len]
  DeviceBuffer<int32_t> counts_;      // [batch][n_q_heads]
  DeviceBuffer<int32_t> union_;       // [batch][n_kv_heads]
  std::unique_ptr<radix_topk::Workspace> topk_ws_;
};

}  // namespace saap::cuda
