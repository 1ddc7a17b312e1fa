// GPU indexes from the artifacts `saap train` writes (FAISS style): the host side reads the same
// PartitionArtifact / LokiArtifact as the CPU methods and uploads one layer.
#include "saap/core/error.h"
#include "saap/core/safetensors.h"
#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/loki.h"
#include "saap/kernels/cuda/saap.h"
#include "saap/methods/loki.h"
#include "saap/methods/saap.h"

namespace saap::cuda {

namespace {

// The artifact in memory must still fit the model (it may not come from load(), which checks the
// file): method, model identity, layer and head counts, head dim; BadFile naming the field.
void check_identity(const ArtifactIdentity& have, ArtifactIdentity want, const char* what, int layer) {
  want.format_version = have.format_version;  // load() checked the file's version
  check_artifact(to_json(have), want, std::string(what) + " (layer " + std::to_string(layer) + ")");
  SAAP_CHECK_FMT(layer >= 0 && layer < want.n_layers, InvalidArgument, "layer = %d outside [0, n_layers = %d)", layer,
                 want.n_layers);
}

DecodeShape shape_of(const ArtifactIdentity& model, int batch, DType kv_dtype) {
  DecodeShape s{batch, model.n_heads, model.n_kv_heads, model.head_dim, kv_dtype};
  s.check();
  return s;
}

}  // namespace

std::unique_ptr<SaapIndex> SaapIndex::from_artifact(const PartitionArtifact& a, const ArtifactIdentity& model,
                                                    int layer, int batch, DType kv_dtype, SaapConfig cfg,
                                                    PartitionRouting routing) {
  ArtifactIdentity want = model;
  // Saap needs the routers; the baselines read any artifact's partition (as their CPU factories).
  want.method = routing == PartitionRouting::Saap ? "saap" : a.identity.method;
  check_identity(a.identity, want, "partition artifact", layer);
  SAAP_CHECK_FMT(routing != PartitionRouting::Saap || a.has_classifiers(), InvalidArgument,
                 "routing saap needs an artifact with routers; this one is '%s'", a.identity.method.c_str());
  const auto it = a.layers.find(layer);
  SAAP_CHECK_FMT(it != a.layers.end(), InvalidArgument, "layer = %d was not trained in this artifact (%zu layers trained)",
                 layer, a.layers.size());
  const PartitionLayer& pl = it->second;
  cfg.n_partitions = a.partitions;
  cfg.routing = routing;
  cfg.separate_routing_keys = a.pre_rope;  // the cache holds post-RoPE keys
  if (routing == PartitionRouting::Saap) cfg.classifier_hidden = a.hidden;
  auto index = std::make_unique<SaapIndex>(shape_of(model, batch, kv_dtype), cfg);
  index->set_centroids(pl.centroids, a.spherical);
  if (routing == PartitionRouting::Saap) {
    const int64_t Hq = model.n_heads, H = a.hidden, D = model.head_dim, C = a.partitions;
    SAAP_CHECK_FMT(int64_t(pl.classifiers.size()) == Hq, BadFile, "layer %d holds %zu routers for %lld query heads",
                   layer, pl.classifiers.size(), (long long)Hq);
    std::vector<float> w1, b1, w2, b2;
    w1.reserve(size_t(Hq * H * D));
    w2.reserve(size_t(Hq * C * H));
    for (const PartitionClassifier& r : pl.classifiers) {
      SAAP_CHECK_FMT(r.in_dim == D && r.hidden == H && r.out_dim == C, BadFile,
                     "layer %d: router shape (%d, %d, %d) differs from (head_dim, hidden, partitions) = (%lld, %lld, %lld)",
                     layer, r.in_dim, r.hidden, r.out_dim, (long long)D, (long long)H, (long long)C);
      w1.insert(w1.end(), r.w1.begin(), r.w1.end());
      b1.insert(b1.end(), r.b1.begin(), r.b1.end());
      w2.insert(w2.end(), r.w2.begin(), r.w2.end());
      b2.insert(b2.end(), r.b2.begin(), r.b2.end());
    }
    index->set_classifier(w1, b1, w2, b2);
  }
  return index;
}

std::unique_ptr<SaapIndex> SaapIndex::from_artifact(const std::string& path, const ArtifactIdentity& model, int layer,
                                                    int batch, DType kv_dtype, const SaapConfig& cfg,
                                                    PartitionRouting routing) {
  ArtifactIdentity want = model;
  want.method = routing == PartitionRouting::Saap ? "saap" : "kmeans";  // "kmeans" also reads a Saap file's partition
  const PartitionArtifact a = PartitionArtifact::load(path, want);
  return from_artifact(a, model, layer, batch, kv_dtype, cfg, routing);
}

std::unique_ptr<LokiIndex> LokiIndex::from_artifact(const LokiArtifact& a, const ArtifactIdentity& model, int layer,
                                                    int batch, DType kv_dtype, int64_t max_len, double d_f) {
  ArtifactIdentity want = model;
  want.method = "loki";
  check_identity(a.identity, want, "loki artifact", layer);
  SAAP_CHECK_FMT(d_f > 0.0 && d_f <= 1.0, InvalidArgument, "d_f = %g must be in (0, 1]", d_f);
  const int D = model.head_dim;
  // The CPU method's rank (selection_rules.h); the kernels score with LokiIndex::supported_rank.
  const int rank = rules::loki_rank(d_f, D);
  SAAP_CHECK_FMT(LokiIndex::supported_rank(rank) && rank < D, Unsupported,
                 "d_f = %g gives rank %d of head_dim %d; the GPU scores with rank 8, 16, 32, 64 or 128 (< head_dim)",
                 d_f, rank, D);
  auto index = std::make_unique<LokiIndex>(shape_of(model, batch, kv_dtype), max_len, rank);
  // The artifact holds each axis as a row (k' = components . k); set_basis takes them as columns.
  std::vector<float> basis(size_t(model.n_kv_heads) * D * D);
  for (int h = 0; h < model.n_kv_heads; ++h) {
    const float* rows = a.basis(layer, h);
    float* cols = basis.data() + size_t(h) * D * D;
    for (int j = 0; j < D; ++j)
      for (int i = 0; i < D; ++i) cols[size_t(i) * D + j] = rows[size_t(j) * D + i];
  }
  index->set_basis(basis);
  index->pre_rope_ = a.pre_rope;
  return index;
}

std::unique_ptr<LokiIndex> LokiIndex::from_artifact(const std::string& path, const ArtifactIdentity& model, int layer,
                                                    int batch, DType kv_dtype, int64_t max_len, double d_f) {
  ArtifactIdentity want = model;
  want.method = "loki";
  return from_artifact(LokiArtifact::load(path, want), model, layer, batch, kv_dtype, max_len, d_f);
}

}  // namespace saap::cuda
