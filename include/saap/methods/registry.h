// From a method's name and parameters (what the CLI and the eval harness hold) to the factory
// the model runner calls once per layer. Each method's header declares its own
// `MethodFactory <name>_factory(const MethodSpec&, const ArtifactIdentity& expected)`; this is the
// one place that knows them all: which artifact each needs, which budget options apply to it,
// and how a budget is checked. A new method is one row in registry.cpp's table.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "saap/core/safetensors.h"
#include "saap/methods/method.h"

namespace saap {

class LlamaModel;
struct LlamaConfig;

struct MethodSpec {
  std::string name = "dense";  // one of method_names()
  // Budget of token-selecting methods, as the fraction of the causal prefix read (oracle, h2o,
  // saap, kmeans, partition-oracle; for streaming the sinks + window define it). Loki uses k_f and
  // d_f instead.
  double lookup = 0.05;
  int sinks = 4;      // first positions always read (attention sinks)
  int window = 64;    // most recent positions always read
  double k_f = 0.25;  // Loki: fraction of the prefix attended
  double d_f = 0.25;  // Loki: fraction of dimensions used for the ranking score
  // oracle, saap, kmeans, partition-oracle, quest: > 0 is a fixed budget of this many K/V tokens per
  // query instead of lookup (rules::Budget).
  int64_t budget_tokens = 0;
  int page_size = 16;         // quest: positions per page
  std::string artifact;  // trained index file (MethodInfo::artifact says which kind)
  std::string describe() const;  // "loki(k_f=0.25,d_f=0.25)"
};

// The options a caller may set on a MethodSpec, by the name a user types (the CLI's flags).
inline constexpr const char* kOptLookup = "--lookup";
inline constexpr const char* kOptSinks = "--sinks";
inline constexpr const char* kOptWindow = "--window";
inline constexpr const char* kOptKf = "--k-f";
inline constexpr const char* kOptDf = "--d-f";
inline constexpr const char* kOptArtifact = "--artifact";
inline constexpr const char* kOptBudgetTokens = "--budget-tokens";
inline constexpr const char* kOptPageSize = "--page-size";

// What the registry knows of one method.
struct MethodInfo {
  const char* name;
  MethodFactory (*make)(const MethodSpec&, const ArtifactIdentity&);
  // The artifact it reads: "" (none), "loki", "saap" (a saap artifact), or "partition" (the key
  // partition of a kmeans or saap artifact).
  const char* artifact;
  std::vector<const char*> options;  // the kOpt* that apply to it
};

const std::vector<MethodInfo>& method_table();
std::vector<std::string> method_names();
// Throws InvalidArgument naming the known methods when `name` is not one of them.
const MethodInfo& method_info(const std::string& name);
bool method_needs_artifact(const std::string& name);

// Refuses (InvalidArgument, naming the option and the method) any option in `given` that does not
// apply to spec.name: a budget the method would silently ignore is a mistake. `given` holds kOpt*
// names, e.g. the CLI flags the user typed.
void check_options_apply(const std::string& method, const std::vector<std::string>& given);

// Sets the field of `spec` that `option` names ("--method" or one of the kOpt*) from its text, as
// a command line gives it; false when `option` is none of them. InvalidArgument naming the option
// when the value is not a number of the field's type.
bool set_method_option(MethodSpec& spec, const std::string& option, const std::string& value);

// A short label of the method and its budget, the method column of the end-to-end CSVs
// (results/gpu_e2e_*.csv): dense, or name@budget (saap@0.05, quest@512t, loki@0.25 for k_f).
std::string method_budget_label(const MethodSpec& spec);

// The one check of a budget fraction (lookup, k_f, d_f): in (0, 1] (selection_rules.h). 0 reads
// nothing; 1 reads everything. `field` names it in the error.
void check_fraction(double value, const char* field);

// Checks what applies to spec.name without reading a file: its fractions (check_fraction), sinks
// and window >= 0, and that an artifact is named where one is needed.
void check_method_spec(const MethodSpec& spec);

// expected: the identity of the model the method will run on; artifacts are checked against it.
// Checks the spec first (check_method_spec).
MethodFactory make_method_factory(const MethodSpec& spec, const ArtifactIdentity& expected);

// What artifacts are checked against: the model they will run on (the factory sets the method).
ArtifactIdentity model_artifact_identity(const LlamaModel& model);
// The same from the model's identity string (model_identity.h) and configuration, for a runner
// without a CPU LlamaModel (the CUDA runner).
ArtifactIdentity model_artifact_identity(const std::string& model_identity, const LlamaConfig& config);

// StreamingLLM at an equal budget: the window (beside `sinks`) that makes it read the fraction f
// that the budgeted methods read, averaged over a text window of `window_len` positions. It reads
// min(t, B) of t cached tokens at step t, so over L positions it reads sum_t min(t, B) ~
// L^2 (2b - b^2) / 2 with b = B / L, against L^2 / 2 for dense: B = L (1 - sqrt(1 - f)) tokens
// (at least 1), of which the sinks are part.
int equal_budget_streaming_window(double f, int64_t window_len, int sinks);

}  // namespace saap
