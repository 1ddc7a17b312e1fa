// Result files of an evaluation run: one JSON document (everything, nested) and one flat CSV
// (one row per method/setting, what plots and the README table read), each carrying the run's
// provenance (saap/provenance/provenance.h): date (UTC), machine, the commit the binary was built
// from with its dirty flag, the exact command and the inputs' identities. JSON: a "provenance"
// object; CSV: leading "# key: value" lines. scripts/check_provenance.py checks every file under
// results/ for them.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "saap/provenance/provenance.h"

namespace saap {

// The provenance of this process now, with `inputs`, as the JSON object result files carry.
nlohmann::json run_provenance(const std::vector<InputIdentity>& inputs = {});
nlohmann::json to_json(const Provenance& p);

struct CsvTable {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
  void add(std::vector<std::string> row);  // InvalidArgument when the width differs from columns
};
std::string csv_field(double x);

// Writes <dir>/<stem>.json (doc + "provenance") and <dir>/<stem>.csv (provenance as leading '#'
// comment lines, then the table), creating dir. Both carry the same provenance. Returns the two paths.
std::vector<std::string> write_result_files(const std::string& dir, const std::string& stem, nlohmann::json doc,
                                            const CsvTable& table, const std::vector<InputIdentity>& inputs = {});

}  // namespace saap
