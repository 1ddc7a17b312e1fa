#include "saap/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "saap/core/error.h"

namespace saap {

Sampler::Sampler(const SamplerConfig& config) : config_(config), rng_(config.seed) {
  SAAP_CHECK_FMT(std::isfinite(config.temperature) && config.temperature >= 0, InvalidArgument,
                 "temperature = %g must be >= 0", config.temperature);
  SAAP_CHECK_FMT(config.top_k >= 0, InvalidArgument, "top_k = %d must be >= 0", config.top_k);
  SAAP_CHECK_FMT(config.top_p > 0 && config.top_p <= 1, InvalidArgument, "top_p = %g must be in (0, 1]",
                 config.top_p);
}

std::vector<std::pair<int32_t, double>> Sampler::candidates(const float* logits, int32_t vocab_size) const {
  SAAP_CHECK_FMT(logits != nullptr && vocab_size > 0, InvalidArgument, "sampling from %d logits", vocab_size);
  for (int32_t i = 0; i < vocab_size; ++i)
    SAAP_CHECK_FMT(std::isfinite(logits[i]), NonFinite, "logit of token %d is %g", i, logits[i]);
  if (config_.temperature == 0) {
    const int32_t best = int32_t(std::max_element(logits, logits + vocab_size) - logits);
    return {{best, 1.0}};
  }
  // Order by logit; only the part that survives top-k needs sorting.
  std::vector<int32_t> order(static_cast<size_t>(vocab_size));
  std::iota(order.begin(), order.end(), 0);
  const int32_t keep = config_.top_k > 0 ? std::min(config_.top_k, vocab_size) : vocab_size;
  auto by_logit = [logits](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
  order.resize(size_t(keep));

  std::vector<std::pair<int32_t, double>> out;
  out.reserve(order.size());
  const double top = logits[order[0]];
  double total = 0;
  for (int32_t id : order) {
    const double p = std::exp((double(logits[id]) - top) / config_.temperature);
    out.push_back({id, p});
    total += p;
  }
  // Nucleus: the shortest prefix whose mass reaches top_p (at least one token).
  double mass = 0;
  size_t cut = out.size();
  for (size_t i = 0; i < out.size(); ++i) {
    mass += out[i].second / total;
    if (mass >= config_.top_p) {
      cut = i + 1;
      break;
    }
  }
  out.resize(cut);
  double kept = 0;
  for (const auto& c : out) kept += c.second;
  for (auto& c : out) c.second /= kept;
  return out;
}

int32_t Sampler::sample(const float* logits, int32_t vocab_size) {
  const auto c = candidates(logits, vocab_size);
  if (c.size() == 1) return c[0].first;
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  double acc = 0;
  for (const auto& [id, p] : c) {
    acc += p;
    if (u < acc) return id;
  }
  return c.back().first;  // u within rounding of 1
}

}  // namespace saap
