// saap eval saap-grid: attention metrics of Saap and symmetric k-means (and oracle top-k as the
// ceiling) over a grid of lookup fractions, in ONE pass of the dense model: every (method,
// fraction) replays the same recorded activations (evaluate_attention with many factories), so the
// comparison is on identical inputs and the dense forward is paid once. The fraction reported is
// the MEASURED one (kv_fraction: KV tokens read, sinks + window + partitions, over the prefix);
// router weights and centroid tables are index data that does not grow with the context and are
// reported apart (index_fraction at this context length).
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "cli/commands.h"
#include "cli/device.h"
#include "cli/validators.h"
#include "cli/method_options.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/core/selection_rules.h"
#include "saap/eval/attention_eval.h"
#include "saap/eval/result_files.h"
#include "saap/methods/saap.h"
#include "saap/train/capture.h"

namespace saap::cli {

namespace {

// "label=method:artifact" or "method:artifact" (oracle, quest, streaming and h2o take no artifact:
// "oracle:", "quest:"; loki reads its basis: "loki:loki.safetensors", k_f = the fraction, d_f = 0.25).
bool takes_no_artifact(const std::string& method) {
  return method == "oracle" || method == "quest" || method == "streaming" || method == "h2o";
}
MethodSpec parse_run(const std::string& run, std::string& label) {
  std::string body = run;
  const size_t eq = run.find('=');
  label = eq == std::string::npos ? "" : run.substr(0, eq);
  if (eq != std::string::npos) body = run.substr(eq + 1);
  const size_t colon = body.find(':');
  SAAP_CHECK_FMT(colon != std::string::npos, InvalidArgument,
                 "--run '%s' must read [label=]method:artifact (method saap, kmeans, partition-oracle, oracle, "
                 "quest, loki, streaming or h2o)",
                 run.c_str());
  MethodSpec spec;
  spec.name = body.substr(0, colon);
  spec.artifact = body.substr(colon + 1);
  SAAP_CHECK_FMT(spec.name == "saap" || spec.name == "kmeans" || spec.name == "partition-oracle" ||
                     spec.name == "loki" || takes_no_artifact(spec.name),
                 InvalidArgument,
                 "--run '%s': method '%s' must be saap, kmeans, partition-oracle, oracle, quest, loki, streaming or h2o",
                 run.c_str(),
                 spec.name.c_str());
  if (label.empty()) label = spec.name;
  return spec;
}

}  // namespace

void register_eval_saap_grid(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = eval_command(app)->add_subcommand(
      "saap-grid", "Saap vs symmetric k-means (vs oracle) attention metrics over lookup fractions, one model pass");
  struct Opts {
    std::string model, text, out = "results", stem = "saap_attention";
    std::vector<std::string> runs;
    std::vector<double> fractions = {0.02, 0.05, 0.1, 0.2};
    std::vector<int64_t> budget_tokens;  // fixed budgets, beside the fractions
    int windows = 2, window_len = 2048, sinks = 4, window = 16;
    AttentionEvalOptions eval;
    std::string device = "cpu";
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, kModelOptionHelp);
  cmd->add_option("--text", o->text, "Evaluation text (default: eval.txt in the cache)");
  cmd->add_option("--run", o->runs,
                  "[label=]method:artifact, method saap|kmeans|partition-oracle|oracle|quest|loki|streaming|h2o "
                  "(repeatable; streaming's window is set to read the fraction at the mean sampled query)")
      ->required();
  cmd->add_option("--fractions", o->fractions, "Lookup fractions (KV tokens read over the prefix)");
  cmd->add_option("--budget-tokens", o->budget_tokens,
                  "Fixed budgets in K/V tokens per query, rows labelled <label>@<tokens> (not for oracle, loki, h2o; "
                  "streaming: sinks + window = the budget)")
      ->check(whole_at_least(1));
  cmd->add_option("--sinks", o->sinks, "First positions always read")->check(whole_at_least(0));
  cmd->add_option("--window", o->window, "Most recent positions always read")->check(whole_at_least(0));
  add_attention_eval_options(cmd, o->windows, o->window_len, o->eval);
  cmd->add_option("--out", o->out, "Folder for the JSON and CSV result files");
  cmd->add_option("--stem", o->stem, "Result file name stem");
  add_device_option(cmd, o->device);
  cmd->callback([o, &global] {
    refuse_cuda(o->device, "eval saap-grid", kAttentionReplayOnCpu);
    const std::string path = model_path(o->model);
    auto model = LlamaModel::load(path);
    const std::string text = o->text.empty() ? default_text_path("eval.txt") : o->text;
    const ArtifactIdentity id = model_artifact_identity(*model);
    struct Row {
      std::string label;
      MethodSpec spec;
      nlohmann::json artifact;
      int64_t budget_tokens;  // the row's fixed budget (0: a fraction); streaming's is its sinks + window
    };
    // Streaming reads a fixed sinks + window: at a fraction f, the window that reads f of the mean
    // sampled prefix (the measured kv_fraction says what it read).
    double mean_prefix = 0;
    size_t sampled = 0;
    for (int w = 0; w < o->windows; ++w)
      for (int32_t p : attention_query_sample(o->window_len, o->eval, size_t(w))) {
        mean_prefix += p + 1;
        ++sampled;
      }
    mean_prefix /= double(sampled);
    auto streaming_window = [&](int64_t tokens) { return int(std::max<int64_t>(tokens - o->sinks, 1)); };
    std::vector<Row> rows;
    std::vector<MethodFactory> factories;
    for (const std::string& run : o->runs) {
      std::string label;
      const MethodSpec base = parse_run(run, label);
      nlohmann::json art = nlohmann::json::object();
      if (base.name == "loki") {
        art = {{"path", base.artifact}};
      } else if (!takes_no_artifact(base.name)) {
        ArtifactIdentity want = id;
        want.method = base.name == "saap" ? "saap" : "kmeans";  // the others read any artifact's partition
        const PartitionArtifact a = PartitionArtifact::load(base.artifact, want);
        art = {{"path", base.artifact},  {"partitions", a.partitions}, {"hidden", a.hidden},
               {"rope", a.pre_rope ? "pre" : "post"}, {"spherical", a.spherical}, {"train", a.train}};
        art["train"].erase("layers");  // per-layer statistics stay in the artifact
      }
      for (double f : o->fractions) {
        MethodSpec spec = base;
        spec.lookup = f;
        spec.k_f = f;  // Loki's budget (the other methods ignore k_f)
        spec.sinks = o->sinks;
        spec.window = base.name == "streaming"
                          ? streaming_window(rules::tokens_for_fraction(f, int64_t(std::llround(mean_prefix))))
                          : o->window;
        rows.push_back({label, spec, art, 0});
        factories.push_back(make_method_factory(spec, id));
      }
      for (int64_t tokens : o->budget_tokens) {
        if (base.name == "oracle" || base.name == "loki" || base.name == "h2o") continue;  // a fraction only
        MethodSpec spec = base;
        spec.sinks = o->sinks;
        if (base.name == "streaming") {
          spec.window = streaming_window(tokens);
        } else {
          spec.budget_tokens = tokens;
          spec.window = o->window;
        }
        rows.push_back({label + "@" + std::to_string(tokens), spec, art, tokens});
        factories.push_back(make_method_factory(spec, id));
      }
    }
    std::vector<std::string> artifacts;
    for (const Row& r : rows) artifacts.push_back(r.spec.artifact);
    const auto inputs = model_run_inputs(*model, path, text, artifacts);
    const auto windows = text_windows(model->tokenizer(), text, o->windows, o->window_len);
    const std::vector<AttentionEvalResult> res = evaluate_attention(model, factories, windows, o->eval);

    nlohmann::json doc = {{"model", model->identity()}, {"text", text},          {"windows", o->windows},
                          {"window_len", o->window_len}, {"sinks", o->sinks},     {"window", o->window},
                          {"queries_per_window", o->eval.queries_per_window},    {"top_k", o->eval.top_k},
                          {"seed", o->eval.seed},        {"first_query", o->eval.first_query},
                          {"replay", o->eval.replay == ReplayQueries::sampled_positions ? "sampled_positions"
                                                                                          : "every_position"},
                          {"mean_sampled_prefix", mean_prefix}, {"runs", nlohmann::json::array()}};
    CsvTable table{{"label", "method", "lookup", "budget_tokens", "kv_fraction", "index_fraction", "mass", "recall", "jaccard",
                    "rel_error", "samples"},
                   {}};
    for (size_t i = 0; i < rows.size(); ++i) {
      const AttentionMetrics m = res[i].overall();
      const LookupStats s = res[i].overall_lookup();
      const double index_fraction = s.fraction() - s.kv_fraction();
      nlohmann::json r = {{"label", rows[i].label},         {"method", rows[i].spec.describe()},
                          {"lookup", rows[i].spec.lookup},  {"budget_tokens", rows[i].budget_tokens},
                          {"kv_fraction", s.kv_fraction()},
                          {"index_fraction", index_fraction}, {"artifact", rows[i].artifact},
                          {"attention", res[i].to_json()}};
      doc["runs"].push_back(r);
      table.add({rows[i].label, rows[i].spec.name, csv_field(rows[i].spec.lookup),
                 std::to_string(rows[i].budget_tokens), csv_field(s.kv_fraction()),
                 csv_field(index_fraction), csv_field(m.mean_mass()), csv_field(m.mean_recall()),
                 csv_field(m.mean_jaccard()), csv_field(m.mean_rel_error()), std::to_string(m.samples)});
    }
    write_result_files(o->out, o->stem, doc, table, inputs);
    emit(global, doc, [&] {
      std::printf("%-16s %7s %9s %9s %8s %8s %8s %9s\n", "label", "lookup", "kv_frac", "idx_frac", "mass", "recall",
                  "jaccard", "rel_err");
      for (size_t i = 0; i < rows.size(); ++i) {
        const AttentionMetrics m = res[i].overall();
        const LookupStats s = res[i].overall_lookup();
        std::printf("%-16s %7.3f %9.4f %9.4f %8.4f %8.4f %8.4f %9.4f\n", rows[i].label.c_str(), rows[i].spec.lookup,
                    s.kv_fraction(), s.fraction() - s.kv_fraction(), m.mean_mass(), m.mean_recall(),
                    m.mean_jaccard(), m.mean_rel_error());
      }
    }, inputs);
  });
}

}  // namespace saap::cli
