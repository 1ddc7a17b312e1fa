#include "saap/methods/registry.h"

#include <cstdio>

#include "saap/core/error.h"
#include "saap/methods/dense.h"
#include "saap/methods/h2o.h"
#include "saap/methods/loki.h"
#include "saap/methods/oracle_topk.h"
#include "saap/methods/partition_oracle.h"
#include "saap/methods/quest.h"
#include "saap/methods/saap.h"
#include "saap/methods/streaming.h"
#include "saap/methods/symmetric_kmeans.h"

namespace saap {

namespace {

struct Entry {
  const char* name;
  MethodFactory (*make)(const MethodSpec&, const ArtifactIdentity&);
};

MethodFactory dense_factory(const MethodSpec&, const ArtifactIdentity&) {
  return [](const LayerShape& shape) { return std::make_unique<DenseAttention>(shape); };
}

// The one table of methods; a method appears here once its factory exists.
const Entry kMethods[] = {
    {"dense", dense_factory},         {"oracle", oracle_factory}, {"streaming", streaming_factory},
    {"h2o", h2o_factory},             {"loki", loki_factory},     {"saap", saap_factory},
    {"kmeans", kmeans_factory},       {"partition-oracle", partition_oracle_factory},
    {"quest", quest_factory},
};

std::string fmt_double(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

}  // namespace

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const auto& e : kMethods) names.push_back(e.name);
  return names;
}

MethodFactory make_method_factory(const MethodSpec& spec, const ArtifactIdentity& expected) {
  // Only the sinks-and-window methods read a fixed budget; the others would silently ignore it.
  SAAP_CHECK_FMT(spec.budget_tokens == 0 || spec.name == "quest" || spec.name == "saap" || spec.name == "kmeans" ||
                     spec.name == "partition-oracle",
                 InvalidArgument, "budget_tokens = %lld: method '%s' takes a lookup fraction, not a fixed budget",
                 (long long)spec.budget_tokens, spec.name.c_str());
  for (const auto& e : kMethods)
    if (spec.name == e.name) return e.make(spec, expected);
  std::string known;
  for (const auto& n : method_names()) known += (known.empty() ? "" : ", ") + n;
  SAAP_THROW_FMT(InvalidArgument, "method = '%s' is not one of: %s", spec.name.c_str(), known.c_str());
}

std::string MethodSpec::describe() const {
  if (name == "dense") return name;
  if (name == "loki") return "loki(k_f=" + fmt_double(k_f) + ",d_f=" + fmt_double(d_f) + ")";
  if (name == "streaming")
    return "streaming(sinks=" + std::to_string(sinks) + ",window=" + std::to_string(window) + ")";
  std::string s = name + (budget_tokens > 0 ? "(budget_tokens=" + std::to_string(budget_tokens) : "(lookup=" + fmt_double(lookup));
  if (name == "saap" || name == "kmeans" || name == "partition-oracle" || name == "quest") s += ",sinks=" + std::to_string(sinks) + ",window=" + std::to_string(window);
  if (name == "quest") s += ",page=" + std::to_string(page_size);
  return s + ")";
}

}  // namespace saap
