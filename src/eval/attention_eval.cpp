#include "saap/eval/attention_eval.h"

#include <algorithm>
#include <exception>

#include "saap/core/error.h"
#include "saap/core/progress.h"
#include "saap/train/capture.h"

namespace saap {

AttentionMetrics AttentionEvalResult::layer(int l) const {
  AttentionMetrics m;
  for (const auto& h : heads.at(size_t(l))) m += h;
  return m;
}

AttentionMetrics AttentionEvalResult::overall() const {
  AttentionMetrics m;
  for (size_t l = 0; l < heads.size(); ++l) m += layer(int(l));
  return m;
}

LookupStats AttentionEvalResult::overall_lookup() const {
  LookupStats s;
  for (const auto& l : lookup) s += l;
  return s;
}

nlohmann::json AttentionEvalResult::to_json() const {
  nlohmann::json j = overall().to_json();
  const LookupStats s = overall_lookup();
  j["lookup_fraction"] = s.fraction();
  j["kv_fraction"] = s.kv_fraction();
  j["layers"] = nlohmann::json::array();
  for (size_t l = 0; l < heads.size(); ++l) {
    nlohmann::json lj = layer(int(l)).to_json();
    lj["lookup_fraction"] = lookup[l].fraction();
    lj["heads"] = nlohmann::json::array();
    for (const auto& h : heads[l]) lj["heads"].push_back(h.to_json());
    j["layers"].push_back(lj);
  }
  return j;
}

std::vector<int32_t> attention_query_sample(int64_t n, const AttentionEvalOptions& options, size_t window) {
  SAAP_CHECK_FMT(options.first_query >= 0 && options.first_query < n, InvalidArgument,
                 "first_query = %lld must be in [0, %lld] for a window of %lld tokens", (long long)options.first_query,
                 (long long)(n - 1), (long long)n);
  // sample_query_positions draws from [1, len) with density proportional to position; shifted by
  // first_query - 1 (when positive) it covers [first_query, n) the same way.
  const int64_t shift = std::max<int64_t>(options.first_query - 1, 0);
  const int64_t len = n - shift;
  std::vector<int32_t> sample = sample_query_positions(
      int(len), std::min<int>(options.queries_per_window, int(len) - 1), options.seed * 1000003u + window);
  for (int32_t& p : sample) p += int32_t(shift);
  return sample;
}

AttentionEvalResult evaluate_attention(std::shared_ptr<const LlamaModel> model, const MethodFactory& factory,
                                       const std::vector<std::vector<int32_t>>& windows,
                                       const AttentionEvalOptions& options) {
  return evaluate_attention(model, std::vector<MethodFactory>{factory}, windows, options).front();
}

std::vector<AttentionEvalResult> evaluate_attention(std::shared_ptr<const LlamaModel> model,
                                                    const std::vector<MethodFactory>& factories,
                                                    const std::vector<std::vector<int32_t>>& windows,
                                                    const AttentionEvalOptions& options) {
  const LlamaConfig& cfg = model->config();
  const int H = cfg.n_heads, KV = cfg.n_kv_heads, D = cfg.head_dim;
  SAAP_CHECK_MSG(!windows.empty(), InvalidArgument, "no evaluation windows");
  SAAP_CHECK_MSG(!factories.empty(), InvalidArgument, "no methods to evaluate");
  int64_t capacity = 0;
  for (const auto& w : windows) capacity = std::max<int64_t>(capacity, int64_t(w.size()));
  SAAP_CHECK_FMT(capacity >= 2 && capacity <= cfg.context_length, InvalidArgument,
                 "window length %lld must be in [2, %lld]", (long long)capacity, (long long)cfg.context_length);

  std::vector<AttentionEvalResult> results(factories.size());
  for (auto& result : results) {
    result.heads.assign(size_t(cfg.n_layers), std::vector<AttentionMetrics>(size_t(H)));
    result.lookup.assign(size_t(cfg.n_layers), LookupStats{});
  }
  LlamaSession session(model, capacity);
  ProgressBar bar("eval attention", int64_t(windows.size()) * cfg.n_layers, options.progress);
  std::vector<float> logits(size_t(cfg.vocab_size));

  // Per layer, the window's activations gather here until the layer has seen every position.
  struct Buffers {
    std::vector<float> q, q_pre, k, k_pre, v;
  };
  std::vector<Buffers> buf(size_t(cfg.n_layers));
  int64_t layers_done = 0;
  for (size_t w = 0; w < windows.size(); ++w) {
    const int64_t n = int64_t(windows[w].size());
    const auto sample = attention_query_sample(n, options, w);
    session.reset();
    session.set_observer([&](const LayerActivations& a) {
      // A sparse method serves the global layers only; a local layer (Gemma-3's 5 of 6) attends
      // exactly to its window, whatever the method, so it is not replayed and its rows stay empty
      // (0 samples: the overall means are the global layers').
      if (!cfg.is_global(a.layer)) {
        if (a.pos0 + a.n >= n) bar.update(++layers_done);
        return;
      }
      Buffers& b = buf[size_t(a.layer)];
      auto keep = [&](std::vector<float>& dst, const float* src, int heads) {
        dst.resize(size_t(n) * heads * D);
        std::copy(src, src + a.n * heads * D, dst.begin() + a.pos0 * heads * D);
      };
      keep(b.q, a.q, H);
      keep(b.q_pre, a.q_pre, H);
      keep(b.k, a.k, KV);
      keep(b.k_pre, a.k_pre, KV);
      keep(b.v, a.v, KV);
      if (a.pos0 + a.n < n) return;
      const LayerShape shape{a.layer, H, KV, D, cfg.context_length};
      // The methods replay independently (each its own method, cache copy and result), one per
      // thread; an exception cannot leave an OpenMP region, so the first one is kept and rethrown.
      std::vector<std::exception_ptr> failed(factories.size());
#pragma omp parallel for schedule(dynamic, 1)
      for (int64_t m = 0; m < int64_t(factories.size()); ++m) {
        try {
          replay_layer(factories[size_t(m)], shape, n, b.q.data(), b.q_pre.data(), b.k.data(), b.k_pre.data(),
                       b.v.data(), sample, options.top_k, results[size_t(m)].heads[size_t(a.layer)],
                       results[size_t(m)].lookup[size_t(a.layer)], options.replay);
        } catch (...) {
          failed[size_t(m)] = std::current_exception();
        }
      }
      for (const std::exception_ptr& e : failed)
        if (e) std::rethrow_exception(e);
      b = Buffers{};
      bar.update(++layers_done);
    });
    session.forward(windows[w].data(), n, logits.data());
  }
  session.set_observer(nullptr);
  bar.finish();
  return results;
}

}  // namespace saap
