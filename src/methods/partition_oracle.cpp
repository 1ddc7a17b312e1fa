#include "saap/methods/partition_oracle.h"

#include <algorithm>
#include <cmath>

#include "saap/core/error.h"

namespace saap {

// Never called: the group score below ranks every group.
void PartitionOracleAttention::score(int, const float*, float* scores) {
  std::fill(scores, scores + artifact_->partitions, 0.0f);
}

bool PartitionOracleAttention::group_scores(const GroupQuery& g, float* scores) {
  const int C = artifact_->partitions, d = shape_.head_dim, group = shape_.n_q_heads / shape_.n_kv_heads;
  const int64_t n_ctx = g.q.n_ctx();
  const PartitionLists& parts = lists(g.kv_head);
  SAAP_CHECK_FMT(g.q.q != nullptr, InvalidArgument, "layer %d: partition-oracle needs the post-RoPE query",
                 shape_.layer);
  logits_.resize(size_t(n_ctx));
  key_.resize(size_t(d));
  std::fill(scores, scores + C, 0.0f);
  const double scale = 1.0 / std::sqrt(double(d));
  for (int h = g.kv_head * group; h < (g.kv_head + 1) * group; ++h) {
    const float* q = g.q.q + int64_t(h) * d;
    double mx = -INFINITY;
    for (int64_t p = 0; p < n_ctx; ++p) {
      g.kv.key_to_float(g.kv_head, p, key_.data());
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(q[i]) * key_[size_t(i)];
      mx = std::max(mx, logits_[size_t(p)] = dot * scale);
    }
    double z = 0;
    for (double& a : logits_) z += (a = std::exp(a - mx));
    for (int c = 0; c < C; ++c) {
      if (g.counts[c] == 0) continue;
      double mass = 0;
      for (int32_t p : parts.positions(c))
        if (p >= g.mid_begin && p < g.mid_end) mass += logits_[size_t(p)];
      scores[c] += float(mass / z / double(g.counts[c]));
    }
  }
  return true;
}

MethodFactory partition_oracle_factory(const MethodSpec& spec, const ArtifactIdentity& expected) {
  const PartitionBudget budget = partition_budget(spec);
  ArtifactIdentity want = expected;
  want.method = "kmeans";  // any artifact's partition
  auto artifact = std::make_shared<const PartitionArtifact>(PartitionArtifact::load(spec.artifact, want));
  return [artifact, budget](const LayerShape& shape) -> std::unique_ptr<AttentionMethod> {
    return std::make_unique<PartitionOracleAttention>(shape, artifact, budget);
  };
}

}  // namespace saap
