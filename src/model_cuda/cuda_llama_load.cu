// Loading a Llama or Gemma-3 GGUF onto the GPU: configuration (read_llama_config, shared with the
// CPU runner), shape checks, host dequantization to fp32, rounding to bf16 and upload; the RoPE
// tables from saap::Rope.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "saap/core/error.h"
#include "saap/core/rope.h"
#include "saap/kernels/cuda/host_convert.h"
#include "saap/model/gguf.h"
#include "saap/model/llama_config.h"
#include "saap/model/model_identity.h"
#include "src/model_cuda/cuda_llama_impl.h"

namespace saap::cuda {
namespace {

// What this runner supports of a configuration read_llama_config accepts ("llama" and "gemma3").
void check_cuda_support(const LlamaConfig& c) {
  // What the GPU kernels support (dense decode: head_dim 64/128/256, group <= 8; prefill: 64 and 256).
  SAAP_CHECK_FMT(c.head_dim == 64 || c.head_dim == 256, Unsupported,
                 "head_dim = %d; the CUDA runner supports 64 and 256", c.head_dim);
  SAAP_CHECK_FMT(c.n_heads / c.n_kv_heads <= 8, Unsupported, "group size %d; the CUDA decode supports up to 8",
                 c.n_heads / c.n_kv_heads);
  SAAP_CHECK_FMT(c.final_logit_softcap == 0, Unsupported,
                 "final_logit_softcapping = %g: the CUDA runner has no logit softcap (Gemma-3 sets none)",
                 c.final_logit_softcap);
  const bool gemma = c.architecture == "gemma3";
  SAAP_CHECK_FMT(gemma == (c.qk_norm && c.post_norms && c.ffn_activation == FfnActivation::GeluTanh), Unsupported,
                 "%s with qk_norm = %d, post_norms = %d, GELU = %d: the CUDA runner has the Llama and the Gemma-3 "
                 "blocks only", c.architecture.c_str(), int(c.qk_norm), int(c.post_norms),
                 int(c.ffn_activation == FfnActivation::GeluTanh));
}

// The (cos θ, sin θ) table of positions [0, max_pos) for one RoPE: rotating a vector with 1 in the
// first and 0 in the second dimension of every pair yields them there, whatever the style and
// frequency rules of saap::Rope (one RoPE definition for both devices).
std::vector<float2> rope_table(const RopeConfig& config, int head_dim, int64_t max_pos) {
  const Rope rope(config);
  const int pairs = rope.config().n_rot / 2;
  const bool neox = config.style == RopeStyle::NeoX;
  std::vector<float2> table(static_cast<size_t>(max_pos) * pairs);
  std::vector<float> unit(static_cast<size_t>(head_dim));
  for (int64_t pos = 0; pos < max_pos; ++pos) {
    std::fill(unit.begin(), unit.end(), 0.f);
    for (int i = 0; i < pairs; ++i) unit[size_t(neox ? i : 2 * i)] = 1.f;
    rope.apply(unit.data(), 1, pos);
    for (int i = 0; i < pairs; ++i)
      table[size_t(pos) * pairs + i] = make_float2(unit[size_t(neox ? i : 2 * i)], unit[size_t(neox ? i + pairs : 2 * i + 1)]);
  }
  return table;
}

std::vector<float> dequantize_checked(const GGUFFile& f, const std::string& name) {
  std::vector<float> w = dequantize_tensor(f.tensor(name));
  for (size_t i = 0; i < w.size(); ++i)
    SAAP_CHECK_FMT(std::isfinite(w[i]), NonFinite, "tensor %s holds a non-finite value at element %zu", name.c_str(),
                   i);
  return w;
}

template <class T>
DeviceBuffer<T> upload(const std::vector<T>& h, size_t& bytes) {
  DeviceBuffer<T> d(h.size());
  SAAP_CU(cudaMemcpy(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  bytes += d.bytes();
  return d;
}

DeviceBuffer<bf16_t> upload_bf16(const std::vector<float>& w, size_t& bytes) {
  std::vector<uint16_t> bits = round_to_bits16(w, DType::BF16);
  DeviceBuffer<bf16_t> d(bits.size());
  SAAP_CU(cudaMemcpy(d.get(), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
  bytes += d.bytes();
  return d;
}

std::vector<float> stacked(std::vector<float> a, const std::vector<float>& b, const std::vector<float>& c = {}) {
  a.insert(a.end(), b.begin(), b.end());
  a.insert(a.end(), c.begin(), c.end());
  return a;
}

}  // namespace

void load_llama_weights(const std::string& path, CudaLlamaModel::Impl& m) {
  const GGUFFile f = GGUFFile::open(path);
  LlamaConfig& c = m.config;
  c = read_llama_config(f);
  check_cuda_support(c);
  m.identity = model_identity(f, c);
  // Every shape first, so a bad file fails before anything is dequantized or uploaded.
  check_llama_tensor_shapes(f, c);
  if (f.find_tensor("rope_freqs.weight")) c.rope.freq_factors = dequantize_checked(f, "rope_freqs.weight");

  size_t& bytes = m.weight_bytes;
  m.token_embd = upload_bf16(dequantize_checked(f, "token_embd.weight"), bytes);
  m.output_norm = upload(dequantize_checked(f, "output_norm.weight"), bytes);
  if (!c.tied_output) m.output = upload_bf16(dequantize_checked(f, "output.weight"), bytes);
  m.layers.resize(size_t(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    CudaLlamaLayer& L = m.layers[size_t(l)];
    L.attn_norm = upload(dequantize_checked(f, p + "attn_norm.weight"), bytes);
    L.wqkv = upload_bf16(stacked(dequantize_checked(f, p + "attn_q.weight"), dequantize_checked(f, p + "attn_k.weight"),
                                 dequantize_checked(f, p + "attn_v.weight")),
                         bytes);
    L.wo = upload_bf16(dequantize_checked(f, p + "attn_output.weight"), bytes);
    L.ffn_norm = upload(dequantize_checked(f, p + "ffn_norm.weight"), bytes);
    L.w_gate_up = upload_bf16(stacked(dequantize_checked(f, p + "ffn_gate.weight"),
                                      dequantize_checked(f, p + "ffn_up.weight")),
                              bytes);
    L.w_down = upload_bf16(dequantize_checked(f, p + "ffn_down.weight"), bytes);
    if (c.qk_norm) {
      L.q_norm = upload(dequantize_checked(f, p + "attn_q_norm.weight"), bytes);
      L.k_norm = upload(dequantize_checked(f, p + "attn_k_norm.weight"), bytes);
    }
    if (c.post_norms) {
      L.post_attn_norm = upload(dequantize_checked(f, p + "post_attention_norm.weight"), bytes);
      L.post_ffn_norm = upload(dequantize_checked(f, p + "post_ffw_norm.weight"), bytes);
    }
  }
  m.gemma3 = c.architecture == "gemma3";

  m.rope_table = upload(rope_table(c.rope, c.head_dim, m.options.max_context), bytes);
  if (c.n_global_layers() < c.n_layers)
    m.rope_table_local = upload(rope_table(c.rope_local, c.head_dim, m.options.max_context), bytes);
}

}  // namespace saap::cuda
