#include "saap/methods/streaming.h"

#include <algorithm>

#include "saap/core/error.h"
#include "saap/core/selection_rules.h"
#include "saap/kernels/cpu/attention.h"

namespace saap {

StreamingAttention::StreamingAttention(const LayerShape& shape, int sinks, int window)
    : AttentionMethod(shape), sinks_(sinks), window_(window) {
  SAAP_CHECK_FMT(sinks >= 0, InvalidArgument, "sinks = %d must be >= 0", sinks);
  SAAP_CHECK_FMT(window >= 0, InvalidArgument, "window = %d must be >= 0", window);
}

void StreamingAttention::select(const LayerKV& kv, const QueryView& q, Selection& sel) {
  const int64_t n = q.n_ctx();
  check_attention_shape(kv, q.n_q_heads, n);
  sel.clear(q.n_q_heads);
  // The query's own position is always read, so window 0 acts as window 1.
  const rules::FixedReads fixed = rules::fixed_reads(n, sinks_, std::max(window_, 1));
  if (fixed.middle() == 0) {
    sel.all = true;
    return;
  }
  std::vector<int32_t> list;
  list.reserve(size_t(fixed.count()));
  for (int64_t p = 0; p < fixed.sink_end; ++p) list.push_back(int32_t(p));
  for (int64_t p = fixed.window_begin; p < n; ++p) list.push_back(int32_t(p));
  for (auto& l : sel.positions) l = list;
}

MethodFactory streaming_factory(const MethodSpec& spec, const ArtifactIdentity&) {
  const int sinks = spec.sinks, window = spec.window;
  SAAP_CHECK_FMT(sinks >= 0 && window >= 0, InvalidArgument, "sinks = %d and window = %d must be >= 0", sinks, window);
  return [sinks, window](const LayerShape& shape) { return std::make_unique<StreamingAttention>(shape, sinks, window); };
}

}  // namespace saap
