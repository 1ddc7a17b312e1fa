// Evaluation backends (backend.h) as niah's GreedyContinuation: the requests go to
// EvalBackend::greedy, which runs them max_batch() at a time (the CPU one after another, the GPU as
// batched prefills). Each prefills its context (exact attention, or through the method with
// method_prefill), feeds the query one token at a time through the method, then decodes greedily.
#pragma once
#include <memory>

#include "saap/eval/backend.h"
#include "saap/eval/niah.h"
#include "saap/model/llama.h"

namespace saap {

// `backend` must outlive the continuation.
GreedyContinuation backend_greedy_continuation(EvalBackend& backend, bool method_prefill);

// The CPU runner with `factory` (a CpuEvalBackend the continuation owns).
GreedyContinuation cpu_greedy_continuation(std::shared_ptr<const LlamaModel> model, MethodFactory factory,
                                           AttentionMode mode = AttentionMode::DensePrefill);

}  // namespace saap
