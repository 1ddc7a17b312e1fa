// Each subcommand lives in its own file and registers itself on the app through one of these.
#pragma once
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "saap/provenance/provenance.h"

namespace saap::cli {

// The help of every --model option (saap::model_path resolves the value).
inline constexpr const char* kModelOptionHelp =
    "GGUF model: smollm2 (default, the bundled SmolLM2-135M-Instruct), gemma3 (Gemma-3-270M base), or a path";

// Options every subcommand shares.
struct GlobalOptions {
  bool json = false;  // print a machine-readable JSON object instead of text
  int threads = 0;    // 0: OpenMP's default
};

// Prints `result` as JSON when --json was given, with the run's provenance (date, machine, commit,
// command, `inputs`: saap/eval/result_files.h) added, so that a redirected --json output is a
// results file too; otherwise calls the text printer.
void emit(const GlobalOptions& global, const nlohmann::json& result, const std::function<void()>& print_text,
          const std::vector<InputIdentity>& inputs = {});

void register_info(CLI::App& app, const GlobalOptions& global);
void register_demo(CLI::App& app, const GlobalOptions& global);
void register_calibrate(CLI::App& app, const GlobalOptions& global);
void register_eval_attention(CLI::App& app, const GlobalOptions& global);
void register_eval_passkey(CLI::App& app, const GlobalOptions& global);
void register_eval_niah(CLI::App& app, const GlobalOptions& global);
void register_eval_sweep(CLI::App& app, const GlobalOptions& global);
void register_generate(CLI::App& app, const GlobalOptions& global);
void register_eval_ppl(CLI::App& app, const GlobalOptions& global);
void register_eval_saap_grid(CLI::App& app, const GlobalOptions& global);
void register_bench(CLI::App& app, const GlobalOptions& global);

// The `eval` parent subcommand, created by whichever eval_* file registers first.
inline CLI::App* eval_command(CLI::App& app) {
  auto found = app.get_subcommands([](CLI::App* sub) { return sub->get_name() == "eval"; });
  if (!found.empty()) return found.front();
  auto* eval = app.add_subcommand("eval", "Judge an attention method: perplexity, attention metrics, passkey");
  eval->require_subcommand(1);
  return eval;
}

// The `train` parent subcommand, created by whichever train_* file registers first.
inline CLI::App* train_command(CLI::App& app) {
  auto found = app.get_subcommands([](CLI::App* sub) { return sub->get_name() == "train"; });
  if (!found.empty()) return found.front();
  auto* train = app.add_subcommand("train", "Train a method's index from a calibration set (see `saap calibrate`)");
  train->require_subcommand(1);
  return train;
}
void register_train_saap(CLI::App& app, const GlobalOptions& global);
void register_train_loki(CLI::App& app, const GlobalOptions& global);

// A subcommand this build lacks: listed, and refused with Unsupported (exit 7) and the reason.
void register_unavailable(CLI::App& app, const std::string& name, const std::string& description,
                          const std::string& reason);
// Why `train` and `demo` are missing from a build without FAISS (src/cli/unavailable.cpp).
inline constexpr const char* kNoTrainingReason =
    "built without FAISS; train on a machine with FAISS: artifacts are portable";

}  // namespace saap::cli
