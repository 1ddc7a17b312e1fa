// saap train loki: Loki's PCA bases (one per layer and KV head) from a calibration set.
#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "saap/train/loki_trainer.h"

namespace saap::cli {

void register_train_loki(CLI::App& app, const GlobalOptions& global) {
  struct Opts {
    std::string calib, out, rope = "pre";
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = train_command(app)->add_subcommand("loki", "PCA basis of keys per layer and KV head (Loki)");
  cmd->add_option("--calib", o->calib, "Calibration set (saap calibrate)")->required();
  cmd->add_option("--out", o->out, "Artifact to write (.safetensors)")->required();
  cmd->add_option("--rope", o->rope, "Fit on pre-RoPE or post-RoPE keys (applied to post-RoPE keys either way)")
      ->check(CLI::IsMember({"pre", "post"}));
  cmd->callback([o, &global] {
    const auto start = std::chrono::steady_clock::now();
    const CalibrationSet set = CalibrationSet::load(o->calib);
    LokiArtifact a = train_loki(set, o->rope == "pre");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    a.train["seconds"] = seconds;
    a.save(o->out);
    const nlohmann::json result = {{"out", o->out},
                                   {"method", "loki"},
                                   {"model", a.identity.model_identity},
                                   {"rope", o->rope},
                                   {"keys", a.train["keys"]},
                                   {"mean_explained_variance", a.train["mean_explained_variance"]},
                                   {"seconds", seconds}};
    emit(global, result, [&] {
      std::printf("loki: %d layers x %d KV heads, %s-RoPE keys, %lld keys each, %.1f s -> %s\n", a.identity.n_layers,
                  a.identity.n_kv_heads, o->rope.c_str(), (long long)a.train["keys"].get<int64_t>(), seconds,
                  o->out.c_str());
      std::printf("mean explained variance of the leading components:");
      for (const auto& [r, v] : a.train["mean_explained_variance"].items()) std::printf(" %s: %.3f", r.c_str(), v.get<double>());
      std::printf("\n");
    }, {input_file("calib", o->calib)});
  });
}

}  // namespace saap::cli
