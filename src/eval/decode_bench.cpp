#include "saap/eval/decode_bench.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "saap/core/error.h"
#include "saap/core/progress.h"

namespace saap {

namespace {

using Clock = std::chrono::steady_clock;

double micros(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::micro>(b - a).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

}  // namespace

double copy_bandwidth_gbps(int64_t bytes, int threads, int reps) {
  SAAP_CHECK_FMT(bytes >= (1 << 20), InvalidArgument, "copy buffer of %lld bytes: at least 1 MiB", (long long)bytes);
  SAAP_CHECK_FMT(threads >= 1, InvalidArgument, "threads = %d must be >= 1", threads);
  SAAP_CHECK_FMT(reps >= 1, InvalidArgument, "reps = %d must be >= 1", reps);
  std::vector<char> src(size_t(bytes), 1), dst(size_t(bytes), 0);
  std::vector<double> seconds;
  // One untimed copy first: it faults in dst's pages, which is not copy bandwidth.
  for (int r = 0; r <= reps; ++r) {
    const auto t0 = Clock::now();
#pragma omp parallel num_threads(threads)
    {
      const int n = omp_get_num_threads(), i = omp_get_thread_num();
      const int64_t begin = bytes * i / n, end = bytes * (i + 1) / n;
      std::memcpy(dst.data() + begin, src.data() + begin, size_t(end - begin));
    }
    const auto t1 = Clock::now();
    if (r > 0) seconds.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  return 2.0 * double(bytes) / median(seconds) / 1e9;
}

CacheFlusher::CacheFlusher(int64_t bytes) {
  if (bytes <= 0) {
    const long l3 = ::sysconf(_SC_LEVEL3_CACHE_SIZE);
    bytes = std::max<int64_t>(int64_t(64) << 20, 4 * int64_t(l3 > 0 ? l3 : 0));
  }
  buf_.assign(size_t(bytes), 0);
}

void CacheFlusher::flush() {
  // Writing every line forces the dirty lines of the previous contents out; reading it back keeps
  // the compiler from dropping the writes.
  char acc = 0;
  for (size_t i = 0; i < buf_.size(); i += 64) buf_[i] = char(buf_[i] + 1);
  for (size_t i = 0; i < buf_.size(); i += 64) acc = char(acc + buf_[i]);
  sink_ = acc;
}

std::vector<MethodLayerTiming> time_methods_on_layer(const std::vector<BenchMethod>& methods, const LayerShape& shape,
                                                     const LayerKV& kv, const float* k_pre, const float* q,
                                                     const float* q_pre, const DecodeBenchOptions& options,
                                                     CacheFlusher* flusher) {
  const int64_t steps = int64_t(options.warmup) + options.reps;
  SAAP_CHECK_FMT(options.reps >= 1 && options.warmup >= 0, InvalidArgument, "reps = %d (>= 1), warmup = %d (>= 0)",
                 options.reps, options.warmup);
  SAAP_CHECK_FMT(options.context > steps && options.context <= kv.length, InvalidArgument,
                 "context = %lld must exceed warmup + reps = %lld and fit the %lld cached positions",
                 (long long)options.context, (long long)steps, (long long)kv.length);
  SAAP_CHECK_FMT(kv.n_kv_heads == shape.n_kv_heads && kv.head_dim == shape.head_dim, InvalidArgument,
                 "cache has %d KV heads of dim %d, the layer shape %d of dim %d", kv.n_kv_heads, kv.head_dim,
                 shape.n_kv_heads, shape.head_dim);
  const int H = shape.n_q_heads, D = shape.head_dim;
  const int64_t KVD = int64_t(shape.n_kv_heads) * D, QD = int64_t(H) * D;
  const int64_t first = options.context - steps;
  const size_t M = methods.size();

  struct State {
    std::unique_ptr<AttentionMethod> method;
    std::vector<double> place, select, attend, total, accounting;
    MethodLayerTiming r;
  };
  std::vector<State> st(M);
  LayerKV view = kv;
  view.length = first;
  for (size_t m = 0; m < M; ++m) {
    const MethodSpec& spec = methods[m].spec;
    st[m].method = methods[m].factory(shape);
    SAAP_CHECK_FMT(st[m].method != nullptr, InvalidArgument, "the factory of %s returned null", spec.describe().c_str());
    st[m].method->reset();
    if (first > 0) st[m].method->place(view, 0, first, k_pre);
    st[m].r.method = spec.name;
    st[m].r.spec = spec.describe();
    st[m].r.layer = shape.layer;
    st[m].r.context = options.context;
    st[m].r.reps = options.reps;
  }

  // The methods take turns within each step (starting one further each step), so a change of load
  // on a shared machine falls on all of them alike rather than on whichever ran at that moment.
  std::vector<float> out(static_cast<size_t>(QD));
  Selection sel;
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t t = first + i;
    view.length = t + 1;
    const QueryView qv{q + i * QD, q_pre + i * QD, H, t};
    for (size_t k = 0; k < M; ++k) {
      State& s = st[(size_t(i) + k) % M];
      const auto p0 = Clock::now();
      s.method->place(view, t, t + 1, k_pre + t * KVD);
      const auto p1 = Clock::now();
      if (flusher) flusher->flush();
      LookupStats step;
      sel.clear(H);
      const auto t0 = Clock::now();
      s.method->select(view, qv, sel);
      const auto t1 = Clock::now();
      s.method->attend(view, qv, sel, out.data(), step);
      const auto t2 = Clock::now();
      volatile int64_t counted = selection_kv_bytes(view, qv, sel);
      const auto t3 = Clock::now();
      (void)counted;
      for (int64_t j = 0; j < QD; ++j)
        SAAP_CHECK_FMT(std::isfinite(out[size_t(j)]), NonFinite, "%s on layer %d at position %lld: non-finite output",
                       s.r.spec.c_str(), shape.layer, (long long)t);
      if (i < options.warmup) continue;
      s.place.push_back(micros(p0, p1));
      s.select.push_back(micros(t0, t1));
      s.attend.push_back(micros(t1, t2));
      s.total.push_back(micros(t0, t2));
      s.accounting.push_back(micros(t2, t3));
      s.r.lookup += step;
    }
  }
  std::vector<MethodLayerTiming> result;
  for (State& s : st) {
    s.r.place_us = median(s.place);
    s.r.select_us = median(s.select);
    s.r.attend_us = median(s.attend);
    s.r.total_us = median(s.total);
    s.r.accounting_us = median(s.accounting);
    result.push_back(std::move(s.r));
  }
  return result;
}

MethodLayerTiming time_method_on_layer(const MethodFactory& factory, const MethodSpec& spec, const LayerShape& shape,
                                       const LayerKV& kv, const float* k_pre, const float* q, const float* q_pre,
                                       const DecodeBenchOptions& options, CacheFlusher* flusher) {
  return time_methods_on_layer({BenchMethod{spec, factory}}, shape, kv, k_pre, q, q_pre, options, flusher).front();
}

nlohmann::json DecodeBenchRow::to_json() const {
  const MethodLayerTiming& t = timing;
  const double q = double(std::max<int64_t>(t.lookup.queries, 1));
  return {{"method", t.method},
          {"spec", t.spec},
          {"layer", t.layer},
          {"context", t.context},
          {"reps", t.reps},
          {"total_us", t.total_us},
          {"select_us", t.select_us},
          {"attend_us", t.attend_us},
          {"accounting_us", t.accounting_us},
          {"place_us", t.place_us},
          {"bytes_per_query", t.bytes_per_query()},
          {"kv_bytes_per_query", double(t.lookup.kv_bytes) / q},
          {"index_bytes_per_query", double(t.lookup.index_bytes) / q},
          {"dense_bytes_per_query", double(t.lookup.dense_bytes) / q},
          {"lookup_fraction", t.lookup.fraction()},
          {"kv_fraction", t.lookup.kv_fraction()},
          {"gbps", gbps},
          {"floor_us", floor_us},
          {"floor_over_time", t.total_us > 0 ? floor_us / t.total_us : 0.0},
          {"dense_us", dense_us},
          {"speedup", speedup}};
}

nlohmann::json DecodeBenchResult::to_json() const {
  nlohmann::json j = {{"context", context},
                      {"layers", layers},
                      {"threads", threads},
                      {"copy_gbps_1thread", copy_gbps_1thread},
                      {"copy_gbps_all_threads", copy_gbps_all},
                      {"all_threads", all_threads},
                      {"floor_gbps", floor_gbps},
                      {"notes", notes},
                      {"rows", nlohmann::json::array()}};
  for (const auto& r : rows) j["rows"].push_back(r.to_json());
  return j;
}

void check_decode_bench(const LlamaConfig& config, const std::vector<MethodSpec>& specs,
                        const DecodeBenchOptions& options) {
  SAAP_CHECK_FMT(options.reps >= 1, InvalidArgument, "reps = %d must be >= 1", options.reps);
  SAAP_CHECK_FMT(options.warmup >= 0, InvalidArgument, "warmup = %d must be >= 0", options.warmup);
  SAAP_CHECK_FMT(options.threads >= 0, InvalidArgument, "threads = %d must be >= 0", options.threads);
  SAAP_CHECK_FMT(options.context <= config.context_length, InvalidArgument,
                 "context = %lld exceeds the model's context length %lld", (long long)options.context,
                 (long long)config.context_length);
  SAAP_CHECK_FMT(options.context > int64_t(options.warmup) + options.reps, InvalidArgument,
                 "context = %lld must exceed warmup + reps = %d", (long long)options.context,
                 options.warmup + options.reps);
  for (int l : options.layers)
    SAAP_CHECK_FMT(l >= 0 && l < config.n_layers, InvalidArgument, "layer = %d is outside [0, %d)", l,
                   config.n_layers);
  SAAP_CHECK_MSG(!specs.empty(), InvalidArgument, "no method to benchmark");
  const std::vector<std::string> known = method_names();
  for (const MethodSpec& s : specs)
    if (std::find(known.begin(), known.end(), s.name) == known.end()) {
      std::string list;
      for (const auto& n : known) list += (list.empty() ? "" : ", ") + n;
      SAAP_THROW_FMT(InvalidArgument, "method = '%s' is not one of: %s", s.name.c_str(), list.c_str());
    }
}

DecodeBenchResult run_decode_bench(std::shared_ptr<const LlamaModel> model, const std::vector<int32_t>& tokens,
                                   std::vector<MethodSpec> specs, const ArtifactIdentity& identity,
                                   const DecodeBenchOptions& options_in) {
  SAAP_CHECK_MSG(model != nullptr, InvalidArgument, "run_decode_bench needs a model");
  const LlamaConfig& c = model->config();
  DecodeBenchOptions options = options_in;
  if (options.layers.empty()) options.layers = {0, c.n_layers / 2, c.n_layers - 1};
  std::sort(options.layers.begin(), options.layers.end());
  options.layers.erase(std::unique(options.layers.begin(), options.layers.end()), options.layers.end());
  check_decode_bench(c, specs, options);
  SAAP_CHECK_FMT(int64_t(tokens.size()) == options.context, InvalidArgument, "%zu tokens for context = %lld",
                 tokens.size(), (long long)options.context);

  DecodeBenchResult result;
  result.context = options.context;
  result.layers = options.layers;

  // Dense first: every row's speed-up divides by it. Then the factories, so a bad artifact fails
  // before minutes of prefill.
  specs.erase(std::remove_if(specs.begin(), specs.end(), [](const MethodSpec& s) { return s.name == "dense"; }),
              specs.end());
  specs.insert(specs.begin(), MethodSpec{});
  std::vector<BenchMethod> methods;
  for (const MethodSpec& s : specs) {
    if (method_needs_artifact(s.name) && s.artifact.empty()) {
      result.notes.push_back(s.describe() + " skipped: no --artifact " + s.name + "=PATH given");
      continue;
    }
    methods.push_back(BenchMethod{s, make_method_factory(s, identity)});
  }

  // The dense run over the text: the cache it leaves is what every method reads.
  const int H = c.n_heads, KVh = c.n_kv_heads, D = c.head_dim;
  const int64_t N = options.context, steps = int64_t(options.warmup) + options.reps, first_q = N - steps;
  struct Captured {
    std::vector<float> k_pre, q, q_pre;
  };
  std::vector<Captured> cap(options.layers.size());
  for (auto& cp : cap) {
    cp.k_pre.resize(size_t(N * KVh * D));
    cp.q.resize(size_t(steps * H * D));
    cp.q_pre.resize(size_t(steps * H * D));
  }
  LlamaSession session(model, N);
  session.set_observer([&](const LayerActivations& a) {
    const auto it = std::find(options.layers.begin(), options.layers.end(), a.layer);
    if (it == options.layers.end()) return;
    Captured& cp = cap[size_t(it - options.layers.begin())];
    std::copy_n(a.k_pre, a.n * KVh * D, cp.k_pre.data() + a.pos0 * KVh * D);
    for (int64_t i = 0; i < a.n; ++i) {
      const int64_t p = a.pos0 + i;
      if (p < first_q) continue;
      std::copy_n(a.q + i * H * D, H * D, cp.q.data() + (p - first_q) * H * D);
      std::copy_n(a.q_pre + i * H * D, H * D, cp.q_pre.data() + (p - first_q) * H * D);
    }
  });
  {
    const int64_t chunk = 512;
    std::vector<float> logits(size_t(c.vocab_size));
    ProgressBar bar("bench: dense prefill", N, options.progress);
    for (int64_t b = 0; b < N; b += chunk) {
      session.forward(tokens.data() + b, std::min(chunk, N - b), logits.data());
      bar.update(std::min(N, b + chunk));
    }
    bar.finish();
  }
  session.set_observer(nullptr);

  // Restores the caller's thread count however the timing ends.
  struct ThreadsScope {
    int saved = omp_get_max_threads();
    explicit ThreadsScope(int n) {
      if (n > 0) omp_set_num_threads(n);
    }
    ~ThreadsScope() { omp_set_num_threads(saved); }
  } threads_scope(options.threads);
  result.threads = omp_get_max_threads();
  // Copy bandwidth before and after the timing; the higher of the two counts, since other work on a
  // shared machine only ever lowers it.
  const int procs = omp_get_num_procs();
  auto measure_bandwidth = [&] {
    const int64_t copy_bytes = int64_t(256) << 20;
    const double one = copy_bandwidth_gbps(copy_bytes, 1);
    const double all = procs > 1 ? copy_bandwidth_gbps(copy_bytes, procs) : one;
    result.copy_gbps_1thread = std::max(result.copy_gbps_1thread, one);
    result.copy_gbps_all = std::max(result.copy_gbps_all, all);
    if (options.progress)
      std::fprintf(stderr, "bench: memcpy bandwidth (read+write) %.1f GB/s on 1 thread, %.1f GB/s on %d\n", one, all,
                   procs);
  };
  measure_bandwidth();

  std::unique_ptr<CacheFlusher> flusher;
  if (options.flush) flusher = std::make_unique<CacheFlusher>();
  ProgressBar bar("bench: timing", int64_t(options.layers.size()), options.progress);
  for (size_t li = 0; li < options.layers.size(); ++li) {
    const int layer = options.layers[li];
    const LayerShape shape{layer, H, KVh, D, N};
    const std::vector<MethodLayerTiming> timings =
        time_methods_on_layer(methods, shape, session.cache().layer(layer), cap[li].k_pre.data(), cap[li].q.data(),
                              cap[li].q_pre.data(), options, flusher.get());
    const double dense_us = timings.front().total_us;  // dense is first (above)
    for (const MethodLayerTiming& t : timings) {
      DecodeBenchRow row;
      row.timing = t;
      row.dense_us = dense_us;
      const double bytes = t.bytes_per_query();
      row.speedup = t.total_us > 0 ? dense_us / t.total_us : 0.0;
      row.gbps = t.total_us > 0 ? bytes / (t.total_us * 1e-6) / 1e9 : 0.0;
      result.rows.push_back(row);
    }
    bar.update(int64_t(li + 1), "layer " + std::to_string(layer));
  }
  bar.finish();
  measure_bandwidth();
  result.all_threads = procs;
  result.floor_gbps = result.threads > 1 ? result.copy_gbps_all : result.copy_gbps_1thread;
  for (DecodeBenchRow& row : result.rows) row.floor_us = row.timing.bytes_per_query() / (result.floor_gbps * 1e9) * 1e6;
  return result;
}

}  // namespace saap
