// Each subcommand lives in its own file and registers itself on the app through one of these.
#pragma once
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>

namespace saap::cli {

// Options every subcommand shares.
struct GlobalOptions {
  bool json = false;  // print a machine-readable JSON object instead of text
  int threads = 0;    // 0: OpenMP's default
};

// Prints `result` as JSON when --json was given; otherwise calls the text printer.
void emit(const GlobalOptions& global, const nlohmann::json& result, const std::function<void()>& print_text);

void register_info(CLI::App& app, const GlobalOptions& global);
void register_demo(CLI::App& app, const GlobalOptions& global);

}  // namespace saap::cli
