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
#include "src/model_cuda/cuda_llama_impl.h"

namespace saap::cuda {
namespace {

// A metadata integer that must be in [1, limit].
int positive_int(const GGUFFile& f, const std::string& key, int64_t fallback, int64_t limit) {
  const int64_t v = fallback < 0 ? f.get_int(key) : f.get_int(key, fallback);
  SAAP_CHECK_FMT(v >= 1 && v <= limit, BadFile, "metadata %s = %lld must be in [1, %lld]", key.c_str(), (long long)v,
                 (long long)limit);
  return int(v);
}

// The same reading of the GGUF metadata as the CPU runner's read_config (src/model/llama.cpp),
// restricted to what this runner supports. TODO(issue 13): one shared reader once llama.cpp
// exposes it.
LlamaConfig read_config(const GGUFFile& f) {
  LlamaConfig c;
  c.architecture = f.get_string("general.architecture");
  SAAP_CHECK_FMT(c.architecture == "llama", Unsupported,
                 "general.architecture = \"%s\": the CUDA runner runs \"llama\" only", c.architecture.c_str());
  c.name = f.has("general.name") ? f.get_string("general.name") : std::string("unnamed");
  const std::string a = "llama.";
  c.n_layers = positive_int(f, a + "block_count", -1, 4096);
  c.n_embd = positive_int(f, a + "embedding_length", -1, 1 << 16);
  c.n_heads = positive_int(f, a + "attention.head_count", -1, 4096);
  c.n_kv_heads = positive_int(f, a + "attention.head_count_kv", c.n_heads, 4096);
  c.n_ff = positive_int(f, a + "feed_forward_length", -1, 1 << 18);
  c.context_length = positive_int(f, a + "context_length", -1, int64_t(1) << 30);
  c.rms_eps = float(f.get_float(a + "attention.layer_norm_rms_epsilon", 1e-5));
  SAAP_CHECK_FMT(c.rms_eps > 0 && c.rms_eps < 1, BadFile, "metadata %sattention.layer_norm_rms_epsilon = %g",
                 a.c_str(), c.rms_eps);
  SAAP_CHECK_FMT(c.n_heads % c.n_kv_heads == 0, BadFile,
                 "%sattention.head_count = %d is not a multiple of head_count_kv = %d", a.c_str(), c.n_heads,
                 c.n_kv_heads);
  c.head_dim = f.has(a + "attention.key_length") ? positive_int(f, a + "attention.key_length", -1, 4096)
                                                 : c.n_embd / c.n_heads;
  SAAP_CHECK_FMT(c.head_dim * c.n_heads == c.n_embd || f.has(a + "attention.key_length"), BadFile,
                 "%sembedding_length = %d is not a multiple of head_count = %d", a.c_str(), c.n_embd, c.n_heads);
  const int value_length = positive_int(f, a + "attention.value_length", c.head_dim, 4096);
  SAAP_CHECK_FMT(value_length == c.head_dim, Unsupported, "%sattention.value_length = %d differs from key_length = %d",
                 a.c_str(), value_length, c.head_dim);
  const GGUFTensorInfo& embd = f.tensor("token_embd.weight");
  c.vocab_size = f.has(a + "vocab_size") ? positive_int(f, a + "vocab_size", -1, 1 << 24)
                                         : int(embd.shape.size() == 2 ? embd.shape[1] : 0);
  SAAP_CHECK_FMT(c.vocab_size > 0, BadFile, "token_embd.weight has %zu dimensions, expected [n_embd, vocab]",
                 embd.shape.size());
  c.tied_output = f.find_tensor("output.weight") == nullptr;
  c.rope.head_dim = c.head_dim;
  c.rope.n_rot = positive_int(f, a + "rope.dimension_count", c.head_dim, c.head_dim);
  c.rope.base = float(f.get_float(a + "rope.freq_base", 10000.0));
  c.rope.style = RopeStyle::Interleaved;  // GGUF Llama files permute Q/K rows for it (see llama.cpp)
  const std::string scaling = f.has(a + "rope.scaling.type") ? f.get_string(a + "rope.scaling.type") : "none";
  double factor = 1.0;
  if (scaling == "linear")
    factor = f.get_float(a + "rope.scaling.factor");
  else if (scaling == "none")
    factor = f.get_float(a + "rope.scale_linear", 1.0);
  else
    SAAP_THROW_FMT(Unsupported, "metadata %srope.scaling.type = \"%s\": saap supports \"none\" and \"linear\"",
                   a.c_str(), scaling.c_str());
  SAAP_CHECK_FMT(factor > 0, BadFile, "rope scaling factor = %g must be positive", factor);
  c.rope.freq_scale = float(1.0 / factor);
  // What the GPU kernels support (decode.h: head_dim 64/128, group <= 8; prefill: head_dim 64).
  SAAP_CHECK_FMT(c.head_dim == 64, Unsupported, "head_dim = %d; the CUDA runner supports 64 for now", c.head_dim);
  SAAP_CHECK_FMT(c.n_heads / c.n_kv_heads <= 8, Unsupported, "group size %d; the CUDA decode supports up to 8",
                 c.n_heads / c.n_kv_heads);
  return c;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void check_shape(const GGUFFile& f, const std::string& name, const std::vector<int64_t>& shape) {
  const GGUFTensorInfo& t = f.tensor(name);
  SAAP_CHECK_FMT(t.shape == shape, BadFile, "%s: tensor %s has shape %s, expected %s", f.path().c_str(), name.c_str(),
                 shape_string(t.shape).c_str(), shape_string(shape).c_str());
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
  c = read_config(f);
  const int64_t E = c.n_embd, Q = int64_t(c.n_heads) * c.head_dim, KV = int64_t(c.n_kv_heads) * c.head_dim;
  // Every shape first, so a bad file fails before anything is dequantized or uploaded.
  check_shape(f, "token_embd.weight", {E, c.vocab_size});
  check_shape(f, "output_norm.weight", {E});
  if (!c.tied_output) check_shape(f, "output.weight", {E, c.vocab_size});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    check_shape(f, p + "attn_norm.weight", {E});
    check_shape(f, p + "attn_q.weight", {E, Q});
    check_shape(f, p + "attn_k.weight", {E, KV});
    check_shape(f, p + "attn_v.weight", {E, KV});
    check_shape(f, p + "attn_output.weight", {Q, E});
    check_shape(f, p + "ffn_norm.weight", {E});
    check_shape(f, p + "ffn_gate.weight", {E, c.n_ff});
    check_shape(f, p + "ffn_up.weight", {E, c.n_ff});
    check_shape(f, p + "ffn_down.weight", {c.n_ff, E});
  }
  if (f.find_tensor("rope_freqs.weight")) {
    check_shape(f, "rope_freqs.weight", {c.rope.n_rot / 2});
    c.rope.freq_factors = dequantize_checked(f, "rope_freqs.weight");
  }

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
