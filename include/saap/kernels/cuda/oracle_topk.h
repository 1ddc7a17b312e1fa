// Oracle top-k on the GPU (the CPU method is methods/oracle_topk.h): every query head scores every
// key of its causal prefix exactly and attends to its own k best (rules::Budget::topk of the prefix:
// a lookup fraction or a fixed count of tokens; ties to the lower position, rules::ranks_before).
// The heads of a KV group choose independently, as on the CPU, and the group's read is the union
// of their choices. It reads all of K to decide, so it is a quality ceiling, not a speed-up.
//
// A decode step is three kernels on the dense cache (per_head_topk.cuh, which Loki runs on its
// low-rank scores), no host synchronisation (graph-capturable):
//   score   - block (position tile, b * n_kv_heads): the G heads' scores q.k of every position,
//             summed in order in fp32 without fused multiply-adds, as the CPU method computes them,
//             so both devices rank the same numbers
//   select  - grids over (prefix tile, query head): each head's k-th key by a radix select over
//             the order-preserving bits of the scores (radix_topk.cuh), then the taken positions
//             written in position order (keys equal to the k-th taken from the lowest position);
//             the union of the group's heads is counted for the byte accounting
//   attend  - block (split, query head, b): exact attention of each head over its own positions
//             (the GroupAttender of one head), the splits combined as every decode kernel's
#pragma once
#include <cstdint>
#include <memory>

#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/decode.h"

namespace saap::cuda {

namespace radix_topk {
class Workspace;  // radix_topk.cuh
}

class OracleTopKDecoder {
 public:
  // max_len: the cache's row stride and the longest prefix (>= every length).
  OracleTopKDecoder(const DecodeShape& shape, int64_t max_len);
  ~OracleTopKDecoder();
  OracleTopKDecoder(const OracleTopKDecoder&) = delete;
  OracleTopKDecoder& operator=(const OracleTopKDecoder&) = delete;

  // k, v: the dense cache [batch][n_kv_heads][max_len][head_dim]; lengths [batch] (device);
  // q, out [batch][n_q_heads][head_dim] (post-RoPE, fp32). budget: a lookup in (0, 1] or tokens > 0.
  // The scores use q as given (the CPU oracle's q.k, unscaled); attention uses `scale`.
  void decode(const void* k, const void* v, const int32_t* lengths, const float* q, float scale,
              const rules::Budget& budget, float* out, SplitWorkspace& ws, cudaStream_t stream = 0);

  const DecodeShape& shape() const { return shape_; }
  int64_t max_len() const { return max_len_; }
  // Device views of the last decode (tests): per query head row r = b * n_q_heads + hq, its
  // count[r] positions at positions() + r * max_len, ascending; per (b, kv head) the union's size.
  const int32_t* positions() const { return positions_.get(); }
  const int32_t* counts() const { return counts_.get(); }
  const int32_t* selected_tokens() const { return union_.get(); }

 private:
  DecodeShape shape_;
  int64_t max_len_;
  DeviceBuffer<float> scores_;        // [batch][n_q_heads][max_len]
  DeviceBuffer<int32_t> positions_;   // [batch][n_q_heads][max_len]
  DeviceBuffer<int32_t> counts_;      // [batch][n_q_heads]
  DeviceBuffer<int32_t> union_;       // [batch][n_kv_heads]
  std::unique_ptr<radix_topk::Workspace> topk_ws_;
};

}  // namespace saap::cuda
