// saap eval niah: long-context retrieval (passkey, multikey, multivalue needles in a repeated or a
// natural-text haystack) per length, with agreement against a dense reference run.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/device.h"
#include "cli/method_options.h"
#include "cli/validators.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/eval/cpu_continuation.h"
#include "saap/eval/niah.h"
#include "saap/eval/result_files.h"
#include "saap/model/gguf.h"
#include "saap/model/tokenizer.h"

namespace saap::cli {

namespace {

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  SAAP_CHECK_FMT(in.good(), NotFound, "%s %s cannot be opened", what, path.c_str());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs of this command (JSON files or --json outputs), their "niah" objects' trials in one result
// (shards of one run: other lengths or depths, the same task). `what` names them in errors.
// method: the runs' "method" (the same in every one).
NiahResult load_runs(const std::vector<std::string>& paths, const char* what, std::string* method = nullptr) {
  NiahResult all;
  for (size_t i = 0; i < paths.size(); ++i) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file(paths[i], what));
    } catch (const nlohmann::json::exception& e) {
      SAAP_THROW_FMT(BadFile, "%s %s is not JSON (%s)", what, paths[i].c_str(), e.what());
    }
    SAAP_CHECK_FMT(j.contains("niah"), BadFile, "%s %s has no 'niah' object (not a saap eval niah result)", what,
                   paths[i].c_str());
    NiahResult r = NiahResult::from_json(j["niah"]);
    const std::string m = j.value("method", std::string());
    if (method && i == 0) *method = m;
    SAAP_CHECK_FMT(!method || m == *method, InvalidArgument, "%s %s ran method '%s', %s ran '%s'", what,
                   paths[i].c_str(), m.c_str(), paths[0].c_str(), method ? method->c_str() : "");
    if (i == 0) all.task = r.task;
    SAAP_CHECK_FMT(r.task.task == all.task.task && r.task.haystack == all.task.haystack, InvalidArgument,
                   "%s %s ran %s/%s, %s ran %s/%s", what, paths[i].c_str(), niah_task_name(r.task.task),
                   niah_haystack_name(r.task.haystack), paths[0].c_str(), niah_task_name(all.task.task),
                   niah_haystack_name(all.task.haystack));
    all.trials.insert(all.trials.end(), r.trials.begin(), r.trials.end());
  }
  return all;
}

// --dump-prompts: every trial's prompt as JSON Lines (a first line {"provenance": ...}), read with
// the tokenizer alone: no model loads, nothing runs. Returns the number of trials written.
int64_t dump_prompts(const std::string& model, const NiahOptions& n, const std::string& filler, const std::string& out_path) {
  const std::string path = model_path(model);
  const GGUFFile file = GGUFFile::open(path);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const int64_t context = file.get_int(file.get_string("general.architecture") + ".context_length");
  for (int64_t l : n.lengths)
    SAAP_CHECK_FMT(l > 0 && l <= context, InvalidArgument, "--lengths holds %lld, outside [1, %lld] (the model's context length)",
                   (long long)l, (long long)context);
  std::string filler_path, filler_text;
  if (n.task.haystack == NiahHaystack::Text) {
    filler_path = filler.empty() ? default_text_path("eval.txt") : filler;
    filler_text = read_file(filler_path, "filler text");
  }
  std::vector<InputIdentity> inputs = {input_file("model", path)};
  if (!filler_path.empty()) inputs.push_back(input_file("filler", filler_path));
  std::ofstream out(out_path, std::ios::binary);
  SAAP_CHECK_FMT(out.good(), NotFound, "--dump-prompts %s cannot be opened for writing", out_path.c_str());
  out << nlohmann::json{{"provenance", run_provenance(inputs)}}.dump() << '\n';
  return write_niah_prompts(tok, n, filler_text, out);
}

std::string interval(const Proportion& p) {
  if (p.n == 0) return "-";
  char buf[96];
  std::snprintf(buf, sizeof buf, "%lld/%lld = %.3f [%.3f, %.3f]", (long long)p.k, (long long)p.n, p.rate, p.lo, p.hi);
  return buf;
}

}  // namespace

void register_eval_niah(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = eval_command(app)->add_subcommand(
      "niah", "Long-context retrieval: passkey, multikey and multivalue needles by length, agreement with dense");
  struct Opts {
    std::string model, task = "passkey", haystack, filler, out = "results", stem;
    std::vector<std::string> reference, merge;
    NiahOptions niah;
    bool method_prefill = false;
    MethodSpec spec;
    std::string device = "cpu";
    std::string dump_prompts;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, kModelOptionHelp);
  cmd->add_option("--task", o->task, "passkey (one 5-digit key), multikey (ask one of --keys), multivalue (ask all --values)")
      ->check(CLI::IsMember({"passkey", "multikey", "multivalue"}))
      ->capture_default_str();
  cmd->add_option("--haystack", o->haystack, "repeated filler or natural text (default: passkey repeated, else text)")
      ->check(CLI::IsMember({"repeated", "text"}));
  cmd->add_option("--filler", o->filler, "Text of the text haystack (default: eval.txt in the cache)");
  cmd->add_option("--lengths", o->niah.lengths, "Prompt + answer lengths in tokens")->capture_default_str();
  cmd->add_option("--depths", o->niah.depths, "Relative depths of the needle asked for")->capture_default_str();
  cmd->add_option("--trials", o->niah.trials, "Trials per length and depth")->check(whole_at_least(1))->capture_default_str();
  cmd->add_option("--seed", o->niah.seed, "Seed of every trial's numbers, keys, needle depths and text offset")
      ->capture_default_str();
  cmd->add_option("--keys", o->niah.task.keys, "multikey: needles with distinct keys")->check(whole_at_least(2))
      ->capture_default_str();
  cmd->add_option("--values", o->niah.task.values, "multivalue: numbers of the one key")->check(whole_at_least(2))
      ->capture_default_str();
  cmd->add_flag("--chat", o->niah.task.chat, "Render the prompt through the model's chat template (default: plain text after BOS)");
  cmd->add_flag("--method-prefill", o->method_prefill,
                "Run the context's prefill through the method too (default: exact prefill, method from the question on)");
  cmd->add_option("--reference", o->reference,
                  "Dense runs' JSON files (same task and seed; shards are joined): agreement on the same trials");
  cmd->add_option("--merge", o->merge,
                  "Run nothing: join these runs' JSON files (shards of one method's run) and summarize them");
  cmd->add_option("--out", o->out, "Folder for the JSON and CSV result files")->capture_default_str();
  cmd->add_option("--stem", o->stem, "File name stem (default: niah_<task>_<haystack>_<method>)");
  cmd->add_option("--dump-prompts", o->dump_prompts,
                  "Run nothing: write every trial's prompt (token ids, expected numbers) as JSON Lines to this file "
                  "(scripts/niah_transformers.py reads it)")
      ->excludes("--merge");
  add_method_options(cmd, o->spec);
  add_device_option(cmd, o->device);
  cmd->add_option("--batch", o->niah.batch, "cuda: trials run together as one batched prefill")
      ->check(whole_at_least(1))
      ->capture_default_str();
  cmd->callback([o, &global] {
    NiahOptions& n = o->niah;
    n.task.task = parse_niah_task(o->task);
    n.task.haystack = parse_niah_haystack(o->haystack.empty() ? (o->task == "passkey" ? "repeated" : "text") : o->haystack);
    if (!o->dump_prompts.empty()) {
      const int64_t lines = dump_prompts(o->model, n, o->filler, o->dump_prompts);
      if (global.json)
        std::printf("%s\n", nlohmann::json{{"prompts", lines}, {"path", o->dump_prompts}}.dump().c_str());
      else
        std::printf("wrote %lld prompts to %s\n", (long long)lines, o->dump_prompts.c_str());
      return;
    }
    // The reference is read before the model: a wrong file fails at once.
    std::unique_ptr<NiahResult> reference;
    if (!o->reference.empty()) reference = std::make_unique<NiahResult>(load_runs(o->reference, "dense reference"));
    std::vector<InputIdentity> inputs;
    NiahResult r;
    std::string model_identity, method = o->spec.describe();
    if (!o->merge.empty()) {
      r = load_runs(o->merge, "run", &method);
      for (const auto& m : o->merge) inputs.push_back(input_file("run", m));
    } else {
      const std::string path = model_path(o->model);
      BackendRequest request;
      request.device = o->device;
      request.model_path = path;
      request.spec = o->spec;
      request.progress = !global.json;
      request.max_batch = n.batch;
      request.max_context = n.lengths.empty() ? 0 : *std::max_element(n.lengths.begin(), n.lengths.end());
      auto backend = open_backend(request);
      model_identity = backend->identity();
      for (int64_t l : n.lengths)  // before any trial runs: a long run should not fail at its last length
        SAAP_CHECK_FMT(l > 0 && l <= backend->max_context(), InvalidArgument,
                       "--lengths holds %lld, outside [1, %lld] (the model's context length)", (long long)l,
                       (long long)backend->max_context());
      std::string filler_path, filler_text;
      if (n.task.haystack == NiahHaystack::Text) {
        filler_path = o->filler.empty() ? default_text_path("eval.txt") : o->filler;
        filler_text = read_file(filler_path, "filler text");
      }
      inputs = model_run_inputs(model_identity, path, filler_path, {o->spec.artifact});
      r = run_niah(backend->tokenizer(), n, filler_text, backend_greedy_continuation(*backend, o->method_prefill));
    }
    for (const auto& ref : o->reference) inputs.push_back(input_file("reference", ref));
    const std::vector<NiahLengthSummary> summary = niah_summary(r, reference.get());
    nlohmann::json rows = nlohmann::json::array();
    CsvTable table{{"method", "task", "haystack", "length", "trials", "correct", "accuracy", "accuracy_lo", "accuracy_hi",
                    "dense_correct", "agree", "agreement", "agreement_lo", "agreement_hi", "only_method_right",
                    "mean_found", "distractor_answers", "lookup_fraction", "global_lookup_fraction"},
                   {}};
    for (const NiahLengthSummary& s : summary) {
      rows.push_back({{"length", s.length},
                      {"trials", s.accuracy.n},
                      {"correct", s.accuracy.k},
                      {"accuracy", s.accuracy.rate},
                      {"accuracy_wilson95", {s.accuracy.lo, s.accuracy.hi}},
                      {"dense_correct", s.agreement.n},
                      {"agree", s.agreement.k},
                      {"agreement", reference ? nlohmann::json(s.agreement.rate) : nlohmann::json()},
                      {"agreement_wilson95", reference ? nlohmann::json({s.agreement.lo, s.agreement.hi}) : nlohmann::json()},
                      {"only_method_right", s.only_method_right},
                      {"mean_found", s.mean_found},
                      {"distractor_answers", s.distractor_answers},
                      {"lookup_fraction", s.lookup_fraction},
                      {"global_lookup_fraction", s.global_lookup_fraction}});
      auto opt = [&](double x) { return reference ? csv_field(x) : std::string(); };
      table.add({method, niah_task_name(r.task.task), niah_haystack_name(r.task.haystack), std::to_string(s.length),
                 std::to_string(s.accuracy.n), std::to_string(s.accuracy.k), csv_field(s.accuracy.rate),
                 csv_field(s.accuracy.lo), csv_field(s.accuracy.hi), reference ? std::to_string(s.agreement.n) : "",
                 reference ? std::to_string(s.agreement.k) : "", opt(s.agreement.rate), opt(s.agreement.lo),
                 opt(s.agreement.hi), reference ? std::to_string(s.only_method_right) : "", csv_field(s.mean_found),
                 std::to_string(s.distractor_answers), csv_field(s.lookup_fraction),
                 csv_field(s.global_lookup_fraction)});
    }
    nlohmann::json doc = {{"method", method},   {"artifact", o->spec.artifact},
                          {"model", model_identity},        {"method_prefill", o->method_prefill},
                          {"seed", n.seed},                 {"depths", n.depths},
                          {"trials_per_depth", n.trials},   {"reference", o->reference},
                          {"summary", rows},                {"niah", r.to_json()}};
    if (o->merge.empty()) doc["device"] = o->device;  // a merge joins runs that record their own
    const std::string stem = o->stem.empty() ? "niah_" + std::string(niah_task_name(r.task.task)) + "_" +
                                                   niah_haystack_name(r.task.haystack) + "_" + o->spec.name +
                                                   (o->merge.empty() && o->device != "cpu" ? "_" + o->device : "")
                                             : o->stem;
    const auto paths = write_result_files(o->out, stem, doc, table, inputs);
    emit(global, doc, [&] {
      std::printf("%s, %s task, %s haystack (length 0 = all):\n", method.c_str(),
                  niah_task_name(r.task.task), niah_haystack_name(r.task.haystack));
      std::printf("%8s  %-34s  %-34s  %s\n", "length", "accuracy [Wilson 95%]", "agreement with dense", "lookup (global)");
      for (const NiahLengthSummary& s : summary)
        std::printf("%8lld  %-34s  %-34s  %.4f (%.4f)\n", (long long)s.length, interval(s.accuracy).c_str(),
                    interval(s.agreement).c_str(), s.lookup_fraction, s.global_lookup_fraction);
      std::printf("wrote %s, %s\n", paths[0].c_str(), paths[1].c_str());
    }, inputs);
  });
}

}  // namespace saap::cli
