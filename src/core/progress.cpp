#include "saap/core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace saap {

ProgressBar::ProgressBar(std::string label, int64_t total, bool enabled, double show_after_s)
    : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), enabled_(enabled), tty_(::isatty(2)),
      show_after_s_(show_after_s), start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

ProgressBar::~ProgressBar() {
  if (!finished_) finish();
}

void ProgressBar::update(int64_t done, const std::string& suffix) {
  if (!enabled_ || !tty_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;  // redraw at most 10/s
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (elapsed < show_after_s_) return;
  last_draw_ = now;
  drawn_ = true;
  const double frac = std::min(1.0, double(done) / double(total_));
  const int width = 30, filled = int(frac * width);
  const double eta = frac > 0 ? elapsed * (1 - frac) / frac : 0;
  std::fprintf(stderr, "\r%s [%.*s%*s] %3d%% %lld/%lld %.0fs eta %.0fs %s\x1b[K", label_.c_str(), filled,
               "##############################", width - filled, "", int(frac * 100), (long long)done,
               (long long)total_, elapsed, eta, suffix.c_str());
  std::fflush(stderr);
}

void ProgressBar::finish(const std::string& suffix) {
  if (finished_) return;
  finished_ = true;
  if (!enabled_ || (show_after_s_ > 0 && !drawn_)) return;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::fprintf(stderr, "%s%s done: %lld in %.1fs %s\n", tty_ ? "\r\x1b[K" : "", label_.c_str(), (long long)total_,
               elapsed, suffix.c_str());
}

}  // namespace saap
