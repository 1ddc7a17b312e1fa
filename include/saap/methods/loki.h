// Loki (Singhania et al., NeurIPS 2024, arXiv 2406.02542): keys are low-rank in a PCA basis.
// Offline, a full orthogonal basis P (D x D) is fitted per layer and KV head on calibration keys
// (pre- or post-RoPE; the better one is model dependent). At decode the query is rotated, q' = qP,
// each prefix key is ranked by the partial score q'[:r] . k'[:r] with r = rules::loki_rank(d_f, D)
// (the ceiling, at least 1), and exact attention runs over the top k = rules::loki_keys(k_f, n_ctx) keys. As in the authors' code, the basis is
// applied to post-RoPE q and k whichever keys it was fitted on, the PCA mean is not subtracted,
// and there are no sinks or recent window. Since P is orthogonal, q.k = (qP).(kP): the exact
// attention reads the original cache and is unchanged by the rotation.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "saap/core/safetensors.h"
#include "saap/methods/method.h"
#include "saap/methods/registry.h"

namespace saap {

struct LokiParams {
  double k_f = 0.25;  // fraction of the causal prefix attended, in (0, 1]; at least 1 token
  double d_f = 0.25;  // fraction of the dimensions used for ranking, in (0, 1]; at least 1
};

// The trained bases of every layer and KV head. Tensors: components [L][H_kv][D][D] (row j of a
// head's matrix is its j-th principal axis, descending variance: k' = components . k, P its
// transpose), variances and explained_ratio [L][H_kv][D]. Header: the identity (method "loki")
// plus "rope" ("pre" | "post": the keys the basis was fitted on) and "train" (free-form record).
struct LokiArtifact {
  ArtifactIdentity identity;
  bool pre_rope = true;
  std::vector<float> components;       // [n_layers][n_kv_heads][head_dim][head_dim]
  std::vector<float> variances;        // [n_layers][n_kv_heads][head_dim]
  std::vector<float> explained_ratio;  // [n_layers][n_kv_heads][head_dim]
  nlohmann::json train = nlohmann::json::object();

  const float* basis(int layer, int kv_head) const;  // [head_dim][head_dim]
  // Smallest r with the cumulated explained variance >= threshold, maximised over KV heads (the
  // paper's per-layer variant of d_f).
  int rank_for_variance(int layer, double threshold) const;
  void save(const std::string& path) const;
  // Refuses (BadFile naming the field) another method's file, another model, other head counts,
  // wrong tensor shapes, non-finite values and a basis that is not orthonormal.
  static LokiArtifact load(const std::string& path, const ArtifactIdentity& expected);
};

// Index bytes a query with an n_ctx-token prefix reads to decide: 0 when k covers the prefix;
// else r = rules::loki_rank(d_f, head_dim) coordinates of every prefix key per KV head, in the
// cache dtype. LokiAttention::select and the GPU runner (saap::cuda, bf16 coordinates) both charge this.
int64_t loki_index_bytes(const LokiParams& params, const LayerShape& shape, int64_t n_ctx, DType cache_dtype);

class LokiAttention : public AttentionMethod {
 public:
  LokiAttention(const LayerShape& shape, const LokiParams& params, std::shared_ptr<const LokiArtifact> artifact);
  std::string name() const override { return "loki"; }
  int rank() const { return rank_; }

  void reset() override;
  // Rotates the new post-RoPE keys (read from kv) into the basis and keeps their first r
  // coordinates. Positions must arrive in order; begin below what was placed (a truncated cache
  // being refilled) drops the rest first.
  void place(const LayerKV& kv, int64_t begin, int64_t end, const float* k_pre) override;
  // Selects everything when k covers the prefix; else the top-k partial scores per query head.
  // index_bytes: r coordinates of every prefix key per KV head, in the cache dtype.
  void select(const LayerKV& kv, const QueryView& q, Selection& sel) override;

 private:
  LokiParams params_;
  std::shared_ptr<const LokiArtifact> artifact_;
  int rank_ = 0;
  int64_t placed_ = 0;
  // [n_kv_heads][rank][positions]: coordinate j of every token is contiguous, so the partial
  // score over r coordinates streams r rows.
  std::vector<std::vector<float>> coords_;
  std::vector<float> scores_, q_rot_;
};

// Loads spec.artifact once, checks it against `expected` (method set to "loki") and builds one
// LokiAttention per layer, sharing the artifact.
MethodFactory loki_factory(const MethodSpec& spec, const ArtifactIdentity& expected);

}  // namespace saap
