// AtomicFile: the target changes only on commit(); a writer that stops early (an exception, a
// destructor without commit) leaves the previous contents and no temporary file.
#include "saap/core/atomic_file.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include "saap/core/error.h"

namespace saap {
namespace {

namespace fs = std::filesystem;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A fresh, empty directory per test, so that leftover files can be counted.
struct Dir {
  fs::path path = fs::path(::testing::TempDir()) /
                  ("saap_atomic_" + std::to_string(::getpid()) + "_" +
                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
  Dir() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~Dir() { fs::remove_all(path); }
  size_t entries() const { return size_t(std::distance(fs::directory_iterator(path), fs::directory_iterator())); }
};

TEST(AtomicFile, CommitReplacesTheTargetAndLeavesNothingElse) {
  Dir d;
  const std::string target = (d.path / "out.json").string();
  write_file_atomically(target, "first\n");
  EXPECT_EQ(read_text(target), "first\n");
  write_file_atomically(target, "second, longer\n");
  EXPECT_EQ(read_text(target), "second, longer\n");
  EXPECT_EQ(d.entries(), 1u);
}

TEST(AtomicFile, AWriterThatThrowsMidwayKeepsTheOldFile) {
  Dir d;
  const std::string target = (d.path / "out.json").string();
  write_file_atomically(target, "old contents\n");
  try {
    AtomicFile f(target);
    f.write("new contents, half of th");
    throw std::runtime_error("the producer failed midway");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(read_text(target), "old contents\n");
  EXPECT_EQ(d.entries(), 1u);  // the temporary file is gone
}

TEST(AtomicFile, NoTargetUntilCommit) {
  Dir d;
  const std::string target = (d.path / "new.csv").string();
  {
    AtomicFile f(target);
    f.write("a,b\n");
    EXPECT_FALSE(fs::exists(target));
  }
  EXPECT_FALSE(fs::exists(target));
  EXPECT_EQ(d.entries(), 0u);
}

TEST(AtomicFile, MissingDirectoryIsNamed) {
  Dir d;
  const std::string target = (d.path / "no_such_dir" / "x").string();
  try {
    write_file_atomically(target, "x");
    FAIL() << "wrote into a missing directory";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadFile);
    EXPECT_NE(std::string(e.what()).find("no_such_dir"), std::string::npos) << e.what();
  }
}

TEST(AtomicFile, WriteAfterCommitIsRefused) {
  Dir d;
  AtomicFile f((d.path / "x").string());
  f.write("x");
  f.commit();
  EXPECT_THROW(f.write("y"), Error);
  EXPECT_THROW(f.commit(), Error);
}

}  // namespace
}  // namespace saap
