// Training Saap (and the symmetric k-means baseline) from a calibration set.
//
// Per layer: k-means per KV head on all calibration keys (pre- or post-RoPE, a recorded choice)
// gives the partition; every calibration key is assigned to its nearest centroid. For each
// captured query with a long enough prefix, the TRUE attention (post-RoPE q.k / sqrt(d), causal,
// softmax) is computed and its mass summed per partition of the keys, leaving out the sinks and
// the recent window: those are always read at decode, so the router must learn where the REST of
// the mass is. The target is that remaining mass normalized to a distribution; the sample weight
// is its share of the query's attention; the offset is the log of how many of the query's
// candidate keys each partition holds, so the router learns densities (classifier.h). The router
// of each query head is trained on those (query, target) pairs, starting from nearest-mean-key
// routing (the skip); the held-out split is a seeded random sample of the queries, shared by
// every head of a layer. The held-out statistics replay decode's rule: partitions in rank order,
// each taken whole if it fits a budget of stat_lookup of the prefix (sinks and window counted).
#pragma once
#include <cstdint>
#include <map>
#include <vector>

#include "saap/methods/saap.h"
#include "saap/train/calibration.h"
#include "saap/train/classifier.h"
#include "saap/train/kmeans.h"

namespace saap {

struct SaapTrainOptions {
  int partitions = 256;
  bool pre_rope = true;  // partition and route on pre-RoPE (de-RoPE) vectors, the paper's choice
  bool spherical = true;
  int kmeans_iters = 20;
  int kmeans_redo = 1;
  ClassifierOptions classifier;  // hidden, epochs, batch, lr, patience
  int sinks = 4;                 // must match the budget used at decode for the labels to fit it
  int window = 64;
  int min_prefix = 256;          // queries at positions < min_prefix are not used
  int max_queries = 0;           // per layer, seeded sample; 0: all that qualify
  double val_fraction = 0.1;
  uint64_t seed = 1;
  std::vector<int> layers;       // empty: all
  bool skip = true;              // linear skip initialized from the partitions' mean keys
  double stat_lookup = 0.05;     // the lookup fraction at which the held-out statistics replay decode
  // Partitions given per layer ([n_kv_heads][C][head_dim]); k-means runs only for the layers
  // missing here. Lets routers be retrained on a fixed partition, and two artifacts share one.
  std::map<int, std::vector<float>> centroids;
  bool progress = true;
};

// Router training data of one layer, per query head h: x [n][head_dim] (the router input),
// target [n][C], weight [n].
struct PartitionLabels {
  int n = 0;
  std::vector<int32_t> query;                // [n] index into the layer's captured queries
  std::vector<int32_t> key_partition;        // [windows][window_len][n_kv_heads]
  std::vector<std::vector<float>> x, target, weight;  // [n_heads] each
  std::vector<std::vector<float>> offset;             // [n_kv_heads] [n][C]: log candidate count, -inf for none
  std::vector<int32_t> n_ctx;                         // [n] the query's causal prefix length
};

// The identity a partition artifact ("saap" or "kmeans") trained on this calibration set carries.
ArtifactIdentity partition_artifact_identity(const CalibrationSet& set, const char* method);

// The partition of one layer: centroids [n_kv_heads][C][head_dim].
std::vector<float> train_layer_partition(const CalibrationSet& set, int layer, const SaapTrainOptions& options);
PartitionLabels partition_labels(const CalibrationSet& set, int layer, const std::vector<float>& centroids,
                                 const SaapTrainOptions& options);

// The artifacts; statistics (timings, losses, held-out mass recall of the router, of symmetric
// routing and of the oracle) go into their "train" header.
PartitionArtifact train_saap(const CalibrationSet& set, const SaapTrainOptions& options);
PartitionArtifact train_symmetric_kmeans(const CalibrationSet& set, const SaapTrainOptions& options);

}  // namespace saap
