// A progress bar on stderr for long work (loading, calibration, training, evaluation). On a
// terminal it redraws one line; otherwise (CI logs) it prints only the final line.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace saap {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, bool enabled = true);
  ~ProgressBar();
  void update(int64_t done, const std::string& suffix = "");
  void finish(const std::string& suffix = "");

 private:
  std::string label_;
  int64_t total_;
  bool enabled_, tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace saap
