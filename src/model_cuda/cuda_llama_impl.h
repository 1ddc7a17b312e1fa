// The state of a CudaLlamaModel, shared by its loader (cuda_llama_load.cu) and its forward passes
// (cuda_llama.cu: Llama; cuda_gemma3.cu: Gemma-3).
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "saap/kernels/cuda/decode.h"
#include "saap/kernels/cuda/llama_ops.h"
#include "saap/model/cuda_llama.h"
#include "src/model_cuda/cuda_method.h"
#include "src/model_cuda/phase_timer.h"
#include "src/model_cuda/tuned_gemm.h"

namespace saap::cuda {

using bf16_t = __nv_bfloat16;

inline void check_cublas(cublasStatus_t s, const char* what, const char* func) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  fail(s == CUBLAS_STATUS_ALLOC_FAILED ? ErrorKind::OutOfMemory : ErrorKind::Unsupported, func, "%s failed: %s", what,
       cublasGetStatusString(s));
}
#define SAAP_CUBLAS(expr) ::saap::cuda::check_cublas((expr), #expr, __func__)

struct CudaLlamaLayer {
  DeviceBuffer<float> attn_norm;   // [n_embd]
  DeviceBuffer<bf16_t> wqkv;       // [(n_heads + 2 n_kv_heads) * head_dim][n_embd]: Wq, Wk, Wv stacked
  DeviceBuffer<bf16_t> wo;         // [n_embd][n_heads * head_dim]
  DeviceBuffer<float> ffn_norm;    // [n_embd]
  DeviceBuffer<bf16_t> w_gate_up;  // [2 n_ff][n_embd]: W_gate, W_up stacked
  DeviceBuffer<bf16_t> w_down;     // [n_embd][n_ff]
  // Gemma-3 only (empty otherwise):
  DeviceBuffer<float> q_norm, k_norm;                // [head_dim] QK-norm weights
  DeviceBuffer<float> post_attn_norm, post_ffn_norm;  // [n_embd] norms of the sub-block outputs
};

struct CudaLlamaModel::Impl {
  LlamaConfig config;
  std::string identity;  // model_identity(): what artifacts are checked against
  CudaLlamaOptions options;
  int64_t rows = 0;  // activation rows of one prefill chunk: max(max_prefill_rows, max_batch)
  static constexpr int64_t kLogitRows = 512;  // rows per unembedding GEMM when all logits are asked for

  // Weights.
  DeviceBuffer<bf16_t> token_embd;  // [vocab][n_embd]
  std::vector<CudaLlamaLayer> layers;
  DeviceBuffer<float> output_norm;  // [n_embd]
  DeviceBuffer<bf16_t> output;      // [vocab][n_embd]; empty when tied to token_embd
  DeviceBuffer<float2> rope_table;  // [max_context][n_rot/2] (cos, sin), from saap::Rope
  DeviceBuffer<float2> rope_table_local;  // the same for config.rope_local (Gemma's local layers); else empty
  size_t weight_bytes = 0;
  const bf16_t* unembedding() const { return output.size() ? output.get() : token_embd.get(); }

  // KV cache: [layer][max_batch][n_kv_heads][max_context][head_dim] each.
  DeviceBuffer<bf16_t> k_cache, v_cache;
  size_t layer_stride() const {
    return size_t(options.max_batch) * config.n_kv_heads * size_t(options.max_context) * config.head_dim;
  }

  // Activations (rows = the chunk's [batch][tokens]).
  DeviceBuffer<float> x;         // [rows][n_embd] residual stream
  DeviceBuffer<bf16_t> xn;       // [rows][n_embd] normalised sub-block input
  DeviceBuffer<bf16_t> qkv;      // [rows][(Hq + 2 Hkv) * D] the fused projection, before RoPE
  DeviceBuffer<bf16_t> q;        // [rows][Hq][D] prefill queries after RoPE
  DeviceBuffer<bf16_t> att;      // [rows][Hq * D] attention output (GEMM input)
  DeviceBuffer<float> q32;       // [max_batch][Hq][D] decode queries
  DeviceBuffer<float> att32;     // [max_batch][Hq][D] decode attention output
  DeviceBuffer<bf16_t> gate_up;  // [rows][2 n_ff] the fused projection, before SwiGLU
  DeviceBuffer<bf16_t> h;        // [rows][n_ff]
  DeviceBuffer<float> y;         // [rows][n_embd] a sub-block's output before its post-norm (Gemma only)
  // [rows][(Hq + 2 Hkv) * D]: Gemma's QK-normed q and k before RoPE, in qkv's layout; allocated
  // only for a pre-RoPE partition method, whose routing reads them (route_source).
  DeviceBuffer<bf16_t> qk_normed;
  // The pre-RoPE projections that routing reads: the CPU's q_pre / k_pre (after QK-norm on Gemma).
  const bf16_t* route_source() const { return qk_normed.size() ? qk_normed.get() : qkv.get(); }
  DeviceBuffer<float> x_last;    // [max_batch][n_embd] last prompt position of each sequence
  DeviceBuffer<float> logits;    // [max(max_batch, kLogitRows)][vocab]
  DeviceBuffer<int32_t> prompt;  // [batch][n] the prompt tokens
  DeviceBuffer<int32_t> chunk_tokens;  // [rows]
  DeviceBuffer<float> nll;             // [batch][n] next-token NLL of the prompt (perplexity)
  DeviceBuffer<int32_t> next_tokens;   // [max_batch] input of the next decode step
  DeviceBuffer<int32_t> lengths;       // [max_batch] cached tokens per sequence (decode.h)
  SplitWorkspace split_ws;
  DeviceBuffer<char> cublas_ws;

  MethodState method;  // the decode attention method's indexes and buffers (cuda_method.h)

  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  TunedGemm tuned_gemm;  // the GEMMs when options.gemm_autotune
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t graph_exec = nullptr;
  int batch = 0;       // sequences of the current run
  int graph_batch = 0; // batch the captured graph was recorded for
  bool graph_teacher = false;  // whether the captured graph feeds and scores the true tokens
  int64_t length = 0;  // cached tokens per sequence
  PhaseTimer phases;   // opt-in per-phase time of prefill (set_phase_timing)

  ~Impl();
  void drop_graph();
  // Y[rows][out] = X[rows][in] (bf16) · W[out][in]ᵀ (bf16) + beta · Y, fp32 accumulation; Y fp32
  // (the residual stream, the logits) or bf16 (a projection that the next kernel reads as bf16:
  // half the bytes written and read back).
  void gemm(const bf16_t* x, const bf16_t* w, float* y, int64_t rows, int in, int out, float beta);
  void gemm(const bf16_t* x, const bf16_t* w, bf16_t* y, int64_t rows, int in, int out, float beta);
  void gemm_typed(const bf16_t* x, const bf16_t* w, void* y, cudaDataType y_type, int64_t rows, int in, int out,
                  float beta);
  // The layers over `rows` = batch x n token rows whose embeddings are in x (prefill chunk).
  void prefill_layers(int b, int64_t n, int64_t pos0);
  // One decode step of every sequence (what the CUDA graph records): the Llama blocks
  // (llama_record_step) or Gemma-3's, with the teacher forcing of method_nll around them.
  void record_step();
  void llama_record_step();
  // The same two for Gemma-3 (cuda_gemma3.cu); prefill_layers / record_step call them when gemma3.
  bool gemma3 = false;
  void gemma3_prefill_layers(int b, int64_t n, int64_t pos0);
  void gemma3_record_step();
  // The RoPE table of layer l (local layers of Gemma-3 have their own).
  RopeTable rope_for(int layer) const;
  // Runs one decode step: the eager step and the graph capture the first time, a graph launch
  // after; first makes sure the sparse indexes cannot need the host within the step.
  void launch_step();

  // The sparse method (cuda_method.cu). setup_method() at load: checks options.method as the CPU
  // does, loads its artifact and creates every layer's index for max_batch.
  void setup_method();
  // (Re)creates every layer's index for `batch` sequences (a no-op when they are).
  void make_indexes(int batch);
  // MethodState / CudaLlamaModel::dense_prefix.
  int64_t dense_prefix(int64_t n) const;
  // Index bytes one query with an n_ctx-token prefix reads to decide, summed over the layers the
  // method serves (the CPU method's own formula per layer: KvReads::index_bytes).
  int64_t index_bytes_per_query(int64_t n_ctx) const;
  // Teacher forcing inside the step: the true token as input, then the NLL of the next one.
  void teacher_input();
  void teacher_nll();
  // The attention of one decode step in layer `layer`: q32 [batch][Hq][D] (post-RoPE) over the
  // cache kc/vc (the new token already written at lengths[b] - 1) into att32 [batch][Hq][D],
  // dense or through the layer's index (append, select, attend). Kernel launches only (graph-safe).
  // Reads the pre-RoPE projections in qkv [batch][QKV] when the method routes by them.
  void decode_attention(int layer, bf16_t* kc, bf16_t* vc, float scale);
  // After a prefill of n tokens per sequence: every layer's index from the dense cache (and the
  // pre-RoPE routing keys the prefill saved). Synchronises.
  void build_indexes_after_prefill(int64_t n);
  // In a prefill chunk of [b][n] rows at positions pos0..: keeps the pre-RoPE keys of qkv for the
  // index build when the method partitions pre-RoPE keys (else nothing).
  void save_routing_keys(int layer, int b, int64_t n, int64_t pos0);
  // Before a decode step runs: reserves the Saap indexes' appends (host work, outside the step)
  // and drops the graph when a re-pack moved their buffers.
  void reserve_step();
};

// Reads the configuration, uploads the weights and the RoPE table (cuda_llama_load.cu).
void load_llama_weights(const std::string& path, CudaLlamaModel::Impl& m);

}  // namespace saap::cuda
