// CPU decode benchmark: the time one decode step's attention takes per layer under each method, on
// the real keys and queries of the default model at a long context, against dense attention and
// against the memory floor (bytes read / measured copy bandwidth of this machine, same run).
//
// One timed step is what a decoder does for a new token in one layer: place its key, then select
// and attend for its query. Steps run at consecutive positions (stateful methods such as H2O
// refuse to go back), each after evicting the CPU caches, because in a real decode the other
// layers' caches (hundreds of MB) push this layer's keys out before it is read again.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "saap/methods/registry.h"
#include "saap/model/llama.h"

namespace saap {

// Median copy bandwidth of a `bytes`-byte memcpy with `threads` OpenMP threads (each copying its
// slice), counted as bytes read + written per second, in GB/s (1e9). The CUDA benchmark counts
// device copies the same way, so floors on both sides compare.
double copy_bandwidth_gbps(int64_t bytes, int threads, int reps = 5);

// Evicts the CPU caches by writing then reading a buffer several times the last-level cache.
class CacheFlusher {
 public:
  explicit CacheFlusher(int64_t bytes = 0);  // 0: 4 x the L3 size reported by the OS, at least 64 MiB
  void flush();
  int64_t bytes() const { return int64_t(buf_.size()); }

 private:
  std::vector<char> buf_;
  volatile char sink_ = 0;
};

struct DecodeBenchOptions {
  int64_t context = 8192;   // n_ctx of the last timed query (its position is context - 1)
  std::vector<int> layers;  // empty: first, middle and last layer
  int reps = 20;            // timed steps per method and layer
  int warmup = 3;           // untimed steps before them (first-call effects, H2O's first evictions)
  bool flush = true;        // evict the CPU caches before each timed step
  int threads = 0;          // OpenMP threads of the timed steps (0: the current default); prefill uses the default
  bool progress = true;
};

// Medians over the timed steps of one method on one layer, and what those steps read.
struct MethodLayerTiming {
  std::string method;  // registry name
  std::string spec;    // MethodSpec::describe()
  int layer = 0;
  int64_t context = 0;  // n_ctx of the last timed query
  int reps = 0;
  double place_us = 0, select_us = 0, attend_us = 0, total_us = 0;  // total = select + attend of one step
  // Time attend() spends on counting the bytes it read (a sort of the selection per KV head, not
  // a read of K/V); it is inside attend_us and measured apart so a reader can take it out.
  double accounting_us = 0;
  LookupStats lookup;  // summed over the timed steps
  double bytes_per_query() const {
    return lookup.queries ? double(lookup.kv_bytes + lookup.index_bytes) / double(lookup.queries) : 0.0;
  }
};

struct BenchMethod {
  MethodSpec spec;
  MethodFactory factory;
};

// Times methods on one layer. kv holds at least `context` positions; k_pre are their pre-RoPE
// keys [context][n_kv_heads][head_dim]; q and q_pre hold the queries of the last warmup + reps
// positions [warmup + reps][n_q_heads][head_dim], in position order. Fresh methods are built,
// positions [0, context - warmup - reps) are placed at once, then each step places its position and
// runs its query over the prefix cached so far. The methods take turns within each step, so that
// load from other processes falls on all of them alike. One timing per method, in order.
std::vector<MethodLayerTiming> time_methods_on_layer(const std::vector<BenchMethod>& methods, const LayerShape& shape,
                                                     const LayerKV& kv, const float* k_pre, const float* q,
                                                     const float* q_pre, const DecodeBenchOptions& options,
                                                     CacheFlusher* flusher);
// The same for one method.
MethodLayerTiming time_method_on_layer(const MethodFactory& factory, const MethodSpec& spec, const LayerShape& shape,
                                       const LayerKV& kv, const float* k_pre, const float* q, const float* q_pre,
                                       const DecodeBenchOptions& options, CacheFlusher* flusher);

// One row of the benchmark table: a timing with the same layer's dense time and the floor.
struct DecodeBenchRow {
  MethodLayerTiming timing;
  double dense_us = 0;   // dense total_us on the same layer in the same run
  double speedup = 0;    // dense_us / total_us
  double gbps = 0;       // bytes_per_query / total_us
  double floor_us = 0;   // bytes_per_query / copy bandwidth
  nlohmann::json to_json() const;
};

struct DecodeBenchResult {
  int64_t context = 0;
  std::vector<int> layers;
  int threads = 0;                  // OpenMP threads the timed steps ran with
  // memcpy bandwidth (read + write), the higher of a measurement before and one after the timing
  double copy_gbps_1thread = 0;     // one thread
  double copy_gbps_all = 0;         // all_threads threads (every processor)
  int all_threads = 0;
  double floor_gbps = 0;            // what the floor uses: one thread's when the steps ran on one, else all
  std::vector<DecodeBenchRow> rows;
  std::vector<std::string> notes;   // methods skipped and why
  nlohmann::json to_json() const;
};

// Checks the options and the method names against the model before any work (InvalidArgument
// naming the field): context in [warmup + reps + 1, model context length], layers in range,
// known method names.
void check_decode_bench(const LlamaConfig& config, const std::vector<MethodSpec>& specs,
                        const DecodeBenchOptions& options);

// Runs the model densely over `tokens` (exactly options.context of them) to fill a KV cache,
// capturing the chosen layers' pre-RoPE keys and last queries, then times every spec on every
// layer. Specs whose method needs an artifact but has none are skipped with a note. Dense is
// timed first on each layer (added if absent) so every row has its speed-up.
DecodeBenchResult run_decode_bench(std::shared_ptr<const LlamaModel> model, const std::vector<int32_t>& tokens,
                                   std::vector<MethodSpec> specs, const ArtifactIdentity& identity,
                                   const DecodeBenchOptions& options);

}  // namespace saap
