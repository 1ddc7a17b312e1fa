// The Llama-family model on the GPU: the same forward pass as the CPU runner (src/model/llama.cpp),
// with bf16 weights and KV cache, cuBLAS GEMMs, tensor-core prefill attention and the dense
// split-KV decode kernel, the decode step captured once as a CUDA graph and replayed.
//
// Precision: weights are dequantized from the GGUF on the host (fp32) and rounded to bf16. The
// residual stream, norms, RoPE, softmax and every accumulator are fp32; the inputs of the GEMMs
// and of the prefill attention (and the KV cache) are bf16, and so are the outputs of the fused
// Q/K/V and gate/up projections (read once by RoPE / SwiGLU, which compute in fp32: half the bytes
// of fp32 outputs; scripts/bf16_emulation.py --numerics bf16-proj measures what it costs).
//
// KV cache layout: K and V are each bf16 [layer][batch][n_kv_heads][max_context][head_dim], so
// one layer's slice is exactly the [batch][n_kv_heads][max_len][head_dim] cache of decode.h.
//
// Sparse decode (CudaLlamaOptions::method): prefill is dense; after it, every layer's GPU index
// (SaapIndex for saap / kmeans / partition-oracle, LokiIndex, QuestIndex) is built from the dense
// cache, and each decode step appends the new token to it, selects and attends through it, inside
// the captured CUDA graph. method_nll() is perplexity under the method (the CPU's
// AttentionMode::MethodEverywhere).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "saap/kernels/cuda/prefill_attention.h"
#include "saap/methods/registry.h"
#include "saap/model/llama.h"

namespace saap::cuda {

class SaapIndex;  // kernels/cuda/saap.h
class LokiIndex;  // kernels/cuda/loki.h

struct CudaLlamaOptions {
  int max_batch = 1;           // sequences run together (prefill and decode)
  int64_t max_context = 4096;  // cached tokens per sequence (<= the model's context length)
  // Rows (batch x tokens) of one prefill chunk: bounds the activation memory; a longer prompt is
  // prefilled in chunks whose queries attend to the cache written by the earlier chunks.
  int64_t max_prefill_rows = 32768;
  PrefillKernel prefill_kernel = PrefillKernel::Auto;
  // GEMMs through cuBLASLt with the algorithm of each shape chosen by timing its candidates at the
  // shape's first call (which then synchronises and briefly allocates a scratch output; without
  // the memory, cuBLASLt's first choice runs untimed); off: cuBLAS's own choice.
  bool gemm_autotune = true;
  // Rows per slice of the MLP (norm, gate/up GEMM, SwiGLU, down GEMM) within a prefill chunk, 0 =
  // the whole chunk. Slices reuse the same intermediate rows, which can then stay in L2 (50 MB on
  // an H200) instead of going through HBM; smaller GEMMs fill the GPU's waves less well.
  int64_t mlp_rows = 0;
  // The attention of decode steps, the same spec as the CPU CLI's (registry.h). On the GPU: dense,
  // saap, kmeans and partition-oracle (a saap or kmeans artifact; lookup or budget_tokens), loki
  // (k_f, d_f with rank 8/16/32), quest (lookup or budget_tokens, page_size), streaming (sinks,
  // window), oracle (exact top-k; lookup or budget_tokens) and h2o (lookup; its accumulated
  // attention starts at zero after an exact prefill, as on the CPU: method_prefill runs the prompt's
  // queries through it); sinks and window as the CPU method reads them. load() checks it as the CPU
  // does (check_method_spec, the artifact against this model's identity, the CPU method's own checks
  // per layer).
  MethodSpec method;
};

// What the attention read, counted as the CPU's LookupStats::kv_fraction: per query and KV head,
// the K/V tokens read (sparse: the union the index selected, sinks and window included; dense: the
// whole causal prefix, the query's own token included) against the whole causal prefix. Over the
// layers a method serves: every layer of a Llama, the global layers of Gemma-3 (the CPU's
// LlamaSession::global_stats(); its local layers always read their 512-token window).
// index_tokens: the K rows read to decide (per query and KV head), where a method reads keys to
// choose: the oracle reads all of K of a prefix it does not read whole (the CPU's index_bytes).
// index_bytes: the other indexes' bytes read to decide, summed over queries (sequences x steps)
// and served layers, by the CPU method's own formula (Saap's fp32 routers and size tables, k-means'
// fp32 centroids and size tables, Quest's page min/max and Loki's low-rank keys in bf16, the
// runner's cache dtype; saap_index_bytes, kmeans_index_bytes, quest_index_bytes, loki_index_bytes).
struct KvReads {
  double kv_tokens = 0, dense_tokens = 0, index_tokens = 0, index_bytes = 0;
  double fraction() const { return dense_tokens > 0 ? kv_tokens / dense_tokens : 0.0; }
};

// GPU time of one kind of launch over a whole prefill (CudaLlamaModel::set_phase_timing), with
// the FLOPs and the least bytes those launches must move, for rates against the GPU's peaks.
struct PrefillPhase {
  enum Kind {
    Embed,       // token embeddings -> fp32 residual rows
    Norm,        // RMSNorm of the residual rows (attention and MLP inputs)
    GemmQkv,     // fused Q, K, V projection
    RopeSplit,   // RoPE; queries to their buffer, keys and values into the cache
    Attention,   // causal prefill attention
    GemmO,       // output projection, added to the residual (beta = 1)
    GemmGateUp,  // fused gate and up projection
    Swiglu,      // silu(gate) * up
    GemmDown,    // down projection, added to the residual (beta = 1)
    LastLogits,  // the last position of each sequence: copy, norm, unembedding, argmax
    AllLogits,   // every position's logits / next-token NLL (only when asked for)
    Copies,      // token and row copies on the device
    kCount
  };
  Kind kind = Embed;
  double ms = 0, flops = 0, bytes = 0;
  int64_t launches = 0;
  const char* name() const;
};

class CudaLlamaModel {
 public:
  // Reads and checks the GGUF on the host, uploads the weights as bf16 and allocates the KV cache
  // and the activations. Throws Unsupported (no GPU, a GPU older than sm_90, an unsupported
  // architecture or shape), BadFile (a malformed file), InvalidArgument (options), OutOfMemory
  // (the weights, cache and activations do not fit the free GPU memory; nothing stays allocated).
  static std::unique_ptr<CudaLlamaModel> load(const std::string& gguf_path, const CudaLlamaOptions& options);
  ~CudaLlamaModel();
  CudaLlamaModel(const CudaLlamaModel&) = delete;
  CudaLlamaModel& operator=(const CudaLlamaModel&) = delete;

  const LlamaConfig& config() const;
  // The GGUF's identity string (model_identity.h), what artifacts are checked against.
  const std::string& identity() const;
  const CudaLlamaOptions& options() const;

  // Starts `batch` new sequences from prompts of n tokens each: tokens [batch][n] (host). Fills
  // cache rows [0, n), keeps the last position's logits on the device and makes each sequence's
  // greedy next token the input of the next decode step. When all_logits is non-null it receives
  // every position's logits, host [batch][n][vocab]. When nll is non-null it receives, host
  // [batch][n], the negative log-likelihood (nats, from the fp32 logits, computed on the GPU) of
  // token t + 1 at position t, and NaN at t = n - 1: perplexity without moving the logits.
  // Waits for the GPU before returning. Throws InvalidArgument (batch, n or a token id out of
  // range) before anything changes.
  void prefill(const int32_t* tokens, int batch, int64_t n, float* all_logits = nullptr, float* nll = nullptr);

  // One decode step of every sequence, appending one token each. The input of sequence b is
  // tokens[b] (host, [batch]) or, when tokens is null, the greedy token chosen on the device by the
  // previous step or the prefill. Asynchronous: no host synchronisation. The first step after a
  // prefill at a new batch size runs eagerly and captures the step as a CUDA graph; every later
  // step is one graph launch. Throws InvalidArgument when the cache is full or nothing was prefilled.
  void decode_step(const int32_t* tokens = nullptr);

  // Perplexity under options().method, as the CPU's AttentionMode::MethodEverywhere (every
  // position attends through the method): tokens [batch][n] (host) are prefilled densely up to
  // dense_prefix(n), where the method reads the whole prefix anyway, and the rest is decoded
  // teacher-forced through the method (the true next token fed, every step a graph replay, the NLL
  // computed on the device). nll receives, host [batch][n], the NLL (nats) of token t + 1 at
  // position t, and NaN at t = n - 1. The reads are added to kv_reads(). Waits for the GPU.
  void method_nll(const int32_t* tokens, int batch, int64_t n, float* nll);
  // A prompt through the method, as the CPU's MethodEverywhere prefills it (eval niah / passkey
  // --method-prefill): tokens [batch][n] (host) prefilled densely up to dense_prefix(n), the rest fed
  // teacher-forced through the method, so that every position's query goes through it (H2O's
  // accumulators see every query). Leaves what prefill() leaves: n cached tokens, the last
  // position's logits and greedy token. The reads are added to kv_reads(). Waits for the GPU.
  void method_prefill(const int32_t* tokens, int batch, int64_t n);
  // The positions [0, dense_prefix(n)) of an n-token sequence whose query the method reads whole:
  // the prefix fits in sinks + window, or the budget buys all of it (saap::rules); 1 for loki
  // unless k_f buys more; 1 for h2o (every later query adds its weights); n for dense.
  int64_t dense_prefix(int64_t n) const;
  // K/V read since load() or the last reset_kv_reads(): method_nll's positions and every decode
  // step. Synchronises (the sparse steps count on the device).
  KvReads kv_reads() const;
  void reset_kv_reads();

  // Waits for the GPU, then copies the logits of the last step (or of the prompt's last position)
  // into logits [batch][vocab] (host).
  void last_logits(float* logits) const;
  // Waits for the GPU, then returns the greedy token of each sequence after the last step [batch].
  std::vector<int32_t> greedy_tokens() const;
  void synchronize() const;

  // The attention kernel of the next prefills (CudaLlamaOptions::prefill_kernel at load).
  void set_prefill_kernel(PrefillKernel kernel);
  // CudaLlamaOptions::gemm_autotune for the next prefills and decode steps. A decode graph
  // already captured keeps the GEMMs it recorded until the next prefill at another batch size.
  void set_gemm_autotune(bool on);
  // CudaLlamaOptions::mlp_rows for the next prefills; InvalidArgument when negative.
  void set_mlp_rows(int64_t rows);

  // Opt-in: when on, prefill() records a CUDA event after each launch, and prefill_phases()
  // returns the GPU time of the last prefill by kind of launch (their sum is the prefill's GPU
  // time). The events cost a few microseconds each; leave it off when timing the whole prefill.
  void set_phase_timing(bool on);
  std::vector<PrefillPhase> prefill_phases() const;

  // Read-only device views of one layer, for parity tests and diagnostics; valid until the next
  // prefill, decode step or method_nll.
  struct LayerView {
    const void* k_cache = nullptr;  // bf16 [max_batch][n_kv_heads][max_context][head_dim], post-RoPE
    const void* v_cache = nullptr;  // bf16, the same layout
    // A pre-RoPE partition method (saap, kmeans, partition-oracle) only, else null: the pre-RoPE
    // keys of every cached position (bf16, the cache's layout) and the last step's pre-RoPE
    // queries (fp32 [max_batch][n_heads][head_dim]), which assign keys and route queries.
    const void* k_route = nullptr;
    const float* q_route = nullptr;
    const SaapIndex* saap = nullptr;  // the layer's partition index (saap, kmeans, partition-oracle)
    const LokiIndex* loki = nullptr;  // the layer's Loki index (loki)
  };
  LayerView layer_view(int layer) const;

  int batch() const;       // sequences of the current run (0 before the first prefill)
  int64_t length() const;  // cached tokens per sequence
  size_t weight_bytes() const;
  size_t cache_bytes() const;
  cudaStream_t stream() const;

  struct Impl;

 private:
  explicit CudaLlamaModel(std::unique_ptr<Impl> impl);
  // method_nll (fed = n - 1, nll [batch][n]) and method_prefill (fed = n, nll null): tokens
  // [0, dense_prefix(n)) prefilled, tokens [dense_prefix(n), fed) fed through the method.
  void teacher_forced(const int32_t* tokens, int batch, int64_t n, int64_t fed, float* nll);
  std::unique_ptr<Impl> impl_;
};

}  // namespace saap::cuda
