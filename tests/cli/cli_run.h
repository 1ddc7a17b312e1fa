// Running the saap CLI from a test: the binary is SAAP_CLI_BINARY (set by tests/CMakeLists.txt).
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace cli_test {

struct CliRun {
  int code = -1;
  std::string out, err;
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs `env` (shell assignments, may be empty) then the CLI with `args` (shell text after the
// binary's name, quoted as a shell needs), stdin closed. Its output is captured in scratch.out and
// scratch.err, which are removed afterwards.
inline CliRun run_cli(const std::string& args, const std::string& env, const std::string& scratch) {
  const std::string cmd = env + " '" + std::string(SAAP_CLI_BINARY) + "' " + args + " </dev/null >'" + scratch +
                          ".out' 2>'" + scratch + ".err'";
  const int status = std::system(cmd.c_str());
  CliRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(scratch + ".out");
  r.err = slurp(scratch + ".err");
  std::remove((scratch + ".out").c_str());
  std::remove((scratch + ".err").c_str());
  return r;
}

}  // namespace cli_test
