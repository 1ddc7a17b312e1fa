// The model runner for the Llama family ("llama": SmolLM2) and Gemma-3 ("gemma3"): loads a GGUF,
// runs prefill and decode on the CPU through a KV cache, with the attention of every global layer
// delegated to a pluggable AttentionMethod. One forward pass reads top to bottom in
// src/model/llama.cpp; what is Gemma-3's own (its constants and tensors) is in src/model/gemma3.cpp.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "saap/core/kv_cache.h"
#include "saap/core/rope.h"
#include "saap/methods/method.h"
#include "saap/model/gguf.h"
#include "saap/model/llama_config.h"
#include "saap/model/tokenizer.h"

namespace saap {

// One layer's activations for positions [pos0, pos0 + n), offered to observers (calibration).
struct LayerActivations {
  int layer = 0;
  int64_t pos0 = 0;
  int64_t n = 0;
  const float* q_pre = nullptr;  // [n][n_heads][head_dim], before RoPE
  const float* q = nullptr;      // [n][n_heads][head_dim], after RoPE
  const float* k_pre = nullptr;  // [n][n_kv_heads][head_dim]
  const float* k = nullptr;      // [n][n_kv_heads][head_dim]
  const float* v = nullptr;      // [n][n_kv_heads][head_dim]
};
using LayerObserver = std::function<void(const LayerActivations&)>;

class LlamaModel {
 public:
  // Loads and dequantizes the weights (progress bar on stderr when `progress`).
  static std::shared_ptr<const LlamaModel> load(const std::string& path, bool progress = true);
  const LlamaConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  const GGUFFile& file() const { return file_; }
  // A short identity string written into artifacts: name, shape and a hash of the file header.
  const std::string& identity() const { return identity_; }

  struct Layer;  // weights of one transformer block, defined in llama.cpp
  struct Weights;

 private:
  friend class LlamaSession;
  LlamaModel() = default;
  GGUFFile file_;
  LlamaConfig config_;
  Tokenizer tokenizer_;
  std::string identity_;
  std::shared_ptr<const Weights> weights_;
};

// How attention runs during a forward pass.
enum class AttentionMode {
  // Prefill chunks use exact causal attention; single-token decode steps use the layer's method.
  // This is what generation does (DESIGN.md: prefill dense, decode sparse).
  DensePrefill,
  // Every position attends through the layer's method, as if it were decoded one by one.
  // This is what evaluation does (perplexity under the method).
  MethodEverywhere,
};

class LlamaSession {
 public:
  // capacity: KV positions (<= the model's context length). methods: called once per global
  // layer (LayerShape::layer is the model's layer index); null means dense. Local layers always
  // get exact sliding-window attention (SlidingWindowAttention), so a sparse method never
  // changes them.
  LlamaSession(std::shared_ptr<const LlamaModel> model, int64_t capacity, MethodFactory methods = nullptr,
               AttentionMode mode = AttentionMode::DensePrefill);

  // Runs n tokens at positions length() .. length()+n-1. logits receives vocab_size floats per
  // token when all_logits, else only the last token's. Throws InvalidArgument when the cache
  // would overflow or a token id is out of range (checked before anything changes). If a later
  // step fails (NonFinite activations), the cache is rolled back to its previous length but the
  // methods may have placed the new positions: reset() before reusing the session.
  void forward(const int32_t* tokens, int64_t n, float* logits, bool all_logits = false);

  void set_observer(LayerObserver observer) { observer_ = std::move(observer); }
  // Called after each layer of a forward pass with (layers done, layers): a long prefill runs
  // every layer over all its tokens, so this is how far it is. Null: no calls.
  void set_progress(std::function<void(int, int)> progress) { progress_ = std::move(progress); }
  // Starts a new sequence: clears the cache, the methods' state and the stats.
  void reset();
  int64_t length() const;
  const KVCache& cache() const { return cache_; }
  AttentionMethod& method(int layer);
  // What the layers' methods read, summed over layers and queries since the last reset. Only
  // queries that went through a method count: the exact prefill chunks of DensePrefill do not,
  // so that the lookup fraction of generation describes its decode steps.
  // Every layer's reads count; a local layer's dense reference is its window, so dense reads
  // fraction 1.
  const LookupStats& stats() const { return stats_; }
  // The same, over the global layers only: what a sparse method changes (equal to stats() for a
  // model without local layers).
  const LookupStats& global_stats() const { return global_stats_; }
  const LlamaModel& model() const { return *model_; }
  AttentionMode mode() const { return mode_; }

 private:
  struct Scratch;
  std::shared_ptr<const LlamaModel> model_;
  KVCache cache_;
  std::vector<std::unique_ptr<AttentionMethod>> methods_;
  AttentionMode mode_;
  LayerObserver observer_;
  std::function<void(int, int)> progress_;
  LookupStats stats_;
  LookupStats global_stats_;
  std::shared_ptr<Scratch> scratch_;
};

}  // namespace saap
