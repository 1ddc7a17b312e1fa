// The prompt's prefill, with a progress bar: on two cores an 8k-token prompt takes minutes.
#pragma once
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <vector>

#include "saap/core/progress.h"
#include "saap/model/llama.h"

namespace saap::cli {

// Runs `tokens` through the session in one forward pass (logits of the last token). When `show`
// and stderr is a terminal, a prefill that runs longer than a second draws a bar of tokens done,
// tok/s and the time left, as the other long phases do; in --json mode or into a log it stays
// silent, so stderr holds only what matters there.
inline void prefill(LlamaSession& session, const std::vector<int32_t>& tokens, float* logits, bool show) {
  const int64_t n = int64_t(tokens.size());
  ProgressBar bar("prefill", n, show && ::isatty(2), /*show_after_s=*/1.0);
  const auto start = std::chrono::steady_clock::now();
  // Every layer runs over all the tokens, so the share of layers done is the share of the work.
  session.set_progress([&](int layers_done, int layers) {
    const int64_t done = n * layers_done / layers;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    char rate[32];
    std::snprintf(rate, sizeof rate, "%.0f tok/s", seconds > 0 ? double(done) / seconds : 0.0);
    bar.update(done, rate);
  });
  try {
    session.forward(tokens.data(), n, logits);
  } catch (...) {
    session.set_progress(nullptr);
    throw;
  }
  session.set_progress(nullptr);
  bar.finish();
}

}  // namespace saap::cli
