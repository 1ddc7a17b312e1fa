// saap calibrate: capture keys and sampled queries on calibration text for the trainers.
#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "cli/method_options.h"
#include "cli/validators.h"
#include "saap/core/paths.h"
#include "saap/train/capture.h"

namespace saap::cli {

void register_calibrate(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = app.add_subcommand("calibrate", "Capture keys and queries on calibration text for training");
  struct Opts {
    std::string model, text, out;
    CaptureOptions capture;
  };
  auto opts = std::make_shared<Opts>();
  cmd->add_option("--model", opts->model, kModelOptionHelp);
  cmd->add_option("--text", opts->text, "Calibration text (default: calib.txt in the cache)");
  cmd->add_option("--windows", opts->capture.windows, "Windows of text")->check(whole_at_least(1));
  cmd->add_option("--window-len", opts->capture.window_len, "Tokens per window")->check(whole_in_range(2, 1 << 20));
  cmd->add_option("--queries", opts->capture.queries_per_window, "Queries sampled per window")
      ->check(whole_at_least(0));
  cmd->add_option("--seed", opts->capture.seed, "Seed of the query sample");
  cmd->add_option("--out", opts->out, "Output file (default: <cache>/calibration/<model>.safetensors)");
  cmd->callback([opts, &global] {
    const std::string path = model_path(opts->model);
    const std::string text = opts->text.empty() ? default_text_path("calib.txt") : opts->text;
    const auto start = std::chrono::steady_clock::now();
    auto model = LlamaModel::load(path);
    const CalibrationSet set = capture_calibration(model, text, opts->capture);
    const std::string out = opts->out.empty() ? default_calibration_path(*model) : opts->out;
    set.save(out);
    int64_t queries = 0;
    for (int l = 0; l < set.n_layers; ++l) queries += set.n_queries(l);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    nlohmann::json result = {{"out", out},           {"model", model->identity()}, {"text", text},
                             {"windows", set.windows}, {"window_len", set.window_len}, {"queries", queries},
                             {"seconds", seconds}};
    emit(global, result, [&] {
      std::printf("captured %d windows x %d tokens, %lld queries over %d layers in %.0f s -> %s\n", set.windows,
                  set.window_len, (long long)queries, set.n_layers, seconds, out.c_str());
    }, model_run_inputs(*model, path, text));
  });
}

}  // namespace saap::cli
