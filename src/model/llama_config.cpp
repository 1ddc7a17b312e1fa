// The one reader of a Llama-family GGUF's configuration (see llama_config.h).
#include "saap/model/llama_config.h"

#include <algorithm>

#include "saap/core/error.h"
#include "gemma3.h"

namespace saap {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {

// A metadata integer that must be in [1, limit]; the limit keeps products far from overflow.
int positive_int(const GGUFFile& f, const std::string& key, int64_t fallback = -1, int64_t limit = 1 << 24) {
  const int64_t v = fallback < 0 ? f.get_int(key) : f.get_int(key, fallback);
  SAAP_CHECK_FMT(v >= 1 && v <= limit, BadFile, "metadata %s = %lld must be in [1, %lld]", key.c_str(),
                 (long long)v, (long long)limit);
  return int(v);
}

}  // namespace

LlamaConfig read_llama_config(const GGUFFile& f) {
  LlamaConfig c;
  c.architecture = f.get_string("general.architecture");
  SAAP_CHECK_FMT(c.architecture == "llama" || c.architecture == "gemma3", Unsupported,
                 "general.architecture = \"%s\": saap runs the \"llama\" and \"gemma3\" architectures only",
                 c.architecture.c_str());
  c.name = f.has("general.name") ? f.get_string("general.name") : std::string("unnamed");
  const std::string a = c.architecture + ".";
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
  if (f.has(a + "attention.key_length")) {
    c.head_dim = positive_int(f, a + "attention.key_length", -1, 4096);
  } else {
    SAAP_CHECK_FMT(c.n_embd % c.n_heads == 0, BadFile, "%sembedding_length = %d is not a multiple of head_count = %d",
                   a.c_str(), c.n_embd, c.n_heads);
    c.head_dim = c.n_embd / c.n_heads;
  }
  const int value_length = positive_int(f, a + "attention.value_length", c.head_dim, 4096);
  SAAP_CHECK_FMT(value_length == c.head_dim, Unsupported, "%sattention.value_length = %d differs from key_length = %d",
                 a.c_str(), value_length, c.head_dim);
  SAAP_CHECK_FMT(c.head_dim % 2 == 0, Unsupported, "head_dim = %d must be even for RoPE", c.head_dim);

  const GGUFTensorInfo& embd = f.tensor("token_embd.weight");
  c.vocab_size = f.has(a + "vocab_size") ? positive_int(f, a + "vocab_size", -1, 1 << 24)
                                         : int(embd.shape.size() == 2 ? embd.shape[1] : 0);
  SAAP_CHECK_FMT(c.vocab_size > 0, BadFile, "token_embd.weight has shape %s, expected [n_embd, vocab]",
                 shape_string(embd.shape).c_str());
  c.tied_output = f.find_tensor("output.weight") == nullptr;

  c.rope.head_dim = c.head_dim;
  c.rope.n_rot = positive_int(f, a + "rope.dimension_count", c.head_dim, c.head_dim);
  c.rope.base = float(f.get_float(a + "rope.freq_base", 10000.0));
  c.rope.style = RopeStyle::Interleaved;
  const std::string scaling = f.has(a + "rope.scaling.type") ? f.get_string(a + "rope.scaling.type") : "none";
  if (scaling == "linear") {
    const double factor = f.get_float(a + "rope.scaling.factor");
    SAAP_CHECK_FMT(factor > 0, BadFile, "metadata %srope.scaling.factor = %g must be positive", a.c_str(), factor);
    c.rope.freq_scale = float(1.0 / factor);
  } else if (scaling == "none") {
    // Older files carry linear scaling under rope.scale_linear.
    const double factor = f.get_float(a + "rope.scale_linear", 1.0);
    SAAP_CHECK_FMT(factor > 0, BadFile, "metadata %srope.scale_linear = %g must be positive", a.c_str(), factor);
    c.rope.freq_scale = float(1.0 / factor);
  } else {
    SAAP_THROW_FMT(Unsupported, "metadata %srope.scaling.type = \"%s\": saap supports \"none\" and \"linear\"",
                   a.c_str(), scaling.c_str());
  }
  // A Llama has global layers only.
  c.layer_window.assign(size_t(c.n_layers), 0);
  c.rope_local = c.rope;
  if (c.architecture == "gemma3") configure_gemma3(f, c);
  return c;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> llama_tensor_shapes(const LlamaConfig& c) {
  const int64_t E = c.n_embd, Q = int64_t(c.n_heads) * c.head_dim, KV = int64_t(c.n_kv_heads) * c.head_dim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> t = {{"token_embd.weight", {E, c.vocab_size}},
                                                                 {"output_norm.weight", {E}}};
  if (!c.tied_output) t.push_back({"output.weight", {E, c.vocab_size}});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    t.push_back({p + "attn_norm.weight", {E}});
    t.push_back({p + "attn_q.weight", {E, Q}});
    t.push_back({p + "attn_k.weight", {E, KV}});
    t.push_back({p + "attn_v.weight", {E, KV}});
    t.push_back({p + "attn_output.weight", {Q, E}});
    t.push_back({p + "ffn_norm.weight", {E}});
    t.push_back({p + "ffn_gate.weight", {E, c.n_ff}});
    t.push_back({p + "ffn_up.weight", {E, c.n_ff}});
    t.push_back({p + "ffn_down.weight", {c.n_ff, E}});
    if (c.qk_norm) {
      t.push_back({p + "attn_q_norm.weight", {c.head_dim}});
      t.push_back({p + "attn_k_norm.weight", {c.head_dim}});
    }
    if (c.post_norms) {
      t.push_back({p + "post_attention_norm.weight", {E}});
      t.push_back({p + "post_ffw_norm.weight", {E}});
    }
  }
  return t;
}

void check_llama_tensor_shapes(const GGUFFile& f, const LlamaConfig& c) {
  for (const auto& [name, shape] : llama_tensor_shapes(c)) {
    const GGUFTensorInfo& t = f.tensor(name);
    SAAP_CHECK_FMT(t.shape == shape, BadFile, "%s: tensor %s has shape %s, expected %s", f.path().c_str(),
                   name.c_str(), shape_string(t.shape).c_str(), shape_string(shape).c_str());
  }
  if (const GGUFTensorInfo* freqs = f.find_tensor("rope_freqs.weight")) {
    SAAP_CHECK_FMT(freqs->shape == std::vector<int64_t>{c.rope.n_rot / 2}, BadFile,
                   "%s: tensor rope_freqs.weight has shape %s, expected [%d]", f.path().c_str(),
                   shape_string(freqs->shape).c_str(), c.rope.n_rot / 2);
  }
}

int LlamaConfig::n_global_layers() const { return int(std::count(layer_window.begin(), layer_window.end(), 0)); }

}  // namespace saap
