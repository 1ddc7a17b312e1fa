#include "saap/train/loki_trainer.h"

#include <cmath>

#include "saap/core/error.h"
#include "saap/core/progress.h"
#include "saap/core/rope.h"
#include "saap/train/pca.h"

namespace saap {

LokiArtifact train_loki(const CalibrationSet& set, bool pre_rope, bool progress) {
  const int L = set.n_layers, H = set.n_kv_heads, D = set.head_dim;
  SAAP_CHECK_FMT(L > 0 && H > 0 && D > 0, InvalidArgument, "calibration set has n_layers = %d, n_kv_heads = %d, head_dim = %d",
                 L, H, D);
  SAAP_CHECK_FMT(int(set.layers.size()) == L, InvalidArgument, "calibration set holds %zu layers for n_layers = %d",
                 set.layers.size(), L);
  const int64_t tokens = int64_t(set.windows) * set.window_len;
  SAAP_CHECK_FMT(tokens >= 2, InvalidArgument, "calibration set has %d windows of %d tokens: too few keys for PCA",
                 set.windows, set.window_len);

  LokiArtifact a;
  a.identity = set.identity();
  a.identity.method = "loki";
  a.pre_rope = pre_rope;
  a.components.resize(size_t(L) * H * D * D);
  a.variances.resize(size_t(L) * H * D);
  a.explained_ratio.resize(size_t(L) * H * D);

  const Rope rope(set.rope);
  std::vector<float> keys;
  ProgressBar bar(std::string("loki PCA (") + (pre_rope ? "pre" : "post") + "-RoPE keys)", int64_t(L) * H, progress);
  double explained[3] = {0, 0, 0};
  const int ranks[3] = {std::max(1, D / 8), std::max(1, D / 4), std::max(1, D / 2)};
  for (int l = 0; l < L; ++l) {
    const auto& layer = set.layers[size_t(l)];
    SAAP_CHECK_FMT(int64_t(layer.keys_pre.size()) == tokens * H * D, InvalidArgument,
                   "layer %d: keys_pre holds %zu floats, expected %lld", l, layer.keys_pre.size(),
                   (long long)(tokens * H * D));
    const float* src = layer.keys_pre.data();
    int64_t stride = int64_t(H) * D;
    if (!pre_rope) {
      // All heads of a position share its rotation: apply RoPE to each [H][D] row once.
      keys.assign(layer.keys_pre.begin(), layer.keys_pre.end());
      for (int64_t t = 0; t < tokens; ++t) rope.apply(keys.data() + t * stride, H, t % set.window_len);
      src = keys.data();
    }
    for (int h = 0; h < H; ++h) {
      const Pca pca = fit_pca(src + int64_t(h) * D, tokens, D, stride);
      const size_t at = size_t(l) * H + h;
      std::copy(pca.components.begin(), pca.components.end(), a.components.begin() + at * D * D);
      std::copy(pca.variances.begin(), pca.variances.end(), a.variances.begin() + at * D);
      std::copy(pca.explained_ratio.begin(), pca.explained_ratio.end(), a.explained_ratio.begin() + at * D);
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < ranks[i]; ++j) explained[i] += pca.explained_ratio[size_t(j)];
      bar.update(int64_t(l) * H + h + 1);
    }
  }
  bar.finish();
  nlohmann::json ev = nlohmann::json::object();
  const char* names[3] = {"d_f=0.125", "d_f=0.25", "d_f=0.5"};
  for (int i = 0; i < 3; ++i) ev[names[i]] = explained[i] / (double(L) * H);
  a.train = {{"keys", tokens},
             {"windows", set.windows},
             {"window_len", set.window_len},
             {"calibration_model", set.model_identity},
             {"mean_explained_variance", ev}};
  return a;
}

}  // namespace saap
