// The Gemma-3 forward pass on the GPU, in the same order as the CPU runner's LlamaSession::forward
// with Gemma's switches on (src/model/llama.cpp, constants in src/model/gemma3.cpp). Read
// gemma3_prefill_layers and gemma3_record_step top to bottom. What differs from the Llama pass
// (cuda_llama.cu), per block:
//   h = RMSNorm(x);  q, k, v = Wq·h, Wk·h, Wv·h
//   q, k = RoPE(QKNorm(q)), RoPE(QKNorm(k))      local layers: base 10,000; global: 1,000,000
//   x += RMSNorm_post(Wo · attention(q, k, v))   local layers: the last 512 positions only
//   h = RMSNorm(x)
//   x += RMSNorm_post(W_down · (gelu_tanh(W_gate·h) ⊙ W_up·h))
// The embedding scale (sqrt(n_embd)) is applied by prefill() and gemma3_record_step as the rows
// are embedded. Every RMSNorm multiplies by the stored weight: the GGUF stores Gemma's 1 + w
// (gemma3.cpp says how that was measured).
#include <cmath>

#include "saap/kernels/cuda/llama_ops.h"
#include "saap/kernels/cuda/prefill_attention.h"
#include "src/model_cuda/cuda_llama_impl.h"

namespace saap::cuda {

RopeTable CudaLlamaModel::Impl::rope_for(int layer) const {
  const bool local = !config.is_global(layer) && rope_table_local.size() > 0;
  const RopeConfig& r = local ? config.rope_local : config.rope;
  return RopeTable{local ? rope_table_local.get() : rope_table.get(), options.max_context, r.n_rot,
                   r.style == RopeStyle::NeoX};
}

// The blocks over the chunk rows [b][n] (positions pos0 .. pos0 + n - 1 of every sequence), whose
// scaled embeddings are in x. A sparse method serves the global layers only (as on the CPU): their
// pre-RoPE keys are kept for its index when it routes by them.
void CudaLlamaModel::Impl::gemma3_prefill_layers(int b, int64_t n, int64_t pos0) {
  const LlamaConfig& c = config;
  const int E = c.n_embd, D = c.head_dim, Q = c.n_heads * D, QKV = (c.n_heads + 2 * c.n_kv_heads) * D;
  const int F = c.n_ff;
  const int64_t rows = int64_t(b) * n;
  const QkvLayout qkv_layout{b, n, c.n_heads, c.n_kv_heads, D, options.max_context};
  const float scale = 1.f / std::sqrt(float(D));  // query_pre_attn_scalar = head_dim (gemma3.cpp)
  for (int l = 0; l < c.n_layers; ++l) {
    const CudaLlamaLayer& L = layers[size_t(l)];
    bf16_t* kc = k_cache.get() + size_t(l) * layer_stride();
    bf16_t* vc = v_cache.get() + size_t(l) * layer_stride();
    const bool global = c.is_global(l);
    const QkNorm qk_norm{L.q_norm.get(), L.k_norm.get(), c.rms_eps, global ? qk_normed.get() : nullptr};
    PrefillShape attn{b, c.n_heads, c.n_kv_heads, D, n, pos0, options.max_context};
    attn.window = c.layer_window[size_t(l)];  // 0 on the global layers

    rms_norm_rows(x.get(), L.attn_norm.get(), rows, E, c.rms_eps, xn.get(), stream);
    gemm(xn.get(), L.wqkv.get(), qkv.get(), rows, E, QKV, 0.f);
    rope_split_qkv(qkv_layout, qkv.get(), rope_for(l), pos0, nullptr, q.get(), kc, vc, stream, &qk_norm);
    if (global) save_routing_keys(l, b, n, pos0);  // a pre-RoPE partition method assigns the prefill by these
    prefill_attention(attn, q.get(), kc, vc, scale, att.get(), stream, options.prefill_kernel);
    gemm(att.get(), L.wo.get(), y.get(), rows, Q, E, 0.f);
    rms_norm_add_rows(y.get(), L.post_attn_norm.get(), rows, E, c.rms_eps, x.get(), stream);

    rms_norm_rows(x.get(), L.ffn_norm.get(), rows, E, c.rms_eps, xn.get(), stream);
    gemm(xn.get(), L.w_gate_up.get(), gate_up.get(), rows, E, 2 * F, 0.f);
    geglu_rows(gate_up.get(), rows, F, h.get(), stream);
    gemm(h.get(), L.w_down.get(), y.get(), rows, F, E, 0.f);
    rms_norm_add_rows(y.get(), L.post_ffn_norm.get(), rows, E, c.rms_eps, x.get(), stream);
  }
}

// One token per sequence, as gemma3_prefill_layers. Attention: the method's on global layers
// (decode_attention: dense split-KV over the cache rows [0, lengths[b]), or the layer's sparse
// index), exact dense split-KV over the last layer_window rows on local layers; then the
// unembedding (tied to token_embd) and the greedy choice. Only launches: the CUDA graph's step.
void CudaLlamaModel::Impl::gemma3_record_step() {
  const LlamaConfig& c = config;
  const int E = c.n_embd, D = c.head_dim, Q = c.n_heads * D, QKV = (c.n_heads + 2 * c.n_kv_heads) * D;
  const int F = c.n_ff;
  const QkvLayout qkv_layout{batch, 1, c.n_heads, c.n_kv_heads, D, options.max_context};
  const DecodeShape shape{batch, c.n_heads, c.n_kv_heads, D, DType::BF16};
  const float scale = 1.f / std::sqrt(float(D));
  embed_rows(next_tokens.get(), token_embd.get(), c.vocab_size, E, batch, x.get(), lengths.get(), stream,
             c.embed_scale);
  for (int l = 0; l < c.n_layers; ++l) {
    const CudaLlamaLayer& L = layers[size_t(l)];
    bf16_t* kc = k_cache.get() + size_t(l) * layer_stride();
    bf16_t* vc = v_cache.get() + size_t(l) * layer_stride();
    const bool global = c.is_global(l);
    const QkNorm qk_norm{L.q_norm.get(), L.k_norm.get(), c.rms_eps, global ? qk_normed.get() : nullptr};

    rms_norm_rows(x.get(), L.attn_norm.get(), batch, E, c.rms_eps, xn.get(), stream);
    gemm(xn.get(), L.wqkv.get(), qkv.get(), batch, E, QKV, 0.f);
    rope_split_qkv(qkv_layout, qkv.get(), rope_for(l), 0, lengths.get(), q32.get(), kc, vc, stream, &qk_norm);
    if (global)
      decode_attention(l, kc, vc, scale);
    else
      dense_decode(shape, kc, vc, options.max_context, lengths.get(), q32.get(), scale, att32.get(), split_ws, stream,
                   c.layer_window[size_t(l)]);
    to_bf16(att32.get(), int64_t(batch) * Q, att.get(), stream);
    gemm(att.get(), L.wo.get(), y.get(), batch, Q, E, 0.f);
    rms_norm_add_rows(y.get(), L.post_attn_norm.get(), batch, E, c.rms_eps, x.get(), stream);

    rms_norm_rows(x.get(), L.ffn_norm.get(), batch, E, c.rms_eps, xn.get(), stream);
    gemm(xn.get(), L.w_gate_up.get(), gate_up.get(), batch, E, 2 * F, 0.f);
    geglu_rows(gate_up.get(), batch, F, h.get(), stream);
    gemm(h.get(), L.w_down.get(), y.get(), batch, F, E, 0.f);
    rms_norm_add_rows(y.get(), L.post_ffn_norm.get(), batch, E, c.rms_eps, x.get(), stream);
  }
  rms_norm_rows(x.get(), output_norm.get(), batch, E, c.rms_eps, xn.get(), stream);
  gemm(xn.get(), unembedding(), logits.get(), batch, E, c.vocab_size, 0.f);
  argmax_rows(logits.get(), batch, c.vocab_size, next_tokens.get(), stream);
}

}  // namespace saap::cuda
