// Per-layer decode time of dense split-KV decoding, Saap, Loki and Quest at one or more head shapes
// (default Llama-3.1-8B: 32 query / 8 KV heads, head dim 128, bf16), against a read floor: a tuned
// read-only kernel measured in the same run over the same bytes. Writes a table to stdout and
// JSON + CSV to --out.
//
// Usage: decode_bench [--contexts 16384,65536,...] [--batches 1,8] [--shapes 32x8x128,...]
//                     [--other-contexts LIST] [--partition-sizes FILE] [--methods dense,saap,quest,loki]
//                     [--saap-budgets 0.02,0.05,0.1,1024,2048] [--reps 30] [--out DIR]
//                     [--dense-tunings "mma=1;prefetch=1,interleave=1;prefetch=1,..."]
//                     [--saap-tunings "bulk=3;mma=1,bulk=3;mma=1;fused=1,..."]
//                     [--quest-tunings "bulk=3;mma=1,prefetch=0,..."]
//                     [--quest-budgets 0.05,1024] [--quest-variants 0|1]
// --dense-tunings: dense_decode_tuned rows beside the default dense row (DenseTuning::parse's
// key=value;... form, comma-separated; "" for none); default every dense_tuning_candidates() entry.
// --saap-tunings: Saap attend tunings timed as rows beside the default one (SaapAttendTuning::parse's
// form, comma-separated; "" for none); default every saap_attend_candidates() entry after the first.
// --quest-tunings: Quest attend tunings timed as rows beside the default one (SparseAttendTuning::parse's
// form, comma-separated; "" for none); default every sparse_attend_candidates() entry after the first.
// --quest-budgets: Quest's budgets (a value <= 1 a lookup fraction, a larger one a token count);
// default Saap's measured fractions (0.02, 0.05, 0.10 without Saap) and 1024 and 2048 tokens.
// --quest-variants 1 (the default): beside the default select's rows, the other selects' (select=fused,
// step=fused, select=cluster, select=block); 0: the default select's only (scripts/gpu_profile.sh).
// --other-contexts: the contexts of every shape after the first (default: --contexts).
//
// Synthetic data: K/V uniform random bf16 (never zeros). Saap partitions (C = context/512 per KV
// head, mean 512 tokens) have lognormal sizes (sigma 1.0), drawn per (sequence, head), and with
// --partition-sizes also real sizes: the counts of a trained partition of real keys
// (scripts/partition_sizes.py), all its (layer, head) rows concatenated, tiled to C per (sequence,
// head) from offset (b * n_kv_heads + h) * C (wrapping), scaled to the partitioned tokens. Its
// classifier has random weights, so the selected partitions are a random draw under the budget.
// Loki keys are random in the PCA basis (the basis is the identity; the query rotation still
// runs). Quest (page 16, Saap's sinks and window) reads the same random K/V, at Saap's measured
// fractions and at fixed budgets of 1024 and 2048 tokens (Saap too, as lookup = tokens /
// context). Timing: CUDA events around each call, L2 flushed (by reading 256 MB) before each
// repetition, median; every method's step (append where it has one, select, attend; Saap's
// router beside its append, append_select) is also timed as a captured CUDA graph (graph_ms);
// Saap reserves its appends first (reserve_appends), so its step holds no host synchronisation.
// The "read" rows time the floor kernel over the dense row's K and V; floor_ms of every row is its
// bytes over the best read bandwidth of the run (the read kernel's or any row's, whichever is
// higher).
// Latency probes before the rows: an empty kernel, and dependent loads within a 2 MiB page and on a
// new page each time (both after the L2 flush), to read the fixed costs against; and the read
// kernel's time by size, 1 MB to 2 GB ("read_curve" in the JSON): what one launch reading a row's
// bytes can reach, beside the bandwidth floor.
// Both files carry the run's provenance (saap/provenance/provenance.h: date, machine and GPU, commit,
// command): a "provenance" object in the JSON, leading "# key: value" lines in the CSV.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "saap/core/atomic_file.h"
#include "saap/kernels/cuda/attend.cuh"
#include "saap/kernels/cuda/decode.h"
#include "saap/kernels/cuda/loki.h"
#include "saap/kernels/cuda/quest.h"
#include "saap/kernels/cuda/saap.h"
#include "saap/provenance/provenance.h"

using namespace saap;
using namespace saap::cuda;

namespace {

__global__ void fill_random_kernel(uint16_t* p, size_t n, uint32_t seed) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 0x9E3779B1u ^ uint32_t(i >> 32) * 0x85EBCA77u ^ seed;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    const float u = (float(x & 0xffffff) / 16777216.f - 0.5f) * 3.4641f;  // uniform, unit variance
    p[i] = __bfloat16_as_ushort(__float2bfloat16_rn(u));
  }
}
void fill_random(void* p, size_t n, uint32_t seed) {
  fill_random_kernel<<<4096, 256>>>(static_cast<uint16_t*>(p), n, seed);
  SAAP_CU(cudaGetLastError());
}

// Evicts the L2 by reading a buffer larger than it. Reading, not writing: a write leaves dirty
// lines whose write-back would be charged to the timed kernel.
__global__ void flush_read_kernel(const uint4* p, size_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9E3779B1u) *sink = acc;  // keeps the loads alive; practically never taken
}

// The read floor: every 16-byte word of two buffers read once (as K then V), UNROLL independent
// loads in flight per thread, streaming (no L1 allocation), folded so the loads stay alive.
template <int UNROLL>
__global__ void read_floor_kernel(const uint4* __restrict__ a, size_t na, const uint4* __restrict__ b, size_t nb,
                                  uint32_t* sink) {
  const size_t n = na + nb, stride = size_t(gridDim.x) * blockDim.x;
  uint32_t acc = 0;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + (UNROLL - 1) * stride < n; i += UNROLL * stride) {
    uint4 v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const size_t j = i + u * stride;
      v[u] = load_stream(j < na ? a + j : b + (j - na));
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n; i += stride) {
    const uint4 v = load_stream(i < na ? a + i : b + (i - na));
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9E3779B1u) *sink = acc;  // keeps the loads alive; practically never taken
}

struct Timer {
  DeviceBuffer<char> flush;
  cudaEvent_t a, b;
  DeviceBuffer<uint32_t> sink{1};
  Timer() : flush(size_t(256) << 20) {
    SAAP_CU(cudaMemset(flush.get(), 7, flush.bytes()));
    SAAP_CU(cudaEventCreate(&a));
    SAAP_CU(cudaEventCreate(&b));
  }
  // Median milliseconds of fn over reps after warm-up, L2 flushed before each repetition (unless
  // flush_l2 is false).
  double median_ms(const std::function<void()>& fn, int reps, int warmup = 3, bool flush_l2 = true) {
    for (int i = 0; i < warmup; ++i) fn();
    std::vector<float> t(reps);
    for (int i = 0; i < reps; ++i) {
      if (flush_l2)
        flush_read_kernel<<<1024, 256>>>(reinterpret_cast<const uint4*>(flush.get()), flush.bytes() / 16, sink.get());
      SAAP_CU(cudaEventRecord(a));
      fn();
      SAAP_CU(cudaEventRecord(b));
      SAAP_CU(cudaEventSynchronize(b));
      SAAP_CU(cudaEventElapsedTime(&t[i], a, b));
    }
    std::sort(t.begin(), t.end());
    return t[reps / 2];
  }
  // Median milliseconds from the start of fn to the event fn records midway (fn(mid)), timed as
  // median_ms times the whole.
  double median_split_ms(const std::function<void(cudaEvent_t)>& fn, int reps, int warmup = 3) {
    cudaEvent_t mid;
    SAAP_CU(cudaEventCreate(&mid));
    for (int i = 0; i < warmup; ++i) fn(mid);
    std::vector<float> t(reps);
    for (int i = 0; i < reps; ++i) {
      flush_read_kernel<<<1024, 256>>>(reinterpret_cast<const uint4*>(flush.get()), flush.bytes() / 16, sink.get());
      SAAP_CU(cudaEventRecord(a));
      fn(mid);
      SAAP_CU(cudaEventSynchronize(mid));
      SAAP_CU(cudaEventElapsedTime(&t[i], a, mid));
    }
    SAAP_CU(cudaDeviceSynchronize());
    SAAP_CU(cudaEventDestroy(mid));
    std::sort(t.begin(), t.end());
    return t[reps / 2];
  }
};

// Latency probes, to read the fixed costs of a step: an empty kernel between the timer's events
// (after the L2 flush, as every row), and one thread chasing `steps` dependent 8-byte loads whose
// addresses are `stride` bytes apart (512 B: within one 2 MiB page after the first; 2 MiB + 512 B:
// a new page, so a TLB miss, every load).
__global__ void empty_kernel() {}
__global__ void chain_init_kernel(uint64_t* p, int64_t stride_words, int steps) {
  for (int s = 0; s < steps; ++s) p[s * stride_words] = uint64_t(s + 1) * uint64_t(stride_words);
}
__global__ void chase_kernel(const uint64_t* p, int steps, uint64_t* sink) {
  uint64_t i = 0;
  for (int s = 0; s < steps; ++s) i = p[i];
  if (i == 1) *sink = i;  // keeps the chain alive; never taken (i is a multiple of the stride)
}
struct LatencyProbe {
  double empty_us = 0, near_ns = 0, far_ns = 0;
};
LatencyProbe latency_probe(Timer& tm) {
  constexpr int kSteps = 64;
  LatencyProbe r;
  r.empty_us = tm.median_ms([] { empty_kernel<<<1, 32>>>(); }, 50) * 1e3;
  DeviceBuffer<uint64_t> chain(size_t(kSteps + 1) * ((size_t(2) << 20) + 512) / 8 + 64);
  DeviceBuffer<uint64_t> sink(1);
  auto per_load_ns = [&](int64_t stride_bytes) {
    chain_init_kernel<<<1, 1>>>(chain.get(), stride_bytes / 8, kSteps);
    SAAP_CU(cudaGetLastError());
    const double one = tm.median_ms([&] { chase_kernel<<<1, 1>>>(chain.get(), 1, sink.get()); }, 50);
    const double all = tm.median_ms([&] { chase_kernel<<<1, 1>>>(chain.get(), kSteps, sink.get()); }, 50);
    return (all - one) / (kSteps - 1) * 1e6;
  };
  r.near_ns = per_load_ns(512);
  r.far_ns = per_load_ns((int64_t(2) << 20) + 512);
  return r;
}

double copy_bandwidth(Timer& tm) {
  const size_t n = size_t(2) << 30;
  DeviceBuffer<char> src(n), dst(n);
  SAAP_CU(cudaMemset(src.get(), 1, n));
  const double ms = tm.median_ms([&] { SAAP_CU(cudaMemcpyAsync(dst.get(), src.get(), n, cudaMemcpyDeviceToDevice)); }, 10);
  return 2.0 * n / (ms * 1e-3);  // bytes read + written per second
}

// Median ms of fn(stream) captured once as a CUDA graph and replayed, as a serving engine that
// captures its decode step runs it: the host launch gaps between dependent kernels disappear.
// A step that cannot be captured (it synchronises the host, or calls what capture forbids) is a
// finding, not a reason to lose the run: the capture is ended, `skipped` says why, and the row's
// graph_ms is -1.
double graph_median_ms(Timer& tm, const std::function<void(cudaStream_t)>& fn, int reps, const std::string& what,
                       std::vector<std::string>& skipped) {
  cudaStream_t st;  // blocking: the timer's events on the legacy stream order around it
  SAAP_CU(cudaStreamCreate(&st));
  fn(st);  // sizes workspaces and caches occupancy queries outside the capture
  SAAP_CU(cudaStreamSynchronize(st));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec;
  SAAP_CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  try {
    fn(st);
  } catch (const Error& e) {
    cudaStreamEndCapture(st, &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    cudaStreamDestroy(st);
    skipped.push_back("graph of " + what + ": " + e.what());
    std::printf("skip %s\n", skipped.back().c_str());
    return -1;
  }
  SAAP_CU(cudaStreamEndCapture(st, &graph));
  SAAP_CU(cudaGraphInstantiate(&exec, graph, 0));
  const double ms = tm.median_ms([&] { SAAP_CU(cudaGraphLaunch(exec, st)); }, reps);
  SAAP_CU(cudaGraphExecDestroy(exec));
  SAAP_CU(cudaGraphDestroy(graph));
  SAAP_CU(cudaStreamDestroy(st));
  return ms;
}

struct Shape {
  int hq, hkv, d;
  std::string name() const { return std::to_string(hq) + "x" + std::to_string(hkv) + "x" + std::to_string(d); }
};

struct Row {
  std::string method, param;
  Shape shape;
  int batch;
  int64_t context;
  double ms, bytes, lookup, select_ms, attend_ms;
  double graph_ms = 0;  // the same step replayed as a CUDA graph (0 = not measured)
  double score_ms = 0;  // select_ms to the end of its first kernel: Quest's score kernel, Saap's router
};

// A comma-separated list of numbers (strtod's form); anything else is a named error.
std::vector<double> parse_numbers(const char* flag, const char* s) {
  std::vector<double> v;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    v.push_back(std::strtod(p, &end));
    if (end == p || (*end && *end != ','))
      throw Error(ErrorKind::InvalidArgument,
                  std::string(flag) + ": '" + s + "' is not a comma-separated list of numbers");
    p = *end ? end + 1 : end;
  }
  return v;
}

std::vector<int64_t> parse_list(const char* flag, const char* s) {
  std::vector<int64_t> v;
  for (double x : parse_numbers(flag, s)) {
    if (x != std::floor(x) || x < 1)
      throw Error(ErrorKind::InvalidArgument,
                  std::string(flag) + ": " + std::to_string(x) + " is not a positive integer");
    v.push_back(int64_t(x));
  }
  return v;
}

// A comma-separated list of tunings in T::parse's form ("" for none).
template <class T>
std::vector<T> parse_tunings(const std::string& list) {
  std::vector<T> v;
  for (size_t at = 0; at < list.size();) {
    size_t end = list.find(',', at);
    if (end == std::string::npos) end = list.size();
    v.push_back(T::parse(list.substr(at, end - at)));
    at = end + 1;
  }
  return v;
}

// "32x8x128,28x4x128": query heads x KV heads x head dim.
std::vector<Shape> parse_shapes(const std::string& s) {
  std::vector<Shape> v;
  size_t at = 0;
  while (at < s.size()) {
    size_t end = s.find(',', at);
    if (end == std::string::npos) end = s.size();
    Shape sh{};
    if (std::sscanf(s.substr(at, end - at).c_str(), "%dx%dx%d", &sh.hq, &sh.hkv, &sh.d) != 3)
      throw Error(ErrorKind::InvalidArgument, "--shapes: '" + s.substr(at, end - at) + "' is not HQxHKVxD");
    v.push_back(sh);
    at = end + 1;
  }
  return v;
}

// Partition sizes of a trained partition of real keys (scripts/partition_sizes.py): every
// (layer, head) row's counts, concatenated.
std::vector<double> read_partition_sizes(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw Error(ErrorKind::NotFound, "--partition-sizes: cannot open " + path);
  std::vector<double> sizes;
  std::string line;
  bool header = true;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (header) {  // layer,kv_head,keys,counts
      header = false;
      continue;
    }
    const size_t comma = line.rfind(',');
    const char* p = line.c_str() + comma + 1;
    char* end = nullptr;
    for (double x = std::strtod(p, &end); end != p; x = std::strtod(p, &end)) {
      sizes.push_back(x);
      p = end;
    }
  }
  if (sizes.empty()) throw Error(ErrorKind::BadFile, "--partition-sizes: no counts in " + path);
  return sizes;
}

size_t free_bytes() {
  size_t f = 0, t = 0;
  SAAP_CU(cudaMemGetInfo(&f, &t));
  return f;
}

// The run's provenance; the GPU is the device measured, with the NVIDIA driver's version when its
// /proc entry is visible (else the CUDA driver API version).
saap::Provenance device_provenance(const cudaDeviceProp& prop) {
  saap::Provenance p = saap::collect_provenance();
  std::string driver = p.gpus.empty() ? "" : p.gpus.front().driver;
  if (driver.empty()) {
    int v = 0;
    cudaDriverGetVersion(&v);
    driver = "CUDA " + std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
  }
  p.gpus = {{prop.name, driver}};
  return p;
}

// Best read floor over a few launch shapes (grid-stride, UNROLL loads in flight): the median ms
// of reading na + nb 16-byte words.
double read_floor_ms(Timer& tm, const void* a, size_t a_bytes, const void* b, size_t b_bytes, int reps,
                     int sms) {
  double best = 1e30;
  auto* ua = static_cast<const uint4*>(a);
  auto* ub = static_cast<const uint4*>(b);
  for (int per_sm : {4, 8, 16}) {
    const int blocks = sms * per_sm;
    best = std::min(best, tm.median_ms([&] { read_floor_kernel<4><<<blocks, 256>>>(ua, a_bytes / 16, ub, b_bytes / 16, tm.sink.get()); }, reps));
    best = std::min(best, tm.median_ms([&] { read_floor_kernel<8><<<blocks, 256>>>(ua, a_bytes / 16, ub, b_bytes / 16, tm.sink.get()); }, reps));
  }
  SAAP_CU(cudaGetLastError());
  return best;
}

// The read kernel's best time by size (K as the first half of a buffer, V as the second; L2
// flushed): what one launch reaching for that many bytes gets. The bandwidth floor leaves out the
// launch and the first DRAM round trips, which are most of a read of a few MB (a sparse attend at
// batch 1); the report reads each row's bytes against this curve beside the floor.
struct ReadPoint {
  double bytes, ms;
};
std::vector<ReadPoint> read_curve(Timer& tm, int reps, int sms) {
  const size_t most = size_t(2) << 30;  // past the largest sparse step of the default rows (~1.1 GB)
  DeviceBuffer<char> buf(most);
  SAAP_CU(cudaMemset(buf.get(), 3, most));
  std::vector<ReadPoint> curve;
  for (size_t n = size_t(1) << 20; n <= most; n <<= 1)
    curve.push_back({double(n), read_floor_ms(tm, buf.get(), n / 2, buf.get() + most / 2, n / 2, reps, sms)});
  return curve;
}

// [[bytes, ms], ...] for the JSON.
std::string read_curve_json(const std::vector<ReadPoint>& curve) {
  std::string j = "[";
  for (size_t i = 0; i < curve.size(); ++i) {
    char point[64];
    std::snprintf(point, sizeof point, "%s[%.0f, %.7f]", i ? ", " : "", curve[i].bytes, curve[i].ms);
    j += point;
  }
  return j + "]";
}

struct Options {
  std::vector<int64_t> contexts = {16384, 65536, 131072, 262144, 524288}, batches = {1, 8};
  std::vector<Shape> shapes = {{32, 8, 128}};
  std::vector<int64_t> other_contexts;  // contexts of every shape after the first (empty: contexts)
  std::string partition_sizes, methods = "dense,saap,quest,loki";
  // Saap's budgets: a value <= 1 is a lookup fraction, a larger one a token count.
  std::vector<double> saap_budgets = {0.02, 0.05, 0.10, 1024, 2048};
  // Dense tunings timed beside the default (--dense-tunings; default dense_tuning_candidates()).
  std::vector<DenseTuning> dense_tunings;
  // Saap attend tunings timed beside the default (--saap-tunings; default saap_attend_candidates()).
  std::vector<SaapAttendTuning> saap_tunings = saap_attend_candidates();
  // Quest attend tunings timed beside the default (--quest-tunings; default sparse_attend_candidates()).
  std::vector<SparseAttendTuning> quest_tunings = sparse_attend_candidates();
  std::vector<double> quest_budgets;  // empty: Saap's measured fractions, 1024 and 2048 tokens
  bool quest_variants = true;         // the rows of the other selects beside the default one
  int reps = 30;
  std::string out_dir = ".";
  bool has(const char* m) const { return ("," + methods + ",").find("," + std::string(m) + ",") != std::string::npos; }
};

// Saap at one partition-size model: rows for each budget; its measured fractions go to Quest.
void bench_saap(Timer& tm, const Options& o, const DecodeShape& s, int64_t N, const Shape& sh, const void* dk,
                const void* dv, const std::vector<int32_t>& h_len, const float* q, float* out, SplitWorkspace& ws,
                const std::vector<double>* real_sizes, std::mt19937& rng, std::vector<Row>& rows,
                std::vector<double>& fractions, std::vector<std::string>& skipped) {
  const int B = s.batch, reps = o.reps;
  std::vector<float> lookups;  // as the CPU methods take them: a token budget b is lookup b / N
  for (double b : o.saap_budgets) lookups.push_back(b > 1 ? float(b) / float(N) : float(b));
  SaapConfig cfg;
  cfg.n_partitions = int(std::clamp<int64_t>(N / 512, 16, 4096));
  cfg.sinks = 64;
  cfg.window = 256;
  cfg.segment = 128;
  cfg.append_page = 64;
  cfg.append_pages_per_partition = 8;
  cfg.max_prefill = N;
  // Every timed step appends: warm-up and repetitions of the plain and the graph timing, per budget.
  // Each attend tuning (the default first, then --saap-tunings) is a row of its own per budget.
  std::vector<SaapAttendTuning> tunings = {saap_default_attend_tuning()};
  for (const SaapAttendTuning& t : o.saap_tunings)
    if (t.name() != tunings[0].name()) tunings.push_back(t);
  cfg.max_new_tokens = int64_t(lookups.size()) * int64_t(tunings.size()) * 2 * (reps + 8) + 16;
  cfg.classifier_hidden = 128;
  const int C = cfg.n_partitions, D = sh.d, H = cfg.classifier_hidden;
  auto idx = std::make_unique<SaapIndex>(s, cfg);
  std::normal_distribution<float> nd;
  std::vector<float> hc(size_t(sh.hkv) * C * D);
  for (auto& x : hc) x = nd(rng);
  idx->set_centroids(hc);
  auto rnd = [&](size_t n, float sd) {
    std::vector<float> v(n);
    for (auto& x : v) x = sd * nd(rng);
    return v;
  };
  idx->set_classifier(rnd(size_t(sh.hq) * H * D, 0.1f), rnd(size_t(sh.hq) * H, 0.1f), rnd(size_t(sh.hq) * C * H, 0.3f),
                      rnd(size_t(sh.hq) * C, 0.5f));
  std::vector<int32_t> assign(size_t(B) * sh.hkv * N, 0);
  std::lognormal_distribution<double> ln(-0.5, 1.0);  // mean exp(-0.5 + 0.5) = 1
  const int64_t part_tokens = N - cfg.sinks - cfg.window;
  for (int64_t bh = 0; bh < int64_t(B) * sh.hkv; ++bh) {
    std::vector<double> w(C);
    double sw = 0;
    for (int c = 0; c < C; ++c)
      sw += (w[c] = real_sizes ? (*real_sizes)[size_t(bh * C + c) % real_sizes->size()] : ln(rng));
    int64_t t = cfg.sinks;
    double acc = 0;
    for (int c = 0; c < C; ++c) {
      acc += w[c] / sw;
      const int64_t end = c + 1 == C ? cfg.sinks + part_tokens : cfg.sinks + int64_t(acc * part_tokens);
      for (; t < end; ++t) assign[size_t(bh) * N + t] = c;
    }
  }
  {
    DeviceBuffer<int32_t> da(assign.size());
    SAAP_CU(cudaMemcpy(da.get(), assign.data(), assign.size() * 4, cudaMemcpyHostToDevice));
    idx->build(dk, dv, N, h_len, da.get());
  }
  DeviceBuffer<uint16_t> knew(size_t(B) * sh.hkv * D), vnew(knew.size());
  fill_random(knew.get(), knew.size(), 3);
  fill_random(vnew.get(), vnew.size(), 4);
  const float scale = 1.f / std::sqrt(float(D));
  for (const float& lookup : lookups) {
    const double sel_ms = tm.median_ms([&] { idx->select(q, lookup); }, reps);
    // The same without the L2 flush (kernel code, weights and tables cached): what the cold
    // misses cost the select is the difference. Printed, not a column.
    const double sel_warm_ms = tm.median_ms([&] { idx->select(q, lookup); }, reps, 3, false);
    // The router's part (to the event between it and the rank-and-fill kernel).
    const double route_ms =
        tm.median_split_ms([&](cudaEvent_t mid) { idx->select(q, rules::Budget{lookup, 0}, 0, mid); }, reps);
    for (size_t ti = 0; ti < tunings.size(); ++ti) {
      idx->set_attend_tuning(tunings[ti]);
      idx->select(q, lookup);  // cuts the splits for this tuning's kernel
      const double att_ms = tm.median_ms([&] { idx->attend(q, scale, out, ws); }, reps);
      auto step = [&](cudaStream_t st) {
        idx->append_select(knew.get(), vnew.get(), nullptr, q, rules::Budget{lookup, 0}, st);
        idx->attend(q, scale, out, ws, st);
      };
      idx->reserve_appends(reps + 3);  // warm-up + repetitions: no synchronisation inside the timing
      const double all_ms = tm.median_ms([&] { step(0); }, reps);
      idx->reserve_appends(reps + 5);  // graph_median_ms: one run to size, the capture, the replays
      const double graph_ms = graph_median_ms(tm, step, reps, "saap " + std::to_string(lookup), skipped);
      idx->check();
      const auto ctr = idx->counters();
      double tokens = 0, n_all = 0;
      for (size_t i = 0; i < ctr.selected_tokens.size(); ++i) tokens += ctr.selected_tokens[i], n_all += ctr.seq_len[i];
      const double bytes = tokens * D * 2 * 2 + double(idx->index_bytes_per_step()) + 2.0 * B * sh.hq * D * 4;
      char param[128];
      const char* model = real_sizes ? "real" : "lognormal";
      const double budget = o.saap_budgets[size_t(&lookup - lookups.data())];
      // The default tuning's row keeps the plain param; a tuned row adds ";" + its name.
      const std::string suffix = ti ? ";" + tunings[ti].name() : "";
      if (budget > 1)
        std::snprintf(param, sizeof param, "tokens=%.0f;%s%s", budget, model, suffix.c_str());
      else
        std::snprintf(param, sizeof param, "lookup=%.2f;%s%s", lookup, model, suffix.c_str());
      rows.push_back({"saap", param, sh, B, N, all_ms, bytes, tokens / n_all, sel_ms, att_ms, graph_ms});
      rows.back().score_ms = route_ms;
      if (ti == 0 && !real_sizes && fractions.size() < 3) fractions.push_back(tokens / n_all);
      std::printf("saap %s %s batch %d context %lld: select %.4f ms (%.4f ms with a warm L2; the router to its end "
                  "%.4f ms), attend %.4f ms\n",
                  sh.name().c_str(), param, B, (long long)N, sel_ms, sel_warm_ms, route_ms, att_ms);
    }
    idx->set_attend_tuning(saap_default_attend_tuning());
  }
}

}  // namespace

int main(int argc, char** argv) try {
  Options o;
  bool dense_tunings_given = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--contexts") o.contexts = parse_list("--contexts", argv[i + 1]);
    else if (a == "--batches") o.batches = parse_list("--batches", argv[i + 1]);
    else if (a == "--shapes") o.shapes = parse_shapes(argv[i + 1]);
    else if (a == "--other-contexts") o.other_contexts = parse_list("--other-contexts", argv[i + 1]);
    else if (a == "--partition-sizes") o.partition_sizes = argv[i + 1];
    else if (a == "--methods") o.methods = argv[i + 1];
    else if (a == "--saap-budgets") o.saap_budgets = parse_numbers("--saap-budgets", argv[i + 1]);
    else if (a == "--quest-budgets") o.quest_budgets = parse_numbers("--quest-budgets", argv[i + 1]);
    else if (a == "--quest-variants") {
      const std::string v = argv[i + 1];
      if (v != "0" && v != "1") throw Error(ErrorKind::InvalidArgument, "--quest-variants: '" + v + "' is not 0 or 1");
      o.quest_variants = v == "1";
    }
    else if (a == "--dense-tunings") {
      o.dense_tunings = parse_tunings<DenseTuning>(argv[i + 1]);
      dense_tunings_given = true;
    }
    else if (a == "--saap-tunings") {
      o.saap_tunings = parse_tunings<SaapAttendTuning>(argv[i + 1]);
    }
    else if (a == "--quest-tunings") {
      o.quest_tunings = parse_tunings<SparseAttendTuning>(argv[i + 1]);
    }
    else if (a == "--reps") o.reps = std::atoi(argv[i + 1]);
    else if (a == "--out") o.out_dir = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (!dense_tunings_given) o.dense_tunings = dense_tuning_candidates();
  // The results' folder exists before the first row is timed, not found missing after the last.
  std::error_code made;
  std::filesystem::create_directories(o.out_dir, made);
  if (made) throw Error(ErrorKind::BadFile, "--out " + o.out_dir + ": cannot create the folder: " + made.message());
  const int reps = o.reps;
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::printf("no CUDA device\n");
    return 77;
  }
  std::vector<double> real_sizes;
  if (!o.partition_sizes.empty()) real_sizes = read_partition_sizes(o.partition_sizes);
  cudaDeviceProp prop;
  SAAP_CU(cudaGetDeviceProperties(&prop, 0));
  const saap::Provenance provenance = device_provenance(prop);
  Timer tm;
  const double bw = copy_bandwidth(tm);
  // The read floor over a buffer far larger than the L2 (the flush buffer is read too, so the
  // timed read starts cold).
  double read_bw = 0;
  {
    const size_t n = size_t(4) << 30;
    DeviceBuffer<char> big(n);
    SAAP_CU(cudaMemset(big.get(), 1, n));
    read_bw = double(n) / (read_floor_ms(tm, big.get(), n / 2, big.get() + n / 2, n / 2, 10, prop.multiProcessorCount) * 1e-3);
  }
  std::printf("device %s, %d SMs, L2 %d MB, %.1f GiB; copy bandwidth (read+write) %.0f GB/s; read floor %.0f GB/s\n",
              prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, prop.totalGlobalMem / 1073741824.0,
              bw / 1e9, read_bw / 1e9);
  const LatencyProbe lat = latency_probe(tm);
  std::printf("after the L2 flush: an empty kernel %.2f us between events; a dependent load %.0f ns within a "
              "2 MiB page, %.0f ns on a new page each time\n",
              lat.empty_us, lat.near_ns, lat.far_ns);
  const std::vector<ReadPoint> curve = read_curve(tm, reps, prop.multiProcessorCount);
  std::printf("read kernel by size:");
  for (const ReadPoint& p : curve) std::printf(" %.0f MB %.1f us;", p.bytes / 1e6, p.ms * 1e3);
  std::printf("\n");
  std::vector<Row> rows;
  std::vector<std::string> skipped;
  std::mt19937 rng(12345);

  for (const Shape& sh : o.shapes)
    for (int64_t B : o.batches)
      for (int64_t N : &sh == &o.shapes.front() || o.other_contexts.empty() ? o.contexts : o.other_contexts) {
        const DecodeShape s{int(B), sh.hq, sh.hkv, sh.d, DType::BF16};
        try {
          s.check();
        } catch (const Error& e) {
          skipped.push_back("shape " + sh.name() + ": " + e.what());
          std::printf("skip %s\n", skipped.back().c_str());
          break;
        }
        const int D = sh.d;
        const size_t kv_elems = size_t(B) * sh.hkv * N * D;
        const size_t kv_bytes = 2 * kv_elems * 2;
        // Dense and the Saap pool live together during the build, plus assignments and scratch.
        if (2.1 * kv_bytes + (size_t(2) << 30) > free_bytes()) {
          skipped.push_back("shape " + sh.name() + " batch " + std::to_string(B) + " context " + std::to_string(N) +
                            ": needs " + std::to_string(2.1 * kv_bytes / 1e9) + " GB, " +
                            std::to_string(free_bytes() / 1e9) + " GB free");
          std::printf("skip %s\n", skipped.back().c_str());
          continue;
        }
        const float scale = 1.f / std::sqrt(float(D));
        DeviceBuffer<float> q(size_t(B) * sh.hq * D), out(q.size());
        {
          std::vector<float> hq(q.size());
          std::normal_distribution<float> nd;
          for (auto& x : hq) x = nd(rng);
          SAAP_CU(cudaMemcpy(q.get(), hq.data(), hq.size() * 4, cudaMemcpyHostToDevice));
        }
        SplitWorkspace ws;
        std::vector<int32_t> h_len(B, int32_t(N));
        std::vector<double> saap_fractions;  // Saap's measured fractions, Quest's budgets
        auto dk = std::make_unique<DeviceBuffer<uint16_t>>(kv_elems);
        auto dv = std::make_unique<DeviceBuffer<uint16_t>>(kv_elems);
        fill_random(dk->get(), kv_elems, 1);
        fill_random(dv->get(), kv_elems, 2);
        DeviceBuffer<int32_t> lengths(B);
        SAAP_CU(cudaMemcpy(lengths.get(), h_len.data(), B * 4, cudaMemcpyHostToDevice));

        // The read floor over the same K and V.
        const double read_ms =
            read_floor_ms(tm, dk->get(), kv_bytes / 2, dv->get(), kv_bytes / 2, reps, prop.multiProcessorCount);
        rows.push_back({"read", "floor", sh, int(B), N, read_ms, double(kv_bytes), 1.0, 0, read_ms});

        // Dense.
        if (o.has("dense")) {
          auto step = [&](cudaStream_t st) {
            dense_decode(s, dk->get(), dv->get(), N, lengths.get(), q.get(), scale, out.get(), ws, st);
          };
          const double dense_ms = tm.median_ms([&] { step(0); }, reps);
          const double dense_bytes = double(kv_bytes) + 2.0 * q.bytes();
          rows.push_back({"dense", "", sh, int(B), N, dense_ms, dense_bytes, 1.0, 0, dense_ms});
          rows.back().graph_ms = graph_median_ms(tm, step, reps, "dense", skipped);
          // The tunings dense_decode_tuned offers, beside the default (issue 11: which one wins).
          for (const DenseTuning& tuning : o.dense_tunings) {
            if (tuning.name() == dense_default_tuning(s).name()) continue;  // the dense row above
            const double ms = tm.median_ms(
                [&] {
                  dense_decode_tuned(s, dk->get(), dv->get(), N, lengths.get(), q.get(), scale, out.get(), ws, tuning);
                },
                reps);
            rows.push_back({"dense", tuning.name(), sh, int(B), N, ms, dense_bytes, 1.0, 0, ms});
          }
        }

        if (o.has("saap")) {
          bench_saap(tm, o, s, N, sh, dk->get(), dv->get(), h_len, q.get(), out.get(), ws, nullptr, rng, rows,
                     saap_fractions, skipped);
          if (!real_sizes.empty())
            bench_saap(tm, o, s, N, sh, dk->get(), dv->get(), h_len, q.get(), out.get(), ws, &real_sizes, rng, rows,
                       saap_fractions, skipped);
        }
        dk.reset();
        dv.reset();
        if (saap_fractions.empty()) saap_fractions = {0.02, 0.05, 0.10};

        // Quest: pages of 16, Saap's sinks and window, at Saap's measured fractions and fixed budgets.
        if (o.has("quest")) {
          QuestConfig qc;
          qc.page_size = 16;
          qc.sinks = 64;
          qc.window = 256;
          QuestIndex idx(s, N + 16 * (reps + 8) + 64, qc);  // room for the timed appends (plain and graph)
          DeviceBuffer<uint16_t> k(kv_elems), v(kv_elems);
          fill_random(k.get(), kv_elems, 7);
          fill_random(v.get(), kv_elems, 8);
          DeviceBuffer<uint16_t> knew(size_t(B) * sh.hkv * D), vnew(knew.size());
          fill_random(knew.get(), knew.size(), 9);
          fill_random(vnew.get(), vnew.size(), 10);
          std::vector<std::pair<QuestBudget, std::string>> budgets;
          for (double f : o.quest_budgets.empty() ? saap_fractions : std::vector<double>{}) {
            char param[40];
            std::snprintf(param, sizeof param, "lookup=%.4f(saap)", f);
            budgets.push_back({{f, 0}, param});
          }
          for (double b : o.quest_budgets.empty() ? std::vector<double>{1024, 2048} : o.quest_budgets) {
            char param[40];
            if (b > 1) std::snprintf(param, sizeof param, "tokens=%.0f", b);
            else std::snprintf(param, sizeof param, "lookup=%.4f", b);
            budgets.push_back({b > 1 ? QuestBudget{0.05, int64_t(b)} : QuestBudget{b, 0}, param});
          }
          // The default attend tuning first, then --quest-tunings.
          std::vector<SparseAttendTuning> tunings = {SparseAttendTuning{}};
          for (const SparseAttendTuning& t : o.quest_tunings)
            if (t.name() != tunings[0].name()) tunings.push_back(t);
          // The split select (the default: score kernel + one select block per (b, h)) with every
          // attend tuning; the fused select (one cooperative kernel, "select=fused") with the
          // default attend, as evidence.
          // "step=fused": select_attend, the select and the attention in one cooperative kernel (its
          // select column is the whole of it, its attend column 0).
          // "select=cluster" / "select=block": the split select with its select kernel over a cluster
          // of blocks per (b, h) / one block per (b, h) whatever the pages (the default row follows
          // QuestConfig::cluster_from_pages), with the default attend.
          for (const auto& entry : budgets)
            for (size_t ti = 0; ti < tunings.size() + (o.quest_variants ? 4 : 0); ++ti) {
              const bool fused = ti == tunings.size(), one_kernel = ti == tunings.size() + 1,
                         cluster = ti == tunings.size() + 2, block = ti == tunings.size() + 3;
              const QuestBudget budget = entry.first;
              const SparseAttendTuning& tuning = tunings[fused || one_kernel || cluster || block ? 0 : ti];
              const std::string param = fused        ? entry.second + ";select=fused"
                                        : one_kernel ? entry.second + ";step=fused"
                                        : cluster    ? entry.second + ";select=cluster"
                                        : block      ? entry.second + ";select=block"
                                        : ti == 0     ? entry.second
                                                      : entry.second + ";" + tuning.name();
              idx.set_fused_select(fused);
              idx.set_cluster_from_pages(cluster ? 0 : block ? QuestConfig::kNoCluster : qc.cluster_from_pages);
              // The prefill again: every timed step appends the same token, and ~300 copies of it
              // (five rows) reach past the window into the scored pages, whose bounds then all
              // tie at one key of the other sign (the H200 run at 2df0f1e: tokens=2048, the
              // fifth row, 2x the tokens=1024 step). Each row now starts from the random prefill.
              idx.store(k.get(), v.get(), N, h_len);
              const double sel_ms =
                  one_kernel ? tm.median_ms([&] { idx.select_attend(q.get(), budget, scale, out.get(), ws); }, reps)
                             : tm.median_ms([&] { idx.select(q.get(), budget); }, reps);
              const double score_ms =
                  one_kernel ? sel_ms
                             : tm.median_split_ms([&](cudaEvent_t mid) { idx.select(q.get(), budget, 0, mid); }, reps);
              const double att_ms =
                  one_kernel ? 0.0
                             : tm.median_ms([&] { idx.attend(q.get(), scale, out.get(), ws, 0, tuning); }, reps);
              const auto ctr = idx.counters();
              double tokens = 0, n_all = 0;
              for (size_t i = 0; i < ctr.selected_tokens.size(); ++i)
                tokens += ctr.selected_tokens[i], n_all += ctr.seq_len[i];
              const int64_t meta = idx.index_bytes_last_step();
              // K/V of the selected tokens, the page metadata, the page keys written and read back.
              const double bytes = tokens * D * 2 * 2 + double(meta) + double(meta) / (2 * D * 2) * 8 + 2.0 * q.bytes();
              auto step = [&](cudaStream_t st) {  // the whole step, plain and as a graph
                idx.append(knew.get(), vnew.get(), st);
                if (one_kernel) return idx.select_attend(q.get(), budget, scale, out.get(), ws, st);
                idx.select(q.get(), budget, st);
                idx.attend(q.get(), scale, out.get(), ws, st, tuning);
              };
              const double all_ms = tm.median_ms([&] { step(0); }, reps);
              rows.push_back({"quest", param, sh, int(B), N, all_ms, bytes, tokens / n_all, sel_ms, att_ms});
              rows.back().graph_ms = graph_median_ms(tm, step, reps, "quest " + param, skipped);
              rows.back().score_ms = score_ms;
              std::printf("quest %s %s batch %d context %lld: select %.4f ms, of which the score kernel %.4f\n",
                          param.c_str(), sh.name().c_str(), int(B), (long long)N, sel_ms, score_ms);
            }
        }

        // Loki: (d_f, k_f) = (0.25, 0.25) and (0.125, 0.125), where the rank is one it instantiates.
        if (o.has("loki"))
          for (double f : {0.25, 0.125}) {
            const int r = int(f * D);
            if (!LokiIndex::supported_rank(r) || r >= D) {
              skipped.push_back("loki rank " + std::to_string(r) + " at head dim " + std::to_string(D));
              continue;
            }
            LokiIndex idx(s, N + 2 * (reps + 8), r);  // room for the timed appends (plain and graph)
            std::vector<float> eye(size_t(sh.hkv) * D * D, 0.f);
            for (int h = 0; h < sh.hkv; ++h)
              for (int i = 0; i < D; ++i) eye[(size_t(h) * D + i) * D + i] = 1.f;
            idx.set_basis(eye);
            DeviceBuffer<uint16_t> k(kv_elems), v(kv_elems);
            fill_random(k.get(), kv_elems, 5);
            fill_random(v.get(), kv_elems, 6);
            DeviceBuffer<uint16_t> knew(size_t(B) * sh.hkv * D), vnew(knew.size());
            fill_random(knew.get(), knew.size(), 11);
            fill_random(vnew.get(), vnew.size(), 12);
            // One row: the per-head selection and attention have a single loop (no attend tunings).
            idx.store_rotated(k.get(), v.get(), N, h_len);  // each row from the prefill, as Quest's
            const double sel_ms = tm.median_ms([&] { idx.select(q.get(), f); }, reps);
            const double att_ms = tm.median_ms([&] { idx.attend(scale, out.get(), ws); }, reps);
            auto step = [&](cudaStream_t st) {  // the whole step, plain and as a graph
              idx.append(knew.get(), vnew.get(), st);
              idx.select(q.get(), f, st);
              idx.attend(scale, out.get(), ws, st);
            };
            const double all_ms = tm.median_ms([&] { step(0); }, reps);
            std::vector<int32_t> read(size_t(B) * sh.hkv);  // each group's union of its heads' tokens
            SAAP_CU(cudaMemcpy(read.data(), idx.selected_tokens(), read.size() * 4, cudaMemcpyDeviceToHost));
            double k_tot = 0;
            for (int32_t c : read) k_tot += c;
            const double tokens = double(B) * sh.hkv * N;
            const int G = sh.hq / sh.hkv;
            // Low-rank keys, each head's scores written once and read twice (the least a select
            // over stored scores reads; radix_topk.cuh reads them five times), the union's K and V:
            // the same floor as the runs before radix_topk.cuh.
            const double bytes = tokens * r * 2 + tokens * G * 4 * 3 + k_tot * D * 2 * 2 + 2.0 * q.bytes();
            char param[48];
            std::snprintf(param, sizeof param, "d_f=%.3g;k_f=%.3g", f, f);
            rows.push_back({"loki", param, sh, int(B), N, all_ms, bytes, bytes / (tokens * D * 4), sel_ms, att_ms});
            rows.back().graph_ms = graph_median_ms(tm, step, reps, std::string("loki ") + param, skipped);
          }
      }

  // The floor bandwidth: the best read of the run, by the read kernel or by any method.
  double floor_bw = read_bw;
  for (const Row& r : rows) floor_bw = std::max(floor_bw, r.bytes / (r.ms * 1e-3));
  // Report.
  std::printf("\nfloor bandwidth %.0f GB/s (read kernel %.0f GB/s)\n", floor_bw / 1e9, read_bw / 1e9);
  std::printf("%-6s %-22s %-9s %5s %8s %9s %9s %9s %8s %9s %9s %8s %9s %8s\n", "method", "param", "shape", "batch",
              "context", "ms", "select_ms", "attend_ms", "GB", "GB/s", "floor_ms", "speedup", "graph_ms", "g_speedup");
  std::string csv = provenance_csv_lines(provenance) +
      "method,param,shape,n_q_heads,n_kv_heads,head_dim,batch,context,ms,select_ms,attend_ms,bytes,gbps,floor_ms,"
      "frac_of_floor,lookup,speedup,graph_ms,graph_speedup\n";
  std::string json = "{\n  \"provenance\": " + provenance_json(provenance, 2) + ",\n  \"device\": " +
                     saap::json_quote(prop.name) + ",\n  \"copy_bandwidth_gbps\": " + std::to_string(bw / 1e9) +
                     ",\n  \"read_kernel_gbps\": " + std::to_string(read_bw / 1e9) +
                     ",\n  \"floor_gbps\": " + std::to_string(floor_bw / 1e9) +
                     ",\n  \"latency_probe\": {\"empty_kernel_us\": " + std::to_string(lat.empty_us) +
                     ", \"dependent_load_same_page_ns\": " + std::to_string(lat.near_ns) +
                     ", \"dependent_load_new_page_ns\": " + std::to_string(lat.far_ns) + "}" +
                     ",\n  \"read_curve\": " + read_curve_json(curve) +
                     ",\n  \"dtype\": \"bf16\",\n"
                     "  \"timing\": \"CUDA events, median of " + std::to_string(reps) +
                     " repetitions, L2 flushed (256 MB read) before each\",\n"
                     "  \"synthetic\": \"K/V uniform random bf16; Saap partition sizes lognormal(sigma=1.0), mean 512 "
                     "tokens (C = context/512 per KV head), or real (param ';real': the counts of " +
                     (o.partition_sizes.empty() ? std::string("-") : o.partition_sizes) +
                     ", all (layer, head) rows concatenated, tiled to C per (sequence, head) from offset bh*C, wrapping, "
                     "scaled to the partitioned tokens), sinks 64, window 256, classifier random (hidden 128); Loki "
                     "keys random in an identity PCA basis; Quest pages of 16, sinks 64, window 256, on its own random "
                     "K/V; read = the floor kernel over the dense K and V\",\n  \"skipped\": [";
  for (size_t i = 0; i < skipped.size(); ++i) json += (i ? ", " : "") + saap::json_quote(skipped[i]);
  json += "],\n  \"rows\": [\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    double dense = 0, dense_graph = 0;
    for (const Row& d : rows)
      if (d.method == "dense" && d.param.empty() && d.batch == r.batch && d.context == r.context &&
          d.shape.name() == r.shape.name())
        dense = d.ms, dense_graph = d.graph_ms;
    const double floor_ms = r.bytes / floor_bw * 1e3, gbps = r.bytes / (r.ms * 1e-3) / 1e9;
    const double speedup = dense > 0 ? dense / r.ms : 0;
    const double graph_speedup = r.graph_ms > 0 ? dense_graph / r.graph_ms : 0;  // graph vs graph
    const std::string shape = r.shape.name();
    std::printf("%-6s %-22s %-9s %5d %8lld %9.4f %9.4f %9.4f %8.3f %9.0f %9.4f %7.2fx %9.4f %7.2fx\n",
                r.method.c_str(), r.param.c_str(), shape.c_str(), r.batch, (long long)r.context, r.ms, r.select_ms,
                r.attend_ms, r.bytes / 1e9, gbps, floor_ms, speedup, r.graph_ms, graph_speedup);
    char line[768];
    std::snprintf(line, sizeof line, "%s,%s,%s,%d,%d,%d,%d,%lld,%.5f,%.5f,%.5f,%.0f,%.1f,%.5f,%.4f,%.5f,%.3f,%.5f,%.3f\n",
                  r.method.c_str(), r.param.c_str(), shape.c_str(), r.shape.hq, r.shape.hkv, r.shape.d, r.batch,
                  (long long)r.context, r.ms, r.select_ms, r.attend_ms, r.bytes, gbps, floor_ms, floor_ms / r.ms,
                  r.lookup, speedup, r.graph_ms, graph_speedup);
    csv += line;
    std::snprintf(line, sizeof line,
                  "    {\"method\": \"%s\", \"param\": \"%s\", \"shape\": \"%s\", \"n_q_heads\": %d, \"n_kv_heads\": %d, "
                  "\"head_dim\": %d, \"batch\": %d, \"context\": %lld, \"ms\": %.5f, "
                  "\"select_ms\": %.5f, \"attend_ms\": %.5f, \"bytes\": %.0f, \"gbps\": %.1f, \"floor_ms\": %.5f, "
                  "\"lookup_fraction\": %.5f, \"speedup_vs_dense\": %.3f, \"graph_ms\": %.5f, "
                  "\"graph_speedup_vs_dense_graph\": %.3f, \"score_ms\": %.5f}%s\n",
                  r.method.c_str(), r.param.c_str(), shape.c_str(), r.shape.hq, r.shape.hkv, r.shape.d, r.batch,
                  (long long)r.context, r.ms, r.select_ms, r.attend_ms, r.bytes, gbps, floor_ms, r.lookup, speedup,
                  r.graph_ms, graph_speedup, r.score_ms, i + 1 < rows.size() ? "," : "");
    json += line;
  }
  json += "  ]\n}\n";
  write_file_atomically(o.out_dir + "/decode_bench.csv", csv);
  write_file_atomically(o.out_dir + "/decode_bench.json", json);
  for (const auto& sk : skipped) std::printf("skipped: %s\n", sk.c_str());
  return 0;
} catch (const saap::Error& e) {  // a named error (bad option, missing folder, CUDA), as e2e_bench reports it
  std::fprintf(stderr, "decode_bench: %s\n", e.what());
  return int(e.kind());
}
