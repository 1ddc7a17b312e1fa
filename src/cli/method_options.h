// Options shared by the eval subcommands: the attention method and its budget, and the text
// windows and query sample of an attention evaluation.
#pragma once
#include <CLI/CLI.hpp>
#include <algorithm>
#include <string>
#include <vector>

#include "cli/validators.h"
#include "saap/eval/attention_eval.h"
#include "saap/methods/registry.h"
#include "saap/model/llama.h"
#include "saap/provenance/provenance.h"

namespace saap::cli {

// The method options. Which apply to which method, and what values a budget takes, is the
// library's (registry.h): once the command line is parsed, an option given to a method it does not
// apply to is refused, naming both, and a fraction outside (0, 1] is refused in the library's words.
inline void add_method_options(CLI::App* cmd, MethodSpec& spec) {
  std::string names;
  for (const auto& n : method_names()) names += (names.empty() ? "" : "|") + n;
  cmd->add_option("--method", spec.name, "Attention method: " + names)->capture_default_str();
  // Which methods each option applies to, from the registry's table.
  auto applies_to = [](const char* option) {
    std::string list;
    for (const MethodInfo& m : method_table())
      for (const char* o : m.options)
        if (std::string(o) == option) list += (list.empty() ? "" : ", ") + std::string(m.name);
    return " (" + list + ")";
  };
  std::vector<CLI::Option*> budget = {
      cmd->add_option(kOptLookup, spec.lookup, "Budget: fraction of the prefix read, in (0, 1]" + applies_to(kOptLookup))
          ->check(a_number()),
      cmd->add_option(kOptSinks, spec.sinks, "First positions always read" + applies_to(kOptSinks))
          ->check(whole_at_least(0)),
      cmd->add_option(kOptWindow, spec.window, "Most recent positions always read" + applies_to(kOptWindow))
          ->check(whole_at_least(0)),
      cmd->add_option(kOptKf, spec.k_f, "Fraction of the prefix attended, in (0, 1]" + applies_to(kOptKf))->check(a_number()),
      cmd->add_option(kOptDf, spec.d_f, "Fraction of dimensions used for ranking, in (0, 1]" + applies_to(kOptDf))
          ->check(a_number()),
      cmd->add_option(kOptBudgetTokens, spec.budget_tokens,
                      "A fixed budget of tokens per query instead of --lookup" + applies_to(kOptBudgetTokens))
          ->check(whole_at_least(0)),
      cmd->add_option(kOptPageSize, spec.page_size, "Positions per page" + applies_to(kOptPageSize))
          ->check(whole_at_least(1)),
      cmd->add_option(kOptArtifact, spec.artifact, "Trained index file" + applies_to(kOptArtifact)),
  };
  for (CLI::Option* o : budget) o->capture_default_str();
  cmd->parse_complete_callback([&spec, budget] {
    std::vector<std::string> given;
    for (const CLI::Option* o : budget)
      if (o->count() > 0) given.push_back(o->get_name());
    check_options_apply(spec.name, given);
    check_method_spec(spec);  // before the model loads: a bad budget fails at once
  });
}

// The text windows and the query sample of an attention evaluation (eval attention, eval saap-grid).
inline void add_attention_eval_options(CLI::App* cmd, int& windows, int& window_len, AttentionEvalOptions& eval) {
  cmd->add_option("--windows", windows, "Windows of text")->check(whole_at_least(1));
  cmd->add_option("--window-len", window_len, "Tokens per window")->check(whole_in_range(2, 1 << 20));
  cmd->add_option("--queries", eval.queries_per_window, "Sampled query positions per window")->check(whole_at_least(1));
  cmd->add_option("--top-k", eval.top_k, "k of recall@k")->check(whole_at_least(1));
  cmd->add_option("--seed", eval.seed, "Seed of the query sample");
  cmd->add_option("--first-query", eval.first_query,
                  "Sample queries at positions >= this one only (the long prefixes of a long window)")
      ->check(whole_at_least(0))
      ->capture_default_str();
  cmd->add_flag_callback(
      "--sampled-only", [&eval] { eval.replay = ReplayQueries::sampled_positions; },
      "Select only at the sampled queries (not every position; H2O still runs every one) and count the "
      "lookup there: needed at 32k tokens");
}

// The inputs of a run on the model, for its results' provenance: the model by its identity (a hash
// of its header), the text and each artifact (empty ones skipped, repeats once) by their sha256.
inline std::vector<InputIdentity> model_run_inputs(const std::string& model_identity, const std::string& model_path,
                                                   const std::string& text,
                                                   const std::vector<std::string>& artifacts = {}) {
  std::vector<InputIdentity> inputs = {input_with_identity("model", model_path, model_identity)};
  if (!text.empty()) inputs.push_back(input_file("text", text));
  for (size_t i = 0; i < artifacts.size(); ++i)
    if (!artifacts[i].empty() && std::find(artifacts.begin(), artifacts.begin() + long(i), artifacts[i]) ==
                                     artifacts.begin() + long(i))
      inputs.push_back(input_file("artifact", artifacts[i]));
  return inputs;
}
inline std::vector<InputIdentity> model_run_inputs(const LlamaModel& model, const std::string& model_path,
                                                   const std::string& text,
                                                   const std::vector<std::string>& artifacts = {}) {
  return model_run_inputs(model.identity(), model_path, text, artifacts);
}

}  // namespace saap::cli
