// StreamingLLM (Xiao et al., ICLR 2024, arXiv 2309.17453): every query reads the first `sinks`
// positions (attention sinks) and the `window` most recent ones; nothing else, no index.
#pragma once
#include <cstdint>

#include "saap/methods/method.h"
#include "saap/methods/registry.h"

namespace saap {

class StreamingAttention : public AttentionMethod {
 public:
  // sinks, window >= 0. The query's own position is always read, so window 0 acts as window 1
  // (attention over nothing is undefined).
  StreamingAttention(const LayerShape& shape, int sinks, int window);
  std::string name() const override { return "streaming"; }
  // Selects everything when sinks + window cover the prefix.
  void select(const LayerKV& kv, const QueryView& q, Selection& sel) override;

 private:
  int sinks_, window_;
};

MethodFactory streaming_factory(const MethodSpec& spec, const ArtifactIdentity& expected);

}  // namespace saap
