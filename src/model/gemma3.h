// Gemma-3 ("gemma3") configuration: what the runner needs beyond the Llama keys, including the
// values the GGUF does not carry. Internal to src/model.
#pragma once
#include "saap/model/gguf.h"
#include "saap/model/llama_config.h"

namespace saap {

// Completes c (whose shared Llama keys are read) from a gemma3 GGUF: the local/global layer
// pattern and window, both RoPE bases, QK-norm, post-norms, GELU-tanh, the embedding scale.
// Unsupported (naming the key) for what this runner does not implement.
void configure_gemma3(const GGUFFile& f, LlamaConfig& c);

}  // namespace saap
