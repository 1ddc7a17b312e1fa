// Loading a Llama GGUF onto the GPU: configuration, shape checks, host dequantization to fp32,
// rounding to bf16 and upload; the RoPE table from saap::Rope (one RoPE definition for both
// devices).
#include <cmath>
#include <string>
#include <utility>

#include "saap/core/error.h"
#include "saap/core/rope.h"
#include "saap/kernels/cuda/host_convert.h"
#include "saap/model/gguf.h"
#include "saap/model/llama_config.h"
#include "src/model_cuda/cuda_llama_impl.h"

namespace saap::cuda {
namespace {

// What this runner supports of a configuration read_llama_config accepts.
void check_cuda_support(const LlamaConfig& c) {
  SAAP_CHECK_FMT(c.architecture == "llama", Unsupported,
                 "general.architecture = \"%s\": the CUDA runner runs \"llama\" only for now", c.architecture.c_str());
  // What the GPU kernels support (decode.h: head_dim 64/128, group <= 8; prefill: head_dim 64).
  SAAP_CHECK_FMT(c.head_dim == 64, Unsupported, "head_dim = %d; the CUDA runner supports 64 for now", c.head_dim);
  SAAP_CHECK_FMT(c.n_heads / c.n_kv_heads <= 8, Unsupported, "group size %d; the CUDA decode supports up to 8",
                 c.n_heads / c.n_kv_heads);
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
  }

  // RoPE table: rotating a vector with 1 in the first and 0 in the second dimension of every pair
  // yields (cos θ, sin θ) there, whatever the style and frequency rules of saap::Rope.
  const Rope rope(c.rope);
  const int pairs = rope.config().n_rot / 2;
  const bool neox = c.rope.style == RopeStyle::NeoX;
  std::vector<float2> table(size_t(m.options.max_context) * pairs);
  std::vector<float> unit(size_t(c.head_dim));
  for (int64_t pos = 0; pos < m.options.max_context; ++pos) {
    std::fill(unit.begin(), unit.end(), 0.f);
    for (int i = 0; i < pairs; ++i) unit[size_t(neox ? i : 2 * i)] = 1.f;
    rope.apply(unit.data(), 1, pos);
    for (int i = 0; i < pairs; ++i)
      table[size_t(pos) * pairs + i] = make_float2(unit[size_t(neox ? i : 2 * i)], unit[size_t(neox ? i + pairs : 2 * i + 1)]);
  }
  m.rope_table = upload(table, bytes);
}

}  // namespace saap::cuda
