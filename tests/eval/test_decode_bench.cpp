// The CPU decode benchmark: what it reports as read is what the methods themselves report (and,
// for dense and StreamingLLM, what counting positions by hand gives); the copy bandwidth helper
// measures something; bad requests are refused before any work, and the CLI exits 2 on them.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "saap/core/error.h"
#include "saap/eval/decode_bench.h"

namespace saap {
namespace {

struct World {
  int H = 6, KV = 2, D = 16;
  int64_t N = 300;
  DecodeBenchOptions options;
  KVCache cache{KVCacheShape{1, 2, 16, 300, DType::F32}};
  std::vector<float> k_pre, q, q_pre;
  LayerShape shape{0, 6, 2, 16, 300};

  explicit World(uint64_t seed) {
    options.context = N;
    options.reps = 5;
    options.warmup = 2;
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g;
    auto fill = [&](std::vector<float>& v, size_t n) {
      v.resize(n);
      for (auto& x : v) x = g(rng);
    };
    std::vector<float> k, v;
    fill(k, size_t(N * KV * D));
    fill(v, size_t(N * KV * D));
    fill(k_pre, size_t(N * KV * D));
    const int64_t steps = options.warmup + options.reps;
    fill(q, size_t(steps * H * D));
    fill(q_pre, size_t(steps * H * D));
    cache.append(0, k.data(), v.data(), N);
  }

  // The timed steps replayed through a fresh method by its own forward(): the stats it reports.
  LookupStats replay(const MethodFactory& factory) const {
    auto method = factory(shape);
    const int64_t steps = options.warmup + options.reps, first = N - steps;
    LayerKV view = cache.layer(0);
    view.length = first;
    method->place(view, 0, first, k_pre.data());
    LookupStats timed, ignored;
    std::vector<float> out(size_t(H * D));
    for (int64_t i = 0; i < steps; ++i) {
      const int64_t t = first + i;
      view.length = t + 1;
      method->place(view, t, t + 1, k_pre.data() + t * KV * D);
      const QueryView qv{q.data() + i * H * D, q_pre.data() + i * H * D, H, t};
      method->forward(view, qv, out.data(), i < options.warmup ? ignored : timed);
    }
    return timed;
  }
};

MethodSpec spec_of(const std::string& name, double lookup) {
  MethodSpec s;
  s.name = name;
  s.lookup = lookup;
  s.sinks = 4;
  s.window = 20;
  return s;
}

TEST(DecodeBench, BytesEqualTheMethodsLookupStats) {
  World w(7);
  CacheFlusher flusher(int64_t(1) << 20);
  const int64_t token_bytes = 2 * int64_t(w.D) * int64_t(sizeof(float));
  // All four timed together: they take turns within each step, and the stateful one (H2O) must
  // not notice the others.
  std::vector<BenchMethod> methods;
  for (const char* name : {"dense", "streaming", "oracle", "h2o"})
    methods.push_back({spec_of(name, 0.1), make_method_factory(spec_of(name, 0.1), ArtifactIdentity{})});
  const std::vector<MethodLayerTiming> timings = time_methods_on_layer(
      methods, w.shape, w.cache.layer(0), w.k_pre.data(), w.q.data(), w.q_pre.data(), w.options, &flusher);
  ASSERT_EQ(timings.size(), methods.size());
  for (size_t m = 0; m < methods.size(); ++m) {
    const MethodSpec& spec = methods[m].spec;
    SCOPED_TRACE(spec.name);
    const MethodLayerTiming& t = timings[m];
    EXPECT_EQ(t.method, spec.name);
    const LookupStats ref = w.replay(methods[m].factory);
    EXPECT_EQ(t.lookup.queries, w.options.reps);
    EXPECT_EQ(t.lookup.kv_bytes, ref.kv_bytes);
    EXPECT_EQ(t.lookup.index_bytes, ref.index_bytes);
    EXPECT_EQ(t.lookup.dense_bytes, ref.dense_bytes);
    EXPECT_DOUBLE_EQ(t.bytes_per_query() * double(w.options.reps), double(t.lookup.kv_bytes + t.lookup.index_bytes));
    EXPECT_EQ(t.context, w.N);
    EXPECT_EQ(t.spec, spec.describe());
    EXPECT_GT(t.total_us, 0.0);
    EXPECT_LE(t.accounting_us, t.attend_us * 1.5 + 50.0);  // a sort of the selection, not a read of it

    // By hand: the timed queries sit at positions N - reps .. N - 1 and each has prefix t + 1.
    int64_t prefix_tokens = 0;
    for (int64_t p = w.N - w.options.reps; p < w.N; ++p) prefix_tokens += p + 1;
    EXPECT_EQ(t.lookup.dense_bytes, prefix_tokens * w.KV * token_bytes);
    if (spec.name == "dense") {
      EXPECT_EQ(t.lookup.kv_bytes, t.lookup.dense_bytes);
    }
    if (spec.name == "streaming") {
      EXPECT_EQ(t.lookup.kv_bytes, int64_t(w.options.reps) * (spec.sinks + spec.window) * w.KV * token_bytes);
    }
    if (spec.name == "oracle") {
      // Each head reads its top k; a KV group of 3 heads reads between k and 3k distinct positions.
      int64_t lo = 0, hi = 0;
      for (int64_t p = w.N - w.options.reps; p < w.N; ++p) {
        const int64_t k = int64_t(std::ceil(0.1 * double(p + 1) - 1e-9));
        lo += k * w.KV * token_bytes;
        hi += std::min(p + 1, 3 * k) * w.KV * token_bytes;
      }
      EXPECT_GE(t.lookup.kv_bytes, lo);
      EXPECT_LE(t.lookup.kv_bytes, hi);
    }
  }
}

TEST(DecodeBench, StepsRunAtTheLastPositions) {
  // A context that leaves nothing to place up front still times reps queries.
  World w(11);
  w.options.context = w.options.warmup + w.options.reps + 1;
  const MethodSpec spec = spec_of("dense", 1.0);
  const MethodFactory factory = make_method_factory(spec, ArtifactIdentity{});
  const MethodLayerTiming t = time_method_on_layer(factory, spec, w.shape, w.cache.layer(0), w.k_pre.data(),
                                                   w.q.data(), w.q_pre.data(), w.options, nullptr);
  int64_t prefix_tokens = 0;
  for (int64_t p = w.options.context - w.options.reps; p < w.options.context; ++p) prefix_tokens += p + 1;
  EXPECT_EQ(t.lookup.kv_bytes, prefix_tokens * w.KV * 2 * w.D * int64_t(sizeof(float)));

  w.options.context = w.options.warmup + w.options.reps;  // no position left before the steps
  EXPECT_THROW(time_method_on_layer(factory, spec, w.shape, w.cache.layer(0), w.k_pre.data(), w.q.data(),
                                    w.q_pre.data(), w.options, nullptr),
               Error);
}

TEST(DecodeBench, CopyBandwidthIsPositiveAndFinite) {
  for (int threads : {1, 2}) {
    const double gbps = copy_bandwidth_gbps(int64_t(32) << 20, threads, 3);
    EXPECT_TRUE(std::isfinite(gbps)) << threads;
    EXPECT_GT(gbps, 0.1) << threads;     // any machine copies faster than 100 MB/s
    EXPECT_LT(gbps, 1e5) << threads;     // and slower than 100 TB/s
  }
  EXPECT_THROW(copy_bandwidth_gbps(1000, 1), Error);
  EXPECT_THROW(copy_bandwidth_gbps(int64_t(4) << 20, 0), Error);
}

ErrorKind kind_of(const std::function<void()>& f, std::string* message) {
  try {
    f();
  } catch (const Error& e) {
    *message = e.what();
    return e.kind();
  }
  return ErrorKind::Unsupported;  // not thrown: no kind the checks use
}

TEST(DecodeBench, BadRequestsAreRefusedNamingTheField) {
  LlamaConfig c;
  c.n_layers = 30;
  c.context_length = 8192;
  DecodeBenchOptions o;
  const std::vector<MethodSpec> ok = {spec_of("dense", 1.0)};
  EXPECT_NO_THROW(check_decode_bench(c, ok, o));
  std::string msg;

  o.context = 9000;
  EXPECT_EQ(kind_of([&] { check_decode_bench(c, ok, o); }, &msg), ErrorKind::InvalidArgument);
  EXPECT_NE(msg.find("context = 9000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("8192"), std::string::npos) << msg;

  o.context = 8192;
  EXPECT_EQ(kind_of([&] { check_decode_bench(c, {spec_of("no-such-method", 0.1)}, o); }, &msg), ErrorKind::InvalidArgument);
  EXPECT_NE(msg.find("'no-such-method'"), std::string::npos) << msg;

  o.layers = {30};
  EXPECT_EQ(kind_of([&] { check_decode_bench(c, ok, o); }, &msg), ErrorKind::InvalidArgument);
  EXPECT_NE(msg.find("layer = 30"), std::string::npos) << msg;

  o.layers = {};
  o.context = 10;
  o.reps = 20;
  EXPECT_EQ(kind_of([&] { check_decode_bench(c, ok, o); }, &msg), ErrorKind::InvalidArgument);
  EXPECT_NE(msg.find("context = 10"), std::string::npos) << msg;

  EXPECT_TRUE(method_needs_artifact("loki"));
  EXPECT_TRUE(method_needs_artifact("saap"));
  EXPECT_TRUE(method_needs_artifact("kmeans"));
  EXPECT_FALSE(method_needs_artifact("h2o"));
}

// The saap binary of the same build tree (tests/test_eval -> ../saap).
std::string saap_binary() {
  const auto exe = std::filesystem::read_symlink("/proc/self/exe");
  return (exe.parent_path().parent_path() / "saap").string();
}

int exit_code(const std::string& args) {
  const int status = std::system((saap_binary() + " " + args + " >/dev/null 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(DecodeBenchCli, BadArgumentsExitWithCode2) {
  if (!std::filesystem::exists(saap_binary())) GTEST_SKIP() << "no saap binary at " << saap_binary();
  EXPECT_EQ(exit_code("bench --context 100000 --methods dense --out /tmp"), 2);
  EXPECT_EQ(exit_code("bench --context 64 --reps 2 --methods dense,quest --out /tmp"), 2);
  EXPECT_EQ(exit_code("bench --artifact loki --out /tmp"), 2);
  EXPECT_EQ(exit_code("bench --artifact h2o=x --out /tmp"), 2);
  EXPECT_EQ(exit_code("bench --bogus-flag 3 --out /tmp"), 2);
}

}  // namespace
}  // namespace saap
