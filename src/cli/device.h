// --device cpu|cuda: where the model runs. The CLI only chooses the backend (saap/eval/backend.h);
// what runs on it is the library's.
#pragma once
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <memory>
#include <string>

#include "saap/eval/backend.h"
#include "saap/methods/registry.h"

namespace saap::cli {

inline void add_device_option(CLI::App* cmd, std::string& device) {
  cmd->add_option("--device", device,
                  "Where the model runs: cpu (the fp32 runner) or cuda (the bf16 GPU runner, every method: "
                  "dense, oracle, streaming, h2o, saap, kmeans, partition-oracle, loki, quest; saap info shows "
                  "whether this build and machine have it)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
}

struct BackendRequest {
  std::string device = "cpu";
  std::string model_path;
  MethodSpec spec;              // the method every query goes through (dense: exact)
  int max_batch = 1;            // cuda: sequences run together
  int64_t max_context = 0;      // cuda: cached positions per sequence (0: the model's context)
  int64_t chunk = 512;          // cpu: tokens per forward call of a perplexity window
  bool progress = true;         // the CPU model's loading bar
};

// Loads the model on the device with the method. Throws Unsupported, with the reason, for cuda on a
// build without CUDA, without a usable GPU, or with a method the GPU runner does not run; nothing
// has been written when it throws.
std::unique_ptr<EvalBackend> open_backend(const BackendRequest& request);

// The suffix of a result file's stem: "" on the CPU (the names the README cites), "_cuda" on the
// GPU, so that a GPU run does not overwrite the CPU's file beside it.
inline std::string device_suffix(const EvalBackend& backend) {
  return backend.device() == "cpu" ? "" : "_" + backend.device();
}

// For subcommands that cannot use the GPU runner: Unsupported, naming the subcommand and why,
// when device is "cuda".
void refuse_cuda(const std::string& device, const std::string& subcommand, const std::string& why);

// Why eval attention and eval saap-grid stay on the CPU.
inline constexpr const char* kAttentionReplayOnCpu =
    "the attention metrics replay every layer's recorded queries, keys and values through the CPU methods "
    "against exact attention; the GPU runner keeps its activations on the device, and the replay, not the "
    "forward pass, is what these commands spend their time on (eval ppl and eval passkey run on the GPU)";

// What `saap info` shows of CUDA: fills result["cuda_build"], ["gpu"], ["cuda_usable"],
// ["cuda_reason"] and returns the line.
std::string cuda_status(nlohmann::json& result);

}  // namespace saap::cli
