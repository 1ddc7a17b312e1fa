// The configuration of a Llama-family model ("llama": SmolLM2; "gemma3": Gemma-3) as read from
// its GGUF: one reader for the CPU runner (src/model/llama.cpp) and the CUDA runner
// (src/model_cuda), so that both devices read the same file the same way. Built in saap_model_io
// (every preset, the GPU machine's cuda-only included).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "saap/core/rope.h"
#include "saap/model/gguf.h"

namespace saap {

enum class FfnActivation { SiLU, GeluTanh };  // SwiGLU (Llama) or GELU-tanh GeGLU (Gemma)

struct LlamaConfig {
  std::string name;          // general.name
  std::string architecture;  // general.architecture: "llama" or "gemma3"
  int n_layers = 0;
  int n_embd = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int n_ff = 0;
  int vocab_size = 0;
  int64_t context_length = 0;
  float rms_eps = 1e-5f;
  RopeConfig rope;           // RoPE of the global layers (every layer of a Llama)
  bool tied_output = false;  // output.weight absent: logits use token_embd.weight

  // What Gemma-3 adds; the defaults are the Llama forward pass.
  // Per layer: 0 = global (attends to the whole causal prefix, through the session's method);
  // W > 0 = local, exact attention over the last W positions, the query's own included.
  std::vector<int64_t> layer_window;
  RopeConfig rope_local;      // RoPE of the local layers
  float embed_scale = 1.0f;   // token embeddings are multiplied by this (Gemma: sqrt(n_embd) in fp32)
  FfnActivation ffn_activation = FfnActivation::SiLU;
  bool qk_norm = false;       // RMSNorm on every query and key head before RoPE
  bool post_norms = false;    // RMSNorm on the attention and FFN outputs before each residual add
  float final_logit_softcap = 0.0f;  // logits = cap * tanh(logits / cap) when > 0

  bool is_global(int layer) const { return layer_window[size_t(layer)] == 0; }
  int n_global_layers() const;
};

// Reads and checks the configuration: BadFile naming the key for a malformed value, Unsupported
// for an architecture other than "llama" / "gemma3" or a feature the runners do not implement
// (Gemma-3's own keys and constants: src/model/gemma3.cpp).
LlamaConfig read_llama_config(const GGUFFile& f);

// The tensors the GGUF of c must hold, with their ggml shapes (shape[0] = row length).
std::vector<std::pair<std::string, std::vector<int64_t>>> llama_tensor_shapes(const LlamaConfig& c);

// Checks every tensor of llama_tensor_shapes(c) (and rope_freqs.weight when present): BadFile
// naming the tensor, its shape and the expected one. Call before dequantizing anything, so a bad
// file fails fast.
void check_llama_tensor_shapes(const GGUFFile& f, const LlamaConfig& c);

// "[a, b, c]": a tensor shape in an error message.
std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace saap
