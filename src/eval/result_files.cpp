#include "saap/eval/result_files.h"

#include <unistd.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "saap/core/error.h"

namespace saap {

namespace {

std::string read_first_match(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "";
}

std::string command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()), out;
  for (char c : raw) out += c == '\0' ? ' ' : c;
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

// A CSV field quoted when it holds a separator, a quote or a line break.
std::string quote(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

}  // namespace

nlohmann::json run_provenance() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return {{"date", date},
          {"machine",
           {{"hostname", host},
            {"cpu", read_first_match("/proc/cpuinfo", "model name")},
            {"cores", std::thread::hardware_concurrency()}}},
          {"command", command_line()}};
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
                                            const CsvTable& table) {
  std::filesystem::create_directories(dir);
  const nlohmann::json prov = run_provenance();
  if (!doc.contains("provenance")) doc["provenance"] = prov;
  const std::string json_path = (std::filesystem::path(dir) / (stem + ".json")).string();
  const std::string csv_path = (std::filesystem::path(dir) / (stem + ".csv")).string();
  {
    std::ofstream out(json_path);
    out << doc.dump(2) << "\n";
    SAAP_CHECK_FMT(out.good(), NotFound, "cannot write %s", json_path.c_str());
  }
  std::ofstream out(csv_path);
  out << "# date: " << prov["date"].get<std::string>() << "\n"
      << "# machine: " << prov["machine"]["hostname"].get<std::string>() << ", "
      << prov["machine"]["cpu"].get<std::string>() << ", " << prov["machine"]["cores"].get<unsigned>() << " cores\n"
      << "# command: " << prov["command"].get<std::string>() << "\n";
  for (size_t i = 0; i < table.columns.size(); ++i) out << (i ? "," : "") << quote(table.columns[i]);
  out << "\n";
  for (const auto& row : table.rows) {
    for (size_t i = 0; i < row.size(); ++i) out << (i ? "," : "") << quote(row[i]);
    out << "\n";
  }
  SAAP_CHECK_FMT(out.good(), NotFound, "cannot write %s", csv_path.c_str());
  return {json_path, csv_path};
}

}  // namespace saap
