// saap eval sweep: dense, oracle top-k, Loki (pre/post RoPE), StreamingLLM and H2O at equal lookup
// fractions on the evaluation text: perplexity under each method (every position attending through
// it) and attention metrics against dense. Writes <out>/<stem>.{json,csv} after every setting, so
// a long sweep leaves usable partial results.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "cli/commands.h"
#include "cli/validators.h"
#include "cli/method_options.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/eval/attention_eval.h"
#include "saap/eval/perplexity.h"
#include "saap/eval/result_files.h"
#include "saap/train/capture.h"

namespace saap::cli {

namespace {

struct Setting {
  std::string label;  // what the table shows: "loki-post(k_f=0.25,d_f=0.25)"
  std::string family;  // one curve per family in the plot
  double budget = 1.0;  // the nominal lookup fraction the setting was built for
  MethodSpec spec;
};

std::string fmt(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", x);
  return b;
}

}  // namespace

void register_eval_sweep(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = eval_command(app)->add_subcommand("sweep", "Grid of methods and budgets: perplexity and attention metrics");
  struct Opts {
    std::string model, text, out = "results", stem, loki_pre, loki_post;
    std::vector<std::string> methods = {"dense", "oracle", "streaming", "h2o", "loki"};
    std::vector<double> fractions = {0.125, 0.25, 0.5};
    bool loki_grid = false;
    int window_len = 1024, ppl_windows = 2, att_windows = 1, sinks = 4;
    AttentionEvalOptions att;
  };
  auto o = std::make_shared<Opts>();
  o->att.queries_per_window = 128;
  cmd->add_option("--model", o->model, kModelOptionHelp);
  cmd->add_option("--text", o->text, "Evaluation text (default: eval.txt in the cache)");
  cmd->add_option("--methods", o->methods, "Families: dense oracle streaming h2o loki quest");
  cmd->add_option("--fractions", o->fractions, "Lookup fractions (Loki: k_f = d_f = f unless --loki-grid)");
  cmd->add_flag("--loki-grid", o->loki_grid, "Loki over every (k_f, d_f) pair of --fractions");
  cmd->add_option("--loki-pre", o->loki_pre, "Loki artifact fitted on pre-RoPE keys");
  cmd->add_option("--loki-post", o->loki_post, "Loki artifact fitted on post-RoPE keys");
  cmd->add_option("--window-len", o->window_len, "Tokens per window")->check(whole_in_range(16, 1 << 20));
  cmd->add_option("--ppl-windows", o->ppl_windows, "Windows for perplexity")->check(whole_at_least(1));
  cmd->add_option("--att-windows", o->att_windows, "Windows for attention metrics (0: skip)")
      ->check(whole_at_least(0));
  cmd->add_option("--queries", o->att.queries_per_window, "Sampled query positions per attention window")
      ->check(whole_at_least(1));
  cmd->add_option("--top-k", o->att.top_k, "k of recall@k")->check(whole_at_least(1));
  cmd->add_option("--sinks", o->sinks, "StreamingLLM sinks")->check(whole_at_least(0));
  cmd->add_option("--out", o->out, "Folder for the result files");
  cmd->add_option("--stem", o->stem, "Result file stem (default quality_<date>)");
  cmd->callback([o, &global] {
    const std::string path = model_path(o->model);
    auto model = LlamaModel::load(path);
    const std::string text = o->text.empty() ? default_text_path("eval.txt") : o->text;
    const auto inputs = model_run_inputs(*model, path, text, {o->loki_pre, o->loki_post});
    const ArtifactIdentity id = model_artifact_identity(*model);
    const int64_t L = o->window_len;

    std::vector<Setting> grid;
    auto has = [&](const char* m) { return std::find(o->methods.begin(), o->methods.end(), m) != o->methods.end(); };
    if (has("dense")) grid.push_back({"dense", "dense", 1.0, MethodSpec{}});
    for (double f : o->fractions) {
      MethodSpec s;
      s.lookup = f;
      if (has("oracle")) {
        s.name = "oracle";
        grid.push_back({"oracle(lookup=" + fmt(f) + ")", "oracle", f, s});
      }
      if (has("h2o")) {
        s.name = "h2o";
        grid.push_back({"h2o(lookup=" + fmt(f) + ")", "h2o", f, s});
      }
      if (has("quest")) {
        MethodSpec qs = s;
        qs.name = "quest";
        grid.push_back({qs.describe(), "quest", f, qs});
      }
      if (has("streaming")) {
        MethodSpec st;
        st.name = "streaming";
        st.sinks = o->sinks;
        st.window = equal_budget_streaming_window(f, L, o->sinks);
        grid.push_back({st.describe(), "streaming", f, st});
      }
      if (has("loki"))
        for (const auto& [variant, artifact] : {std::pair{"pre", o->loki_pre}, std::pair{"post", o->loki_post}}) {
          if (artifact.empty()) continue;
          for (double d : o->loki_grid ? o->fractions : std::vector<double>{f}) {
            MethodSpec lk;
            lk.name = "loki";
            lk.k_f = f;
            lk.d_f = d;
            lk.artifact = artifact;
            grid.push_back({std::string("loki-") + variant + "(k_f=" + fmt(f) + ",d_f=" + fmt(d) + ")",
                            std::string("loki-") + variant + (o->loki_grid ? "(d_f=" + fmt(d) + ")" : ""), f, lk});
          }
        }
    }
    SAAP_CHECK_MSG(!grid.empty(), InvalidArgument, "the sweep grid is empty (check --methods and the Loki artifacts)");

    const auto windows = text_windows(model->tokenizer(), text, std::max(o->ppl_windows, o->att_windows), int(L));
    std::vector<int32_t> ppl_tokens;
    for (int w = 0; w < o->ppl_windows; ++w) ppl_tokens.insert(ppl_tokens.end(), windows[w].begin(), windows[w].end());
    const std::vector<std::vector<int32_t>> att_windows(windows.begin(), windows.begin() + o->att_windows);

    if (o->stem.empty()) o->stem = "quality_" + run_provenance()["date"].get<std::string>().substr(0, 10);
    nlohmann::json doc = {{"model", model->identity()},
                          {"text", text},
                          {"window_len", L},
                          {"ppl_windows", o->ppl_windows},
                          {"att_windows", o->att_windows},
                          {"queries_per_window", o->att.queries_per_window},
                          {"top_k", o->att.top_k},
                          {"settings", nlohmann::json::array()}};
    CsvTable table{{"label", "family", "budget", "lookup_fraction", "kv_fraction", "ppl", "ppl_delta", "recall",
                    "jaccard", "mass", "rel_error", "att_lookup_fraction", "ppl_seconds"},
                   {}};

    // The plain runner's perplexity (exact prefill, no method): the reference every delta uses,
    // and the check that `dense` through the harness reproduces it.
    PerplexityOptions plain;
    plain.window = L;
    plain.max_windows = o->ppl_windows;
    plain.mode = AttentionMode::DensePrefill;
    const PerplexityResult base = evaluate_perplexity(model, ppl_tokens, plain);
    doc["plain_perplexity"] = base.to_json();

    std::vector<MethodFactory> factories;
    for (const Setting& s : grid) factories.push_back(make_method_factory(s.spec, id));
    // One dense pass feeds every method's attention metrics (identical inputs for all).
    std::vector<AttentionEvalResult> att;
    if (!att_windows.empty()) att = evaluate_attention(model, factories, att_windows, o->att);

    for (size_t i = 0; i < grid.size(); ++i) {
      const Setting& s = grid[i];
      const auto t0 = std::chrono::steady_clock::now();
      PerplexityOptions po = plain;
      po.methods = factories[i];
      po.mode = AttentionMode::MethodEverywhere;
      const PerplexityResult ppl = evaluate_perplexity(model, ppl_tokens, po);
      nlohmann::json row = {{"label", s.label}, {"family", s.family}, {"budget", s.budget},
                            {"spec", s.spec.describe()}, {"artifact", s.spec.artifact}, {"perplexity", ppl.to_json()},
                            {"ppl_delta", ppl.perplexity - base.perplexity}};
      AttentionMetrics m;
      LookupStats att_lookup;
      if (!att.empty()) {
        m = att[i].overall();
        att_lookup = att[i].overall_lookup();
        row["attention"] = att[i].to_json();
        row["attention"].erase("layers");
        row["attention_layers"] = nlohmann::json::array();
        for (int l = 0; l < int(att[i].heads.size()); ++l) row["attention_layers"].push_back(att[i].layer(l).to_json());
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      row["ppl_seconds"] = seconds;
      doc["settings"].push_back(row);
      table.add({s.label, s.family, csv_field(s.budget), csv_field(ppl.stats.fraction()),
                 csv_field(ppl.stats.kv_fraction()), csv_field(ppl.perplexity),
                 csv_field(ppl.perplexity - base.perplexity), csv_field(m.mean_recall()), csv_field(m.mean_jaccard()),
                 csv_field(m.mean_mass()), csv_field(m.mean_rel_error()), csv_field(att_lookup.fraction()),
                 csv_field(seconds)});
      write_result_files(o->out, o->stem, doc, table, inputs);
      std::fprintf(stderr, "%-34s lookup %.4f ppl %.4f (%+.4f) recall %.4f mass %.4f err %.4f  %.0fs\n",
                   s.label.c_str(), ppl.stats.fraction(), ppl.perplexity, ppl.perplexity - base.perplexity,
                   m.mean_recall(), m.mean_mass(), m.mean_rel_error(), seconds);
    }
    emit(global, doc, [&] {
      std::printf("plain perplexity %.4f over %d x %lld tokens\n", base.perplexity, o->ppl_windows, (long long)L);
      std::printf("%-34s %8s %9s %9s %8s %8s %8s %9s\n", "setting", "lookup", "ppl", "delta", "recall", "jaccard",
                  "mass", "rel_err");
      for (const auto& r : table.rows)
        std::printf("%-34s %8.4f %9.4f %+9.4f %8.4f %8.4f %8.4f %9.4f\n", r[0].c_str(), std::stod(r[3]),
                    std::stod(r[5]), std::stod(r[6]), std::stod(r[7]), std::stod(r[8]), std::stod(r[9]),
                    std::stod(r[10]));
      std::printf("wrote %s/%s.{json,csv}\n", o->out.c_str(), o->stem.c_str());
    }, inputs);
  });
}

}  // namespace saap::cli
