// Options shared by the eval subcommands: the attention method and its budget, and the text
// windows and query sample of an attention evaluation.
#pragma once
#include <CLI/CLI.hpp>
#include <algorithm>
#include <string>
#include <vector>

#include "saap/eval/attention_eval.h"
#include "saap/methods/registry.h"
#include "saap/model/llama.h"
#include "saap/provenance/provenance.h"

namespace saap::cli {

inline void add_method_options(CLI::App* cmd, MethodSpec& spec) {
  cmd->add_option("--method", spec.name, "Attention method: dense|oracle|streaming|h2o|loki|saap|kmeans|partition-oracle|quest");
  cmd->add_option("--lookup", spec.lookup, "Budget: fraction of the prefix read (oracle, h2o, saap, kmeans)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--sinks", spec.sinks, "First positions always read")->check(CLI::NonNegativeNumber);
  cmd->add_option("--window", spec.window, "Most recent positions always read")->check(CLI::NonNegativeNumber);
  cmd->add_option("--k-f", spec.k_f, "Loki: fraction of the prefix attended")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--d-f", spec.d_f, "Loki: fraction of dimensions used for ranking")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--budget-tokens", spec.budget_tokens, "quest: a fixed budget of tokens per query instead of --lookup")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--page-size", spec.page_size, "quest: positions per page")->check(CLI::PositiveNumber);
  cmd->add_option("--artifact", spec.artifact, "Trained index file (loki, saap, kmeans)");
}

// The text windows and the query sample of an attention evaluation (eval attention, eval saap-grid).
inline void add_attention_eval_options(CLI::App* cmd, int& windows, int& window_len, AttentionEvalOptions& eval) {
  cmd->add_option("--windows", windows, "Windows of text")->check(CLI::PositiveNumber);
  cmd->add_option("--window-len", window_len, "Tokens per window")->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--queries", eval.queries_per_window, "Sampled query positions per window")->check(CLI::PositiveNumber);
  cmd->add_option("--top-k", eval.top_k, "k of recall@k")->check(CLI::PositiveNumber);
  cmd->add_option("--seed", eval.seed, "Seed of the query sample");
}

// What artifacts are checked against: the model they will run on (the factory sets the method).
inline ArtifactIdentity model_artifact_identity(const LlamaModel& model) {
  ArtifactIdentity id;
  id.model_identity = model.identity();
  id.n_layers = model.config().n_layers;
  id.n_heads = model.config().n_heads;
  id.n_kv_heads = model.config().n_kv_heads;
  id.head_dim = model.config().head_dim;
  return id;
}

// The inputs of a run on the model, for its results' provenance: the model by its identity (a hash
// of its header), the text and each artifact (empty ones skipped, repeats once) by their sha256.
inline std::vector<InputIdentity> model_run_inputs(const LlamaModel& model, const std::string& model_path,
                                                   const std::string& text,
                                                   const std::vector<std::string>& artifacts = {}) {
  std::vector<InputIdentity> inputs = {input_with_identity("model", model_path, model.identity())};
  if (!text.empty()) inputs.push_back(input_file("text", text));
  for (size_t i = 0; i < artifacts.size(); ++i)
    if (!artifacts[i].empty() && std::find(artifacts.begin(), artifacts.begin() + long(i), artifacts[i]) ==
                                     artifacts.begin() + long(i))
      inputs.push_back(input_file("artifact", artifacts[i]));
  return inputs;
}

}  // namespace saap::cli
