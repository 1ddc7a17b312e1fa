#include "saap/methods/saap.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "saap/core/dtype.h"
#include "saap/core/error.h"
#include "saap/core/selection_rules.h"

namespace saap {

namespace {

// Eight independent accumulators let the compiler vectorize without reassociating a float sum.
float dot(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

const uint8_t* row_ptr(const void* base, const LayerKV& kv, int head, int64_t pos) {
  return static_cast<const uint8_t*>(base) + (int64_t(head) * kv.capacity + pos) * kv.head_dim * int64_t(dtype_size(kv.dtype));
}

template <class T>
T header_field(const nlohmann::json& h, const char* name, const std::string& path) {
  SAAP_CHECK_FMT(h.contains(name), BadFile, "%s: header field '%s' is missing", path.c_str(), name);
  try {
    return h.at(name).get<T>();
  } catch (const nlohmann::json::exception&) {
    SAAP_THROW_FMT(BadFile, "%s: header field '%s' has the wrong type (%s)", path.c_str(), name,
                   h.at(name).dump().c_str());
  }
}

const float* finite_f32(const SafetensorsFile& f, const std::string& name, const std::vector<int64_t>& shape,
                        const std::string& path) {
  const SafeTensor& t = f.tensor(name, shape);
  const float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i)
    SAAP_CHECK_FMT(std::isfinite(p[i]), BadFile, "%s: tensor '%s' holds a non-finite value at index %lld", path.c_str(),
                   name.c_str(), (long long)i);
  return p;
}

}  // namespace

int32_t nearest_centroid(const float* centroids, int n_centroids, int dim, bool spherical, const float* x) {
  int32_t best = 0;
  float best_score = -INFINITY;
  for (int c = 0; c < n_centroids; ++c) {
    const float* m = centroids + int64_t(c) * dim;
    // ||x - m||^2 = ||x||^2 - 2 x.m + ||m||^2: the ||x||^2 term does not change the argmin.
    const float s = spherical ? dot(x, m, dim) : 2.0f * dot(x, m, dim) - dot(m, m, dim);
    if (s > best_score) best_score = s, best = c;
  }
  return best;
}

PartitionClassifier::PartitionClassifier(int in, int hid, int out)
    : in_dim(in), hidden(hid), out_dim(out),
      w1(size_t(hid) * in), b1(size_t(hid)), w2(size_t(out) * hid), b2(size_t(out)) {
  SAAP_CHECK_FMT(in > 0 && hid > 0 && out > 0, InvalidArgument,
                 "classifier shape in_dim = %d, hidden = %d, out_dim = %d must be positive", in, hid, out);
}

void PartitionClassifier::scores(const float* x, float* out, float* h) const {
  for (int j = 0; j < hidden; ++j) h[j] = std::max(0.0f, b1[size_t(j)] + dot(w1.data() + int64_t(j) * in_dim, x, in_dim));
  for (int c = 0; c < out_dim; ++c) out[c] = b2[size_t(c)] + dot(w2.data() + int64_t(c) * hidden, h, hidden);
}

// ---------------------------------------------------------------------------------------------
// Artifact

void PartitionArtifact::save(const std::string& path) const {
  SafetensorsWriter w;
  const int64_t kvh = identity.n_kv_heads, nh = identity.n_heads, d = identity.head_dim, C = partitions;
  std::vector<int> trained;
  for (const auto& [l, layer] : layers) {
    trained.push_back(l);
    SAAP_CHECK_FMT(int64_t(layer.centroids.size()) == kvh * C * d, InvalidArgument,
                   "layer %d: centroids hold %zu floats, expected n_kv_heads * partitions * head_dim = %lld", l,
                   layer.centroids.size(), (long long)(kvh * C * d));
    const std::string s = std::to_string(l);
    w.add_f32("centroids." + s, layer.centroids.data(), {kvh, C, d});
    if (!has_classifiers()) continue;
    SAAP_CHECK_FMT(int64_t(layer.classifiers.size()) == nh, InvalidArgument, "layer %d: %zu classifiers for %lld heads",
                   l, layer.classifiers.size(), (long long)nh);
    std::vector<float> w1, b1, w2, b2;
    for (const auto& c : layer.classifiers) {
      SAAP_CHECK_FMT(c.in_dim == d && c.hidden == hidden && c.out_dim == C, InvalidArgument,
                     "layer %d: classifier shape (%d, %d, %d) differs from (head_dim, hidden, partitions) = (%lld, %d, %lld)",
                     l, c.in_dim, c.hidden, c.out_dim, (long long)d, hidden, (long long)C);
      w1.insert(w1.end(), c.w1.begin(), c.w1.end());
      b1.insert(b1.end(), c.b1.begin(), c.b1.end());
      w2.insert(w2.end(), c.w2.begin(), c.w2.end());
      b2.insert(b2.end(), c.b2.begin(), c.b2.end());
    }
    w.add_f32("w1." + s, w1.data(), {nh, hidden, d});
    w.add_f32("b1." + s, b1.data(), {nh, hidden});
    w.add_f32("w2." + s, w2.data(), {nh, C, hidden});
    w.add_f32("b2." + s, b2.data(), {nh, C});
  }
  nlohmann::json h = to_json(identity);
  h["partitions"] = partitions;
  h["hidden"] = hidden;
  h["rope"] = pre_rope ? "pre" : "post";
  h["spherical"] = spherical;
  if (has_classifiers()) h["router"] = kRouterOutput;
  h["layers"] = trained;
  h["train"] = train;
  w.write(path, h);
}

PartitionArtifact PartitionArtifact::load(const std::string& path, const ArtifactIdentity& expected) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  const nlohmann::json& h = f.header();
  ArtifactIdentity want = expected;
  // The symmetric baseline may run on a Saap artifact's centroids: the same partition, by design.
  // Read that way, the artifact is its partition alone (the routers are not read).
  if (want.method == "kmeans" && h.is_object() && h.contains("method") && h["method"] == "saap") want.method = "saap";
  check_artifact(h, want, path);

  PartitionArtifact a;
  a.identity = want;
  a.identity.method = expected.method;
  a.partitions = header_field<int>(h, "partitions", path);
  SAAP_CHECK_FMT(a.partitions > 0, BadFile, "%s: partitions = %d must be positive", path.c_str(), a.partitions);
  a.hidden = header_field<int>(h, "hidden", path);
  SAAP_CHECK_FMT(!a.has_classifiers() || a.hidden > 0, BadFile, "%s: hidden = %d must be positive in a saap artifact",
                 path.c_str(), a.hidden);
  const std::string rope = header_field<std::string>(h, "rope", path);
  SAAP_CHECK_FMT(rope == "pre" || rope == "post", BadFile, "%s: rope = '%s' must be 'pre' or 'post'", path.c_str(),
                 rope.c_str());
  a.pre_rope = rope == "pre";
  a.spherical = header_field<bool>(h, "spherical", path);
  if (a.has_classifiers()) {
    const std::string router = header_field<std::string>(h, "router", path);
    SAAP_CHECK_FMT(router == kRouterOutput, BadFile,
                   "%s: router = '%s' but this version's routers output '%s' (retrain with saap train saap)", path.c_str(),
                   router.c_str(), kRouterOutput);
  }
  a.train = h.contains("train") ? h["train"] : nlohmann::json::object();
  const auto trained = header_field<std::vector<int>>(h, "layers", path);
  SAAP_CHECK_FMT(!trained.empty(), BadFile, "%s: layers lists no trained layer", path.c_str());

  const int64_t kvh = a.identity.n_kv_heads, nh = a.identity.n_heads, d = a.identity.head_dim, C = a.partitions,
                H = a.hidden;
  for (int l : trained) {
    SAAP_CHECK_FMT(l >= 0 && l < a.identity.n_layers, BadFile, "%s: layers holds %d, outside [0, n_layers = %d)",
                   path.c_str(), l, a.identity.n_layers);
    SAAP_CHECK_FMT(!a.layers.count(l), BadFile, "%s: layers lists layer %d twice", path.c_str(), l);
    const std::string s = std::to_string(l);
    PartitionLayer& layer = a.layers[l];
    const float* c = finite_f32(f, "centroids." + s, {kvh, C, d}, path);
    layer.centroids.assign(c, c + kvh * C * d);
    if (!a.has_classifiers()) continue;
    const float* w1 = finite_f32(f, "w1." + s, {nh, H, d}, path);
    const float* b1 = finite_f32(f, "b1." + s, {nh, H}, path);
    const float* w2 = finite_f32(f, "w2." + s, {nh, C, H}, path);
    const float* b2 = finite_f32(f, "b2." + s, {nh, C}, path);
    for (int64_t head = 0; head < nh; ++head) {
      PartitionClassifier m{int(d), int(H), int(C)};
      std::copy(w1 + head * H * d, w1 + (head + 1) * H * d, m.w1.begin());
      std::copy(b1 + head * H, b1 + (head + 1) * H, m.b1.begin());
      std::copy(w2 + head * C * H, w2 + (head + 1) * C * H, m.w2.begin());
      std::copy(b2 + head * C, b2 + (head + 1) * C, m.b2.begin());
      layer.classifiers.push_back(std::move(m));
    }
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// Inverted lists

PartitionLists::PartitionLists(int n_partitions, int64_t row_bytes)
    : row_bytes_(row_bytes), positions_(size_t(n_partitions)), keys_(size_t(n_partitions)), values_(size_t(n_partitions)) {
  SAAP_CHECK_FMT(n_partitions > 0 && row_bytes > 0, InvalidArgument, "partition lists: n_partitions = %d, row_bytes = %lld",
                 n_partitions, (long long)row_bytes);
}

void PartitionLists::append(int partition, int32_t pos, const void* k_row, const void* v_row) {
  SAAP_CHECK_FMT(partition >= 0 && partition < n_partitions(), InvalidArgument, "partition = %d outside [0, %d)", partition,
                 n_partitions());
  auto& list = positions_[size_t(partition)];
  SAAP_CHECK_FMT(list.empty() || list.back() < pos, InvalidArgument,
                 "partition %d: position %d appended after %d (positions must increase)", partition, pos, list.back());
  list.push_back(pos);
  const auto* k = static_cast<const uint8_t*>(k_row);
  const auto* v = static_cast<const uint8_t*>(v_row);
  keys_[size_t(partition)].insert(keys_[size_t(partition)].end(), k, k + row_bytes_);
  values_[size_t(partition)].insert(values_[size_t(partition)].end(), v, v + row_bytes_);
}

void PartitionLists::truncate(int32_t pos) {
  for (size_t c = 0; c < positions_.size(); ++c) {
    auto& list = positions_[c];
    const size_t keep = size_t(std::lower_bound(list.begin(), list.end(), pos) - list.begin());
    list.resize(keep);
    keys_[c].resize(keep * size_t(row_bytes_));
    values_[c].resize(keep * size_t(row_bytes_));
  }
}

void PartitionLists::clear() { truncate(0); }

int64_t PartitionLists::total() const {
  int64_t n = 0;
  for (const auto& l : positions_) n += int64_t(l.size());
  return n;
}

// ---------------------------------------------------------------------------------------------
// The method

PartitionBudget partition_budget(const MethodSpec& spec) {
  check_fraction(spec.lookup, "lookup");
  SAAP_CHECK_FMT(spec.sinks >= 0, InvalidArgument, "sinks = %d must be >= 0", spec.sinks);
  SAAP_CHECK_FMT(spec.window >= 0, InvalidArgument, "window = %d must be >= 0", spec.window);
  SAAP_CHECK_FMT(!spec.artifact.empty(), InvalidArgument, "method %s needs an artifact (--artifact)",
                 spec.name.c_str());
  SAAP_CHECK_FMT(spec.budget_tokens >= 0, InvalidArgument, "budget_tokens = %lld must be >= 0 (0: use lookup)",
                 (long long)spec.budget_tokens);
  return {spec.lookup, spec.sinks, spec.window, spec.budget_tokens};
}

PartitionedAttention::PartitionedAttention(const LayerShape& shape, std::shared_ptr<const PartitionArtifact> artifact,
                                           const PartitionBudget& budget)
    : AttentionMethod(shape), artifact_(std::move(artifact)), budget_(budget) {
  SAAP_CHECK_MSG(artifact_ != nullptr, InvalidArgument, "partitioned attention needs an artifact");
  const ArtifactIdentity& id = artifact_->identity;
  SAAP_CHECK_FMT(shape.n_q_heads == id.n_heads && shape.n_kv_heads == id.n_kv_heads && shape.head_dim == id.head_dim,
                 InvalidArgument, "layer %d: shape (n_q_heads %d, n_kv_heads %d, head_dim %d) differs from the artifact's (%d, %d, %d)",
                 shape.layer, shape.n_q_heads, shape.n_kv_heads, shape.head_dim, id.n_heads, id.n_kv_heads, id.head_dim);
  const auto it = artifact_->layers.find(shape.layer);
  if (it == artifact_->layers.end()) {
    std::string have;
    for (const auto& [l, _] : artifact_->layers) have += (have.empty() ? "" : ",") + std::to_string(l);
    SAAP_THROW_FMT(InvalidArgument, "layer = %d was not trained in this artifact (trained layers: %s)", shape.layer,
                   have.c_str());
  }
  layer_ = &it->second;
  // A budget the cache can never meet: sinks and window alone fill it even at full context, so
  // every query would read more than asked and no partition would ever be read.
  const int64_t full_budget = rules::Budget{budget_.lookup, budget_.tokens}.total(shape.max_context);
  const bool reaches =
      rules::reaches_index(rules::Budget{budget_.lookup, budget_.tokens}, shape.max_context, budget_.sinks, budget_.window);
  char asked[64];
  if (budget_.tokens > 0)
    std::snprintf(asked, sizeof asked, "budget_tokens = %lld", (long long)budget_.tokens);
  else
    std::snprintf(asked, sizeof asked, "lookup = %g", budget_.lookup);
  SAAP_CHECK_FMT(shape.max_context <= 0 || reaches, InvalidArgument,
                 "%s of a %lld-token context is %lld tokens, which sinks %d + window %d already fill: no "
                 "partition could ever be read; raise the budget or lower sinks/window",
                 asked, (long long)shape.max_context, (long long)full_budget, budget_.sinks, budget_.window);
  feature_.resize(size_t(shape.head_dim));
  scores_.resize(size_t(artifact_->partitions));
  order_.resize(size_t(shape.n_q_heads / std::max(1, shape.n_kv_heads)) * size_t(artifact_->partitions));
  taken_.resize(size_t(artifact_->partitions));
  counts_.resize(size_t(artifact_->partitions));
}

const float* PartitionedAttention::centroids(int kv_head) const {
  return layer_->centroids.data() + int64_t(kv_head) * artifact_->partitions * shape_.head_dim;
}

void PartitionedAttention::reset() {
  for (auto& l : lists_) l.clear();
  placed_ = 0;
}

void PartitionedAttention::place(const LayerKV& kv, int64_t begin, int64_t end, const float* k_pre) {
  SAAP_CHECK_FMT(kv.n_kv_heads == shape_.n_kv_heads && kv.head_dim == shape_.head_dim, InvalidArgument,
                 "layer %d: cache has n_kv_heads %d, head_dim %d; the method expects %d, %d", shape_.layer, kv.n_kv_heads,
                 kv.head_dim, shape_.n_kv_heads, shape_.head_dim);
  SAAP_CHECK_FMT(0 <= begin && begin <= end && end <= kv.length, InvalidArgument,
                 "layer %d: place [%lld, %lld) outside the cached [0, %lld)", shape_.layer, (long long)begin,
                 (long long)end, (long long)kv.length);
  SAAP_CHECK_FMT(begin <= placed_, InvalidArgument, "layer %d: place begins at %lld but only %lld positions were placed",
                 shape_.layer, (long long)begin, (long long)placed_);
  SAAP_CHECK_FMT(!artifact_->pre_rope || k_pre != nullptr || begin == end, InvalidArgument,
                 "layer %d: the artifact partitions pre-RoPE keys but k_pre is null", shape_.layer);
  const int64_t row = int64_t(kv.head_dim) * int64_t(dtype_size(kv.dtype));
  if (lists_.empty() || lists_[0].row_bytes() != row)
    lists_.assign(size_t(kv.n_kv_heads), PartitionLists(artifact_->partitions, row));
  if (begin < placed_)
    for (auto& l : lists_) l.truncate(int32_t(begin));
  for (int64_t p = begin; p < end; ++p)
    for (int h = 0; h < kv.n_kv_heads; ++h) {
      const float* x = feature_.data();
      if (artifact_->pre_rope)
        x = k_pre + ((p - begin) * kv.n_kv_heads + h) * kv.head_dim;
      else
        kv.key_to_float(h, p, feature_.data());
      for (int i = 0; i < kv.head_dim; ++i)
        SAAP_CHECK_FMT(std::isfinite(x[i]), NonFinite, "layer %d: key at position %lld, head %d, dim %d is not finite",
                       shape_.layer, (long long)p, h, i);
      const int32_t c = nearest_centroid(centroids(h), artifact_->partitions, kv.head_dim, artifact_->spherical, x);
      lists_[size_t(h)].append(c, int32_t(p), row_ptr(kv.keys, kv, h, p), row_ptr(kv.values, kv, h, p));
    }
  placed_ = end;
}

void PartitionedAttention::select(const LayerKV& kv, const QueryView& q, Selection& sel) {
  SAAP_CHECK_FMT(q.n_q_heads == shape_.n_q_heads, InvalidArgument, "query has %d heads, layer %d expects %d", q.n_q_heads,
                 shape_.layer, shape_.n_q_heads);
  SAAP_CHECK_FMT(q.pos >= 0 && q.pos < placed_, InvalidArgument,
                 "layer %d: query position %lld is not placed yet (placed: %lld); call place() first", shape_.layer,
                 (long long)q.pos, (long long)placed_);
  const float* qv = artifact_->pre_rope ? q.q_pre : q.q;
  SAAP_CHECK_FMT(qv != nullptr, InvalidArgument, "layer %d: the artifact routes %s-RoPE queries but that query is null",
                 shape_.layer, artifact_->pre_rope ? "pre" : "post");
  const int C = artifact_->partitions, d = shape_.head_dim, group = shape_.n_q_heads / shape_.n_kv_heads;
  const int64_t n_ctx = q.n_ctx();
  // Sinks and the recent window are read anyway; the partitions cover the positions between and get
  // what the fixed reads leave of the budget (selection_rules.h).
  const rules::FixedReads fixed = rules::fixed_reads(n_ctx, budget_.sinks, budget_.window);
  const int32_t mid_begin = int32_t(fixed.sink_end), mid_end = int32_t(fixed.window_begin);
  const int64_t budget = rules::Budget{budget_.lookup, budget_.tokens}.selectable(n_ctx, budget_.sinks, budget_.window);

  sel.clear(q.n_q_heads);
  for (int kvh = 0; kvh < shape_.n_kv_heads; ++kvh) {
    const PartitionLists& lists = lists_[size_t(kvh)];
    for (int c = 0; c < C; ++c) {
      const auto& pos = lists.positions(c);
      counts_[size_t(c)] = std::lower_bound(pos.begin(), pos.end(), mid_end) -
                           std::lower_bound(pos.begin(), pos.end(), mid_begin);
    }
    auto rank = [&](int32_t* order) {
      std::iota(order, order + C, 0);
      std::sort(order, order + C, [&](int32_t a, int32_t b) {
        return rules::ranks_before(scores_[size_t(a)], a, scores_[size_t(b)], b);
      });
    };
    // The group reads one set of partitions (a partition is read once per KV head, whichever of its
    // heads asked for it), so the budget is the group's, and every head of the group attends over
    // the whole union, which costs no extra read. A method that scores partitions for the group as a
    // whole ranks once; otherwise the heads' own rankings are merged round-robin (every head's first
    // choice, then every head's second, ...), each partition at its first appearance.
    const int32_t* order = order_.data();
    if (!group_scores({kv, q, qv, kvh, mid_begin, mid_end, counts_.data()}, scores_.data())) {
      for (int g = 0; g < group; ++g) {
        const int h = kvh * group + g;
        score(h, qv + int64_t(h) * d, scores_.data());
        rank(order_.data() + int64_t(g) * C);
      }
      merged_.clear();
      std::fill(taken_.begin(), taken_.end(), 0);
      for (int r = 0; r < C; ++r)
        for (int g = 0; g < group; ++g) {
          const int32_t c = order_[size_t(int64_t(g) * C + r)];
          if (!taken_[size_t(c)]) taken_[size_t(c)] = 1, merged_.push_back(c);
        }
      order = merged_.data();
    } else {
      rank(order_.data());
    }
    std::fill(taken_.begin(), taken_.end(), 0);
    rules::fill_in_order(order, C, [&](int32_t c) { return counts_[size_t(c)]; }, budget, taken_.data());
    std::vector<int32_t>& out = sel.positions[size_t(kvh * group)];
    for (int c = 0; c < C; ++c) {
      if (!taken_[size_t(c)]) continue;
      const auto& pos = lists.positions(c);
      const auto first = std::lower_bound(pos.begin(), pos.end(), mid_begin);
      out.insert(out.end(), first, first + counts_[size_t(c)]);
    }
    for (int32_t p = 0; p < mid_begin; ++p) out.push_back(p);
    for (int32_t p = mid_end; p < n_ctx; ++p) out.push_back(p);
    for (int g = 1; g < group; ++g) sel.positions[size_t(kvh * group + g)] = out;
  }
  sel.index_bytes = index_bytes_per_query();
}

SaapAttention::SaapAttention(const LayerShape& shape, std::shared_ptr<const PartitionArtifact> artifact,
                             const PartitionBudget& budget)
    : PartitionedAttention(shape, std::move(artifact), budget) {
  SAAP_CHECK_FMT(artifact_->has_classifiers(), InvalidArgument,
                 "method saap needs a saap artifact with classifiers; this one is '%s'", artifact_->identity.method.c_str());
  hidden_.resize(size_t(artifact_->hidden));
}

void SaapAttention::score(int head, const float* q_vec, float* scores) {
  layer_->classifiers[size_t(head)].scores(q_vec, scores, hidden_.data());
}

// The router scores are log densities (attention per key, classifier.h); the group ranks the
// partitions by its heads' summed density, as selection_rules.h states it (the CUDA kernel uses the
// same two functions, so both devices compute the same keys).
bool SaapAttention::group_scores(const GroupQuery& gq, float* scores) {
  const int C = artifact_->partitions, d = shape_.head_dim, group = shape_.n_q_heads / shape_.n_kv_heads;
  head_scores_.resize(size_t(group) * C);
  head_lse_.resize(size_t(group));
  for (int g = 0; g < group; ++g) {
    const int h = gq.kv_head * group + g;
    float* s = head_scores_.data() + int64_t(g) * C;
    score(h, gq.routing + int64_t(h) * d, s);
    head_lse_[size_t(g)] = rules::head_log_normaliser(s, gq.counts, C);
  }
  for (int c = 0; c < C; ++c)
    scores[c] = gq.counts[c] > 0 ? rules::group_log_density(head_scores_.data() + c, C, head_lse_.data(), group)
                                 : -INFINITY;
  return true;
}

// Every query head reads its router's weights, and each KV head its partition size table.
int64_t saap_index_bytes(const PartitionArtifact& artifact, const LayerShape& shape) {
  const auto layer = artifact.layers.find(shape.layer);
  SAAP_CHECK_FMT(artifact.has_classifiers() && layer != artifact.layers.end() && !layer->second.classifiers.empty(),
                 InvalidArgument, "layer %d: the '%s' artifact holds no router for it", shape.layer,
                 artifact.identity.method.c_str());
  return int64_t(shape.n_q_heads) * layer->second.classifiers[0].n_params() * int64_t(sizeof(float)) +
         int64_t(shape.n_kv_heads) * artifact.partitions * int64_t(sizeof(int32_t));
}

int64_t SaapAttention::index_bytes_per_query() const { return saap_index_bytes(*artifact_, shape_); }

MethodFactory saap_factory(const MethodSpec& spec, const ArtifactIdentity& expected) {
  const PartitionBudget budget = partition_budget(spec);
  ArtifactIdentity want = expected;
  want.method = "saap";
  auto artifact = std::make_shared<const PartitionArtifact>(PartitionArtifact::load(spec.artifact, want));
  return [artifact, budget](const LayerShape& shape) -> std::unique_ptr<AttentionMethod> {
    return std::make_unique<SaapAttention>(shape, artifact, budget);
  };
}

}  // namespace saap
