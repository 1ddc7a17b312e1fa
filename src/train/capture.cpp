#include "saap/train/capture.h"

#include <algorithm>
#include <cmath>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/core/progress.h"

namespace saap {

std::string default_calibration_path(const LlamaModel& model) {
  std::string name = model.config().name.empty() ? "model" : model.config().name;
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.') c = '_';
  const std::filesystem::path dir = std::filesystem::path(cache_dir()) / "calibration";
  std::filesystem::create_directories(dir);
  return (dir / (name + ".safetensors")).string();
}

std::vector<int32_t> sample_query_positions(int window_len, int count, uint64_t seed) {
  SAAP_CHECK_FMT(window_len >= 2, InvalidArgument, "window_len = %d must be at least 2", window_len);
  SAAP_CHECK_FMT(count >= 0 && count < window_len, InvalidArgument, "queries per window = %d must be in [0, %d]",
                 count, window_len - 1);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::set<int32_t> picked;
  // Density proportional to position: the square root of a uniform variate. Rejection of repeats
  // terminates because count <= window_len - 1 and every position >= 1 has positive probability.
  while (int(picked.size()) < count) {
    const int32_t pos = int32_t(1 + std::sqrt(uniform(rng)) * (window_len - 1));
    picked.insert(std::min(pos, int32_t(window_len - 1)));
  }
  return {picked.begin(), picked.end()};
}

std::vector<std::vector<int32_t>> text_windows(const Tokenizer& tokenizer, const std::string& text_path, int windows,
                                               int window_len) {
  SAAP_CHECK_FMT(windows > 0, InvalidArgument, "windows = %d must be positive", windows);
  SAAP_CHECK_FMT(window_len > 1, InvalidArgument, "window_len = %d must be at least 2", window_len);
  std::ifstream in(text_path, std::ios::binary);
  SAAP_CHECK_FMT(in.good(), NotFound, "text file %s cannot be opened", text_path.c_str());
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::vector<int32_t>> out;
  const size_t stride = text.size() / size_t(windows);
  for (int w = 0; w < windows; ++w) {
    // Start on a line boundary, so no window begins inside a UTF-8 sequence or a word.
    size_t begin = size_t(w) * stride;
    if (begin > 0) {
      const size_t nl = text.find('\n', begin);
      begin = nl == std::string::npos ? text.size() : nl + 1;
    }
    // About 4 bytes per token in English; grow the span until it yields enough tokens.
    std::vector<int32_t> tokens;
    for (size_t span = size_t(window_len) * 6;; span *= 2) {
      tokens = tokenizer.encode(text.substr(begin, span), /*add_bos=*/true);
      if (int64_t(tokens.size()) >= window_len || begin + span >= text.size()) break;
    }
    SAAP_CHECK_FMT(int64_t(tokens.size()) >= window_len, BadFile,
                   "%s: window %d of %d (from byte %zu) holds only %zu tokens, fewer than window_len = %d; "
                   "use fewer or shorter windows", text_path.c_str(), w, windows, begin, tokens.size(), window_len);
    tokens.resize(size_t(window_len));
    out.push_back(std::move(tokens));
  }
  return out;
}

CalibrationSet capture_calibration(std::shared_ptr<const LlamaModel> model, const std::string& text_path,
                                   const CaptureOptions& options) {
  const LlamaConfig& cfg = model->config();
  SAAP_CHECK_FMT(options.window_len >= 2 && options.window_len <= cfg.context_length, InvalidArgument,
                 "window_len = %d must be in [2, %lld] (the model's context length)", options.window_len,
                 (long long)cfg.context_length);
  const int W = options.windows, L = options.window_len, H = cfg.n_heads, KV = cfg.n_kv_heads, D = cfg.head_dim;
  SAAP_CHECK_FMT(W > 0, InvalidArgument, "windows = %d must be positive", W);

  CalibrationSet set;
  set.model_identity = model->identity();
  set.n_layers = cfg.n_layers;
  set.n_heads = H;
  set.n_kv_heads = KV;
  set.head_dim = D;
  set.windows = W;
  set.window_len = L;
  set.rope = cfg.rope;
  set.layers.resize(size_t(cfg.n_layers));
  const size_t key_floats = size_t(W) * L * KV * D;
  for (auto& layer : set.layers) layer.keys_pre.resize(key_floats);

  const auto windows = text_windows(model->tokenizer(), text_path, W, L);
  LlamaSession session(model, L);
  ProgressBar bar("calibrate", int64_t(W) * L, options.progress);
  std::vector<float> last_logits(size_t(cfg.vocab_size));
  for (int w = 0; w < W; ++w) {
    const std::vector<int32_t> positions = sample_query_positions(L, options.queries_per_window,
                                                                  options.seed * 1000003u + uint64_t(w));
    session.reset();
    session.set_observer([&](const LayerActivations& a) {
      CalibrationLayer& layer = set.layers[size_t(a.layer)];
      std::memcpy(layer.keys_pre.data() + (size_t(w) * L + size_t(a.pos0)) * KV * D, a.k_pre,
                  size_t(a.n) * KV * D * sizeof(float));
      for (int32_t p : positions) {
        if (p < a.pos0 || p >= a.pos0 + a.n) continue;
        const float* q = a.q_pre + (p - a.pos0) * int64_t(H) * D;
        layer.queries_pre.insert(layer.queries_pre.end(), q, q + int64_t(H) * D);
        layer.query_window.push_back(w);
        layer.query_pos.push_back(p);
      }
    });
    // Chunks keep the progress bar moving; the runner's prefill is causal across calls.
    const int64_t chunk = 256;
    for (int64_t t = 0; t < L; t += chunk) {
      const int64_t n = std::min<int64_t>(chunk, L - t);
      session.forward(windows[size_t(w)].data() + t, n, last_logits.data());
      bar.update(int64_t(w) * L + t + n);
    }
  }
  session.set_observer(nullptr);
  bar.finish();
  return set;
}

}  // namespace saap
