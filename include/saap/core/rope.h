// Rotary position embedding. GGUF Llama files store Q/K weights permuted for the interleaved
// ("normal", GGML_ROPE_TYPE_NORM) convention, where dimension pairs are (2i, 2i+1); the NeoX /
// Hugging Face convention pairs (i, i + n_rot/2). Both are needed: the runner uses the first,
// reference code and other model families the second.
#pragma once
#include <cstdint>
#include <vector>

namespace saap {

enum class RopeStyle { Interleaved, NeoX };

struct RopeConfig {
  int head_dim = 0;
  int n_rot = 0;  // rotated dimensions (<= head_dim); 0 means head_dim
  float base = 10000.0f;
  float freq_scale = 1.0f;           // linear position scaling (positions multiplied by this)
  std::vector<float> freq_factors;   // optional per-pair divisors (Llama 3.1 "rope_freqs"), n_rot/2 entries
  RopeStyle style = RopeStyle::Interleaved;
};

class Rope {
 public:
  explicit Rope(const RopeConfig& config);
  const RopeConfig& config() const { return config_; }
  // Rotates n_heads vectors of head_dim (contiguous) to position `pos`, in place.
  void apply(float* x, int n_heads, int64_t pos) const { rotate(x, n_heads, pos, +1.0f); }
  // Undoes apply(): recovers pre-RoPE vectors from post-RoPE ones.
  void invert(float* x, int n_heads, int64_t pos) const { rotate(x, n_heads, pos, -1.0f); }

 private:
  void rotate(float* x, int n_heads, int64_t pos, float direction) const;
  RopeConfig config_;
  std::vector<double> inv_freq_;  // n_rot/2 angular frequencies (double: pos * freq loses precision in float at long contexts)
};

}  // namespace saap
