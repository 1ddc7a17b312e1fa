// saap: one CLI, one subcommand per job. Exit codes: 0 success, 1 internal error, 2 invalid
// argument or usage, 3 bad file, 4 not found, 5 non-finite values, 6 out of memory, 7 unsupported.
#include <omp.h>

#include <cstdio>
#include <iostream>
#include <new>

#include "cli/commands.h"
#include "saap/core/error.h"
#include "saap/eval/result_files.h"

namespace saap::cli {

void emit(const GlobalOptions& global, const nlohmann::json& result, const std::function<void()>& print_text,
          const std::vector<InputIdentity>& inputs) {
  if (!global.json) return print_text();
  nlohmann::json out = result;
  out["provenance"] = run_provenance(inputs);
  std::cout << out.dump(2) << std::endl;
}

}  // namespace saap::cli

int main(int argc, char** argv) {
  using namespace saap::cli;
  CLI::App app{"saap: inference-time sparse attention for long-context LLMs"};
  app.require_subcommand(1);
  GlobalOptions global;
  app.add_flag("--json", global.json, "Print results as JSON");
  app.add_option("--threads", global.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  register_info(app, global);
  register_demo(app, global);
  register_calibrate(app, global);
  register_eval_attention(app, global);
  register_eval_passkey(app, global);
  register_eval_sweep(app, global);
  register_generate(app, global);
  register_eval_ppl(app, global);
  register_eval_saap_grid(app, global);
  register_bench(app, global);
  register_train_saap(app, global);
  register_train_loki(app, global);
  app.parse_complete_callback([&] {
    if (global.threads > 0) omp_set_num_threads(global.threads);
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
