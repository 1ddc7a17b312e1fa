#include "saap/methods/quest.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "saap/core/error.h"
#include "saap/kernels/cpu/attention.h"

namespace saap {

namespace {

void check_params(const QuestParams& p) {
  check_fraction(p.lookup, "lookup");  // the registry's words, as every method
  SAAP_CHECK_FMT(p.budget_tokens >= 0, InvalidArgument, "budget_tokens = %lld must be >= 0 (0: use lookup)",
                 (long long)p.budget_tokens);
  SAAP_CHECK_FMT(p.sinks >= 0, InvalidArgument, "sinks = %d must be >= 0", p.sinks);
  SAAP_CHECK_FMT(p.window >= 0, InvalidArgument, "window = %d must be >= 0", p.window);
  SAAP_CHECK_FMT(p.page_size >= 1 && p.page_size <= kMaxQuestPageSize, InvalidArgument,
                 "page_size = %d must be in [1, %d]", p.page_size, kMaxQuestPageSize);
}

}  // namespace

QuestParams quest_params(const MethodSpec& spec) {
  const QuestParams p{spec.lookup, spec.budget_tokens, spec.sinks, spec.window, spec.page_size};
  check_params(p);
  return p;
}

QuestAttention::QuestAttention(const LayerShape& shape, const QuestParams& params)
    : AttentionMethod(shape), params_(params) {
  check_params(params);
  // A budget the cache can never meet (sinks and window fill it even at full context) would make
  // Quest a StreamingLLM that pays for nothing it chooses: refuse it, as Saap does.
  const bool reaches = rules::reaches_index(rules::Budget{params.lookup, params.budget_tokens}, shape.max_context,
                                            params.sinks, params.window);
  SAAP_CHECK_FMT(shape.max_context <= 0 || reaches, InvalidArgument,
                 "layer %d: the budget (lookup = %g, budget_tokens = %lld) of a %lld-token context is filled by sinks "
                 "%d + window %d: no page could ever be read; raise the budget or lower sinks/window",
                 shape.layer, params.lookup, (long long)params.budget_tokens, (long long)shape.max_context,
                 params.sinks, params.window);
  min_.resize(size_t(shape.n_kv_heads));
  max_.resize(size_t(shape.n_kv_heads));
  key_.resize(size_t(shape.head_dim));
  edge_min_.resize(size_t(shape.head_dim));
  edge_max_.resize(size_t(shape.head_dim));
}

void QuestAttention::reset() {
  placed_ = 0;
  for (auto& m : min_) m.clear();
  for (auto& m : max_) m.clear();
}

int64_t QuestAttention::pages() const { return min_.empty() ? 0 : int64_t(min_[0].size()) / shape_.head_dim; }

const float* QuestAttention::page_min(int kv_head, int64_t c) const {
  SAAP_CHECK_FMT(kv_head >= 0 && kv_head < shape_.n_kv_heads && c >= 0 && c < pages(), InvalidArgument,
                 "page %lld of kv head %d outside [0, %lld) x [0, %d)", (long long)c, kv_head, (long long)pages(),
                 shape_.n_kv_heads);
  return min_[size_t(kv_head)].data() + c * shape_.head_dim;
}

const float* QuestAttention::page_max(int kv_head, int64_t c) const {
  page_min(kv_head, c);  // the same bounds check
  return max_[size_t(kv_head)].data() + c * shape_.head_dim;
}

void QuestAttention::place(const LayerKV& kv, int64_t begin, int64_t end, const float*) {
  check_place(kv, begin, end, placed_);
  const int d = shape_.head_dim;
  const int64_t P = params_.page_size;
  // Rebuild from the page holding begin: its min and max cannot forget the dropped positions.
  const int64_t start = begin < placed_ ? begin / P * P : placed_;
  for (int h = 0; h < shape_.n_kv_heads; ++h) {
    min_[size_t(h)].resize(size_t((start + P - 1) / P * d));
    max_[size_t(h)].resize(size_t((start + P - 1) / P * d));
    for (int64_t p = start; p < end; ++p) {
      kv.key_to_float(h, p, key_.data());
      for (int i = 0; i < d; ++i)
        SAAP_CHECK_FMT(std::isfinite(key_[size_t(i)]), NonFinite,
                       "layer %d: key at position %lld, head %d, dim %d is not finite", shape_.layer, (long long)p, h,
                       i);
      auto& lo = min_[size_t(h)];
      auto& hi = max_[size_t(h)];
      if (p % P == 0) {  // a new page starts with this key as both bounds
        lo.insert(lo.end(), key_.begin(), key_.end());
        hi.insert(hi.end(), key_.begin(), key_.end());
        continue;
      }
      float* mn = lo.data() + (p / P) * d;
      float* mx = hi.data() + (p / P) * d;
      for (int i = 0; i < d; ++i) {
        mn[i] = std::min(mn[i], key_[size_t(i)]);
        mx[i] = std::max(mx[i], key_[size_t(i)]);
      }
    }
  }
  placed_ = end;
}

int64_t QuestAttention::selectable(int64_t n) const {
  return quest::page_budget(params_.lookup, params_.budget_tokens, n, params_.sinks, params_.window);
}

void QuestAttention::causal_bounds(const LayerKV& kv, int kv_head, int64_t c, int64_t n, const float** lo,
                                   const float** hi) {
  const int64_t P = params_.page_size;
  if ((c + 1) * P <= n || placed_ <= n) {
    *lo = page_min(kv_head, c);
    *hi = page_max(kv_head, c);
    return;
  }
  const int d = shape_.head_dim;
  for (int64_t p = c * P; p < n; ++p) {
    kv.key_to_float(kv_head, p, key_.data());
    for (int i = 0; i < d; ++i) {
      const float k = key_[size_t(i)];
      edge_min_[size_t(i)] = p == c * P ? k : std::min(edge_min_[size_t(i)], k);
      edge_max_[size_t(i)] = p == c * P ? k : std::max(edge_max_[size_t(i)], k);
    }
  }
  *lo = edge_min_.data();
  *hi = edge_max_.data();
}

void QuestAttention::select(const LayerKV& kv, const QueryView& q, Selection& sel) {
  const int64_t n = q.n_ctx();
  check_attention_shape(kv, q.n_q_heads, n);
  SAAP_CHECK_FMT(q.n_q_heads == shape_.n_q_heads, InvalidArgument, "query has %d heads, layer %d expects %d",
                 q.n_q_heads, shape_.layer, shape_.n_q_heads);
  SAAP_CHECK_FMT(n <= placed_, InvalidArgument, "layer %d: query at position %lld but only %lld positions placed",
                 shape_.layer, (long long)q.pos, (long long)placed_);
  sel.clear(q.n_q_heads);
  const rules::FixedReads fixed = rules::fixed_reads(n, params_.sinks, params_.window);
  const int64_t budget = selectable(n);
  if (budget >= fixed.middle()) {  // every middle position fits: nothing to rank, nothing read to decide
    sel.all = true;
    return;
  }
  const quest::PageRange range = quest::page_range(fixed, params_.page_size);
  const int d = shape_.head_dim, group = shape_.n_q_heads / shape_.n_kv_heads;
  const int count = int(range.count());
  if (budget > 0) check_finite_queries(q.q, 1, q.n_q_heads, d);
  for (int kvh = 0; kvh < shape_.n_kv_heads; ++kvh) {
    std::vector<int32_t>& out = sel.positions[size_t(kvh * group)];
    for (int64_t p = 0; p < fixed.sink_end; ++p) out.push_back(int32_t(p));
    if (budget > 0) {
      keys_.assign(size_t(count), 0.0f);
      for (int r = 0; r < count; ++r) {
        const float *lo, *hi;
        causal_bounds(kv, kvh, range.first + r, n, &lo, &hi);
        float key = 0.0f;
        for (int g = 0; g < group; ++g) {
          const float* qh = q.q + int64_t(kvh * group + g) * d;
          float bound = 0.0f;
          for (int i = 0; i < d; ++i) bound += quest::bound_term(qh[i], lo[i], hi[i]);
          key += bound;
        }
        keys_[size_t(r)] = key;
      }
      order_.resize(size_t(count));
      std::iota(order_.begin(), order_.end(), 0);
      std::sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) {
        return rules::ranks_before(keys_[size_t(a)], a, keys_[size_t(b)], b);
      });
      taken_.assign(size_t(count), 0);
      rules::fill_in_order(order_.data(), count, [&](int32_t r) { return range.size(range.first + r); }, budget,
                           taken_.data());
      for (int r = 0; r < count; ++r)
        if (taken_[size_t(r)])
          for (int64_t p = range.begin(range.first + r); p < range.finish(range.first + r); ++p)
            out.push_back(int32_t(p));
    }
    for (int64_t p = fixed.window_begin; p < n; ++p) out.push_back(int32_t(p));
    for (int g = 1; g < group; ++g) sel.positions[size_t(kvh * group + g)] = out;
  }
  sel.index_bytes = quest_index_bytes(params_, shape_, n, kv.dtype);
}

int64_t quest_index_bytes(const QuestParams& params, const LayerShape& shape, int64_t n_ctx, DType cache_dtype) {
  const rules::FixedReads fixed = rules::fixed_reads(n_ctx, params.sinks, params.window);
  const int64_t budget = quest::page_budget(params.lookup, params.budget_tokens, n_ctx, params.sinks, params.window);
  if (budget <= 0 || budget >= fixed.middle()) return 0;  // no page scored: nothing fits, or everything does
  const int64_t pages = quest::page_range(fixed, params.page_size).count();
  return int64_t(shape.n_kv_heads) * pages * 2 * shape.head_dim * int64_t(dtype_size(cache_dtype));
}

MethodFactory quest_factory(const MethodSpec& spec, const ArtifactIdentity&) {
  const QuestParams params = quest_params(spec);
  return [params](const LayerShape& shape) { return std::make_unique<QuestAttention>(shape, params); };
}

}  // namespace saap
