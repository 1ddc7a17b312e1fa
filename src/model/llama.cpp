// The Llama and Gemma-3 forward pass on the CPU. Read LlamaSession::forward top to bottom: it is
// the whole model. Everything above it loads and validates the weights; everything it calls is a
// few lines. Gemma-3's steps (embedding scale, QK-norm, post-norms, GELU, local layers) are
// switched by LlamaConfig fields that gemma3.cpp sets.
//
// Layout conventions: activations are row-major [tokens][features]; a weight matrix is stored as
// GGUF stores it, [out][in] (ggml's shape[0] = in is the fastest dimension), so a projection is
// y = x · Wᵀ. GGUF Llama files permute the Q/K rows for GGML's interleaved RoPE, which is why the
// runner uses RopeStyle::Interleaved for them (scripts/reference_forward.py checks this against
// the Hugging Face convention); GGUF Gemma files keep the Hugging Face layout (RopeStyle::NeoX).
#include "saap/model/llama.h"
#include "saap/model/model_identity.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "saap/core/error.h"
#include "saap/core/progress.h"
#include "saap/kernels/cpu/attention.h"
#include "saap/kernels/cpu/gemm.h"
#include "saap/methods/dense.h"
#include "sliding_window.h"

namespace saap {

struct LlamaModel::Layer {
  std::vector<float> attn_norm;  // [n_embd]
  std::vector<float> wq;         // [n_heads * head_dim][n_embd]
  std::vector<float> wk;         // [n_kv_heads * head_dim][n_embd]
  std::vector<float> wv;         // [n_kv_heads * head_dim][n_embd]
  std::vector<float> wo;         // [n_embd][n_heads * head_dim]
  std::vector<float> ffn_norm;   // [n_embd]
  std::vector<float> w_gate;     // [n_ff][n_embd]
  std::vector<float> w_up;       // [n_ff][n_embd]
  std::vector<float> w_down;     // [n_embd][n_ff]
  // Gemma-3 only (empty otherwise):
  std::vector<float> q_norm;           // [head_dim]
  std::vector<float> k_norm;           // [head_dim]
  std::vector<float> post_attn_norm;   // [n_embd]
  std::vector<float> post_ffn_norm;    // [n_embd]
};

struct LlamaModel::Weights {
  explicit Weights(const LlamaConfig& c) : rope(c.rope), rope_local(c.rope_local) {}
  Rope rope;        // global layers
  Rope rope_local;  // local (sliding-window) layers
  std::vector<float> token_embd;   // [vocab][n_embd]
  std::vector<Layer> layers;
  std::vector<float> output_norm;  // [n_embd]
  std::vector<float> output;       // [vocab][n_embd]; empty when tied to token_embd
  const float* unembedding() const { return output.empty() ? token_embd.data() : output.data(); }
};

// ---------------------------------------------------------------------------------------------
// Loading: configuration, tensor validation, dequantization.

namespace {

std::vector<float> dequantize_checked(const GGUFTensorInfo& t) {
  std::vector<float> w = dequantize_tensor(t);
  for (size_t i = 0; i < w.size(); ++i)
    SAAP_CHECK_FMT(std::isfinite(w[i]), NonFinite, "tensor %s holds a non-finite value at element %zu",
                   t.name.c_str(), i);
  return w;
}


}  // namespace

std::shared_ptr<const LlamaModel> LlamaModel::load(const std::string& path, bool progress) {
  std::shared_ptr<LlamaModel> model(new LlamaModel());
  model->file_ = GGUFFile::open(path);
  const GGUFFile& f = model->file_;
  LlamaConfig& c = model->config_;
  c = read_llama_config(f);

  // Validate every tensor before dequantizing any, so a bad file fails fast and names the tensor.
  check_llama_tensor_shapes(f, c);
  if (const GGUFTensorInfo* freqs = f.find_tensor("rope_freqs.weight")) c.rope.freq_factors = dequantize_checked(*freqs);
  model->tokenizer_ = Tokenizer::from_gguf(f);
  SAAP_CHECK_FMT(model->tokenizer_.vocab_size() <= c.vocab_size, BadFile,
                 "%s: the tokenizer has %d tokens but the model only %d embeddings", path.c_str(),
                 model->tokenizer_.vocab_size(), c.vocab_size);

  auto w = std::make_shared<Weights>(c);
  w->layers.resize(size_t(c.n_layers));
  ProgressBar bar("loading " + c.name, int64_t(llama_tensor_shapes(c).size()), progress);
  int64_t done = 0;
  auto load = [&](const std::string& name) {
    std::vector<float> data = dequantize_checked(f.tensor(name));
    bar.update(++done);
    return data;
  };
  w->token_embd = load("token_embd.weight");
  w->output_norm = load("output_norm.weight");
  if (!c.tied_output) w->output = load("output.weight");
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    Layer& L = w->layers[size_t(l)];
    L.attn_norm = load(p + "attn_norm.weight");
    L.wq = load(p + "attn_q.weight");
    L.wk = load(p + "attn_k.weight");
    L.wv = load(p + "attn_v.weight");
    L.wo = load(p + "attn_output.weight");
    L.ffn_norm = load(p + "ffn_norm.weight");
    L.w_gate = load(p + "ffn_gate.weight");
    L.w_up = load(p + "ffn_up.weight");
    L.w_down = load(p + "ffn_down.weight");
    if (c.qk_norm) {
      L.q_norm = load(p + "attn_q_norm.weight");
      L.k_norm = load(p + "attn_k_norm.weight");
    }
    if (c.post_norms) {
      L.post_attn_norm = load(p + "post_attention_norm.weight");
      L.post_ffn_norm = load(p + "post_ffw_norm.weight");
    }
  }
  bar.finish();
  model->weights_ = std::move(w);

  model->identity_ = model_identity(f, c);
  return model;
}

// ---------------------------------------------------------------------------------------------
// The building blocks of the forward pass.

namespace {

// out = x / sqrt(mean(x²) + eps) * weight, per row (out may be x). Gemma's (1 + w) is stored as
// such in the GGUF (gemma3.cpp).
void rms_norm(float* out, const float* x, const float* weight, int64_t n, int dim, float eps) {
#pragma omp parallel for if (n > 1)
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * dim;
    double ss = 0;
    for (int j = 0; j < dim; ++j) ss += double(xi[j]) * xi[j];
    const float inv = float(1.0 / std::sqrt(ss / dim + eps));
    float* oi = out + i * dim;
    for (int j = 0; j < dim; ++j) oi[j] = xi[j] * inv * weight[j];
  }
}

// gate = silu(gate) * up (SwiGLU) or gelu_tanh(gate) * up (GeGLU), elementwise.
void gated_activation(float* gate, const float* up, int64_t count, FfnActivation activation) {
  if (activation == FfnActivation::SiLU) {
#pragma omp parallel for if (count > 4096)
    for (int64_t i = 0; i < count; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  } else {
    const float sqrt_2_over_pi = 0.7978845608028654f;
#pragma omp parallel for if (count > 4096)
    for (int64_t i = 0; i < count; ++i) {
      const float g = gate[i];
      gate[i] = 0.5f * g * (1.0f + std::tanh(sqrt_2_over_pi * (g + 0.044715f * g * g * g))) * up[i];
    }
  }
}

// x += y, elementwise.
void add(float* x, const float* y, int64_t count) {
#pragma omp parallel for if (count > 4096)
  for (int64_t i = 0; i < count; ++i) x[i] += y[i];
}

void check_finite_rows(const float* x, int64_t count, int layer, const char* what) {
  for (int64_t i = 0; i < count; ++i)
    SAAP_CHECK_FMT(std::isfinite(x[i]), NonFinite, "non-finite %s activation at layer %d, element %lld", what, layer,
                   (long long)i);
}

}  // namespace

struct LlamaSession::Scratch {
  int64_t rows = 0;
  std::vector<float> x;      // [n][n_embd] the residual stream
  std::vector<float> xn;     // [n][n_embd] normalized input of a sub-block
  std::vector<float> q_pre, q, k_pre, k, v;
  std::vector<float> att;    // [n][n_heads * head_dim] attention output
  std::vector<float> gate, up;  // [n][n_ff]
  void ensure(int64_t n, const LlamaConfig& c) {
    if (n <= rows) return;
    rows = n;
    const int64_t E = c.n_embd, Q = int64_t(c.n_heads) * c.head_dim, KV = int64_t(c.n_kv_heads) * c.head_dim;
    x.resize(size_t(n * E));
    xn.resize(size_t(n * E));
    q_pre.resize(size_t(n * Q));
    q.resize(size_t(n * Q));
    att.resize(size_t(n * Q));
    k_pre.resize(size_t(n * KV));
    k.resize(size_t(n * KV));
    v.resize(size_t(n * KV));
    gate.resize(size_t(n * c.n_ff));
    up.resize(size_t(n * c.n_ff));
  }
};

namespace {
std::shared_ptr<const LlamaModel> non_null(std::shared_ptr<const LlamaModel> model) {
  SAAP_CHECK_MSG(model != nullptr, InvalidArgument, "LlamaSession needs a model");
  return model;
}

KVCacheShape cache_shape(const LlamaModel& model, int64_t capacity) {
  const LlamaConfig& c = model.config();
  SAAP_CHECK_FMT(capacity >= 1 && capacity <= c.context_length, InvalidArgument,
                 "session capacity = %lld must be in [1, context length %lld]", (long long)capacity,
                 (long long)c.context_length);
  return KVCacheShape{c.n_layers, c.n_kv_heads, c.head_dim, capacity, DType::F32};
}
}  // namespace

LlamaSession::LlamaSession(std::shared_ptr<const LlamaModel> model, int64_t capacity, MethodFactory methods,
                           AttentionMode mode)
    : model_(non_null(std::move(model))),
      cache_(cache_shape(*model_, capacity)),
      mode_(mode),
      scratch_(std::make_shared<Scratch>()) {
  const LlamaConfig& c = model_->config();
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerShape shape{l, c.n_heads, c.n_kv_heads, c.head_dim, capacity};
    if (!c.is_global(l))
      methods_.push_back(std::make_unique<SlidingWindowAttention>(shape, c.layer_window[size_t(l)]));
    else
      methods_.push_back(methods ? methods(shape) : std::make_unique<DenseAttention>(shape));
    SAAP_CHECK_FMT(methods_.back() != nullptr, InvalidArgument, "the method factory returned null for layer %d", l);
  }
}

void LlamaSession::reset() {
  cache_.clear();
  for (auto& m : methods_) m->reset();
  stats_ = LookupStats{};
  global_stats_ = LookupStats{};
}

int64_t LlamaSession::length() const { return cache_.length(0); }

AttentionMethod& LlamaSession::method(int layer) {
  SAAP_CHECK_FMT(layer >= 0 && layer < int(methods_.size()), InvalidArgument, "layer = %d of %zu", layer,
                 methods_.size());
  return *methods_[size_t(layer)];
}

// ---------------------------------------------------------------------------------------------
// One forward pass.

void LlamaSession::forward(const int32_t* tokens, int64_t n, float* logits, bool all_logits) {
  const LlamaConfig& c = model_->config();
  const LlamaModel::Weights& w = *model_->weights_;
  SAAP_CHECK_FMT(n >= 1, InvalidArgument, "forward of n = %lld tokens", (long long)n);
  SAAP_CHECK_MSG(tokens != nullptr && logits != nullptr, InvalidArgument, "forward needs tokens and logits buffers");
  const int64_t pos0 = length();
  SAAP_CHECK_FMT(pos0 + n <= cache_.shape().capacity, InvalidArgument,
                 "%lld tokens at position %lld overflow the session capacity of %lld", (long long)n, (long long)pos0,
                 (long long)cache_.shape().capacity);
  for (int64_t i = 0; i < n; ++i)
    SAAP_CHECK_FMT(tokens[i] >= 0 && tokens[i] < c.vocab_size, InvalidArgument,
                   "token id %d at index %lld is outside the vocabulary [0, %d)", tokens[i], (long long)i,
                   c.vocab_size);

  const int E = c.n_embd, D = c.head_dim, Hq = c.n_heads, Hkv = c.n_kv_heads;
  const int64_t Q = int64_t(Hq) * D, KV = int64_t(Hkv) * D;
  const float scale = 1.0f / std::sqrt(float(D));
  Scratch& s = *scratch_;
  s.ensure(n, c);
  BlasSerialScope blas_serial;

  try {
    // Token embeddings start the residual stream (Gemma scales them by sqrt(n_embd)).
    for (int64_t i = 0; i < n; ++i) {
      const float* e = &w.token_embd[size_t(int64_t(tokens[i]) * E)];
      for (int j = 0; j < E; ++j) s.x[size_t(i * E + j)] = e[j] * c.embed_scale;
    }

    for (int l = 0; l < c.n_layers; ++l) {
      const LlamaModel::Layer& L = w.layers[size_t(l)];
      const bool global = c.is_global(l);

      // Attention block: x += Wo · attention(RoPE(Wq·h), RoPE(Wk·h), Wv·h), h = RMSNorm(x).
      // Gemma: QK-norm on each head before RoPE, and an RMSNorm on the block's output.
      rms_norm(s.xn.data(), s.x.data(), L.attn_norm.data(), n, E, c.rms_eps);
      matmul_xwt(s.q_pre.data(), s.xn.data(), L.wq.data(), n, E, Q);
      matmul_xwt(s.k_pre.data(), s.xn.data(), L.wk.data(), n, E, KV);
      matmul_xwt(s.v.data(), s.xn.data(), L.wv.data(), n, E, KV);
      if (c.qk_norm) {
        rms_norm(s.q_pre.data(), s.q_pre.data(), L.q_norm.data(), n * Hq, D, c.rms_eps);
        rms_norm(s.k_pre.data(), s.k_pre.data(), L.k_norm.data(), n * Hkv, D, c.rms_eps);
      }
      std::copy_n(s.q_pre.data(), n * Q, s.q.data());
      std::copy_n(s.k_pre.data(), n * KV, s.k.data());
      const Rope& rope = global ? w.rope : w.rope_local;
#pragma omp parallel for if (n > 1)
      for (int64_t i = 0; i < n; ++i) {
        rope.apply(&s.q[size_t(i * Q)], Hq, pos0 + i);
        rope.apply(&s.k[size_t(i * KV)], Hkv, pos0 + i);
      }
      check_finite_rows(s.q.data(), n * Q, l, "query");

      cache_.append(l, s.k.data(), s.v.data(), n);
      const LayerKV kv = cache_.layer(l);
      AttentionMethod& method = *methods_[size_t(l)];
      method.place(kv, pos0, pos0 + n, s.k_pre.data());
      if (observer_)
        observer_(LayerActivations{l, pos0, n, s.q_pre.data(), s.q.data(), s.k_pre.data(), s.k.data(), s.v.data()});

      if (mode_ == AttentionMode::DensePrefill && n > 1) {
        if (global)
          attention_prefill(kv, s.q.data(), Hq, n, pos0, scale, s.att.data());
        else
          attention_prefill_window(kv, s.q.data(), Hq, n, pos0, c.layer_window[size_t(l)], scale, s.att.data());
      } else {
        LookupStats layer_stats;
        for (int64_t i = 0; i < n; ++i) {
          const QueryView query{&s.q[size_t(i * Q)], &s.q_pre[size_t(i * Q)], Hq, pos0 + i};
          method.forward(kv, query, &s.att[size_t(i * Q)], layer_stats);
        }
        stats_ += layer_stats;
        if (global) global_stats_ += layer_stats;
      }
      if (c.post_norms) {
        matmul_xwt(s.xn.data(), s.att.data(), L.wo.data(), n, Q, E);
        rms_norm(s.xn.data(), s.xn.data(), L.post_attn_norm.data(), n, E, c.rms_eps);
        add(s.x.data(), s.xn.data(), n * E);
      } else {
        matmul_xwt(s.x.data(), s.att.data(), L.wo.data(), n, Q, E, /*accumulate=*/true);
      }

      // MLP block: x += W_down · (act(W_gate·h) ⊙ W_up·h), h = RMSNorm(x); act = silu, or
      // gelu-tanh for Gemma, which also normalizes the block's output.
      rms_norm(s.xn.data(), s.x.data(), L.ffn_norm.data(), n, E, c.rms_eps);
      matmul_xwt(s.gate.data(), s.xn.data(), L.w_gate.data(), n, E, c.n_ff);
      matmul_xwt(s.up.data(), s.xn.data(), L.w_up.data(), n, E, c.n_ff);
      gated_activation(s.gate.data(), s.up.data(), n * c.n_ff, c.ffn_activation);
      if (c.post_norms) {
        matmul_xwt(s.xn.data(), s.gate.data(), L.w_down.data(), n, c.n_ff, E);
        rms_norm(s.xn.data(), s.xn.data(), L.post_ffn_norm.data(), n, E, c.rms_eps);
        add(s.x.data(), s.xn.data(), n * E);
      } else {
        matmul_xwt(s.x.data(), s.gate.data(), L.w_down.data(), n, c.n_ff, E, /*accumulate=*/true);
      }
      if (progress_) progress_(l + 1, c.n_layers);
    }

    // Final norm and the unembedding (tied to token_embd when the file has no output.weight).
    const int64_t first = all_logits ? 0 : n - 1, rows = n - first;
    rms_norm(s.xn.data(), &s.x[size_t(first * E)], w.output_norm.data(), rows, E, c.rms_eps);
    matmul_xwt(logits, s.xn.data(), w.unembedding(), rows, E, c.vocab_size);
    if (c.final_logit_softcap > 0) {
      const float cap = c.final_logit_softcap;
      for (int64_t i = 0; i < rows * c.vocab_size; ++i) logits[i] = cap * std::tanh(logits[i] / cap);
    }
  } catch (...) {
    cache_.truncate(pos0);
    throw;
  }
}

}  // namespace saap
