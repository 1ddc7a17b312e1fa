#include "saap/eval/cpu_continuation.h"

#include "saap/core/error.h"

namespace saap {

namespace {

std::vector<Continuation> continue_on(EvalBackend& backend, bool method_prefill,
                                      const std::vector<ContinuationRequest>& requests) {
  std::vector<Continuation> out;
  if (requests.empty()) return out;
  const int max_new = requests.front().max_new_tokens;
  std::vector<GreedyRequest> batch;
  for (const ContinuationRequest& r : requests) {
    SAAP_CHECK_MSG(r.context && r.query && !r.context->empty() && !r.query->empty(), InvalidArgument,
                   "a continuation request needs a non-empty context and query");
    SAAP_CHECK_FMT(r.max_new_tokens > 0, InvalidArgument, "max_new_tokens = %d must be positive", r.max_new_tokens);
    SAAP_CHECK_FMT(r.max_new_tokens == max_new, InvalidArgument,
                   "the requests of one call ask for %d and %d new tokens; one call takes one count", max_new,
                   r.max_new_tokens);
    const int64_t need = int64_t(r.context->size() + r.query->size()) + r.max_new_tokens;
    SAAP_CHECK_FMT(need <= backend.max_context(), InvalidArgument,
                   "context %zu + query %zu + answer %d tokens exceed the context length %lld", r.context->size(),
                   r.query->size(), r.max_new_tokens, (long long)backend.max_context());
    batch.push_back({*r.context, *r.query});
  }
  for (GreedyResult& g : backend.greedy(batch, max_new, method_prefill, nullptr))
    out.push_back({std::move(g.tokens), g.stats, g.global_stats});
  return out;
}

}  // namespace

GreedyContinuation backend_greedy_continuation(EvalBackend& backend, bool method_prefill) {
  return [&backend, method_prefill](const std::vector<ContinuationRequest>& requests) {
    return continue_on(backend, method_prefill, requests);
  };
}

GreedyContinuation cpu_greedy_continuation(std::shared_ptr<const LlamaModel> model, MethodFactory factory,
                                           AttentionMode mode) {
  SAAP_CHECK_MSG(model != nullptr, InvalidArgument, "cpu_greedy_continuation: model is null");
  auto backend = std::make_shared<CpuEvalBackend>(std::move(model), std::move(factory), "method");
  const bool method_prefill = mode == AttentionMode::MethodEverywhere;
  return [backend, method_prefill](const std::vector<ContinuationRequest>& requests) {
    return continue_on(*backend, method_prefill, requests);
  };
}

}  // namespace saap
