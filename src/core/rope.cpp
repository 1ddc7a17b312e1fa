#include "saap/core/rope.h"

#include <cmath>

#include "saap/core/error.h"

namespace saap {

Rope::Rope(const RopeConfig& config) : config_(config) {
  if (config_.n_rot == 0) config_.n_rot = config_.head_dim;
  SAAP_CHECK_FMT(config_.head_dim > 0, InvalidArgument, "rope head_dim = %d must be positive", config_.head_dim);
  SAAP_CHECK_FMT(config_.n_rot > 0 && config_.n_rot <= config_.head_dim && config_.n_rot % 2 == 0, InvalidArgument,
                 "rope n_rot = %d must be even and in (0, head_dim = %d]", config_.n_rot, config_.head_dim);
  SAAP_CHECK_FMT(config_.base > 0 && std::isfinite(config_.base), InvalidArgument, "rope base = %g must be positive",
                 config_.base);
  const int pairs = config_.n_rot / 2;
  SAAP_CHECK_FMT(config_.freq_factors.empty() || int(config_.freq_factors.size()) == pairs, InvalidArgument,
                 "rope freq_factors has %zu entries, expected n_rot/2 = %d", config_.freq_factors.size(), pairs);
  inv_freq_.resize(pairs);
  for (int i = 0; i < pairs; ++i) {
    double f = std::pow(double(config_.base), -2.0 * i / config_.n_rot);
    if (!config_.freq_factors.empty()) f /= config_.freq_factors[i];
    inv_freq_[i] = f;
  }
}

void Rope::rotate(float* x, int n_heads, int64_t pos, float direction) const {
  const int pairs = config_.n_rot / 2;
  const bool neox = config_.style == RopeStyle::NeoX;
  const double p = double(pos) * config_.freq_scale;
  for (int i = 0; i < pairs; ++i) {
    const double theta = p * inv_freq_[i];
    const float c = float(std::cos(theta)), s = direction * float(std::sin(theta));
    const int a = neox ? i : 2 * i;
    const int b = neox ? i + pairs : 2 * i + 1;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + int64_t(h) * config_.head_dim;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

}  // namespace saap
