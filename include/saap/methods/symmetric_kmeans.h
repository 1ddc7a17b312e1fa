// The symmetric baseline Saap is measured against: the same key partition, layout and budget
// rule, but the query is routed IVF-style to the partitions whose centroids are nearest to it
// (largest inner product for spherical centroids, smallest L2 distance otherwise), as if queries
// and keys followed one distribution.
#pragma once
#include "saap/methods/saap.h"

namespace saap {

class SymmetricKMeansAttention : public PartitionedAttention {
 public:
  using PartitionedAttention::PartitionedAttention;
  std::string name() const override { return "kmeans"; }

 protected:
  void score(int head, const float* q_vec, float* scores) override;
  int64_t index_bytes_per_query() const override;
};

// Accepts a "kmeans" artifact or a "saap" one (its centroids: the exact partition Saap uses).
MethodFactory kmeans_factory(const MethodSpec& spec, const ArtifactIdentity& expected);

}  // namespace saap
