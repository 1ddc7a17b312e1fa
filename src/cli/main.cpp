// saap: one CLI, one subcommand per job. Exit codes: 0 success, 1 internal error, 2 invalid
// argument or usage, 3 bad file, 4 not found, 5 non-finite values, 6 out of memory, 7 unsupported.
#include <omp.h>

#include <cstdio>
#include <iostream>
#include <new>

#include "cli/commands.h"
#include "cli/validators.h"
#include "saap/core/error.h"
#include "saap/eval/result_files.h"

namespace saap::cli {

void emit(const GlobalOptions& global, const nlohmann::json& result, const std::function<void()>& print_text,
          const std::vector<InputIdentity>& inputs) {
  if (!global.json) return print_text();
  nlohmann::json out = result;
  out["provenance"] = run_provenance(inputs);
  // Text fields go through utf8_sanitize where they are made; `replace` is the backstop that
  // keeps any other invalid byte (a path, a prompt echoed back) from losing the whole result.
  std::cout << out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
}

}  // namespace saap::cli

int main(int argc, char** argv) {
  using namespace saap::cli;
  CLI::App app{"saap: inference-time sparse attention for long-context LLMs"};
  app.require_subcommand(1);
  // Inherited by every subcommand created below: --help shows each option's default, and the
  // global options (--json, --threads) are accepted after a subcommand too.
  app.option_defaults()->always_capture_default();
  app.fallthrough();
  GlobalOptions global;
  app.add_flag("--json", global.json, "Print results as JSON (also accepted after the subcommand)");
  app.add_option("--threads", global.threads, "CPU threads (0: all cores)")->check(whole_at_least(0));
  register_info(app, global);
#ifdef SAAP_HAVE_TRAINING
  register_demo(app, global);
#else
  register_unavailable(app, "demo", "Run the main job on the default model (trains small indexes)", kNoTrainingReason);
#endif
  register_calibrate(app, global);
  register_eval_attention(app, global);
  register_eval_passkey(app, global);
  register_eval_niah(app, global);
  register_eval_sweep(app, global);
  register_generate(app, global);
  register_eval_ppl(app, global);
  register_eval_saap_grid(app, global);
  register_bench(app, global);
#ifdef SAAP_HAVE_TRAINING
  register_train_saap(app, global);
  register_train_loki(app, global);
#else
  register_unavailable(app, "train", "Train a method's index from a calibration set", kNoTrainingReason);
#endif
  app.parse_complete_callback([&] {
    if (global.threads > 0) omp_set_num_threads(global.threads);
    // More threads than cores share them and run slower than one per core (the forward pass and
    // the kernels are compute-bound).
    if (global.threads > omp_get_num_procs())
      std::fprintf(stderr, "saap: warning: --threads %d exceeds the %d cores of this machine; expect it to be slower\n",
                   global.threads, omp_get_num_procs());
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const saap::Error& e) {
    std::fprintf(stderr, "saap: error: %s\n", e.what());
    return int(e.kind());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "saap: error: out of memory\n");
    return int(saap::ErrorKind::OutOfMemory);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "saap: internal error: %s\n", e.what());
    return 1;
  }
  return 0;
}
