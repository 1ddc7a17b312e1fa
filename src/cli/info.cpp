#include <omp.h>

#include <cstdio>

#include "cli/commands.h"
#include "saap/core/paths.h"

namespace saap::cli {

void register_info(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = app.add_subcommand("info", "Show the default model, texts, build and threads");
  cmd->callback([&global] {
    nlohmann::json result;
    result["model"] = default_model_path();
    result["cache_dir"] = cache_dir();
    for (const char* text : {"eval.txt", "calib.txt"})
      result["texts"][text] = file_exists(cache_dir() + "/text/" + text) ? cache_dir() + "/text/" + text : "missing";
    result["threads"] = omp_get_max_threads();
#ifdef SAAP_HAVE_CUDA
    result["cuda"] = true;
#else
    result["cuda"] = false;
#endif
    emit(global, result, [&] {
      std::printf("model:     %s\n", result["model"].get<std::string>().c_str());
      std::printf("cache:     %s\n", result["cache_dir"].get<std::string>().c_str());
      for (auto& [name, path] : result["texts"].items())
        std::printf("text %-9s %s\n", (name + ":").c_str(), path.get<std::string>().c_str());
      std::printf("threads:   %d\ncuda:      %s\n", result["threads"].get<int>(), result["cuda"].get<bool>() ? "yes" : "no");
    });
  });
}

}  // namespace saap::cli
