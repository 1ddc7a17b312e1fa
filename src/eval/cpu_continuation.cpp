#include "saap/eval/cpu_continuation.h"

#include <map>

#include "saap/core/error.h"

namespace saap {

namespace {

std::vector<Continuation> continue_on(EvalBackend& backend, bool method_prefill,
                                      const std::vector<ContinuationRequest>& requests) {
  // One backend call per answer length (a call generates one count of tokens), results in order.
  std::map<int, std::vector<size_t>> by_length;
  for (size_t i = 0; i < requests.size(); ++i) {
    const ContinuationRequest& r = requests[i];
    SAAP_CHECK_MSG(r.context && r.query && !r.context->empty() && !r.query->empty(), InvalidArgument,
                   "a continuation request needs a non-empty context and query");
    SAAP_CHECK_FMT(r.max_new_tokens > 0, InvalidArgument, "max_new_tokens = %d must be positive", r.max_new_tokens);
    const int64_t need = int64_t(r.context->size() + r.query->size()) + r.max_new_tokens;
    SAAP_CHECK_FMT(need <= backend.max_context(), InvalidArgument,
                   "context %zu + query %zu + answer %d tokens exceed the context length %lld", r.context->size(),
                   r.query->size(), r.max_new_tokens, (long long)backend.max_context());
    by_length[r.max_new_tokens].push_back(i);
  }
  std::vector<Continuation> out(requests.size());
  for (const auto& [max_new, members] : by_length) {
    std::vector<GreedyRequest> batch;
    for (size_t i : members) batch.push_back({*requests[i].context, *requests[i].query});
    std::vector<GreedyResult> results = backend.greedy(batch, max_new, method_prefill, nullptr);
    for (size_t j = 0; j < members.size(); ++j)
      out[members[j]] = {std::move(results[j].tokens), results[j].stats, results[j].global_stats};
  }
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
