// Provenance of a results file: when (UTC), where (CPU, cores, GPUs and driver), from which code
// (the commit the binary was built from, and whether the tree was dirty), by which exact command and
// from which inputs (path + sha256, or the input's own identity string).
//
// Plain C++17 and POSIX, no JSON library: the cuda-only build (decode_bench on the GPU machine, which
// has no nlohmann-json) writes the same record as the CLI. saap/eval/result_files.h turns it into a
// nlohmann::json object; provenance_json() writes the same object as text.
//
// Format in files (scripts/provenance.py writes the same, scripts/check_provenance.py checks it):
//   JSON: a top-level "provenance" object {date, machine {hostname, cpu, cores, gpus [{name, driver}]},
//         commit, dirty, command, inputs [{role, path, sha256 | identity}]};
//   CSV:  leading "# key: value" comment lines: date, machine, commit, command, then one "input" line
//         per input.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace saap {

struct GpuInfo {
  std::string name;
  std::string driver;  // the NVIDIA kernel driver version, or the CUDA driver API version
};

// One input the run read. A file is identified by the sha256 of its bytes; an input that carries its
// own identity (a GGUF model: LlamaModel::identity(), a hash of its header) by that string, which
// saves hashing gigabytes.
struct InputIdentity {
  std::string role;  // what the input is to the run: "model", "artifact", "text", "calib", "csv", ...
  std::string path;
  std::string sha256;    // 64 hex digits; empty when `identity` is set
  std::string identity;  // empty when `sha256` is set
};

// Hashes the file at `path`; saap::Error(NotFound) naming the path and role when it cannot be read.
InputIdentity input_file(const std::string& role, const std::string& path);
InputIdentity input_with_identity(const std::string& role, const std::string& path, const std::string& identity);

struct Provenance {
  std::string date;  // UTC, ISO 8601 to the second: 2026-11-23T07:51:04Z
  std::string hostname;
  std::string cpu;  // /proc/cpuinfo "model name"
  unsigned cores = 0;
  std::vector<GpuInfo> gpus;  // empty on a machine without an NVIDIA driver
  std::string commit;         // the commit this binary was built from; "unknown" outside git (see build_info.cmake)
  int dirty = -1;             // 1: built from a tree with uncommitted changes, 0: clean, -1: unknown
  std::string command;        // this process's argv, each argument shell-quoted where it needs it
  std::vector<InputIdentity> inputs;
};

// The provenance of this process now. GPUs come from the NVIDIA driver's /proc entries when they
// exist; a CUDA program that knows its device better may replace `gpus`.
Provenance collect_provenance(std::vector<InputIdentity> inputs = {});

// "# date: ...\n# machine: ...\n# commit: ...\n# command: ...\n# input: ...\n": the CSV header lines.
std::string provenance_csv_lines(const Provenance& p);
// The JSON object (text), `indent` spaces deeper than its key, for writers without a JSON library.
std::string provenance_json(const Provenance& p, int indent = 2);
// The machine in one line: "vm, AMD EPYC, 2 cores; GPU NVIDIA H100 80GB HBM3 (driver 550.54.15)".
std::string machine_line(const Provenance& p);

std::string sha256_hex(const void* data, size_t n);
std::string sha256_file(const std::string& path);  // saap::Error(NotFound) when unreadable
// `arg` as one shell word: unchanged when it holds only safe characters, else in single quotes.
std::string shell_quote(const std::string& arg);
// A JSON string literal (quotes included) of `s`.
std::string json_quote(const std::string& s);

// Written at build time by src/provenance/build_info.cmake.
const char* build_commit();
int build_dirty();

}  // namespace saap
