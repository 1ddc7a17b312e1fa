#include "saap/eval/decode_replay.h"

#include "saap/core/kv_cache.h"

namespace saap {

void replay_layer(const MethodFactory& factory, const LayerShape& shape, int64_t n, const float* q,
                  const float* q_pre, const float* k, const float* k_pre, const float* v,
                  const std::vector<int32_t>& sample, int top_k, std::vector<AttentionMetrics>& per_head,
                  LookupStats& lookup, ReplayQueries queries) {
  const int H = shape.n_q_heads, KV = shape.n_kv_heads, D = shape.head_dim;
  KVCache cache({1, KV, D, n, DType::F32});
  cache.append(0, k, v, n);
  std::unique_ptr<AttentionMethod> method = factory(shape);
  method->reset();
  const bool sampled_only = queries == ReplayQueries::sampled_positions;
  const bool every_query = !sampled_only || method->needs_every_query();
  std::vector<float> out(size_t(H) * D);
  Selection sel;
  LookupStats unsampled;  // what the unsampled queries read, left out in sampled_positions mode
  int64_t placed = 0;
  size_t next = 0;
  for (int64_t t = 0; t < n; ++t) {
    while (next < sample.size() && sample[next] < t) ++next;
    const bool sampled = next < sample.size() && sample[next] == t;
    if (!every_query && !sampled) continue;
    // The view a decoder would hold at step t: positions [0, t] cached, nothing later.
    LayerKV kv = cache.layer(0);
    kv.length = t + 1;
    method->place(kv, placed, t + 1, k_pre + placed * KV * D);
    placed = t + 1;
    QueryView qv;
    qv.q = q + t * H * D;
    qv.q_pre = q_pre + t * H * D;
    qv.n_q_heads = H;
    qv.pos = t;
    sel.clear(H);
    method->select(kv, qv, sel);
    method->attend(kv, qv, sel, out.data(), sampled_only && !sampled ? unsampled : lookup);
    if (sampled) measure_query(kv, qv, sel, out.data(), top_k, per_head);
  }
}

}  // namespace saap
