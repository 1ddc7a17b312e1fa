// saap eval ppl: perplexity of the model under an attention method over a text file, in
// non-overlapping fresh windows (see saap/eval/perplexity.h for the windowing and BOS rule).
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/validators.h"
#include "cli/device.h"
#include "cli/method_options.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/eval/perplexity.h"
#include "saap/eval/result_files.h"
#include "saap/model/gguf.h"
#include "saap/model/tokenizer.h"

namespace saap::cli {

namespace {

// --dump-windows: the windows' token ids as JSON Lines (a first line {"provenance": ...}), from the
// tokenizer alone: no model loads, nothing runs. Returns how many windows it wrote.
int64_t dump_windows(const std::string& model, const std::string& text_path, const PerplexityOptions& options,
                     const std::string& out_path) {
  const std::string path = model_path(model);
  const GGUFFile file = GGUFFile::open(path);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const int64_t context = file.get_int(file.get_string("general.architecture") + ".context_length");
  SAAP_CHECK_FMT(options.window <= context, InvalidArgument, "--window-len %lld is over the model's context length %lld",
                 (long long)options.window, (long long)context);
  std::ifstream in(text_path, std::ios::binary);
  SAAP_CHECK_FMT(in.good(), NotFound, "text file %s cannot be opened", text_path.c_str());
  std::stringstream text;
  text << in.rdbuf();
  const std::vector<int32_t> tokens = tok.encode(text.str());
  std::ofstream out(out_path, std::ios::binary);
  SAAP_CHECK_FMT(out.good(), NotFound, "--dump-windows %s cannot be opened for writing", out_path.c_str());
  out << nlohmann::json{{"provenance", run_provenance({input_file("model", path), input_file("text", text_path)})},
                        {"text_tokens", tokens.size()}}.dump()
      << '\n';
  return write_perplexity_windows(tok, tokens, options, out);
}

}  // namespace

void register_eval_ppl(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = eval_command(app)->add_subcommand("ppl", "Perplexity over a text in non-overlapping windows");
  struct Opts {
    std::string model, text, out = "results";
    bool dense_prefill = false;
    PerplexityOptions ppl;
    MethodSpec spec;
    std::string device = "cpu";
    int batch = 12;
    std::string dump_windows;
  };
  auto o = std::make_shared<Opts>();
  o->ppl.max_windows = 0;
  cmd->add_option("--model", o->model, kModelOptionHelp);
  cmd->add_option("--text", o->text, "Text file (default: eval.txt in the cache, the Debian handbook)");
  cmd->add_option("--window-len", o->ppl.window, "Tokens per window")->check(whole_in_range(2, 1 << 30));
  cmd->add_option("--first-window", o->ppl.first_window, "Windows to skip from the start (shards an evaluation)")
      ->check(whole_at_least(0));
  cmd->add_option("--max-windows", o->ppl.max_windows, "Windows to evaluate at most (0: the whole text)")
      ->check(whole_at_least(0));
  cmd->add_option("--chunk", o->ppl.chunk, "Tokens per forward call")->check(whole_in_range(2, 1 << 20));
  cmd->add_flag("--dense-prefill", o->dense_prefill,
                "Run windows as exact prefill chunks (only lone decode steps use the method); by default every "
                "position attends through the method. For --method dense both give the same numbers, and the "
                "faster exact prefill is used.");
  cmd->add_option("--out", o->out, "Folder for the JSON and CSV result files");
  cmd->add_option("--dump-windows", o->dump_windows,
                  "Run nothing: write the windows' token ids (BOS + text) as JSON Lines to this file "
                  "(scripts/niah_transformers.py --ppl-saap-windows reads it)");
  add_method_options(cmd, o->spec);
  add_device_option(cmd, o->device);
  cmd->add_option("--batch", o->batch, "cuda: windows run together as one batched prefill")
      ->check(whole_at_least(1));
  cmd->callback([o, &global] {
    if (!o->dump_windows.empty()) {
      const std::string text = o->text.empty() ? default_text_path("eval.txt") : o->text;
      const int64_t n = dump_windows(o->model, text, o->ppl, o->dump_windows);
      if (global.json)
        std::printf("%s\n", nlohmann::json{{"windows", n}, {"path", o->dump_windows}}.dump().c_str());
      else
        std::printf("wrote %lld windows of %lld tokens to %s\n", (long long)n, (long long)o->ppl.window,
                    o->dump_windows.c_str());
      return;
    }
    const std::string path = model_path(o->model);
    BackendRequest request;
    request.device = o->device;
    request.model_path = path;
    request.spec = o->spec;
    request.progress = !global.json;
    request.max_batch = o->batch;
    request.max_context = o->ppl.window;
    request.chunk = o->ppl.chunk;
    auto backend = open_backend(request);
    const std::string text = o->text.empty() ? default_text_path("eval.txt") : o->text;
    const auto inputs = model_run_inputs(backend->identity(), path, text, {o->spec.artifact});
    PerplexityOptions opts = o->ppl;
    opts.mode = o->dense_prefill || o->spec.name == "dense" ? AttentionMode::DensePrefill
                                                           : AttentionMode::MethodEverywhere;
    opts.progress = true;
    const PerplexityResult r = evaluate_perplexity_file(*backend, text, opts);
    nlohmann::json result = r.to_json();
    result["model"] = backend->identity();
    result.update(backend->device_json());
    result["text"] = text;
    result["window_len"] = opts.window;
    result["first_window"] = opts.first_window;
    result["method"] = o->spec.describe();
    result["attention_mode"] = opts.mode == AttentionMode::DensePrefill ? "dense-prefill" : "method-everywhere";
    result["artifact"] = o->spec.artifact;
    CsvTable table{{"method", "window_len", "windows", "scored_tokens", "perplexity", "mean_nll", "tokens_per_second",
                    "lookup_fraction", "device"},
                   {}};
    table.add({o->spec.describe(), std::to_string(opts.window), std::to_string(r.windows),
               std::to_string(r.scored_tokens), csv_field(r.perplexity), csv_field(r.mean_nll),
               csv_field(r.tokens_per_second), r.stats.queries ? csv_field(r.stats.fraction()) : std::string(),
               backend->device()});
    const auto paths =
        write_result_files(o->out, "ppl_" + o->spec.name + "_w" + std::to_string(opts.window) + device_suffix(*backend),
                           result, table, inputs);
    emit(global, result, [&] {
      const std::string lookup = r.stats.queries ? format("%.4f", r.stats.fraction()) : "n/a (exact prefill)";
      std::printf("%s on %s: perplexity %.4f (mean NLL %.4f nats) over %lld windows of %lld tokens (%lld scored), "
                  "%.1f tok/s, lookup %s\n",
                  o->spec.describe().c_str(), backend->device().c_str(), r.perplexity, r.mean_nll, (long long)r.windows,
                  (long long)opts.window,
                  (long long)r.scored_tokens, r.tokens_per_second, lookup.c_str());
      std::printf("wrote %s, %s\n", paths[0].c_str(), paths[1].c_str());
    }, inputs);
  });
}

}  // namespace saap::cli
