// Provenance of result files: the SHA-256 against FIPS 180-2 vectors and Python's hashlib, the
// JSON writer without a JSON library (decode_bench's) against nlohmann's, shell quoting through a
// real shell, and the files write_result_files makes, read back and passed through
// scripts/check_provenance.py (the check CI runs on results/).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>

#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/eval/result_files.h"

namespace saap {
namespace {

namespace fs = std::filesystem;

std::string run(const std::string& cmd, int* status = nullptr) {
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while (p && (n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int rc = p ? ::pclose(p) : -1;
  if (status) *status = rc;
  return out;
}

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/saap_result_files_XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(Sha256, MatchesFipsVectors) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";  // pads into a 2nd block
  EXPECT_EQ(sha256_hex(two_blocks.data(), two_blocks.size()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  EXPECT_EQ(sha256_hex(million.data(), million.size()),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// Files longer than the 1 MiB read buffer, and lengths around the 55/56/64-byte padding edges.
TEST(Sha256, FileMatchesPythonHashlib) {
  TempDir dir;
  for (size_t n : {size_t(55), size_t(56), size_t(63), size_t(64), size_t(65), size_t(3 << 20) + 7}) {
    const fs::path p = dir.path / ("f" + std::to_string(n));
    {
      std::ofstream out(p, std::ios::binary);
      for (size_t i = 0; i < n; ++i) out.put(char((i * 131 + 7) & 0xff));
    }
    const std::string want = run(python_interpreter() + " -c \"import hashlib,sys; print(hashlib.sha256(open('" +
                                 p.string() + "','rb').read()).hexdigest())\"");
    ASSERT_EQ(want.size(), 65u) << "python hashlib failed: " << want;
    EXPECT_EQ(sha256_file(p.string()), want.substr(0, 64)) << n << " bytes";
  }
}

TEST(Provenance, MissingInputIsANamedError) {
  try {
    input_file("artifact", "/nonexistent/saap.safetensors");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::NotFound);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/saap.safetensors"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("artifact"), std::string::npos) << e.what();
  }
  EXPECT_THROW(input_with_identity("model", "m.gguf", ""), Error);
}

// Each quoted word comes back from /bin/sh unchanged.
TEST(Provenance, ShellQuoteSurvivesTheShell) {
  for (const std::string word : {"plain-word_1.0", "two words", "it's", "$HOME", "a\"b", "", "x;y|z", "--run=a:b/c"}) {
    const std::string echoed = run("printf '%s' " + shell_quote(word));
    EXPECT_EQ(echoed, word) << shell_quote(word);
  }
  EXPECT_EQ(shell_quote("--lookup=0.05"), "--lookup=0.05");  // safe words stay readable
}

// decode_bench writes provenance_json() without a JSON library; it must say what to_json() says.
TEST(Provenance, PlainJsonWriterAgreesWithNlohmann) {
  Provenance p;
  p.date = "2026-11-23T07:51:04Z";
  p.hostname = "host\"1";
  p.cpu = "AMD EPYC \\ 9654\t\x01";
  p.cores = 16;
  p.gpus = {{"NVIDIA H100 80GB HBM3", "550.54.15"}, {"GPU \"two\"", "CUDA 12.4"}};
  p.commit = "0123456789abcdef0123456789abcdef01234567";
  p.command = "saap eval ppl --text 'my file.txt'\nnext";
  p.inputs = {{"artifact", "/a b/x.safetensors", std::string(64, 'a'), ""}, {"model", "m.gguf", "", "id|gguf:ff"}};
  for (int dirty : {-1, 0, 1}) {
    p.dirty = dirty;
    EXPECT_EQ(nlohmann::json::parse(provenance_json(p, 4)), to_json(p)) << provenance_json(p, 4);
  }
  // The CSV lines: one line per key, a line break inside a value written as \n.
  const std::string csv = provenance_csv_lines(p);
  EXPECT_NE(csv.find("\n# command: saap eval ppl --text 'my file.txt'\\nnext\n# input: artifact "), std::string::npos)
      << csv;
  EXPECT_NE(csv.find("# machine: host\"1, AMD EPYC \\ 9654\t\x01, 16 cores; GPU NVIDIA H100 80GB HBM3 (driver "
                     "550.54.15), GPU \"two\" (driver CUDA 12.4)\n"),
            std::string::npos)
      << csv;
  EXPECT_NE(csv.find("# commit: 0123456789abcdef0123456789abcdef01234567 (dirty)\n"), std::string::npos) << csv;
  p.inputs.clear();
  p.gpus.clear();
  EXPECT_EQ(nlohmann::json::parse(provenance_json(p)), to_json(p)) << provenance_json(p);
}

TEST(ResultFiles, CarryProvenanceTheCheckAccepts) {
  TempDir dir;
  const fs::path results = dir.path / "results";
  const fs::path input = dir.path / "input.txt";
  std::ofstream(input) << "abc";
  CsvTable table{{"method", "value"}, {}};
  table.add({"saap(lookup=0.05,sinks=4)", "1.5"});
  EXPECT_THROW(table.add({"only one field"}), Error);
  const auto before = std::chrono::system_clock::now();
  const auto paths =
      write_result_files(results.string(), "run", {{"x", 1}}, table,
                         {input_file("text", input.string()), input_with_identity("model", "m.gguf", "id|gguf:ff")});
  ASSERT_EQ(paths.size(), 2u);

  const nlohmann::json doc = nlohmann::json::parse(slurp(paths[0]));
  EXPECT_EQ(doc["x"], 1);
  const nlohmann::json& prov = doc.at("provenance");
  // Date: UTC, to the second, within the test's run.
  const std::string date = prov.at("date");
  ASSERT_TRUE(std::regex_match(date, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"))) << date;
  std::tm tm{};
  ::strptime(date.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  const auto written = std::chrono::system_clock::from_time_t(::timegm(&tm));
  EXPECT_LE(std::chrono::abs(written - before), std::chrono::seconds(60)) << date;
  // Machine.
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  EXPECT_EQ(prov["machine"]["hostname"], host);
  EXPECT_EQ(prov["machine"]["cores"], std::thread::hardware_concurrency());
  EXPECT_FALSE(prov["machine"]["cpu"].get<std::string>().empty());
  // Commit: the build's, a real commit of this repository (when the tests run in a git checkout).
  const std::string commit = prov.at("commit");
  int status = 0;
  run("git -C " + std::string(SAAP_SOURCE_DIR) + " rev-parse --git-dir >/dev/null 2>&1", &status);
  if (status == 0) {
    ASSERT_TRUE(std::regex_match(commit, std::regex("[0-9a-f]{40}"))) << commit;
    run("git -C " + std::string(SAAP_SOURCE_DIR) + " cat-file -e " + commit + "^{commit} 2>/dev/null", &status);
    EXPECT_EQ(status, 0) << commit << " is not a commit of " << SAAP_SOURCE_DIR;
    EXPECT_TRUE(prov.at("dirty").is_boolean());
  }
  // Command: this test binary's own command line.
  EXPECT_NE(prov.at("command").get<std::string>().find("test_eval"), std::string::npos) << prov["command"];
  // Inputs.
  ASSERT_EQ(prov.at("inputs").size(), 2u);
  EXPECT_EQ(prov["inputs"][0]["role"], "text");
  EXPECT_EQ(prov["inputs"][0]["sha256"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(prov["inputs"][1]["identity"], "id|gguf:ff");
  EXPECT_FALSE(prov["inputs"][1].contains("sha256"));

  // The CSV: the same record as '# key: value' lines, then the table.
  const std::string csv = slurp(paths[1]);
  const std::string dirty = prov["dirty"].is_null() ? " (dirty: unknown)" : prov["dirty"].get<bool>() ? " (dirty)" : "";
  const std::string head = "# date: " + date + "\n# machine: " + host;
  EXPECT_EQ(csv.rfind(head, 0), 0u) << csv;
  EXPECT_NE(csv.find("\n# commit: " + commit + dirty + "\n# command: " + prov["command"].get<std::string>() + "\n"),
            std::string::npos)
      << csv;
  EXPECT_NE(csv.find("# input: text " + input.string() +
                     " sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
                     "# input: model m.gguf identity:id|gguf:ff\nmethod,value\n\"saap(lookup=0.05,sinks=4)\",1.5\n"),
            std::string::npos)
      << csv;

  // scripts/check_provenance.py, as CI runs it on results/, accepts both files.
  if (status == 0) {
    std::ofstream(dir.path / "README.md") << "### Results without provenance\n";
    const std::string out = run(python_interpreter() + " " + SAAP_SOURCE_DIR + "/scripts/check_provenance.py --root " +
                                    dir.path.string() + " results 2>&1",
                                &status);
    EXPECT_EQ(status, 0) << out;
    EXPECT_NE(out.find("2 files carry provenance"), std::string::npos) << out;
  }
}

}  // namespace
}  // namespace saap
