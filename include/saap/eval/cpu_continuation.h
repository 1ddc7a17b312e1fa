// The CPU model runner as a GreedyContinuation (niah.h): one LlamaSession, re-made only when a
// request needs more room than it has, runs the requests one after another. Each prefills its
// context in chunks (DensePrefill: exact attention; MethodEverywhere: through the method), feeds the
// query one token at a time through the global layers' method, then decodes greedily.
#pragma once
#include <memory>

#include "saap/eval/niah.h"
#include "saap/model/llama.h"

namespace saap {

GreedyContinuation cpu_greedy_continuation(std::shared_ptr<const LlamaModel> model, MethodFactory factory,
                                           AttentionMode mode = AttentionMode::DensePrefill);

}  // namespace saap
