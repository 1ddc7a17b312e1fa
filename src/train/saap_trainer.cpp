#include "saap/train/saap_trainer.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "saap/core/error.h"
#include "saap/core/selection_rules.h"
#include "saap/core/progress.h"
#include "saap/core/rope.h"

namespace saap {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void check_set(const CalibrationSet& s) {
  SAAP_CHECK_FMT(s.n_layers > 0 && int(s.layers.size()) == s.n_layers, InvalidArgument,
                 "calibration set: n_layers = %d but %zu layers stored", s.n_layers, s.layers.size());
  SAAP_CHECK_FMT(s.n_heads > 0 && s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0, InvalidArgument,
                 "calibration set: n_heads = %d must be a positive multiple of n_kv_heads = %d", s.n_heads, s.n_kv_heads);
  SAAP_CHECK_FMT(s.head_dim > 0 && s.rope.head_dim == s.head_dim, InvalidArgument,
                 "calibration set: head_dim = %d, rope.head_dim = %d", s.head_dim, s.rope.head_dim);
  SAAP_CHECK_FMT(s.windows > 0 && s.window_len > 0, InvalidArgument, "calibration set: windows = %d, window_len = %d",
                 s.windows, s.window_len);
  for (int l = 0; l < s.n_layers; ++l) {
    const CalibrationLayer& L = s.layers[size_t(l)];
    SAAP_CHECK_FMT(int64_t(L.keys_pre.size()) == int64_t(s.windows) * s.window_len * s.n_kv_heads * s.head_dim,
                   InvalidArgument, "calibration layer %d: keys_pre holds %zu floats, expected windows*window_len*n_kv_heads*head_dim",
                   l, L.keys_pre.size());
    const size_t n = L.query_pos.size();
    SAAP_CHECK_FMT(L.query_window.size() == n && L.queries_pre.size() == n * size_t(s.n_heads * s.head_dim),
                   InvalidArgument, "calibration layer %d: %zu query positions, %zu windows, %zu query floats", l, n,
                   L.query_window.size(), L.queries_pre.size());
    for (size_t i = 0; i < n; ++i)
      SAAP_CHECK_FMT(L.query_window[i] >= 0 && L.query_window[i] < s.windows && L.query_pos[i] >= 0 &&
                         L.query_pos[i] < s.window_len,
                     InvalidArgument, "calibration layer %d: query %zu at window %d, pos %d is outside the set", l, i,
                     L.query_window[i], L.query_pos[i]);
  }
}

void check_options(const CalibrationSet& s, const SaapTrainOptions& o) {
  SAAP_CHECK_FMT(o.partitions > 0, InvalidArgument, "partitions = %d must be positive", o.partitions);
  SAAP_CHECK_FMT(int64_t(s.windows) * s.window_len >= o.partitions, InvalidArgument,
                 "partitions = %d exceeds the %lld calibration keys per head (windows %d x window_len %d)", o.partitions,
                 (long long)s.windows * s.window_len, s.windows, s.window_len);
  SAAP_CHECK_FMT(o.sinks >= 0 && o.window >= 0, InvalidArgument, "sinks = %d, window = %d must be >= 0", o.sinks, o.window);
  SAAP_CHECK_FMT(o.min_prefix >= o.sinks + o.window && o.min_prefix < s.window_len, InvalidArgument,
                 "min_prefix = %d must be in [sinks + window = %d, window_len = %d): every labelled query needs keys "
                 "outside the sinks and the window",
                 o.min_prefix, o.sinks + o.window, s.window_len);
  for (const auto& [l, c] : o.centroids)
    SAAP_CHECK_FMT(l >= 0 && l < s.n_layers && int64_t(c.size()) == int64_t(s.n_kv_heads) * o.partitions * s.head_dim,
                   InvalidArgument, "given centroids of layer %d: %zu floats, expected n_kv_heads * partitions * head_dim = %lld",
                   l, c.size(), (long long)s.n_kv_heads * o.partitions * s.head_dim);
  SAAP_CHECK_FMT(o.val_fraction >= 0 && o.val_fraction < 1, InvalidArgument, "val_fraction = %g must be in [0, 1)",
                 o.val_fraction);
  SAAP_CHECK_FMT(o.stat_lookup > 0 && o.stat_lookup <= 1, InvalidArgument, "stat_lookup = %g must be in (0, 1]",
                 o.stat_lookup);
  SAAP_CHECK_FMT(o.max_queries >= 0, InvalidArgument, "max_queries = %d must be >= 0", o.max_queries);
  for (int l : o.layers)
    SAAP_CHECK_FMT(l >= 0 && l < s.n_layers, InvalidArgument, "layers holds %d, outside [0, %d)", l, s.n_layers);
}

std::vector<int> layer_list(const CalibrationSet& s, const SaapTrainOptions& o) {
  std::vector<int> layers = o.layers;
  if (layers.empty()) {
    layers.resize(size_t(s.n_layers));
    std::iota(layers.begin(), layers.end(), 0);
  }
  std::sort(layers.begin(), layers.end());
  layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
  return layers;
}

// Keys of one KV head, [windows * window_len][head_dim], in the space the partition lives in.
std::vector<float> key_features(const CalibrationSet& s, int layer, int kv_head, bool pre_rope) {
  const Rope rope(s.rope);
  const int d = s.head_dim;
  std::vector<float> out(size_t(s.windows) * s.window_len * d);
  for (int w = 0; w < s.windows; ++w)
    for (int p = 0; p < s.window_len; ++p) {
      float* row = out.data() + (int64_t(w) * s.window_len + p) * d;
      const float* src = s.layers[size_t(layer)].keys_pre.data() +
                         ((int64_t(w) * s.window_len + p) * s.n_kv_heads + kv_head) * d;
      std::copy(src, src + d, row);
      if (!pre_rope) rope.apply(row, 1, p);
    }
  return out;
}

nlohmann::json options_json(const SaapTrainOptions& o) {
  return {{"partitions", o.partitions},   {"rope", o.pre_rope ? "pre" : "post"},
          {"spherical", o.spherical},     {"kmeans_iters", o.kmeans_iters}, {"kmeans_redo", o.kmeans_redo},
          {"hidden", o.classifier.hidden}, {"epochs", o.classifier.epochs},
          {"batch", o.classifier.batch},  {"lr", o.classifier.lr},
          {"patience", o.classifier.patience}, {"sinks", o.sinks},
          {"window", o.window},           {"min_prefix", o.min_prefix},
          {"max_queries", o.max_queries}, {"val_fraction", o.val_fraction},
          {"seed", o.seed},               {"skip", o.skip},
          {"given_partition_layers", o.centroids.size()},
          {"router_output", "log attention density per key (mass = count * exp(score) / Z)"},
          {"loss", "weighted soft cross-entropy of softmax(score + log count) to the per-partition attention mass"}};
}

// Mass (a fraction of what the partitions can find) read by decode's rule (selection_rules.h):
// partitions in ranking order, filled by rules::fill_in_order (partition sizes from the offsets,
// absent partitions skipped).
double budget_mass(const float* rank, const float* offset, const float* target, int C, int64_t budget,
                   std::vector<int32_t>& order, std::vector<uint8_t>& taken) {
  order.clear();
  for (int c = 0; c < C; ++c)
    if (std::isfinite(offset[c])) order.push_back(c);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return rules::ranks_before(rank[a], a, rank[b], b); });
  taken.assign(size_t(C), 0);
  rules::fill_in_order(order.data(), int(order.size()), [&](int32_t c) { return std::llround(std::exp(double(offset[c]))); },
                       budget, taken.data());
  double mass = 0;
  for (int c = 0; c < C; ++c)
    if (taken[size_t(c)]) mass += target[c];
  return mass;
}

// Held-out mass read at o.stat_lookup by the router (ranked by its density scores), by IVF-style
// nearest-centroid routing (the symmetric baseline) and by the oracle (true density).
struct BudgetRecall {
  double router = 0, symmetric = 0, oracle = 0;
};
BudgetRecall budget_recall(const PartitionClassifier& router, const float* centroids, bool spherical,
                           const ClassifierData& data, const int32_t* n_ctx, const SaapTrainOptions& o) {
  const int C = router.out_dim, d = router.in_dim;
  std::vector<float> sc(static_cast<size_t>(C)), sym(static_cast<size_t>(C)), dens(static_cast<size_t>(C)),
      hid(static_cast<size_t>(router.hidden));
  std::vector<int32_t> order;
  std::vector<uint8_t> taken;
  BudgetRecall r;
  double wsum = 0;
  for (int64_t i = 0; i < data.n; ++i) {
    const int64_t n = n_ctx[i];
    const int64_t budget = rules::selectable_budget(o.stat_lookup, n, o.sinks, o.window);
    if (budget <= 0) continue;
    const float *x = data.x + i * d, *t = data.target + i * C, *off = data.offset + i * C;
    router.scores(x, sc.data(), hid.data());
    for (int c = 0; c < C; ++c) {
      const float* m = centroids + int64_t(c) * d;
      double qm = 0, mm = 0;
      for (int k = 0; k < d; ++k) qm += double(x[k]) * m[k], mm += double(m[k]) * m[k];
      sym[size_t(c)] = float(spherical ? qm : 2 * qm - mm);
      dens[size_t(c)] = std::isfinite(off[c]) ? float(t[c] / std::exp(double(off[c]))) : 0.0f;
    }
    const double w = data.weight ? data.weight[i] : 1.0;
    r.router += w * budget_mass(sc.data(), off, t, C, budget, order, taken);
    r.symmetric += w * budget_mass(sym.data(), off, t, C, budget, order, taken);
    r.oracle += w * budget_mass(dens.data(), off, t, C, budget, order, taken);
    wsum += w;
  }
  if (wsum > 0) r.router /= wsum, r.symmetric /= wsum, r.oracle /= wsum;
  return r;
}

// The skip's initial U per KV head: each partition's mean key over sqrt(d), so that U q is
// q . mean_key / sqrt(d), the symmetric estimate of the log attention density of the partition.
std::vector<float> mean_key_scores(const CalibrationSet& s, int layer, const PartitionLabels& lab, int kv_head,
                                   const SaapTrainOptions& o) {
  const int d = s.head_dim, C = o.partitions, KV = s.n_kv_heads;
  const std::vector<float> x = key_features(s, layer, kv_head, o.pre_rope);
  std::vector<double> sum(size_t(C) * d, 0.0), count(size_t(C), 0.0);
  for (int64_t i = 0; i < int64_t(s.windows) * s.window_len; ++i) {
    const int32_t c = lab.key_partition[size_t(i * KV + kv_head)];
    count[size_t(c)] += 1;
    for (int k = 0; k < d; ++k) sum[size_t(int64_t(c) * d + k)] += x[size_t(i * d + k)];
  }
  std::vector<float> u(size_t(C) * d, 0.0f);
  const double inv_sqrt_d = 1.0 / std::sqrt(double(d));
  for (int c = 0; c < C; ++c)
    if (count[size_t(c)] > 0)
      for (int k = 0; k < d; ++k)
        u[size_t(int64_t(c) * d + k)] = float(sum[size_t(int64_t(c) * d + k)] / count[size_t(c)] * inv_sqrt_d);
  return u;
}

// OpenBLAS threads off while OpenMP runs one head per thread (nested threading oversubscribes).
struct SingleThreadedBlas {
  int saved = openblas_get_num_threads();
  SingleThreadedBlas() { openblas_set_num_threads(1); }
  ~SingleThreadedBlas() { openblas_set_num_threads(saved); }
};

}  // namespace

ArtifactIdentity partition_artifact_identity(const CalibrationSet& s, const char* method) {
  ArtifactIdentity id;
  id.method = method;
  id.model_identity = s.model_identity;
  id.n_layers = s.n_layers;
  id.n_heads = s.n_heads;
  id.n_kv_heads = s.n_kv_heads;
  id.head_dim = s.head_dim;
  return id;
}

std::vector<float> train_layer_partition(const CalibrationSet& s, int layer, const SaapTrainOptions& o) {
  check_set(s);
  check_options(s, o);
  SAAP_CHECK_FMT(layer >= 0 && layer < s.n_layers, InvalidArgument, "layer = %d outside [0, %d)", layer, s.n_layers);
  if (const auto given = o.centroids.find(layer); given != o.centroids.end()) return given->second;
  const int d = s.head_dim, C = o.partitions;
  std::vector<float> centroids(size_t(s.n_kv_heads) * C * d);
  for (int h = 0; h < s.n_kv_heads; ++h) {
    const std::vector<float> x = key_features(s, layer, h, o.pre_rope);
    KMeansOptions ko;
    ko.k = C;
    ko.niter = o.kmeans_iters;
    ko.nredo = o.kmeans_redo;
    ko.seed = int((o.seed * 1000003ull + uint64_t(layer) * 131ull + uint64_t(h)) & 0x7fffffff);
    ko.spherical = o.spherical;
    const KMeansResult r = train_kmeans(x.data(), int64_t(s.windows) * s.window_len, d, ko);
    std::copy(r.centroids.begin(), r.centroids.end(), centroids.begin() + int64_t(h) * C * d);
  }
  return centroids;
}

PartitionLabels partition_labels(const CalibrationSet& s, int layer, const std::vector<float>& centroids,
                                 const SaapTrainOptions& o) {
  check_set(s);
  check_options(s, o);
  const int d = s.head_dim, C = o.partitions, KV = s.n_kv_heads, NH = s.n_heads, group = NH / KV, len = s.window_len;
  SAAP_CHECK_FMT(int64_t(centroids.size()) == int64_t(KV) * C * d, InvalidArgument,
                 "centroids hold %zu floats, expected n_kv_heads * partitions * head_dim = %lld", centroids.size(),
                 (long long)KV * C * d);
  const CalibrationLayer& L = s.layers[size_t(layer)];
  const Rope rope(s.rope);
  PartitionLabels out;
  const int64_t n_keys = int64_t(s.windows) * len;
  out.key_partition.resize(size_t(n_keys * KV));
  {
    std::vector<int32_t> part(static_cast<size_t>(n_keys));
    for (int h = 0; h < KV; ++h) {
      const std::vector<float> x = key_features(s, layer, h, o.pre_rope);
      assign_kmeans(centroids.data() + int64_t(h) * C * d, C, d, o.spherical, x.data(), n_keys, part.data());
      for (int64_t i = 0; i < n_keys; ++i) out.key_partition[size_t(i * KV + h)] = part[size_t(i)];
    }
  }
  std::vector<float> k_post(L.keys_pre);  // what attention scores use
  for (int64_t i = 0; i < n_keys; ++i) rope.apply(k_post.data() + i * KV * d, KV, i % len);

  for (int32_t i = 0; i < int32_t(L.query_pos.size()); ++i)
    if (L.query_pos[size_t(i)] >= o.min_prefix) out.query.push_back(i);
  SAAP_CHECK_FMT(!out.query.empty(), InvalidArgument,
                 "layer %d: no captured query has a prefix of min_prefix = %d positions or more (window_len %d)", layer,
                 o.min_prefix, len);
  if (o.max_queries > 0 && int(out.query.size()) > o.max_queries) {
    std::mt19937_64 rng(o.seed * 7919ull + uint64_t(layer));
    for (size_t i = out.query.size(); i > 1; --i) std::swap(out.query[i - 1], out.query[size_t(rng() % i)]);
    out.query.resize(size_t(o.max_queries));
    std::sort(out.query.begin(), out.query.end());
  }
  const int n = out.n = int(out.query.size());
  out.x.assign(size_t(NH), std::vector<float>(size_t(n) * d));
  out.target.assign(size_t(NH), std::vector<float>(size_t(n) * C, 0.0f));
  out.weight.assign(size_t(NH), std::vector<float>(size_t(n), 0.0f));
  out.offset.assign(size_t(KV), std::vector<float>(size_t(n) * C, -INFINITY));
  out.n_ctx.resize(size_t(n));
  const double scale = 1.0 / std::sqrt(double(d));

  SingleThreadedBlas single;  // one query per OpenMP thread; BLAS threads inside would oversubscribe
#pragma omp parallel
  {
    std::vector<float> q(size_t(NH) * d);
    std::vector<double> a(static_cast<size_t>(len)), mass(static_cast<size_t>(C));
    std::vector<int32_t> count(static_cast<size_t>(C));
    std::vector<float> dots(static_cast<size_t>(len));
#pragma omp for schedule(dynamic, 4)
    for (int i = 0; i < n; ++i) {
      const int qi = out.query[size_t(i)], w = L.query_window[size_t(qi)], pos = L.query_pos[size_t(qi)];
      const float* q_pre = L.queries_pre.data() + int64_t(qi) * NH * d;
      std::copy(q_pre, q_pre + NH * d, q.begin());
      rope.apply(q.data(), NH, pos);
      const int n_ctx = pos + 1;
      const int mid_begin = std::min(o.sinks, n_ctx), mid_end = std::max(mid_begin, n_ctx - o.window);
      out.n_ctx[size_t(i)] = n_ctx;
      for (int kvh = 0; kvh < KV; ++kvh) {
        std::fill(count.begin(), count.end(), 0);
        for (int j = mid_begin; j < mid_end; ++j) ++count[size_t(out.key_partition[size_t((int64_t(w) * len + j) * KV + kvh)])];
        float* off = out.offset[size_t(kvh)].data() + int64_t(i) * C;
        for (int c = 0; c < C; ++c)
          if (count[size_t(c)] > 0) off[c] = float(std::log(double(count[size_t(c)])));
      }
      for (int h = 0; h < NH; ++h) {
        const int kvh = h / group;
        const float* qh = q.data() + int64_t(h) * d;
        // Scores by one float GEMV over the prefix (its rows are KV * d apart): 64-term float dots
        // are accurate to ~1e-6 relative, far below what the labels (masses) resolve, and this is
        // most of the trainer's time. The softmax itself runs in double.
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n_ctx, d, float(scale), k_post.data() + (int64_t(w) * len * KV + kvh) * d,
                    KV * d, qh, 1, 0.0f, dots.data(), 1);
        double mx = -INFINITY;
        for (int j = 0; j < n_ctx; ++j) mx = std::max(mx, a[size_t(j)] = double(dots[size_t(j)]));
        double z = 0;
        for (int j = 0; j < n_ctx; ++j) z += (a[size_t(j)] = std::exp(a[size_t(j)] - mx));
        std::fill(mass.begin(), mass.end(), 0.0);
        double rest = 0;
        for (int j = mid_begin; j < mid_end; ++j) {
          const double p = a[size_t(j)] / z;
          mass[size_t(out.key_partition[size_t((int64_t(w) * len + j) * KV + kvh)])] += p;
          rest += p;
        }
        out.weight[size_t(h)][size_t(i)] = float(rest);
        float* t = out.target[size_t(h)].data() + int64_t(i) * C;
        if (rest > 0)
          for (int c = 0; c < C; ++c) t[c] = float(mass[size_t(c)] / rest);
        const float* x = o.pre_rope ? q_pre + int64_t(h) * d : qh;
        std::copy(x, x + d, out.x[size_t(h)].begin() + int64_t(i) * d);
      }
    }
  }
  return out;
}

PartitionArtifact train_symmetric_kmeans(const CalibrationSet& s, const SaapTrainOptions& o) {
  check_set(s);
  check_options(s, o);
  const auto t0 = Clock::now();
  PartitionArtifact a;
  a.identity = partition_artifact_identity(s, "kmeans");
  a.partitions = o.partitions;
  a.pre_rope = o.pre_rope;
  a.spherical = o.spherical;
  const std::vector<int> layers = layer_list(s, o);
  ProgressBar bar("train kmeans", int64_t(layers.size()), o.progress);
  for (size_t i = 0; i < layers.size(); ++i) {
    a.layers[layers[i]].centroids = train_layer_partition(s, layers[i], o);
    bar.update(int64_t(i + 1));
  }
  bar.finish();
  a.train = {{"options", options_json(o)}, {"seconds", since(t0)}};
  return a;
}

PartitionArtifact train_saap(const CalibrationSet& s, const SaapTrainOptions& o) {
  check_set(s);
  check_options(s, o);
  const auto t0 = Clock::now();
  const int d = s.head_dim, C = o.partitions, NH = s.n_heads, group = s.n_heads / s.n_kv_heads;
  PartitionArtifact a;
  a.identity = partition_artifact_identity(s, "saap");
  a.partitions = C;
  a.hidden = o.classifier.hidden + (o.skip ? 2 * d : 0);  // the skip folded in (classifier.h)
  a.pre_rope = o.pre_rope;
  a.spherical = o.spherical;
  const std::vector<int> layers = layer_list(s, o);
  nlohmann::json per_layer = nlohmann::json::array();
  double kmeans_s = 0, labels_s = 0, router_s = 0, sum_recall = 0, sum_sym = 0, sum_oracle = 0;
  int64_t n_heads_trained = 0;
  ProgressBar bar("train saap", int64_t(layers.size()) * NH, o.progress);
  for (size_t li = 0; li < layers.size(); ++li) {
    const int l = layers[li];
    auto t = Clock::now();
    PartitionLayer& layer = a.layers[l];
    layer.centroids = train_layer_partition(s, l, o);
    const double t_kmeans = since(t);
    t = Clock::now();
    const PartitionLabels lab = partition_labels(s, l, layer.centroids, o);
    const double t_labels = since(t);

    std::vector<int> perm(size_t(lab.n));
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937_64 rng(o.seed * 104729ull + uint64_t(l));
    for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[size_t(rng() % i)]);
    const int n_val = int(std::floor(o.val_fraction * lab.n));
    const int n_train = lab.n - n_val;
    SAAP_CHECK_FMT(n_train > 0, InvalidArgument, "layer %d: no training query left after holding out %d of %d", l, n_val,
                   lab.n);

    layer.classifiers.assign(size_t(NH), PartitionClassifier());
    std::vector<ClassifierStats> stats(static_cast<size_t>(NH));
    std::vector<BudgetRecall> at_budget(static_cast<size_t>(NH));
    std::vector<std::vector<float>> skip_init(size_t(s.n_kv_heads));
    if (o.skip)
      for (int kvh = 0; kvh < s.n_kv_heads; ++kvh) skip_init[size_t(kvh)] = mean_key_scores(s, l, lab, kvh, o);
    t = Clock::now();
    {
      SingleThreadedBlas single;
#pragma omp parallel for schedule(dynamic, 1)
      for (int h = 0; h < NH; ++h) {
        // Gathered per head so that each thread owns its arrays.
        const int kvh = h / group;
        std::vector<float> xs[2], ts[2], ws[2], os[2];
        std::vector<int32_t> ns[2];
        for (int part = 0; part < 2; ++part) {
          const int b = part == 0 ? n_val : 0, e = part == 0 ? lab.n : n_val;
          for (int k = b; k < e; ++k) {
            const int i = perm[size_t(k)];
            xs[part].insert(xs[part].end(), lab.x[size_t(h)].begin() + int64_t(i) * d,
                            lab.x[size_t(h)].begin() + int64_t(i + 1) * d);
            ts[part].insert(ts[part].end(), lab.target[size_t(h)].begin() + int64_t(i) * C,
                            lab.target[size_t(h)].begin() + int64_t(i + 1) * C);
            os[part].insert(os[part].end(), lab.offset[size_t(kvh)].begin() + int64_t(i) * C,
                            lab.offset[size_t(kvh)].begin() + int64_t(i + 1) * C);
            ws[part].push_back(lab.weight[size_t(h)][size_t(i)]);
            ns[part].push_back(lab.n_ctx[size_t(i)]);
          }
        }
        const ClassifierData train{xs[0].data(), ts[0].data(), ws[0].data(), n_train, os[0].data()};
        const ClassifierData val{xs[1].data(), ts[1].data(), ws[1].data(), n_val, os[1].data()};
        ClassifierOptions co = o.classifier;
        co.seed = o.seed * 1000003ull + uint64_t(l) * 1009ull + uint64_t(h);
        co.progress = false;
        stats[size_t(h)] = train_classifier(layer.classifiers[size_t(h)], d, C, train, val, co,
                                            o.skip ? skip_init[size_t(kvh)].data() : nullptr);
        at_budget[size_t(h)] = budget_recall(layer.classifiers[size_t(h)], layer.centroids.data() + int64_t(kvh) * C * d,
                                             o.spherical, n_val > 0 ? val : train, n_val > 0 ? ns[1].data() : ns[0].data(), o);
#pragma omp critical
        bar.update(++n_heads_trained, format("layer %d head %d held-out mass at %g%%: router %.3f, symmetric %.3f", l, h, 100 * o.stat_lookup,
                                             at_budget[size_t(h)].router, at_budget[size_t(h)].symmetric));
      }
    }
    const double t_router = since(t);
    kmeans_s += t_kmeans, labels_s += t_labels, router_s += t_router;
    nlohmann::json heads = nlohmann::json::array();
    for (int h = 0; h < NH; ++h) {
      const ClassifierStats& st = stats[size_t(h)];
      heads.push_back({{"head", h},
                       {"epochs_run", st.train_loss.size()},
                       {"best_epoch", st.best_epoch},
                       {"train_loss", st.train_loss},
                       {"val_loss", st.val_loss},
                       {"val_mass_at_budget", at_budget[size_t(h)].router},
                       {"val_symmetric_mass_at_budget", at_budget[size_t(h)].symmetric},
                       {"val_oracle_mass_at_budget", at_budget[size_t(h)].oracle},
                       {"seconds", st.seconds}});
      sum_recall += at_budget[size_t(h)].router, sum_sym += at_budget[size_t(h)].symmetric,
          sum_oracle += at_budget[size_t(h)].oracle;
    }
    per_layer.push_back({{"layer", l},
                         {"queries", lab.n},
                         {"val_queries", n_val},
                         {"kmeans_seconds", t_kmeans},
                         {"labels_seconds", t_labels},
                         {"router_seconds", t_router},
                         {"heads", heads}});
  }
  bar.finish();
  const double heads = double(layers.size()) * NH;
  a.train = {{"options", options_json(o)},
             {"seconds", since(t0)},
             {"kmeans_seconds", kmeans_s},
             {"labels_seconds", labels_s},
             {"router_seconds", router_s},
             {"threads", omp_get_max_threads()},
             {"stat_lookup", o.stat_lookup},
             {"mean_val_mass_at_budget", sum_recall / heads},
             {"mean_val_symmetric_mass_at_budget", sum_sym / heads},
             {"mean_val_oracle_mass_at_budget", sum_oracle / heads},
             {"layers", per_layer}};
  return a;
}

}  // namespace saap
