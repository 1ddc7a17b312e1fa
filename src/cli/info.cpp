// saap info: where the model and texts are, what the build can use. Exits NotFound (4) when the
// model is missing, so a script can check a machine with it.
#include <omp.h>

#include <cstdio>

#include "cli/commands.h"
#include "cli/device.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"

namespace saap::cli {

void register_info(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = app.add_subcommand("info", "Show the default model, texts, build and threads");
  cmd->callback([&global] {
    nlohmann::json result;
    std::string missing_model;
    try {
      result["model"] = default_model_path();
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::NotFound) throw;
      result["model"] = nullptr;
      missing_model = e.what();
    }
    try {
      result["models"]["gemma3"] = gemma3_model_path();
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::NotFound) throw;
      result["models"]["gemma3"] = nullptr;  // optional: only --model gemma3 needs it
    }
    result["cache_dir"] = cache_dir();
    for (const char* text : {"eval.txt", "calib.txt"}) {
      const std::string path = cache_dir() + "/text/" + text;
      result["texts"][text] = file_exists(path) ? nlohmann::json(path) : nlohmann::json(nullptr);
    }
    result["threads"] = omp_get_max_threads();
    result["cores"] = omp_get_num_procs();
    const std::string cuda = cuda_status(result);
#ifdef SAAP_HAVE_TRAINING
    result["training"] = true;
#else
    result["training"] = false;
#endif
    emit(global, result, [&] {
      std::printf("model:     %s\n", result["model"].is_null() ? "MISSING" : result["model"].get<std::string>().c_str());
      std::printf("gemma3:    %s\n", result["models"]["gemma3"].is_null()
                                         ? "MISSING (run scripts/setup.sh)"
                                         : result["models"]["gemma3"].get<std::string>().c_str());
      std::printf("cache:     %s\n", result["cache_dir"].get<std::string>().c_str());
      for (auto& [name, path] : result["texts"].items())
        std::printf("text %-9s %s\n", (name + ":").c_str(),
                    path.is_null() ? "MISSING (run scripts/setup.sh)" : path.get<std::string>().c_str());
      std::printf("threads:   %d of %d cores\n", result["threads"].get<int>(), result["cores"].get<int>());
      std::printf("cuda:      %s\n", cuda.c_str());
      std::printf("training:  %s\n", result["training"].get<bool>() ? "yes (FAISS and BLAS)" : kNoTrainingReason);
    });
    SAAP_CHECK_MSG(missing_model.empty(), NotFound, missing_model);
  });
}

}  // namespace saap::cli
