#include "saap/core/utf8.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <random>
#include <string>

namespace saap {
namespace {

const std::string R = kUtf8Replacement;

TEST(Utf8, ValidTextIsUnchanged) {
  const std::string text = "plain ASCII, é, 中文, 😀, \xF4\x8F\xBF\xBF (U+10FFFF)";
  EXPECT_EQ(utf8_sanitize(text), text);
}

// Unicode 15, section 3.9, Table 3-8: "U+FFFD for each maximal subpart".
TEST(Utf8, MaximalSubpartsAsTheUnicodeStandardShows) {
  EXPECT_EQ(utf8_sanitize("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a" + R + R + R + "b" + R + "c" + R + R + "d");
  EXPECT_EQ(utf8_sanitize("\xC0\xAF"), R + R);              // overlong: C0 never starts a sequence
  EXPECT_EQ(utf8_sanitize("\xE0\x80\xAF"), R + R + R);      // overlong 3-byte
  EXPECT_EQ(utf8_sanitize("\xED\xA0\x80"), R + R + R);      // a surrogate
  EXPECT_EQ(utf8_sanitize("\xF4\x90\x80\x80"), R + R + R + R);  // above U+10FFFF
  EXPECT_EQ(utf8_sanitize("\xFF"), R);
  EXPECT_EQ(utf8_sanitize("\xE4\xB8"), R);                  // a cut-off 中 at the end: one U+FFFD
}

// Python's bytes.decode("utf-8", "replace") follows the same practice: an independent reference
// on random byte strings biased towards bytes that start and continue sequences.
TEST(Utf8, MatchesPythonOnRandomBytes) {
  std::mt19937 rng(7);
  const unsigned char pool[] = {'a', 0x80, 0x8F, 0x90, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0,
                                0xE4, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF, 0xB8, 0xAD, 0x9F};
  std::string inputs_hex;
  std::vector<std::string> inputs;
  for (int n = 0; n < 300; ++n) {
    std::string s;
    for (int k = int(rng() % 9); k > 0; --k) s += char(pool[rng() % sizeof pool]);
    inputs.push_back(s);
    char hex[3];
    for (unsigned char c : s) {
      std::snprintf(hex, sizeof hex, "%02x", c);
      inputs_hex += hex;
    }
    inputs_hex += ' ';
  }
  // Any python3 will do: only the standard library is used.
  const std::string cmd = std::string("python3") +
                          " -c \"import sys\nfor h in sys.argv[1].split(' ')[:-1]: "
                          "print(bytes.fromhex(h).decode('utf-8','replace').encode('utf-8').hex())\" '" +
                          inputs_hex + "'";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(cmd.c_str(), "r"), ::pclose);
  ASSERT_TRUE(pipe);
  char line[512];
  size_t n = 0;
  for (; std::fgets(line, sizeof line, pipe.get()); ++n) {
    ASSERT_LT(n, inputs.size());
    std::string expected;
    for (size_t k = 0; line[k] && line[k + 1] && line[k] != '\n'; k += 2)
      expected += char(std::stoi(std::string(line + k, 2), nullptr, 16));
    EXPECT_EQ(utf8_sanitize(inputs[n]), expected) << "input #" << n;
  }
  EXPECT_EQ(n, inputs.size()) << "python did not answer for every input";
}

TEST(Utf8Stream, HoldsBackACharacterSplitAcrossTokens) {
  Utf8Stream stream;
  EXPECT_EQ(stream.push("\xE4"), "");  // 中 = E4 B8 AD
  EXPECT_EQ(stream.push("\xB8"), "");
  EXPECT_EQ(stream.pending(), 2u);
  EXPECT_EQ(stream.push("\xAD!"), "中!");
  EXPECT_EQ(stream.finish(), "");
}

TEST(Utf8Stream, FlushesADanglingSequenceAsOneReplacement) {
  Utf8Stream stream;
  EXPECT_EQ(stream.push("ok \xF0\x9F"), "ok ");
  EXPECT_EQ(stream.finish(), R);
  EXPECT_EQ(stream.pending(), 0u);
}

TEST(Utf8Stream, InvalidBytesAreReplacedAtOnce) {
  Utf8Stream stream;
  EXPECT_EQ(stream.push("a\xFF" "b"), "a" + R + "b");
  EXPECT_EQ(stream.push("\xE4\x41"), R + "A");  // a lead byte that the next token does not continue
}

// However bytes are cut into tokens, the stream shows exactly what sanitizing the whole would.
TEST(Utf8Stream, AnySplitGivesTheSanitizedWhole) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string all;
    for (int k = int(rng() % 16); k > 0; --k) all += char(rng() % 4 ? 0x80 + rng() % 0x80 : rng() % 0x80);
    Utf8Stream stream;
    std::string shown;
    for (size_t i = 0; i < all.size();) {
      const size_t len = 1 + rng() % 3;
      shown += stream.push(all.substr(i, len));
      i += len;
    }
    shown += stream.finish();
    ASSERT_EQ(shown, utf8_sanitize(all)) << "trial " << trial;
  }
}

}  // namespace
}  // namespace saap
