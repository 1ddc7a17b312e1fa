// The main job on the bundled default model. Until the model runner lands, it checks the exact
// attention against a float64 computation on random inputs and reports where the model is.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cli/commands.h"
#include "saap/core/paths.h"
#include "saap/kernels/cpu/attention.h"

namespace saap::cli {

void register_demo(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = app.add_subcommand("demo", "Run the main job on the bundled default model");
  cmd->callback([&global] {
    const std::string model = default_model_path();
    const int n_q = 9, n_kv = 3, d = 64;
    const int64_t n = 4096;
    KVCache cache({1, n_kv, d, n, DType::F32});
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    std::vector<float> k(size_t(n) * n_kv * d), v(k.size()), q(size_t(n_q) * d), out(q.size());
    for (auto* buf : {&k, &v, &q})
      for (auto& x : *buf) x = normal(rng);
    cache.append(0, k.data(), v.data(), n);
    const float scale = 1.0f / std::sqrt(float(d));
    attention_decode(cache.layer(0), q.data(), n_q, n, scale, out.data());
    double max_err = 0;
    for (int h = 0; h < n_q; ++h) {
      const int kvh = h / (n_q / n_kv);
      std::vector<double> s(n);
      double mx = -1e300, sum = 0;
      for (int64_t t = 0; t < n; ++t) {
        double dot = 0;
        for (int i = 0; i < d; ++i) dot += double(q[h * d + i]) * k[(t * n_kv + kvh) * d + i];
        s[t] = dot * scale;
        mx = std::max(mx, s[t]);
      }
      for (auto& x : s) sum += (x = std::exp(x - mx));
      for (int i = 0; i < d; ++i) {
        double o = 0;
        for (int64_t t = 0; t < n; ++t) o += s[t] * v[(t * n_kv + kvh) * d + i];
        max_err = std::max(max_err, std::abs(o / sum - out[h * d + i]));
      }
    }
    nlohmann::json result = {{"model", model}, {"attention_check_max_abs_error", max_err}, {"ok", max_err < 1e-4}};
    emit(global, result, [&] {
      std::printf("model: %s\nexact attention vs float64 (4096 tokens, 9q/3kv heads): max abs error %.2e %s\n",
                  model.c_str(), max_err, max_err < 1e-4 ? "ok" : "FAIL");
    });
    if (max_err >= 1e-4) throw std::runtime_error("attention self-check failed");
  });
}

}  // namespace saap::cli
