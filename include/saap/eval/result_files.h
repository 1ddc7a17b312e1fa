// Result files of an evaluation run: one JSON document (everything, nested) and one flat CSV
// (one row per method/setting, what plots and the README table read), each carrying the date,
// the machine and the command that produced it.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace saap {

// {"date", "machine" {hostname, cpu, cores}, "command"} of this process.
nlohmann::json run_provenance();

struct CsvTable {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
  void add(std::vector<std::string> row);  // InvalidArgument when the width differs from columns
};
std::string csv_field(double x);

// Writes <dir>/<stem>.json and <dir>/<stem>.csv (provenance as leading '#' comment lines), creating
// dir. Returns the two paths.
std::vector<std::string> write_result_files(const std::string& dir, const std::string& stem, nlohmann::json doc,
                                            const CsvTable& table);

}  // namespace saap
