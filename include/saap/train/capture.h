// Capturing calibration activations: the model runs densely over windows of calibration text and
// an observer keeps every layer's pre-RoPE keys and a seeded sample of pre-RoPE queries.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "saap/model/llama.h"
#include "saap/train/calibration.h"

namespace saap {

struct CaptureOptions {
  int windows = 16;
  int window_len = 2048;
  int queries_per_window = 64;  // sampled per window, the same positions in every layer
  uint64_t seed = 1;
  bool progress = true;
};

// Windows are taken at evenly spaced offsets through the text, so they cover different documents.
// Queries are drawn with density proportional to position (later positions have longer prefixes,
// which is where sparse attention matters). Throws InvalidArgument for sizes the model cannot run
// and BadFile when the text is too short for the windows asked.
CalibrationSet capture_calibration(std::shared_ptr<const LlamaModel> model, const std::string& text_path,
                                   const CaptureOptions& options);

// <cache_dir()>/calibration/<model name>.safetensors; creates the folder.
std::string default_calibration_path(const LlamaModel& model);

// Seeded positions in [1, window_len) with density proportional to position, distinct and sorted.
std::vector<int32_t> sample_query_positions(int window_len, int count, uint64_t seed);

// W windows of exactly window_len tokens from evenly spaced offsets of a text file; shared by the
// capture and the evaluation harness.
std::vector<std::vector<int32_t>> text_windows(const Tokenizer& tokenizer, const std::string& text_path, int windows,
                                               int window_len);

}  // namespace saap
