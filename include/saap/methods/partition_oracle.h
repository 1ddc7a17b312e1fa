// The ceiling of any router on a given key partition: the same partition, layout and budget rule
// as Saap and the symmetric baseline, but the partitions are ranked by the TRUE attention density
// of the group's heads (exact softmax over the whole prefix, mass per partition over its key
// count). It reads every key to decide, so it is a measuring stick, not a method to deploy: what
// it misses, no router on this partition can find within the budget.
#pragma once
#include "saap/methods/saap.h"

namespace saap {

class PartitionOracleAttention : public PartitionedAttention {
 public:
  using PartitionedAttention::PartitionedAttention;
  std::string name() const override { return "partition-oracle"; }

 protected:
  void score(int head, const float* q_vec, float* scores) override;
  bool group_scores(const GroupQuery& g, float* scores) override;
  int64_t index_bytes_per_query() const override { return 0; }

 private:
  std::vector<double> logits_;
  std::vector<float> key_;
};

// Accepts a "kmeans" or a "saap" artifact (its partition).
MethodFactory partition_oracle_factory(const MethodSpec& spec, const ArtifactIdentity& expected);

}  // namespace saap
