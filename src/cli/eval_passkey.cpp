// saap eval passkey: passkey / needle retrieval accuracy per context length and depth.
#include <algorithm>
#include <cstdio>
#include <sstream>

#include "cli/commands.h"
#include "cli/validators.h"
#include "cli/device.h"
#include "cli/method_options.h"
#include "saap/core/paths.h"
#include "saap/eval/passkey.h"
#include "saap/eval/result_files.h"

namespace saap::cli {

void register_eval_passkey(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = eval_command(app)->add_subcommand("passkey", "Passkey and needle retrieval accuracy by length and depth");
  struct Opts {
    std::string model, haystack = "repeated", filler, out = "results";
    PasskeyOptions pk;
    MethodSpec spec;
    std::string device = "cpu";
    int batch = 16;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, kModelOptionHelp);
  cmd->add_option("--lengths", o->pk.lengths, "Context lengths in tokens");
  cmd->add_option("--depths", o->pk.depths, "Relative needle depths");
  cmd->add_option("--trials", o->pk.trials, "Trials per length and depth")->check(whole_at_least(1));
  cmd->add_option("--haystack", o->haystack, "repeated (the passkey task) or text (needle in real text)")
      ->check(CLI::IsMember({"repeated", "text"}));
  cmd->add_option("--filler", o->filler, "Filler text for --haystack text (default: eval.txt in the cache)");
  cmd->add_flag("--method-prefill", o->pk.method_prefill,
                "Run the haystack prefill through the method too (default: exact prefill, method from the question on)");
  cmd->add_option("--max-new-tokens", o->pk.max_new_tokens, "Tokens generated for the answer")
      ->check(whole_at_least(1));
  cmd->add_option("--seed", o->pk.seed, "Seed of the pass keys and filler offsets");
  cmd->add_option("--out", o->out, "Folder for the JSON and CSV result files");
  add_method_options(cmd, o->spec);
  add_device_option(cmd, o->device);
  cmd->add_option("--batch", o->batch, "cuda: trials run together as one batched prefill")->check(whole_at_least(1));
  cmd->callback([o, &global] {
    const std::string path = model_path(o->model);
    BackendRequest request;
    request.device = o->device;
    request.model_path = path;
    request.spec = o->spec;
    request.progress = !global.json;
    request.max_batch = o->batch;
    request.max_context = o->pk.lengths.empty() ? 0 : *std::max_element(o->pk.lengths.begin(), o->pk.lengths.end());
    auto backend = open_backend(request);
    o->pk.haystack = o->haystack == "text" ? Haystack::RealText : Haystack::Repeated;
    if (o->pk.haystack == Haystack::RealText)
      o->pk.filler_path = o->filler.empty() ? default_text_path("eval.txt") : o->filler;
    const auto inputs = model_run_inputs(backend->identity(), path, o->pk.filler_path, {o->spec.artifact});
    const PasskeyResult r = run_passkey(*backend, o->pk);
    nlohmann::json doc = {{"method", o->spec.describe()},
                          {"artifact", o->spec.artifact},
                          {"model", backend->identity()},
                          {"device", backend->device()},
                          {"device_name", backend->device_name()},
                          {"haystack", o->haystack},
                          {"method_prefill", o->pk.method_prefill},
                          {"passkey", r.to_json()}};
    CsvTable table{{"method", "haystack", "length", "depth", "accuracy", "lookup_fraction", "device"}, {}};
    for (const auto& row : doc["passkey"]["by_length_depth"])
      table.add({o->spec.describe(), o->haystack, std::to_string(row["length"].get<int64_t>()),
                 csv_field(row["depth"].get<double>()), csv_field(row["accuracy"].get<double>()),
                 csv_field(r.lookup().fraction()), backend->device()});
    const auto paths = write_result_files(o->out, "passkey_" + o->haystack + "_" + o->spec.name + device_suffix(*backend), doc,
                                          table, inputs);
    emit(global, doc, [&] {
      std::printf("%s on %s, %s haystack: accuracy %.3f, lookup fraction %.4f\n", o->spec.describe().c_str(),
                  backend->device().c_str(), o->haystack.c_str(), r.accuracy(), r.lookup().fraction());
      std::printf("%8s", "length");
      for (double d : o->pk.depths) std::printf(" %6.2f", d);
      std::printf("\n");
      for (int64_t l : o->pk.lengths) {
        std::printf("%8lld", (long long)l);
        for (double d : o->pk.depths) std::printf(" %6.2f", r.accuracy(l, d));
        std::printf("\n");
      }
      std::printf("wrote %s, %s\n", paths[0].c_str(), paths[1].c_str());
    }, inputs);
  });
}

}  // namespace saap::cli
