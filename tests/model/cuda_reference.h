// Reference logits of the fp32 CPU runner for the CUDA runner's test, kept in a small text file
// (tests/model/data/cuda_reference_logits.txt; cuda_reference_gemma3.txt for Gemma-3-270M) because
// the GPU machine cannot build the CPU runner
// (no BLAS). Written and checked by tests/model/test_cuda_reference.cpp, read by
// tests/kernels/cuda/test_cuda_llama.cu.
//
// Per prompt and position it keeps the log-sum-exp over the whole vocabulary, the logit of the
// prompt's next token, and the top-k (id, logit) pairs: enough to compare top-1, the logits that
// matter and the whole-vocabulary normaliser without 12 MB of full logits.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace saap::testref {

struct PositionRef {
  double lse = 0;                // log sum_j exp(logit_j), float64
  double next_logit = NAN;       // logit of the prompt's token at the next position (NaN at the end)
  std::vector<int32_t> top_ids;  // [topk] by decreasing logit, ties to the lower id
  std::vector<float> top_logits;
};

struct PromptRef {
  std::vector<int32_t> tokens;         // [n]
  std::vector<PositionRef> positions;  // [n]
};

struct LogitsRef {
  std::string model;  // "<general.name> layers <L> vocab <V>"
  int topk = 0;
  std::vector<PromptRef> prompts;
};

inline std::string reference_path(const std::string& source_dir) {
  return source_dir + "/tests/model/data/cuda_reference_logits.txt";
}
// Gemma-3-270M's (the GGUF that SAAP_GEMMA3_MODEL / setup.sh names): one prompt, BOS + 640 tokens
// of eval.txt, which crosses the 512-token sliding window of the local layers.
inline std::string gemma3_reference_path(const std::string& source_dir) {
  return source_dir + "/tests/model/data/cuda_reference_gemma3.txt";
}

// The reference row of one position from its full logits [vocab].
inline PositionRef summarize(const float* logits, int vocab, int topk, int32_t next_token) {
  PositionRef p;
  double mx = -INFINITY;
  for (int j = 0; j < vocab; ++j) mx = std::max(mx, double(logits[j]));
  double sum = 0;
  for (int j = 0; j < vocab; ++j) sum += std::exp(double(logits[j]) - mx);
  p.lse = mx + std::log(sum);
  p.next_logit = next_token >= 0 ? double(logits[next_token]) : NAN;
  std::vector<int32_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + topk, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int i = 0; i < topk; ++i) {
    p.top_ids.push_back(ids[size_t(i)]);
    p.top_logits.push_back(logits[ids[size_t(i)]]);
  }
  return p;
}

inline void write_reference(const std::string& path, const LogitsRef& r) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  out << "# fp32 CPU-runner logits (src/model/llama.cpp), written by tests/model/test_cuda_reference.cpp:\n"
         "# SAAP_WRITE_CUDA_REFERENCE=1 build/tests/test_model --gtest_filter='CudaReference.*'\n"
         "# per position: lse next_logit id:logit x topk\n";
  out << "model " << r.model << "\n";
  out << "prompts " << r.prompts.size() << " topk " << r.topk << "\n";
  char buf[64];
  for (const PromptRef& p : r.prompts) {
    out << "tokens " << p.tokens.size();
    for (int32_t t : p.tokens) out << ' ' << t;
    out << "\n";
    for (const PositionRef& pos : p.positions) {
      std::snprintf(buf, sizeof buf, "%.9g %.9g", pos.lse, pos.next_logit);
      out << buf;
      for (size_t i = 0; i < pos.top_ids.size(); ++i) {
        std::snprintf(buf, sizeof buf, " %d:%.9g", pos.top_ids[i], double(pos.top_logits[i]));
        out << buf;
      }
      out << "\n";
    }
  }
  if (!out) throw std::runtime_error("error writing " + path);
}

inline LogitsRef read_reference(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  auto bad = [&](const std::string& what) { return std::runtime_error(path + ": " + what); };
  std::string line, word;
  auto next_line = [&]() {
    while (std::getline(in, line))
      if (!line.empty() && line[0] != '#') return;
    throw bad("truncated");
  };
  LogitsRef r;
  next_line();
  if (line.rfind("model ", 0) != 0) throw bad("expected 'model', got: " + line);
  r.model = line.substr(6);
  next_line();
  size_t n_prompts = 0;
  {
    std::istringstream s(line);
    s >> word >> n_prompts >> word >> r.topk;
    if (!s || n_prompts == 0 || r.topk <= 0) throw bad("bad header line: " + line);
  }
  for (size_t p = 0; p < n_prompts; ++p) {
    PromptRef pr;
    next_line();
    std::istringstream s(line);
    size_t n = 0;
    s >> word >> n;
    if (word != "tokens" || n == 0) throw bad("bad tokens line: " + line.substr(0, 40));
    pr.tokens.resize(n);
    for (auto& t : pr.tokens) s >> t;
    if (!s) throw bad("short tokens line");
    for (size_t i = 0; i < n; ++i) {
      next_line();
      std::istringstream ps(line);
      PositionRef pos;
      std::string lse, next;
      ps >> lse >> next;
      pos.lse = std::strtod(lse.c_str(), nullptr);
      pos.next_logit = std::strtod(next.c_str(), nullptr);
      for (int k = 0; k < r.topk; ++k) {
        std::string pair;
        ps >> pair;
        const size_t colon = pair.find(':');
        if (!ps || colon == std::string::npos) throw bad("bad position line of prompt " + std::to_string(p));
        pos.top_ids.push_back(int32_t(std::stol(pair.substr(0, colon))));
        pos.top_logits.push_back(std::strtof(pair.c_str() + colon + 1, nullptr));
      }
      pr.positions.push_back(std::move(pos));
    }
    r.prompts.push_back(std::move(pr));
  }
  return r;
}

// One long window of eval.txt (8192 tokens, the model's whole context) through the CPU runner:
// per position its top-1 token, the top-1 minus top-2 logit margin, and the NLL of the next token
// (tests/model/data/cuda_reference_long.txt; read by bench/cuda/gpu_ppl --reference).
struct LongRef {
  std::string model;
  std::vector<int32_t> tokens;  // [n]
  std::vector<int32_t> top1;    // [n]
  std::vector<float> margin;    // [n]
  std::vector<double> nll;      // [n]; NaN at n - 1
};

inline std::string long_reference_path(const std::string& source_dir) {
  return source_dir + "/tests/model/data/cuda_reference_long.txt";
}

inline void write_long_reference(const std::string& path, const LongRef& r) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  out << "# fp32 CPU-runner results on the first window of eval.txt, written by tests/model/test_cuda_reference.cpp:\n"
         "# SAAP_WRITE_CUDA_REFERENCE=1 build/tests/test_model --gtest_filter='CudaReference.*'\n"
         "# per position: top1 margin(top1 - top2 logit) nll(next token)\n";
  out << "model " << r.model << "\n";
  out << "tokens " << r.tokens.size();
  for (int32_t t : r.tokens) out << ' ' << t;
  out << "\n";
  char buf[96];
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%d %.5f %.7g\n", r.top1[i], double(r.margin[i]), r.nll[i]);
    out << buf;
  }
  if (!out) throw std::runtime_error("error writing " + path);
}

inline LongRef read_long_reference(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  auto bad = [&](const std::string& what) { return std::runtime_error(path + ": " + what); };
  std::string line, word;
  auto next_line = [&]() {
    while (std::getline(in, line))
      if (!line.empty() && line[0] != '#') return;
    throw bad("truncated");
  };
  LongRef r;
  next_line();
  if (line.rfind("model ", 0) != 0) throw bad("expected 'model', got: " + line.substr(0, 40));
  r.model = line.substr(6);
  next_line();
  std::istringstream s(line);
  size_t n = 0;
  s >> word >> n;
  if (word != "tokens" || n == 0) throw bad("bad tokens line");
  r.tokens.resize(n);
  for (auto& t : r.tokens) s >> t;
  if (!s) throw bad("short tokens line");
  for (size_t i = 0; i < n; ++i) {
    next_line();
    std::istringstream ps(line);
    int32_t top1 = -1;
    float margin = 0;
    std::string nll;
    ps >> top1 >> margin >> nll;
    if (!ps) throw bad("bad position line " + std::to_string(i));
    r.top1.push_back(top1);
    r.margin.push_back(margin);
    r.nll.push_back(std::strtod(nll.c_str(), nullptr));
  }
  return r;
}

}  // namespace saap::testref
