// A progress bar on stderr for long work (loading, calibration, training, evaluation). On a
// terminal it redraws one line; otherwise (CI logs) it prints only the final line.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace saap {

class ProgressBar {
 public:
  // show_after_s: draw nothing until the work has run this long, and stay silent if it ends
  // sooner (a phase that is only sometimes long, such as a prefill).
  ProgressBar(std::string label, int64_t total, bool enabled = true, double show_after_s = 0);
  ~ProgressBar();
  void update(int64_t done, const std::string& suffix = "");
  void finish(const std::string& suffix = "");

 private:
  std::string label_;
  int64_t total_;
  bool enabled_, tty_, finished_ = false, drawn_ = false;
  double show_after_s_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace saap
