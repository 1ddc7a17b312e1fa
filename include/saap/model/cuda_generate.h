// Text generation with the CUDA model runner, one sequence: the prompt is prefilled on the GPU,
// then every token is chosen on the host by the CPU's Sampler from the logits the GPU left, and fed
// back as one decode step (a CUDA graph replay). Same Sampler, same seed and same logits give the
// same tokens as the CPU runner; the copy of one row of logits per token (vocab floats) is the
// price of that, next to a decode step.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "saap/model/cuda_llama.h"
#include "saap/model/sampler.h"

namespace saap::cuda {

// Returns the generated tokens. on_token(id) sees each token as soon as it is chosen (streaming)
// and returns false to stop after it (end of generation, a stop string). Also stops after
// max_new_tokens or when the cache is full (max_context). Throws InvalidArgument for an empty
// prompt, a prompt that leaves no room in the cache, or max_new_tokens < 1.
std::vector<int32_t> generate(CudaLlamaModel& model, const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                              Sampler& sampler, const std::function<bool(int32_t)>& on_token = nullptr);

}  // namespace saap::cuda
