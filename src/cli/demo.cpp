// The main job on the bundled default model, in a few minutes on two cores: a short chat answer
// with dense attention and with Loki (prefill exact, decode sparse), then perplexity and attention
// quality of dense, oracle top-k, Loki, StreamingLLM, H2O, Saap and its symmetric k-means baseline
// at one lookup budget on a window of the evaluation text. Loki and Saap need trained indexes: the
// first run captures a short calibration set and trains them (a small Saap: C = 64 partitions for
// the demo's short window), cached under <cache>/demo/.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/method_options.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/eval/attention_eval.h"
#include "saap/eval/perplexity.h"
#include "saap/methods/loki.h"
#include "saap/model/sampler.h"
#include "saap/train/capture.h"
#include "saap/train/loki_trainer.h"
#include "saap/train/saap_trainer.h"

namespace saap::cli {

namespace {

// Greedy chat answer; prefill exact, then every step through `factory` (null: dense).
std::string chat(std::shared_ptr<const LlamaModel> model, const MethodFactory& factory, const std::string& question,
                 int max_tokens, LookupStats* stats) {
  const Tokenizer& tok = model->tokenizer();
  const std::vector<int32_t> prompt = tok.encode(tok.apply_chat_template({{"user", question}}, true), true, true);
  LlamaSession session(model, int64_t(prompt.size()) + max_tokens, factory, AttentionMode::DensePrefill);
  std::vector<float> logits(static_cast<size_t>(model->config().vocab_size));
  session.forward(prompt.data(), int64_t(prompt.size()), logits.data());
  Sampler greedy(SamplerConfig{});
  std::vector<int32_t> out;
  for (int i = 0; i < max_tokens; ++i) {
    const int32_t next = greedy.sample(logits.data(), model->config().vocab_size);
    if (tok.is_end_of_generation(next)) break;
    out.push_back(next);
    if (i + 1 < max_tokens) session.forward(&next, 1, logits.data());
  }
  if (stats) *stats = session.stats();
  return tok.decode(out);
}

// Demo sizes: Saap's sinks and window, the same in training (labels) and at decode.
constexpr int kDemoSinks = 4, kDemoWindow = 16;

bool cached_artifact_ok(const std::string& path, const ArtifactIdentity& id, bool saap) {
  if (!file_exists(path)) return false;
  try {
    if (saap)
      PartitionArtifact::load(path, id);
    else
      LokiArtifact::load(path, id);
    return true;
  } catch (const Error& e) {
    std::fprintf(stderr, "demo: retraining the cached %s (%s)\n", path.c_str(), e.what());
    return false;
  }
}

struct DemoArtifacts {
  std::string loki, saap;
};

// The cached demo indexes, trained on first use from one short capture of the calibration text.
DemoArtifacts demo_artifacts(std::shared_ptr<const LlamaModel> model, double budget, bool progress) {
  const std::filesystem::path dir = std::filesystem::path(cache_dir()) / "demo";
  std::filesystem::create_directories(dir);
  // Pre-RoPE for both: on SmolLM2 the sweeps measured it better for Loki at k_f = d_f = 0.25 and
  // 0.5 (results/quality_2026-11-23_*.csv: ppl +10.7 vs +13.2 and +1.0 vs +1.8) and it is the
  // recorded choice for Saap (results/saap_attention*.csv).
  const DemoArtifacts paths{(dir / "loki-pre.safetensors").string(), (dir / "saap-c64-pre.safetensors").string()};
  ArtifactIdentity id = model_artifact_identity(*model);
  id.method = "loki";
  const bool have_loki = cached_artifact_ok(paths.loki, id, false);
  id.method = "saap";
  const bool have_saap = cached_artifact_ok(paths.saap, id, true);
  if (have_loki && have_saap) return paths;
  CaptureOptions co;
  co.windows = 4;
  co.window_len = 1024;
  co.queries_per_window = 160;
  co.progress = progress;
  const CalibrationSet set = capture_calibration(model, default_text_path("calib.txt"), co);
  if (!have_loki) train_loki(set, /*pre_rope=*/true, progress).save(paths.loki);
  if (!have_saap) {
    SaapTrainOptions so;
    so.partitions = 64;
    so.kmeans_iters = 10;
    so.classifier.hidden = 64;
    so.classifier.epochs = 20;
    so.classifier.patience = 3;
    so.sinks = kDemoSinks;
    so.window = kDemoWindow;
    so.min_prefix = 128;
    so.stat_lookup = budget;
    so.progress = progress;
    train_saap(set, so).save(paths.saap);
  }
  return paths;
}

}  // namespace

void register_demo(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = app.add_subcommand("demo", "Run the main job on the bundled default model");
  struct Opts {
    std::string question = "Explain in two sentences why the sky is blue.";
    int max_tokens = 48, window = 512;
    double budget = 0.25;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--question", o->question, "Chat prompt");
  cmd->add_option("--max-tokens", o->max_tokens, "Tokens generated per answer")->check(CLI::PositiveNumber);
  cmd->add_option("--window", o->window, "Tokens of evaluation text compared")->check(CLI::Range(16, 8192));
  cmd->add_option("--budget", o->budget, "Lookup fraction of the sparse methods")->check(CLI::Range(0.01, 1.0));
  cmd->callback([o, &global] {
    const bool progress = !global.json;
    auto model = LlamaModel::load(default_model_path(), progress);
    const ArtifactIdentity id = model_artifact_identity(*model);
    const DemoArtifacts artifacts = demo_artifacts(model, o->budget, progress);
    const std::string& loki_path = artifacts.loki;

    MethodSpec loki;
    loki.name = "loki";
    loki.k_f = o->budget;
    loki.d_f = o->budget;
    loki.artifact = loki_path;
    const MethodFactory loki_factory = make_method_factory(loki, id);
    LookupStats loki_chat_stats;
    const std::string dense_answer = chat(model, nullptr, o->question, o->max_tokens, nullptr);
    const std::string loki_answer = chat(model, loki_factory, o->question, o->max_tokens, &loki_chat_stats);

    // One budget for every sparse method; StreamingLLM's window gives the same bytes over the
    // window (see eval_sweep.cpp).
    std::vector<MethodSpec> specs(5);
    specs[0].name = "dense";
    specs[1].name = "oracle";
    specs[1].lookup = o->budget;
    specs[2] = loki;
    specs[3].name = "streaming";
    specs[3].sinks = 4;
    specs[3].window = std::max(0, int(std::lround(o->window * (1.0 - std::sqrt(1.0 - o->budget)))) - 4);
    specs[4].name = "h2o";
    specs[4].lookup = o->budget;
    // Saap and its baseline on the same partition, when the budget leaves room beside the sinks
    // and the window (the factories refuse a budget the cache cannot meet).
    if (o->budget * o->window > kDemoSinks + kDemoWindow)
      for (const char* name : {"saap", "kmeans"}) {
        MethodSpec p;
        p.name = name;
        p.lookup = o->budget;
        p.sinks = kDemoSinks;
        p.window = kDemoWindow;
        p.artifact = artifacts.saap;
        specs.push_back(p);
      }
    else
      std::fprintf(stderr, "demo: budget %g of %d tokens cannot hold Saap's sinks %d + window %d; Saap rows skipped\n",
                   o->budget, o->window, kDemoSinks, kDemoWindow);

    const auto windows = text_windows(model->tokenizer(), default_text_path("eval.txt"), 1, o->window);
    PerplexityOptions po;
    po.window = o->window;
    po.max_windows = 1;
    po.progress = false;
    po.mode = AttentionMode::DensePrefill;
    const double plain = evaluate_perplexity(model, windows[0], po).perplexity;
    AttentionEvalOptions ao;
    ao.queries_per_window = 32;
    ao.progress = false;
    nlohmann::json rows = nlohmann::json::array();
    for (const MethodSpec& s : specs) {
      const auto t0 = std::chrono::steady_clock::now();
      po.methods = make_method_factory(s, id);
      po.mode = AttentionMode::MethodEverywhere;
      const PerplexityResult ppl = evaluate_perplexity(model, windows[0], po);
      const AttentionEvalResult att = evaluate_attention(model, po.methods, windows, ao);
      rows.push_back({{"method", s.describe()},
                      {"kv_fraction", ppl.stats.kv_fraction()},
                      {"index_fraction", ppl.stats.fraction() - ppl.stats.kv_fraction()},
                      {"perplexity", ppl.perplexity},
                      {"ppl_delta", ppl.perplexity - plain},
                      {"mass", att.overall().mean_mass()},
                      {"recall", att.overall().mean_recall()},
                      {"rel_error", att.overall().mean_rel_error()},
                      {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}});
      if (progress) std::fprintf(stderr, "demo: %s done\n", s.describe().c_str());
    }
    const nlohmann::json result = {{"model", model->identity()},
                                   {"question", o->question},
                                   {"answer_dense", dense_answer},
                                   {"answer_loki", loki_answer},
                                   {"loki_artifact", loki_path},
                                   {"saap_artifact", artifacts.saap},
                                   {"loki_decode_lookup_fraction", loki_chat_stats.fraction()},
                                   {"window", o->window},
                                   {"plain_perplexity", plain},
                                   {"methods", rows}};
    emit(global, result, [&] {
      std::printf("model: %s\n\nQ: %s\n", model->identity().c_str(), o->question.c_str());
      std::printf("dense: %s\n", dense_answer.c_str());
      std::printf("%s (decode reads %.3f of the cache): %s\n\n", loki.describe().c_str(), loki_chat_stats.fraction(),
                  loki_answer.c_str());
      std::printf("%d tokens of eval.txt, every position attending through the method:\n", o->window);
      // kv: K/V rows read over dense's; index: what the method reads to decide (Loki's low-rank
      // keys, Saap's router weights, centroids), which for Saap and k-means does not grow with the
      // context and dominates at this short window.
      std::printf("%-38s %7s %7s %9s %9s %8s %8s %9s\n", "method", "kv", "index", "ppl", "delta", "mass", "recall",
                  "rel_err");
      for (const auto& r : rows)
        std::printf("%-38s %7.4f %7.4f %9.4f %+9.4f %8.4f %8.4f %9.4f\n", r["method"].get<std::string>().c_str(),
                    r["kv_fraction"].get<double>(), r["index_fraction"].get<double>(), r["perplexity"].get<double>(),
                    r["ppl_delta"].get<double>(), r["mass"].get<double>(), r["recall"].get<double>(),
                    r["rel_error"].get<double>());
    });
  });
}

}  // namespace saap::cli
