// saap eval attention: recall, softmax mass, output error and lookup fraction of a method per
// layer/head against dense attention, on windows of the evaluation text.
#include <cstdio>

#include "cli/commands.h"
#include "cli/device.h"
#include "cli/method_options.h"
#include "saap/core/paths.h"
#include "saap/eval/attention_eval.h"
#include "saap/eval/result_files.h"
#include "saap/train/capture.h"

namespace saap::cli {

void register_eval_attention(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = eval_command(app)->add_subcommand("attention", "Attention metrics of a method against dense");
  struct Opts {
    std::string model, text, out = "results";
    int windows = 2, window_len = 1024;
    AttentionEvalOptions eval;
    std::string device = "cpu";
    MethodSpec spec;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, kModelOptionHelp);
  cmd->add_option("--text", o->text, "Evaluation text (default: eval.txt in the cache)");
  add_attention_eval_options(cmd, o->windows, o->window_len, o->eval);
  cmd->add_option("--out", o->out, "Folder for the JSON and CSV result files");
  add_method_options(cmd, o->spec);
  add_device_option(cmd, o->device);
  cmd->callback([o, &global] {
    refuse_cuda(o->device, "eval attention", kAttentionReplayOnCpu);
    const std::string path = model_path(o->model);
    auto model = LlamaModel::load(path);
    const std::string text = o->text.empty() ? default_text_path("eval.txt") : o->text;
    const auto inputs = model_run_inputs(*model, path, text, {o->spec.artifact});
    const MethodFactory factory = make_method_factory(o->spec, model_artifact_identity(*model));
    const auto windows = text_windows(model->tokenizer(), text, o->windows, o->window_len);
    const AttentionEvalResult r = evaluate_attention(model, factory, windows, o->eval);
    nlohmann::json doc = {{"method", o->spec.describe()}, {"artifact", o->spec.artifact}, {"model", model->identity()},
                          {"text", text},                {"windows", o->windows},        {"window_len", o->window_len},
                          {"top_k", o->eval.top_k},      {"attention", r.to_json()}};
    CsvTable table{{"method", "layer", "head", "samples", "recall", "jaccard", "mass", "rel_error", "lookup_fraction"},
                   {}};
    for (int l = 0; l < int(r.heads.size()); ++l)
      for (int h = 0; h < int(r.heads[size_t(l)].size()); ++h) {
        const AttentionMetrics& m = r.heads[size_t(l)][size_t(h)];
        table.add({o->spec.describe(), std::to_string(l), std::to_string(h), std::to_string(m.samples),
                   csv_field(m.mean_recall()), csv_field(m.mean_jaccard()), csv_field(m.mean_mass()),
                   csv_field(m.mean_rel_error()), csv_field(r.lookup[size_t(l)].fraction())});
      }
    std::string stem = "attention_" + o->spec.name;
    const auto paths = write_result_files(o->out, stem, doc, table, inputs);
    emit(global, doc, [&] {
      const AttentionMetrics m = r.overall();
      std::printf("%s on %d x %d tokens: recall@%d %.4f  jaccard %.4f  mass %.4f  rel_error %.4f  lookup %.4f\n",
                  o->spec.describe().c_str(), o->windows, o->window_len, o->eval.top_k, m.mean_recall(),
                  m.mean_jaccard(), m.mean_mass(), m.mean_rel_error(), r.overall_lookup().fraction());
      std::printf("%-6s %8s %8s %8s %9s %8s\n", "layer", "recall", "jaccard", "mass", "rel_err", "lookup");
      for (int l = 0; l < int(r.heads.size()); ++l) {
        const AttentionMetrics ml = r.layer(l);
        std::printf("%-6d %8.4f %8.4f %8.4f %9.4f %8.4f\n", l, ml.mean_recall(), ml.mean_jaccard(), ml.mean_mass(),
                    ml.mean_rel_error(), r.lookup[size_t(l)].fraction());
      }
      std::printf("wrote %s, %s\n", paths[0].c_str(), paths[1].c_str());
    }, inputs);
  });
}

}  // namespace saap::cli
