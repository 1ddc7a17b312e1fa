// Saap: Self-Attention with Asymmetric Partitions (Mazaré et al., arXiv 2502.08246).
// Keys are partitioned per KV head by (spherical) k-means centroids and stored grouped by
// partition; each query head routes its query with a small trained MLP that scores each partition
// by the log attention density it predicts for its keys (classifier.h); the predicted mass of a
// partition is its key count times that density.
//
// Budget and accounting. The lookup fraction is KV tokens read over the causal prefix, counting
// everything read: the sinks and the recent window (always read) come out of ceil(lookup * n_ctx)
// first, and the partitions get the rest (in rank order, each read whole and only if it fits, so
// the KV read never exceeds the budget). The heads of one KV group share one read and every head
// of the group attends over it: Saap ranks the partitions by predicted density (mass per key read)
// summed over the group's heads; the symmetric baseline merges its heads' nearest-centroid rankings
// round-robin.
// Router weights, centroids and partition-size tables are index data whose size does not grow with
// the context; LookupStats reports them apart (index_bytes), and kv_fraction() is the headline.
// The symmetric baseline (symmetric_kmeans.h) shares everything but the router.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "saap/core/safetensors.h"
#include "saap/methods/method.h"
#include "saap/methods/registry.h"

namespace saap {

// Key -> partition: nearest centroid. Spherical k-means (the paper's choice) uses the largest
// inner product with unit centroids; plain k-means the smallest L2 distance.
int32_t nearest_centroid(const float* centroids, int n_centroids, int dim, bool spherical, const float* x);

// The query router of one query head: scores = W2 relu(W1 x + b1) + b2, one score per partition.
// Input standardization learned during training is folded into W1 and b1.
struct PartitionClassifier {
  int in_dim = 0, hidden = 0, out_dim = 0;
  std::vector<float> w1;  // [hidden][in_dim]
  std::vector<float> b1;  // [hidden]
  std::vector<float> w2;  // [out_dim][hidden]
  std::vector<float> b2;  // [out_dim]

  PartitionClassifier() = default;
  PartitionClassifier(int in_dim, int hidden, int out_dim);
  int64_t n_params() const { return int64_t(hidden) * (in_dim + 1) + int64_t(out_dim) * (hidden + 1); }
  // x [in_dim] -> scores [out_dim]; hidden_scratch holds `hidden` floats.
  void scores(const float* x, float* out, float* hidden_scratch) const;
};

// Per layer: the key partition of each KV head and (Saap only) the router of each query head.
struct PartitionLayer {
  std::vector<float> centroids;                  // [n_kv_heads][C][head_dim]
  std::vector<PartitionClassifier> classifiers;  // [n_heads], empty in a "kmeans" artifact
};

// What a Saap artifact's router scores mean; an artifact whose routers say otherwise is refused.
inline constexpr const char* kRouterOutput = "log_density";

// The trained index of every layer, as written by the trainers and read by the factories.
// Tensors: centroids.<layer> [n_kv_heads][C][head_dim]; for Saap also w1.<layer> [n_heads][H][head_dim],
// b1.<layer> [n_heads][H], w2.<layer> [n_heads][C][H], b2.<layer> [n_heads][C]. The header holds
// the identity (method "saap" or "kmeans") plus "partitions", "hidden", "rope" ("pre"|"post"),
// "spherical", "router" (Saap: kRouterOutput), "layers" (those trained) and "train" (choices and
// statistics).
struct PartitionArtifact {
  ArtifactIdentity identity;
  int partitions = 0;
  int hidden = 0;  // 0 in a "kmeans" artifact
  bool pre_rope = true;
  bool spherical = true;
  std::map<int, PartitionLayer> layers;
  nlohmann::json train;  // training choices and statistics (free-form, recorded as is)

  bool has_classifiers() const { return identity.method == "saap"; }
  void save(const std::string& path) const;
  // Validates the identity against `expected` (whose method may be "saap" or "kmeans"; a "kmeans"
  // reader accepts a Saap artifact and uses its centroids), every shape and every value (BadFile).
  static PartitionArtifact load(const std::string& path, const ArtifactIdentity& expected);
};

// Inverted lists of one KV head: per partition, its positions in increasing order and copies of
// their K and V rows (the cache dtype's bytes) stored contiguously, so that reading a partition is
// one contiguous read. Appends grow each list geometrically (std::vector).
class PartitionLists {
 public:
  PartitionLists(int n_partitions, int64_t row_bytes);
  int n_partitions() const { return int(positions_.size()); }
  void append(int partition, int32_t pos, const void* k_row, const void* v_row);
  // Drops every position >= pos (a truncated cache re-placed from there).
  void truncate(int32_t pos);
  void clear();
  int64_t size(int partition) const { return int64_t(positions_[size_t(partition)].size()); }
  int64_t total() const;
  const std::vector<int32_t>& positions(int partition) const { return positions_[size_t(partition)]; }
  const uint8_t* keys(int partition) const { return keys_[size_t(partition)].data(); }
  const uint8_t* values(int partition) const { return values_[size_t(partition)].data(); }
  int64_t row_bytes() const { return row_bytes_; }

 private:
  int64_t row_bytes_;
  std::vector<std::vector<int32_t>> positions_;
  std::vector<std::vector<uint8_t>> keys_, values_;
};

struct PartitionBudget {
  double lookup = 0.05;  // KV tokens read (sinks + window + partitions) <= about lookup * n_ctx
  int sinks = 4;
  int window = 64;
  int64_t tokens = 0;  // > 0: a fixed budget of this many K/V tokens per query instead of lookup
};

// Everything Saap and the symmetric baseline share: assignment on place(), the grouped layout,
// the budget rule. Subclasses say how a query head scores the partitions.
class PartitionedAttention : public AttentionMethod {
 public:
  PartitionedAttention(const LayerShape& shape, std::shared_ptr<const PartitionArtifact> artifact,
                       const PartitionBudget& budget);
  void reset() override;
  void place(const LayerKV& kv, int64_t begin, int64_t end, const float* k_pre) override;
  void select(const LayerKV& kv, const QueryView& q, Selection& sel) override;

  const PartitionLists& lists(int kv_head) const { return lists_[size_t(kv_head)]; }
  int64_t placed() const { return placed_; }
  int partitions() const { return artifact_->partitions; }

 protected:
  // scores [C] for query head h; q_vec is q_pre or post-RoPE q per the artifact's choice.
  virtual void score(int head, const float* q_vec, float* scores) = 0;
  // scores [C] for the query heads of kv_head together (routing: all heads' routing vectors;
  // counts [C]: each partition's keys in the candidate range [mid_begin, mid_end)); false when the
  // method has no group score, and the heads' rankings are merged round-robin instead.
  struct GroupQuery {
    const LayerKV& kv;
    const QueryView& q;
    const float* routing;
    int kv_head;
    int32_t mid_begin, mid_end;
    const int64_t* counts;
  };
  virtual bool group_scores(const GroupQuery& g, float* scores) {
    (void)g, (void)scores;
    return false;
  }
  // Index bytes one query reads to decide (router weights or centroids, partition sizes).
  virtual int64_t index_bytes_per_query() const = 0;
  const float* centroids(int kv_head) const;

  std::shared_ptr<const PartitionArtifact> artifact_;
  const PartitionLayer* layer_ = nullptr;
  PartitionBudget budget_;

 private:
  std::vector<PartitionLists> lists_;
  int64_t placed_ = 0;
  std::vector<float> feature_, scores_;
  std::vector<int32_t> order_;   // [group][C]: each head's ranking of the partitions
  std::vector<int32_t> merged_;  // [C]: the heads' rankings merged round-robin
  std::vector<uint8_t> taken_;   // [C]: partitions the group reads
  std::vector<int64_t> counts_;
};

class SaapAttention : public PartitionedAttention {
 public:
  SaapAttention(const LayerShape& shape, std::shared_ptr<const PartitionArtifact> artifact,
                const PartitionBudget& budget);
  std::string name() const override { return "saap"; }

 protected:
  void score(int head, const float* q_vec, float* scores) override;
  bool group_scores(const GroupQuery& g, float* scores) override;
  int64_t index_bytes_per_query() const override;

 private:
  std::vector<float> hidden_, head_scores_, head_lse_;  // head_scores_ [group][C], head_lse_ [group]
};

// Index bytes one query at `shape.layer` reads to decide, whatever its context: Saap's router
// weights of every query head (fp32) and each KV head's partition size table (int32); k-means'
// centroids of each KV head (fp32, read once for its group) and the size table. The CPU methods
// and the GPU runner (saap::cuda, whose router and centroid scoring read the same fp32 tensors)
// both charge these. saap_index_bytes needs a Saap artifact holding the layer (InvalidArgument).
int64_t saap_index_bytes(const PartitionArtifact& artifact, const LayerShape& shape);
int64_t kmeans_index_bytes(const PartitionArtifact& artifact, const LayerShape& shape);

// Checks spec (lookup in (0, 1], sinks and window >= 0) and reads the artifact once; the factory
// refuses a layer the artifact does not hold.
PartitionBudget partition_budget(const MethodSpec& spec);
MethodFactory saap_factory(const MethodSpec& spec, const ArtifactIdentity& expected);

}  // namespace saap
