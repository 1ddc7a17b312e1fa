// Host launcher of the dense split-KV decode.
#include <cstdio>
#include <cstdlib>

#include "saap/kernels/cuda/dense_decode.cuh"
#include "saap/kernels/cuda/dispatch.cuh"

namespace saap::cuda {

std::string DenseTuning::name() const {
  char s[96];
  std::snprintf(s, sizeof s, "waves=%d;interleave=%d;prefetch=%d;mma=%d;min=%d", waves, int(interleave),
                int(prefetch), int(mma), min_split_tokens);
  return s;
}

DenseTuning DenseTuning::parse(const std::string& text) {
  DenseTuning t;
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find(';', at);
    if (end == std::string::npos) end = text.size();
    const std::string field = text.substr(at, end - at);
    const size_t eq = field.find('=');
    SAAP_CU_REQUIRE(eq != std::string::npos, InvalidArgument, "dense tuning '%s': field '%s' is not key=value",
                    text.c_str(), field.c_str());
    const std::string key = field.substr(0, eq), value = field.substr(eq + 1);
    char* rest = nullptr;
    const long x = std::strtol(value.c_str(), &rest, 10);
    SAAP_CU_REQUIRE(!value.empty() && *rest == '\0', InvalidArgument, "dense tuning '%s': %s = '%s' is not an integer",
                    text.c_str(), key.c_str(), value.c_str());
    if (key == "waves") t.waves = int(x);
    else if (key == "interleave") t.interleave = x != 0;
    else if (key == "prefetch") t.prefetch = x != 0;
    else if (key == "mma") t.mma = x != 0;
    else if (key == "min") t.min_split_tokens = int(x);
    else
      SAAP_CU_REQUIRE(false, InvalidArgument,
                      "dense tuning '%s': unknown field '%s' (waves, interleave, prefetch, mma, min)",
                      text.c_str(), key.c_str());
    at = end + 1;
  }
  return t;
}

DenseTuning dense_default_tuning(int batch) {
  return DenseTuning::parse(batch == 1 ? "mma=1;prefetch=1;interleave=1" : "");
}

std::vector<DenseTuning> dense_tuning_candidates() {
  std::vector<DenseTuning> v;
  for (const char* t : {"", "mma=1;prefetch=1;interleave=1", "mma=1;prefetch=1", "interleave=1;prefetch=1"})
    v.push_back(DenseTuning::parse(t));
  return v;
}

void dense_decode(const DecodeShape& s, const void* k, const void* v, int64_t max_len, const int32_t* lengths,
                  const float* q, float scale, float* out, SplitWorkspace& ws, cudaStream_t stream,
                  int64_t window) {
  dense_decode_tuned(s, k, v, max_len, lengths, q, scale, out, ws, dense_default_tuning(s.batch), stream, window);
}

void dense_decode_tuned(const DecodeShape& s, const void* k, const void* v, int64_t max_len, const int32_t* lengths,
                        const float* q, float scale, float* out, SplitWorkspace& ws, const DenseTuning& tuning,
                        cudaStream_t stream, int64_t window) {
  s.check(256);
  SAAP_CU_REQUIRE(max_len >= 1, InvalidArgument, "max_len must be >= 1, got %lld", (long long)max_len);
  SAAP_CU_REQUIRE(window >= 0, InvalidArgument, "window must be >= 0 (0: no window), got %lld", (long long)window);
  // The positions one sequence reads at most: the splits tile this span.
  const int64_t span = window > 0 && window < max_len ? window : max_len;
  SAAP_CU_REQUIRE(k && v && lengths && q && out, InvalidArgument, "null pointer among k=%p v=%p lengths=%p q=%p out=%p",
                  k, v, (const void*)lengths, (const void*)q, (void*)out);
  const int waves = tuning.waves;
  SAAP_CU_REQUIRE(waves >= 1 && waves <= 8, InvalidArgument, "waves = %d outside [1, 8]", waves);
  SAAP_CU_REQUIRE(!tuning.mma || tuning.prefetch, InvalidArgument, "%s",
                  "mma = 1 is the prefetching tensor-core loop: it needs prefetch = 1");
  SAAP_CU_REQUIRE(tuning.min_split_tokens >= 16, InvalidArgument, "min_split_tokens = %d must be >= 16",
                  tuning.min_split_tokens);
  int splits = 0;
  dispatch_decode<256>(s, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    // One (kernel, resident blocks) per instantiation and loop.
    auto registers = [&](auto loop_c) {
      auto* kernel = dense_decode_kernel<T, D, GMAX, decltype(loop_c)::value>;
      static const int resident = resident_blocks(reinterpret_cast<const void*>(kernel), kDecodeWarps * 32);
      splits = choose_splits(s, span, resident * waves, tuning.min_split_tokens);
      const int64_t chunk = (span + splits - 1) / splits;
      ws.ensure(int64_t(s.batch) * s.n_q_heads, splits, s.head_dim);
      kernel<<<dim3(splits, s.n_kv_heads, s.batch), kDecodeWarps * 32, 0, stream>>>(
          static_cast<const T*>(k), static_cast<const T*>(v), max_len, lengths, q, s.n_kv_heads, s.group(), scale,
          splits, chunk, window, tuning.interleave, ws.out(), ws.lse());
    };
    using Loop = DenseLoop;
    if (tuning.mma && dense_mma_supported<T, D>()) {
      if constexpr (dense_mma_supported<T, D>()) registers(std::integral_constant<Loop, Loop::Mma>{});
    } else if (tuning.prefetch) {
      registers(std::integral_constant<Loop, Loop::Prefetch>{});
    } else {
      registers(std::integral_constant<Loop, Loop::Plain>{});
    }
  });
  SAAP_CU_LAUNCHED();
  combine_splits(s, splits, ws, out, stream);
}

}  // namespace saap::cuda
