#include "saap/methods/symmetric_kmeans.h"

namespace saap {

void SymmetricKMeansAttention::score(int head, const float* q_vec, float* scores) {
  const int d = shape_.head_dim, C = artifact_->partitions;
  const float* c = centroids(head / (shape_.n_q_heads / shape_.n_kv_heads));
  for (int j = 0; j < C; ++j) {
    const float* m = c + int64_t(j) * d;
    float qm = 0, mm = 0;
    for (int i = 0; i < d; ++i) qm += q_vec[i] * m[i], mm += m[i] * m[i];
    // Nearest by the metric the partition was built with: inner product (spherical) or L2, whose
    // ranking is that of 2 q.m - ||m||^2.
    scores[j] = artifact_->spherical ? qm : 2.0f * qm - mm;
  }
}

// Each KV head's centroids are read once for its group, plus its partition size table.
int64_t kmeans_index_bytes(const PartitionArtifact& artifact, const LayerShape& shape) {
  return int64_t(shape.n_kv_heads) * artifact.partitions *
         (int64_t(shape.head_dim) * int64_t(sizeof(float)) + int64_t(sizeof(int32_t)));
}

int64_t SymmetricKMeansAttention::index_bytes_per_query() const { return kmeans_index_bytes(*artifact_, shape_); }

MethodFactory kmeans_factory(const MethodSpec& spec, const ArtifactIdentity& expected) {
  const PartitionBudget budget = partition_budget(spec);
  ArtifactIdentity want = expected;
  want.method = "kmeans";
  auto artifact = std::make_shared<const PartitionArtifact>(PartitionArtifact::load(spec.artifact, want));
  return [artifact, budget](const LayerShape& shape) -> std::unique_ptr<AttentionMethod> {
    return std::make_unique<SymmetricKMeansAttention>(shape, artifact, budget);
  };
}

}  // namespace saap
