#include "saap/methods/loki.h"

#include <algorithm>
#include <cmath>

#include "saap/core/error.h"
#include "saap/core/selection_rules.h"
#include "saap/kernels/cpu/attention.h"
#include "saap/methods/oracle_topk.h"  // top_k_positions

namespace saap {

namespace {

// A stored basis must be orthonormal for attention to stay exact; float storage of a float64
// eigen-decomposition is orthonormal to ~1e-6, so 1e-3 only catches corruption.
constexpr double kOrthoTolerance = 1e-3;

}  // namespace

const float* LokiArtifact::basis(int layer, int kv_head) const {
  SAAP_CHECK_FMT(layer >= 0 && layer < identity.n_layers, InvalidArgument, "layer = %d outside [0, %d)", layer,
                 identity.n_layers);
  SAAP_CHECK_FMT(kv_head >= 0 && kv_head < identity.n_kv_heads, InvalidArgument, "kv_head = %d outside [0, %d)",
                 kv_head, identity.n_kv_heads);
  const int64_t d = identity.head_dim;
  return components.data() + (int64_t(layer) * identity.n_kv_heads + kv_head) * d * d;
}

int LokiArtifact::rank_for_variance(int layer, double threshold) const {
  const int d = identity.head_dim;
  int r = 1;
  for (int h = 0; h < identity.n_kv_heads; ++h) {
    const float* ratio = explained_ratio.data() + (int64_t(layer) * identity.n_kv_heads + h) * d;
    double sum = 0.0;
    int j = 0;
    while (j < d && sum < threshold) sum += ratio[j++];
    r = std::max(r, j);
  }
  return r;
}

void LokiArtifact::save(const std::string& path) const {
  const int64_t L = identity.n_layers, H = identity.n_kv_heads, D = identity.head_dim;
  SAAP_CHECK_FMT(int64_t(components.size()) == L * H * D * D && int64_t(variances.size()) == L * H * D &&
                     int64_t(explained_ratio.size()) == L * H * D,
                 InvalidArgument, "artifact arrays do not match n_layers = %lld, n_kv_heads = %lld, head_dim = %lld",
                 (long long)L, (long long)H, (long long)D);
  SafetensorsWriter w;
  w.add_f32("components", components.data(), {L, H, D, D});
  w.add_f32("variances", variances.data(), {L, H, D});
  w.add_f32("explained_ratio", explained_ratio.data(), {L, H, D});
  nlohmann::json header = to_json(identity);
  header["rope"] = pre_rope ? "pre" : "post";
  header["train"] = train;
  w.write(path, header);
}

LokiArtifact LokiArtifact::load(const std::string& path, const ArtifactIdentity& expected) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  ArtifactIdentity want = expected;
  want.method = "loki";
  check_artifact(file.header(), want, path);
  const nlohmann::json& h = file.header();
  const char* p = path.c_str();
  SAAP_CHECK_FMT(h.contains("rope") && (h["rope"] == "pre" || h["rope"] == "post"), BadFile,
                 "%s: header field 'rope' is %s, \"pre\" or \"post\" expected", p,
                 h.contains("rope") ? h["rope"].dump().c_str() : "missing");
  LokiArtifact a;
  a.identity = want;
  a.pre_rope = h["rope"] == "pre";
  if (h.contains("train")) a.train = h["train"];
  const int64_t L = want.n_layers, H = want.n_kv_heads, D = want.head_dim;
  const SafeTensor& c = file.tensor("components", {L, H, D, D});
  const SafeTensor& v = file.tensor("variances", {L, H, D});
  const SafeTensor& r = file.tensor("explained_ratio", {L, H, D});
  a.components.assign(c.f32(), c.f32() + c.numel());
  a.variances.assign(v.f32(), v.f32() + v.numel());
  a.explained_ratio.assign(r.f32(), r.f32() + r.numel());
  for (int layer = 0; layer < L; ++layer)
    for (int kvh = 0; kvh < H; ++kvh) {
      const float* b = a.basis(layer, kvh);
      for (int i = 0; i < D; ++i)
        for (int j = i; j < D; ++j) {
          double dot = 0.0;
          for (int t = 0; t < D; ++t) dot += double(b[i * D + t]) * b[j * D + t];
          SAAP_CHECK_FMT(std::isfinite(dot) && std::fabs(dot - (i == j ? 1.0 : 0.0)) <= kOrthoTolerance, BadFile,
                         "%s: tensor 'components': layer %d, kv head %d is not orthonormal (rows %d.%d = %g)", p,
                         layer, kvh, i, j, dot);
        }
      for (int j = 0; j < D; ++j) {
        const float var = a.variances[size_t((layer * H + kvh) * D + j)];
        SAAP_CHECK_FMT(std::isfinite(var) && var >= 0.0f, BadFile,
                       "%s: tensor 'variances': layer %d, kv head %d, component %d is %g", p, layer, kvh, j,
                       double(var));
      }
    }
  return a;
}

LokiAttention::LokiAttention(const LayerShape& shape, const LokiParams& params,
                             std::shared_ptr<const LokiArtifact> artifact)
    : AttentionMethod(shape), params_(params), artifact_(std::move(artifact)) {
  check_fraction(params.k_f, "k_f");
  check_fraction(params.d_f, "d_f");
  SAAP_CHECK_MSG(artifact_ != nullptr, InvalidArgument, "Loki needs an artifact");
  const ArtifactIdentity& id = artifact_->identity;
  SAAP_CHECK_FMT(shape.layer >= 0 && shape.layer < id.n_layers, InvalidArgument,
                 "layer %d is not in the artifact (n_layers = %d)", shape.layer, id.n_layers);
  SAAP_CHECK_FMT(shape.n_kv_heads == id.n_kv_heads && shape.head_dim == id.head_dim, InvalidArgument,
                 "layer %d has n_kv_heads = %d, head_dim = %d; the artifact n_kv_heads = %d, head_dim = %d",
                 shape.layer, shape.n_kv_heads, shape.head_dim, id.n_kv_heads, id.head_dim);
  rank_ = rules::loki_rank(params.d_f, shape.head_dim);
  coords_.resize(size_t(shape.n_kv_heads) * rank_);
  if (shape.max_context > 0)
    for (auto& c : coords_) c.reserve(size_t(shape.max_context));
  q_rot_.resize(size_t(rank_));
}

void LokiAttention::reset() {
  placed_ = 0;
  for (auto& c : coords_) c.clear();
}

void LokiAttention::place(const LayerKV& kv, int64_t begin, int64_t end, const float*) {
  check_place(kv, begin, end, placed_);
  const int d = shape_.head_dim;
  std::vector<float> key(static_cast<size_t>(d));
  for (int kvh = 0; kvh < shape_.n_kv_heads; ++kvh) {
    const float* basis = artifact_->basis(shape_.layer, kvh);
    for (int j = 0; j < rank_; ++j) coords_[size_t(kvh * rank_ + j)].resize(size_t(begin));
    for (int64_t p = begin; p < end; ++p) {
      dispatch_dtype(kv.dtype, [&](auto tag) {
        using T = decltype(tag);
        const T* k = kv.key<T>(kvh, p);
        for (int i = 0; i < d; ++i) key[size_t(i)] = to_float(k[i]);
      });
      for (int j = 0; j < rank_; ++j) {
        const float* axis = basis + int64_t(j) * d;
        float s = 0.0f;
        for (int i = 0; i < d; ++i) s += axis[i] * key[size_t(i)];
        coords_[size_t(kvh * rank_ + j)].push_back(s);
      }
    }
  }
  placed_ = end;
}

void LokiAttention::select(const LayerKV& kv, const QueryView& q, Selection& sel) {
  const int64_t n = q.n_ctx();
  check_attention_shape(kv, q.n_q_heads, n);
  SAAP_CHECK_FMT(n <= placed_, InvalidArgument, "layer %d: query at position %lld but only %lld positions placed",
                 shape_.layer, (long long)q.pos, (long long)placed_);
  const int64_t k = rules::loki_keys(params_.k_f, n);
  sel.clear(q.n_q_heads);
  if (k >= n) {  // the budget covers the prefix: no ranking needed, nothing read to decide
    sel.all = true;
    return;
  }
  check_finite_queries(q.q, 1, q.n_q_heads, kv.head_dim);
  const int d = shape_.head_dim;
  const int group = q.n_q_heads / shape_.n_kv_heads;
  scores_.resize(size_t(n));
  std::vector<int32_t> order;
  for (int h = 0; h < q.n_q_heads; ++h) {
    const int kvh = h / group;
    const float* basis = artifact_->basis(shape_.layer, kvh);
    const float* qh = q.q + int64_t(h) * d;
    for (int j = 0; j < rank_; ++j) {
      const float* axis = basis + int64_t(j) * d;
      float s = 0.0f;
      for (int i = 0; i < d; ++i) s += axis[i] * qh[i];
      q_rot_[size_t(j)] = s;
    }
    std::fill(scores_.begin(), scores_.end(), 0.0f);
    for (int j = 0; j < rank_; ++j) {
      const float qj = q_rot_[size_t(j)];
      const float* col = coords_[size_t(kvh * rank_ + j)].data();
      float* s = scores_.data();
      for (int64_t p = 0; p < n; ++p) s[p] += qj * col[p];
    }
    top_k_positions(scores_.data(), n, k, sel.positions[size_t(h)], order);
  }
  sel.index_bytes = loki_index_bytes(params_, shape_, n, kv.dtype);
}

int64_t loki_index_bytes(const LokiParams& params, const LayerShape& shape, int64_t n_ctx, DType cache_dtype) {
  if (rules::loki_keys(params.k_f, n_ctx) >= n_ctx) return 0;
  return n_ctx * shape.n_kv_heads * int64_t(rules::loki_rank(params.d_f, shape.head_dim)) *
         int64_t(dtype_size(cache_dtype));
}

MethodFactory loki_factory(const MethodSpec& spec, const ArtifactIdentity& expected) {
  SAAP_CHECK_MSG(!spec.artifact.empty(), InvalidArgument,
                 "method loki needs an artifact (--artifact; train one with `saap train loki`)");
  auto artifact = std::make_shared<const LokiArtifact>(LokiArtifact::load(spec.artifact, expected));
  const LokiParams params{spec.k_f, spec.d_f};
  // Validate the parameters now, not at the first layer built.
  check_fraction(params.k_f, "k_f");
  check_fraction(params.d_f, "d_f");
  return [artifact, params](const LayerShape& shape) { return std::make_unique<LokiAttention>(shape, params, artifact); };
}

}  // namespace saap
