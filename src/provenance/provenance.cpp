#include "saap/provenance/provenance.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include "saap/core/error.h"

namespace saap {

namespace {

// SHA-256 (FIPS 180-4), streaming.
class Sha256 {
 public:
  void update(const unsigned char* p, size_t n) {
    bytes_ += n;
    while (n > 0) {
      const size_t take = std::min(n, size_t(64) - fill_);
      std::copy(p, p + take, block_.begin() + fill_);
      fill_ += take, p += take, n -= take;
      if (fill_ == 64) compress(), fill_ = 0;
    }
  }
  std::string hex() {
    const uint64_t bits = bytes_ * 8;
    const unsigned char one = 0x80, zero = 0;
    update(&one, 1);
    while (fill_ != 56) update(&zero, 1);
    for (int i = 7; i >= 0; --i) {
      const unsigned char b = static_cast<unsigned char>(bits >> (8 * i));
      update(&b, 1);
    }
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (uint32_t word : h_)
      for (int i = 28; i >= 0; i -= 4) out += digits[(word >> i) & 0xf];
    return out;
  }

 private:
  static uint32_t rotr(uint32_t x, int r) { return (x >> r) | (x << (32 - r)); }
  void compress() {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(block_[4 * i]) << 24 | uint32_t(block_[4 * i + 1]) << 16 | uint32_t(block_[4 * i + 2]) << 8 |
             uint32_t(block_[4 * i + 3]);
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    const uint32_t add[8] = {a, b, c, d, e, f, g, h};
    for (int i = 0; i < 8; ++i) h_[i] += add[i];
  }

  std::array<uint32_t, 8> h_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<unsigned char, 64> block_{};
  size_t fill_ = 0;
  uint64_t bytes_ = 0;
};

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// The value after the first "key ... :" line of a "key: value" file, or "".
std::string read_field(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return trim(line.substr(colon + 1));
    }
  return "";
}

std::string command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string out;
  size_t start = 0;
  while (start < raw.size()) {
    size_t end = raw.find('\0', start);
    if (end == std::string::npos) end = raw.size();
    out += (out.empty() ? "" : " ") + shell_quote(raw.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// The NVIDIA driver's view: one /proc/driver/nvidia/gpus/<pci id>/information per GPU ("Model:")
// and the kernel module's version line ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15 ...").
std::vector<GpuInfo> nvidia_gpus() {
  std::vector<GpuInfo> gpus;
  const std::string root = "/proc/driver/nvidia/gpus";
  DIR* dir = ::opendir(root.c_str());
  if (!dir) return gpus;
  std::vector<std::string> ids;
  while (const dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') ids.push_back(e->d_name);
  ::closedir(dir);
  std::sort(ids.begin(), ids.end());
  std::string driver;
  {
    std::ifstream in("/proc/driver/nvidia/version");
    std::string line;
    std::getline(in, line);
    const std::string marker = "Kernel Module";
    const size_t at = line.find(marker);
    // "Kernel Module  580.x" or, for the open module, "Kernel Module for x86_64  580.x": the
    // driver is the first token after the marker that starts with a digit.
    if (at != std::string::npos) {
      std::istringstream rest(line.substr(at + marker.size()));
      std::string token;
      while (rest >> token)
        if (std::isdigit(static_cast<unsigned char>(token[0]))) {
          driver = token;
          break;
        }
    }
  }
  for (const std::string& id : ids) gpus.push_back({read_field(root + "/" + id + "/information", "Model"), driver});
  return gpus;
}

// A value on one comment line: line breaks written as \n (the JSON record keeps them).
std::string one_line(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '\n' ? std::string("\\n") : c == '\r' ? std::string("\\r") : std::string(1, c);
  return out;
}

std::string input_line(const InputIdentity& in) {
  return in.role + " " + shell_quote(in.path) + (in.sha256.empty() ? " identity:" + in.identity : " sha256:" + in.sha256);
}

}  // namespace

std::string sha256_hex(const void* data, size_t n) {
  Sha256 h;
  h.update(static_cast<const unsigned char*>(data), n);
  return h.hex();
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::NotFound, "sha256_file: cannot read '" + path + "'");
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    h.update(reinterpret_cast<const unsigned char*>(buf.data()), size_t(in.gcount()));
  }
  if (in.bad()) throw Error(ErrorKind::BadFile, "sha256_file: read error in '" + path + "'");
  return h.hex();
}

InputIdentity input_file(const std::string& role, const std::string& path) {
  std::ifstream probe(path, std::ios::binary);
  if (!probe) throw Error(ErrorKind::NotFound, "input " + role + " = '" + path + "' cannot be read to hash it");
  return {role, path, sha256_file(path), ""};
}

InputIdentity input_with_identity(const std::string& role, const std::string& path, const std::string& identity) {
  if (identity.empty()) throw Error(ErrorKind::InvalidArgument, "input " + role + " = '" + path + "' has an empty identity");
  return {role, path, "", identity};
}

std::string shell_quote(const std::string& arg) {
  const bool safe = !arg.empty() && arg.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                                                          "@%+=:,./_-") == std::string::npos;
  if (safe) return arg;
  std::string q = "'";
  for (char c : arg) q += c == '\'' ? std::string("'\"'\"'") : std::string(1, c);
  return q + "'";
}

std::string json_quote(const std::string& s) {
  std::string q = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      q += '\\';
      q += char(c);
    } else if (c < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", c);
      q += esc;
    } else {
      q += char(c);
    }
  }
  return q + "\"";
}

Provenance collect_provenance(std::vector<InputIdentity> inputs) {
  Provenance p;
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &utc);
  p.date = date;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  p.hostname = host;
  p.cpu = read_field("/proc/cpuinfo", "model name");
  p.cores = std::thread::hardware_concurrency();
  p.gpus = nvidia_gpus();
  p.commit = build_commit();
  p.dirty = build_dirty();
  p.command = command_line();
  p.inputs = std::move(inputs);
  return p;
}

std::string machine_line(const Provenance& p) {
  std::string line = p.hostname + ", " + (p.cpu.empty() ? "unknown CPU" : p.cpu) + ", " + std::to_string(p.cores) +
                     " cores";
  for (size_t i = 0; i < p.gpus.size(); ++i)
    line += (i ? ", " : "; GPU ") + p.gpus[i].name + " (driver " + p.gpus[i].driver + ")";
  return line;
}

std::string provenance_csv_lines(const Provenance& p) {
  std::string s = "# date: " + one_line(p.date) + "\n# machine: " + one_line(machine_line(p)) + "\n# commit: " +
                  one_line(p.commit) + (p.dirty == 1 ? " (dirty)" : p.dirty < 0 ? " (dirty: unknown)" : "") +
                  "\n# command: " + one_line(p.command) + "\n";
  for (const InputIdentity& in : p.inputs) s += "# input: " + one_line(input_line(in)) + "\n";
  return s;
}

std::string provenance_json(const Provenance& p, int indent) {
  const std::string pad(size_t(indent), ' '), in1 = pad + "  ", in2 = in1 + "  ";
  std::string s = "{\n";
  s += in1 + "\"date\": " + json_quote(p.date) + ",\n";
  s += in1 + "\"machine\": {\"hostname\": " + json_quote(p.hostname) + ", \"cpu\": " + json_quote(p.cpu) +
       ", \"cores\": " + std::to_string(p.cores) + ", \"gpus\": [";
  for (size_t i = 0; i < p.gpus.size(); ++i)
    s += std::string(i ? ", " : "") + "{\"name\": " + json_quote(p.gpus[i].name) +
         ", \"driver\": " + json_quote(p.gpus[i].driver) + "}";
  s += "]},\n";
  s += in1 + "\"commit\": " + json_quote(p.commit) + ",\n";
  s += in1 + "\"dirty\": " + (p.dirty < 0 ? std::string("null") : p.dirty ? "true" : "false") + ",\n";
  s += in1 + "\"command\": " + json_quote(p.command) + ",\n";
  s += in1 + "\"inputs\": [";
  for (size_t i = 0; i < p.inputs.size(); ++i) {
    const InputIdentity& in = p.inputs[i];
    s += std::string(i ? "," : "") + "\n" + in2 + "{\"role\": " + json_quote(in.role) + ", \"path\": " +
         json_quote(in.path) + ", " +
         (in.sha256.empty() ? "\"identity\": " + json_quote(in.identity) : "\"sha256\": " + json_quote(in.sha256)) +
         "}";
  }
  s += p.inputs.empty() ? "]\n" : "\n" + in1 + "]\n";
  return s + pad + "}";
}

}  // namespace saap
