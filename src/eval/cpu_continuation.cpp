#include "saap/eval/cpu_continuation.h"

#include <algorithm>

#include "saap/core/error.h"

namespace saap {

GreedyContinuation cpu_greedy_continuation(std::shared_ptr<const LlamaModel> model, MethodFactory factory,
                                           AttentionMode mode) {
  SAAP_CHECK_MSG(model != nullptr, InvalidArgument, "cpu_greedy_continuation: model is null");
  auto session = std::make_shared<std::unique_ptr<LlamaSession>>();
  return [model, factory, mode, session](const std::vector<ContinuationRequest>& requests) {
    const LlamaConfig& cfg = model->config();
    const Tokenizer& tok = model->tokenizer();
    std::vector<float> logits(size_t(cfg.vocab_size));
    std::vector<Continuation> out;
    for (const ContinuationRequest& r : requests) {
      SAAP_CHECK_MSG(r.context && r.query && !r.context->empty() && !r.query->empty(), InvalidArgument,
                     "a continuation request needs a non-empty context and query");
      SAAP_CHECK_FMT(r.max_new_tokens > 0, InvalidArgument, "max_new_tokens = %d must be positive", r.max_new_tokens);
      const int64_t need = int64_t(r.context->size() + r.query->size()) + r.max_new_tokens;
      SAAP_CHECK_FMT(need <= cfg.context_length, InvalidArgument,
                     "context %zu + query %zu + answer %d tokens exceed the model's context length %lld",
                     r.context->size(), r.query->size(), r.max_new_tokens, (long long)cfg.context_length);
      if (!*session || (*session)->cache().shape().capacity < need)
        *session = std::make_unique<LlamaSession>(model, need, factory, mode);
      LlamaSession& s = **session;
      s.reset();
      // Chunks bound the activation memory; in DensePrefill each is exact causal attention over
      // everything cached before it.
      const int64_t chunk = 512, n_ctx = int64_t(r.context->size());
      for (int64_t t = 0; t < n_ctx; t += chunk)
        s.forward(r.context->data() + t, std::min(chunk, n_ctx - t), logits.data());
      for (int32_t id : *r.query) s.forward(&id, 1, logits.data());
      Continuation c;
      for (int i = 0; i < r.max_new_tokens; ++i) {
        const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        if (tok.is_end_of_generation(next)) break;
        c.tokens.push_back(next);
        if (i + 1 < r.max_new_tokens) s.forward(&next, 1, logits.data());
      }
      c.lookup = s.stats();
      c.global_lookup = s.global_stats();
      out.push_back(std::move(c));
    }
    return out;
  };
}

}  // namespace saap
