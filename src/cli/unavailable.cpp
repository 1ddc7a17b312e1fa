// Subcommands this build cannot run (training needs FAISS and BLAS/LAPACK, which the GPU machine
// lacks): they stay listed, so that `saap --help` shows them, and refuse by name with what to do.
#include "cli/commands.h"
#include "saap/core/error.h"

namespace saap::cli {

void register_unavailable(CLI::App& app, const std::string& name, const std::string& description,
                          const std::string& reason) {
  auto* cmd = app.add_subcommand(name, description + " [unavailable: " + reason + "]");
  // Whatever follows stays with this subcommand (not falling through to the app, which would
  // refuse it as unexpected): the answer is the reason.
  cmd->fallthrough(false);
  cmd->allow_extras();
  cmd->callback([name, reason] { SAAP_THROW_FMT(Unsupported, "saap %s: %s", name.c_str(), reason.c_str()); });
}

}  // namespace saap::cli
