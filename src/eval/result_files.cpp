#include "saap/eval/result_files.h"

#include <filesystem>
#include <sstream>

#include "saap/core/atomic_file.h"
#include "saap/core/error.h"

namespace saap {

namespace {

// A CSV field quoted when it holds a separator, a quote or a line break.
std::string quote(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

}  // namespace

nlohmann::json to_json(const Provenance& p) {
  nlohmann::json gpus = nlohmann::json::array();
  for (const GpuInfo& g : p.gpus) gpus.push_back({{"name", g.name}, {"driver", g.driver}});
  nlohmann::json inputs = nlohmann::json::array();
  for (const InputIdentity& in : p.inputs) {
    nlohmann::json j = {{"role", in.role}, {"path", in.path}};
    if (in.sha256.empty())
      j["identity"] = in.identity;
    else
      j["sha256"] = in.sha256;
    inputs.push_back(j);
  }
  return {{"date", p.date},
          {"machine", {{"hostname", p.hostname}, {"cpu", p.cpu}, {"cores", p.cores}, {"gpus", gpus}}},
          {"commit", p.commit},
          {"dirty", p.dirty < 0 ? nlohmann::json(nullptr) : nlohmann::json(p.dirty == 1)},
          {"command", p.command},
          {"inputs", inputs}};
}

nlohmann::json run_provenance(const std::vector<InputIdentity>& inputs) {
  return to_json(collect_provenance(inputs));
}

void CsvTable::add(std::vector<std::string> row) {
  SAAP_CHECK_FMT(row.size() == columns.size(), InvalidArgument, "CSV row of %zu fields for %zu columns", row.size(),
                 columns.size());
  rows.push_back(std::move(row));
}

std::string csv_field(double x) {
  std::ostringstream s;
  s.precision(8);
  s << x;
  return s.str();
}

std::vector<std::string> write_result_files(const std::string& dir, const std::string& stem, nlohmann::json doc,
                                            const CsvTable& table, const std::vector<InputIdentity>& inputs) {
  std::filesystem::create_directories(dir);
  const Provenance prov = collect_provenance(inputs);
  doc["provenance"] = to_json(prov);
  const std::string json_path = (std::filesystem::path(dir) / (stem + ".json")).string();
  const std::string csv_path = (std::filesystem::path(dir) / (stem + ".csv")).string();
  // Atomically, so an interrupted run never leaves a half-written result file for a table to read.
  write_file_atomically(json_path, doc.dump(2) + "\n");
  std::ostringstream out;
  out << provenance_csv_lines(prov);
  for (size_t i = 0; i < table.columns.size(); ++i) out << (i ? "," : "") << quote(table.columns[i]);
  out << "\n";
  for (const auto& row : table.rows) {
    for (size_t i = 0; i < row.size(); ++i) out << (i ? "," : "") << quote(row[i]);
    out << "\n";
  }
  write_file_atomically(csv_path, out.str());
  return {json_path, csv_path};
}

}  // namespace saap
