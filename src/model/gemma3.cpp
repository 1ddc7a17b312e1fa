// Gemma-3 (Gemma Team, "Gemma 3 Technical Report", 2025; Hugging Face transformers'
// models/gemma3). The GGUF gives the shapes, rope.freq_base (the global layers' 1e6) and
// attention.sliding_window (512); the rest is fixed by the architecture and stated here with
// its source.
//
// Weight convention: Gemma's RMSNorm multiplies by (1 + w). llama.cpp's converter stores w + 1
// in every *norm.weight of a gemma3 GGUF, so the runner multiplies by the stored weight as for
// Llama. Measured, not assumed (scripts/reference_gemma3.py --score-text, BOS + 160 tokens of
// eval.txt): reading the stored weights as they are gives perplexity 2.56, adding 1 again gives
// 1.9e5; transformers' GGUF loader subtracts 1 from every norm weight for the same reason.
#include "gemma3.h"

#include <cmath>

#include "saap/core/error.h"

namespace saap {
namespace {

// Layer l is global when (l + 1) % 6 == 0 (layers 5, 11, 17 of 18), local otherwise:
// transformers' Gemma3TextConfig builds layer_types from sliding_window_pattern = 6 this way,
// and llama.cpp's gemma3 loader calls set_swa_pattern(6) (layer il is local when il % 6 < 5).
constexpr int kSlidingWindowPattern = 6;

// RoPE base of the local layers: Gemma3TextConfig.rope_local_base_freq = 10,000 (the global
// layers' 1,000,000 is the GGUF's rope.freq_base).
constexpr float kLocalRopeBase = 10000.0f;

// Scores are scaled by query_pre_attn_scalar^-1/2 (Gemma3Attention.scaling). Every Gemma-3 size
// but 27B sets query_pre_attn_scalar = head_dim = 256 (google/gemma-3-270m config.json), which is
// the 1/sqrt(head_dim) every AttentionMethod uses; 27B (62 blocks) sets 168 and is refused.
constexpr int kUnsupported27BBlocks = 62;

}  // namespace

void configure_gemma3(const GGUFFile& f, LlamaConfig& c) {
  const std::string a = "gemma3.";
  SAAP_CHECK_FMT(c.n_layers != kUnsupported27BBlocks, Unsupported,
                 "gemma3 with %d blocks is Gemma-3-27B, whose query_pre_attn_scalar (168) differs from head_dim; "
                 "saap scales scores by 1/sqrt(head_dim) only", c.n_layers);
  const int64_t window = f.get_int(a + "attention.sliding_window");
  SAAP_CHECK_FMT(window >= 1 && window <= c.context_length, BadFile,
                 "metadata %sattention.sliding_window = %lld must be in [1, context length %lld]", a.c_str(),
                 (long long)window, (long long)c.context_length);
  c.layer_window.assign(size_t(c.n_layers), window);
  for (int l = 0; l < c.n_layers; ++l)
    if ((l + 1) % kSlidingWindowPattern == 0) c.layer_window[size_t(l)] = 0;

  // Hugging Face layout (no Q/K permutation in the converter): RoPE pairs (i, i + D/2). Scaling
  // (rope.scaling.*, read with the Llama keys) applies to the global layers only, as in
  // transformers, whose local rotary embedding is the default one.
  c.rope.style = RopeStyle::NeoX;
  c.rope_local = c.rope;
  c.rope_local.base = kLocalRopeBase;
  c.rope_local.freq_scale = 1.0f;
  c.rope_local.freq_factors.clear();

  // Gemma3TextScaledWordEmbedding: embed_scale = hidden_size ** 0.5, cast to the weights' dtype
  // (fp32 here) before the multiply.
  c.embed_scale = float(std::sqrt(double(c.n_embd)));
  c.ffn_activation = FfnActivation::GeluTanh;  // hidden_activation = "gelu_pytorch_tanh"
  c.qk_norm = true;                            // Gemma3Attention.q_norm / k_norm
  c.post_norms = true;                         // post_attention_layernorm, post_feedforward_layernorm

  // Gemma-3 sets neither softcap (config.json: null); read them should a converter write them.
  c.final_logit_softcap = float(f.get_float(a + "final_logit_softcapping", 0.0));
  SAAP_CHECK_FMT(c.final_logit_softcap >= 0, BadFile, "metadata %sfinal_logit_softcapping = %g must be >= 0",
                 a.c_str(), c.final_logit_softcap);
  const double attn_softcap = f.get_float(a + "attn_logit_softcapping", 0.0);
  SAAP_CHECK_FMT(attn_softcap == 0, Unsupported,
                 "metadata %sattn_logit_softcapping = %g: saap's attention has no score softcapping", a.c_str(),
                 attn_softcap);
  SAAP_CHECK_FMT(c.tied_output, Unsupported, "%s", "a gemma3 GGUF with its own output.weight (Gemma ties it)");
}

}  // namespace saap
