// Exact attention over the whole causal prefix: the quality reference and the speed baseline.
#pragma once
#include "saap/methods/method.h"

namespace saap {

class DenseAttention : public AttentionMethod {
 public:
  using AttentionMethod::AttentionMethod;
  std::string name() const override { return "dense"; }
  void select(const LayerKV& kv, const QueryView& q, Selection& sel) override;
};

}  // namespace saap
