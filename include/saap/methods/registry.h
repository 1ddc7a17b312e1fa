// From a method's name and parameters (what the CLI and the eval harness hold) to the factory
// the model runner calls once per layer. Each method's header declares its own
// `MethodFactory <name>_factory(const MethodSpec&, const ArtifactIdentity& expected)`; this is the
// one place that knows them all.
#pragma once
#include <string>
#include <vector>

#include "saap/core/safetensors.h"
#include "saap/methods/method.h"

namespace saap {

struct MethodSpec {
  std::string name = "dense";  // dense | oracle | streaming | h2o | loki | saap | kmeans | quest
  // Budget of token-selecting methods, as the fraction of the causal prefix read (oracle, h2o,
  // saap, kmeans; for streaming the sinks + window define it). Loki uses k_f and d_f instead.
  double lookup = 0.05;
  int sinks = 4;      // first positions always read (attention sinks)
  int window = 64;    // most recent positions always read
  double k_f = 0.25;  // Loki: fraction of the prefix attended
  double d_f = 0.25;  // Loki: fraction of dimensions used for the ranking score
  int64_t budget_tokens = 0;  // quest: > 0 is a fixed budget of this many tokens instead of lookup
  int page_size = 16;         // quest: positions per page
  std::string artifact;  // trained index file (loki, saap, kmeans)
  std::string describe() const;  // "loki(k_f=0.25,d_f=0.25)"
};

// expected: the identity of the model the method will run on; artifacts are checked against it.
MethodFactory make_method_factory(const MethodSpec& spec, const ArtifactIdentity& expected);
std::vector<std::string> method_names();

}  // namespace saap
