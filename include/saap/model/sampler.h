// Choosing the next token from logits: greedy (temperature 0) or sampling from the softmax at a
// temperature, restricted to the top-k tokens and then to the smallest set whose probability
// reaches top-p (nucleus sampling). Seeded, so a run is reproducible.
#pragma once
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace saap {

struct SamplerConfig {
  float temperature = 0.0f;  // 0: greedy (argmax)
  int top_k = 0;             // 0: no top-k cut
  float top_p = 1.0f;        // 1: no nucleus cut; in (0, 1]
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Throws InvalidArgument naming a parameter out of range.
  explicit Sampler(const SamplerConfig& config);
  const SamplerConfig& config() const { return config_; }
  // The next token; throws NonFinite when the logits hold NaN/Inf.
  int32_t sample(const float* logits, int32_t vocab_size);
  // The tokens sampling may return for these logits, with their probabilities, most likely first
  // (after temperature, top-k and top-p; renormalized). Greedy gives the argmax alone.
  std::vector<std::pair<int32_t, double>> candidates(const float* logits, int32_t vocab_size) const;

 private:
  SamplerConfig config_;
  std::mt19937_64 rng_;
};

}  // namespace saap
