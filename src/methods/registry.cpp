#include "saap/methods/registry.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "saap/core/error.h"
#include "saap/core/selection_rules.h"
#include "saap/methods/dense.h"
#include "saap/methods/h2o.h"
#include "saap/methods/loki.h"
#include "saap/methods/oracle_topk.h"
#include "saap/methods/partition_oracle.h"
#include "saap/methods/quest.h"
#include "saap/methods/saap.h"
#include "saap/methods/streaming.h"
#include "saap/methods/symmetric_kmeans.h"
#include "saap/model/llama.h"

namespace saap {

namespace {

MethodFactory dense_factory(const MethodSpec&, const ArtifactIdentity&) {
  return [](const LayerShape& shape) { return std::make_unique<DenseAttention>(shape); };
}

std::string fmt_double(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

bool applies(const MethodInfo& m, const char* option) {
  return std::any_of(m.options.begin(), m.options.end(), [&](const char* o) { return std::string(o) == option; });
}

// The train command that writes each kind of artifact, for the hint when one is missing.
const char* train_hint(const std::string& artifact) {
  if (artifact == "loki") return "saap train loki";
  if (artifact == "saap") return "saap train saap";
  return "saap train kmeans (or saap train saap)";
}

}  // namespace

// The one table of methods; a method appears here once its factory exists.
const std::vector<MethodInfo>& method_table() {
  static const std::vector<MethodInfo> table = {
      {"dense", dense_factory, "", {}},
      {"oracle", oracle_factory, "", {kOptLookup, kOptBudgetTokens}},
      {"streaming", streaming_factory, "", {kOptSinks, kOptWindow}},
      {"h2o", h2o_factory, "", {kOptLookup, kOptBudgetTokens}},
      {"loki", loki_factory, "loki", {kOptKf, kOptDf, kOptArtifact}},
      {"saap", saap_factory, "saap", {kOptLookup, kOptBudgetTokens, kOptSinks, kOptWindow, kOptArtifact}},
      {"kmeans", kmeans_factory, "partition", {kOptLookup, kOptBudgetTokens, kOptSinks, kOptWindow, kOptArtifact}},
      {"partition-oracle", partition_oracle_factory, "partition", {kOptLookup, kOptBudgetTokens, kOptSinks, kOptWindow, kOptArtifact}},
      {"quest", quest_factory, "", {kOptLookup, kOptSinks, kOptWindow, kOptBudgetTokens, kOptPageSize}},
  };
  return table;
}

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const auto& e : method_table()) names.push_back(e.name);
  return names;
}

namespace {
const MethodInfo* find_method(const std::string& name) {
  for (const auto& e : method_table())
    if (name == e.name) return &e;
  return nullptr;
}
}  // namespace

const MethodInfo& method_info(const std::string& name) {
  if (const MethodInfo* m = find_method(name)) return *m;
  SAAP_THROW_FMT(InvalidArgument, "method = '%s' is not one of: %s", name.c_str(), join(method_names()).c_str());
}

bool method_needs_artifact(const std::string& name) { return *method_info(name).artifact != '\0'; }

void check_options_apply(const std::string& method, const std::vector<std::string>& given) {
  const MethodInfo& m = method_info(method);
  for (const std::string& option : given) {
    if (applies(m, option.c_str())) continue;
    std::vector<std::string> own(m.options.begin(), m.options.end());
    SAAP_THROW_FMT(InvalidArgument, "%s does not apply to method %s (its options: %s)", option.c_str(), method.c_str(),
                   own.empty() ? "none, it reads everything" : join(own).c_str());
  }
}

bool set_method_option(MethodSpec& spec, const std::string& option, const std::string& value) {
  auto number = [&](auto& field) {
    using T = std::decay_t<decltype(field)>;
    char* end = nullptr;
    errno = 0;
    const double x = std::strtod(value.c_str(), &end);
    const bool whole = std::is_floating_point_v<T> || x == std::floor(x);
    SAAP_CHECK_FMT(!value.empty() && *end == '\0' && errno == 0 && std::isfinite(x) && whole, InvalidArgument,
                   "%s = '%s' is not a%s number", option.c_str(), value.c_str(),
                   std::is_floating_point_v<T> ? "" : " whole");
    field = T(x);
    return true;
  };
  if (option == "--method") {
    spec.name = value;
    return true;
  }
  if (option == kOptArtifact) {
    spec.artifact = value;
    return true;
  }
  if (option == kOptLookup) return number(spec.lookup);
  if (option == kOptSinks) return number(spec.sinks);
  if (option == kOptWindow) return number(spec.window);
  if (option == kOptKf) return number(spec.k_f);
  if (option == kOptDf) return number(spec.d_f);
  if (option == kOptBudgetTokens) return number(spec.budget_tokens);
  if (option == kOptPageSize) return number(spec.page_size);
  return false;
}

void check_fraction(double value, const char* field) {
  SAAP_CHECK_FMT(rules::lookup_in_range(value), InvalidArgument,
                 "%s = %g must be in (0, 1]: the fraction of the causal prefix read (1 reads everything)", field, value);
}

void check_method_spec(const MethodSpec& spec) {
  const MethodInfo& m = method_info(spec.name);
  if (applies(m, kOptLookup)) check_fraction(spec.lookup, "lookup");
  if (applies(m, kOptKf)) check_fraction(spec.k_f, "k_f");
  if (applies(m, kOptDf)) check_fraction(spec.d_f, "d_f");
  if (applies(m, kOptSinks)) SAAP_CHECK_FMT(spec.sinks >= 0, InvalidArgument, "sinks = %d must be >= 0", spec.sinks);
  if (applies(m, kOptWindow)) SAAP_CHECK_FMT(spec.window >= 0, InvalidArgument, "window = %d must be >= 0", spec.window);
  // A fixed budget only where the method reads one; the others would silently ignore it.
  SAAP_CHECK_FMT(spec.budget_tokens == 0 || applies(m, kOptBudgetTokens), InvalidArgument,
                 "budget_tokens = %lld: method '%s' takes a lookup fraction, not a fixed budget",
                 (long long)spec.budget_tokens, spec.name.c_str());
  SAAP_CHECK_FMT(spec.budget_tokens >= 0, InvalidArgument, "budget_tokens = %lld must be >= 0 (0: use lookup)",
                 (long long)spec.budget_tokens);
  SAAP_CHECK_FMT(!method_needs_artifact(spec.name) || !spec.artifact.empty(), InvalidArgument,
                 "method %s needs an artifact (--artifact; train one with `%s`)", spec.name.c_str(),
                 train_hint(m.artifact));
}

MethodFactory make_method_factory(const MethodSpec& spec, const ArtifactIdentity& expected) {
  check_method_spec(spec);
  return method_info(spec.name).make(spec, expected);
}

ArtifactIdentity model_artifact_identity(const LlamaModel& model) {
  return model_artifact_identity(model.identity(), model.config());
}

ArtifactIdentity model_artifact_identity(const std::string& model_identity, const LlamaConfig& config) {
  ArtifactIdentity id;
  id.model_identity = model_identity;
  id.n_layers = config.n_layers;
  id.n_heads = config.n_heads;
  id.n_kv_heads = config.n_kv_heads;
  id.head_dim = config.head_dim;
  return id;
}

int equal_budget_streaming_window(double f, int64_t window_len, int sinks) {
  check_fraction(f, "lookup");
  const int budget = std::max(1, int(std::lround(double(window_len) * (1.0 - std::sqrt(1.0 - f)))));
  return std::max(0, budget - sinks);
}

std::string MethodSpec::describe() const {
  if (name == "dense") return name;
  if (name == "loki") return "loki(k_f=" + fmt_double(k_f) + ",d_f=" + fmt_double(d_f) + ")";
  if (name == "streaming")
    return "streaming(sinks=" + std::to_string(sinks) + ",window=" + std::to_string(window) + ")";
  std::string s = name + (budget_tokens > 0 ? "(budget_tokens=" + std::to_string(budget_tokens) : "(lookup=" + fmt_double(lookup));
  const MethodInfo* m = find_method(name);
  if (m && applies(*m, kOptSinks)) s += ",sinks=" + std::to_string(sinks) + ",window=" + std::to_string(window);
  if (m && applies(*m, kOptPageSize)) s += ",page=" + std::to_string(page_size);
  return s + ")";
}

std::string method_budget_label(const MethodSpec& s) {
  if (s.name == "dense") return s.name;
  char buf[64];
  if (s.name == "loki")
    std::snprintf(buf, sizeof buf, "@%g", s.k_f);
  else if (s.budget_tokens > 0)
    std::snprintf(buf, sizeof buf, "@%lldt", (long long)s.budget_tokens);
  else
    std::snprintf(buf, sizeof buf, "@%g", s.lookup);
  return s.name + buf;
}

}  // namespace saap
