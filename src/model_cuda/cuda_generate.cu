// One-sequence generation over the CUDA runner (see cuda_generate.h).
#include "saap/core/error.h"
#include "saap/model/cuda_generate.h"

namespace saap::cuda {

std::vector<int32_t> generate(CudaLlamaModel& model, const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                              Sampler& sampler, const std::function<bool(int32_t)>& on_token) {
  const int64_t capacity = model.options().max_context;
  SAAP_CHECK_FMT(!prompt.empty() && int64_t(prompt.size()) < capacity, InvalidArgument,
                 "the prompt has %zu tokens; it must be in [1, max_context = %lld)", prompt.size(),
                 (long long)capacity);
  SAAP_CHECK_FMT(max_new_tokens >= 1, InvalidArgument, "max_new_tokens = %lld must be >= 1",
                 (long long)max_new_tokens);
  const int vocab = model.config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(vocab));
  std::vector<int32_t> out;
  model.prefill(prompt.data(), 1, int64_t(prompt.size()));
  while (true) {
    model.last_logits(logits.data());
    const int32_t next = sampler.sample(logits.data(), vocab);
    out.push_back(next);
    if (on_token && !on_token(next)) break;
    if (int64_t(out.size()) == max_new_tokens || model.length() == capacity) break;
    model.decode_step(&next);
  }
  return out;
}

}  // namespace saap::cuda
