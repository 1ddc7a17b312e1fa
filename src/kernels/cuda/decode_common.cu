// Shape checks, split heuristics and the split combine shared by all decode kernels.
#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "saap/kernels/cuda/attend.cuh"
#include "saap/kernels/cuda/bulk_ring.cuh"
#include "saap/kernels/cuda/decode.h"

namespace saap::cuda {

void DecodeShape::check(int max_head_dim) const {
  SAAP_CU_REQUIRE(batch >= 1, InvalidArgument, "batch must be >= 1, got %d", batch);
  SAAP_CU_REQUIRE(n_kv_heads >= 1, InvalidArgument, "n_kv_heads must be >= 1, got %d", n_kv_heads);
  SAAP_CU_REQUIRE(n_q_heads >= n_kv_heads && n_q_heads % n_kv_heads == 0, InvalidArgument,
                  "n_q_heads (%d) must be a positive multiple of n_kv_heads (%d)", n_q_heads, n_kv_heads);
  SAAP_CU_REQUIRE(group() <= 8, Unsupported, "group size n_q_heads/n_kv_heads = %d; at most 8 is supported",
                  group());
  SAAP_CU_REQUIRE((head_dim == 64 || head_dim == 128 || head_dim == 256) && head_dim <= max_head_dim, Unsupported,
                  "head_dim %d; this kernel supports 64, 128%s", head_dim, max_head_dim >= 256 ? " and 256" : "");
  SAAP_CU_REQUIRE(kv_dtype == DType::BF16 || kv_dtype == DType::F16, Unsupported,
                  "kv_dtype must be bf16 or f16, got %d", int(kv_dtype));
}

void SplitWorkspace::ensure(int64_t rows, int splits, int head_dim) {
  const size_t need = size_t(rows) * splits;
  if (lse_.size() < need) lse_.resize(need);
  if (out_.size() < need * head_dim) out_.resize(need * head_dim);
}

unsigned* SplitWorkspace::tickets(int64_t groups, cudaStream_t stream) {
  if (tickets_.size() < size_t(groups)) {
    tickets_.resize(size_t(groups));
    SAAP_CU(cudaMemsetAsync(tickets_.get(), 0, tickets_.bytes(), stream));
  }
  return tickets_.get();
}

int resident_blocks(const void* kernel, int block_threads, size_t dynamic_smem) {
  int dev = 0, sms = 0, per_sm = 0;
  SAAP_CU(cudaGetDevice(&dev));
  SAAP_CU(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  SAAP_CU(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block_threads, dynamic_smem));
  return sms * std::max(per_sm, 1);
}

int choose_splits(const DecodeShape& s, int64_t tokens_per_head, int resident, int64_t min_tokens) {
  const int64_t heads = int64_t(s.batch) * s.n_kv_heads;
  // A whole number of waves: a partial last wave would leave SMs idle while it drains.
  const int64_t waves = std::max<int64_t>(1, (heads + resident - 1) / resident);
  const int64_t want = std::max<int64_t>(1, waves * resident / heads);
  const int64_t most = std::max<int64_t>(1, (tokens_per_head + min_tokens - 1) / min_tokens);
  return int(std::clamp<int64_t>(want, 1, std::min<int64_t>(most, 4096)));
}

void parse_tuning_fields(const std::string& text, const char* what, const char* known,
                         const std::function<bool(const std::string& key, long value)>& set) {
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find(';', at);
    if (end == std::string::npos) end = text.size();
    const std::string field = text.substr(at, end - at);
    const size_t eq = field.find('=');
    SAAP_CU_REQUIRE(eq != std::string::npos, InvalidArgument, "%s '%s': field '%s' is not key=value", what,
                    text.c_str(), field.c_str());
    const std::string key = field.substr(0, eq), value = field.substr(eq + 1);
    char* rest = nullptr;
    const long x = std::strtol(value.c_str(), &rest, 10);
    SAAP_CU_REQUIRE(!value.empty() && *rest == '\0', InvalidArgument, "%s '%s': %s = '%s' is not an integer", what,
                    text.c_str(), key.c_str(), value.c_str());
    SAAP_CU_REQUIRE(set(key, x), InvalidArgument, "%s '%s': unknown field '%s' (%s)", what, text.c_str(), key.c_str(),
                    known);
    at = end + 1;
  }
}

std::string SparseAttendTuning::name() const {
  char s[96];
  std::snprintf(s, sizeof s, "prefetch=%d;waves=%d;fused=%d;bulk=%d;mma=%d", int(prefetch), waves, int(fused), bulk,
                int(mma));
  return s;
}

SparseAttendTuning SparseAttendTuning::parse(const std::string& text) {
  SparseAttendTuning t;
  bool prefetch_given = false;
  parse_tuning_fields(text, "sparse attend tuning", "prefetch, waves, fused, bulk, mma",
                      [&](const std::string& key, long x) {
                        if (key == "prefetch") t.prefetch = x != 0, prefetch_given = true;
                        else if (key == "waves") t.waves = int(x);
                        else if (key == "fused") t.fused = x != 0;
                        else if (key == "bulk") t.bulk = int(x);
                        else if (key == "mma") t.mma = x != 0;
                        else return false;
                        return true;
                      });
  if (t.bulk > 0 && !prefetch_given) t.prefetch = false;  // the default register loop's, not the ring's
  t.check();
  return t;
}

void SparseAttendTuning::check() const {
  SAAP_CU_REQUIRE(waves >= 1 && waves <= 8, InvalidArgument, "sparse attend tuning '%s': waves = %d outside [1, 8]",
                  name().c_str(), waves);
  SAAP_CU_REQUIRE(bulk == 0 || (bulk >= 2 && bulk <= kMaxBulkStages), InvalidArgument,
                  "sparse attend tuning '%s': bulk = %d: 0 (off) or the ring's stages, 2..%d", name().c_str(), bulk,
                  kMaxBulkStages);
  SAAP_CU_REQUIRE(bulk > 0 || !mma, InvalidArgument, "sparse attend tuning '%s': mma = 1 needs the bulk ring (bulk > 0)",
                  name().c_str());
  SAAP_CU_REQUIRE(bulk == 0 || !prefetch, InvalidArgument,
                  "sparse attend tuning '%s': prefetch = 1 is the register loop's; the bulk ring (bulk = %d) has none",
                  name().c_str(), bulk);
}

std::vector<SparseAttendTuning> sparse_attend_candidates() {
  // The register loop's tunings (the default first), then the bulk ring (issue 10), timed beside
  // the default: with tensor-core logits at 3 stages (Saap's default attend), 4, and 3 with the
  // fused combine. (f16 and head dim 256 run them as the FMA ring.) Not the default: see
  // SparseAttendTuning (decode.h) for what the H200 measured.
  std::vector<SparseAttendTuning> v = {{true, 1, false}, {false, 1, false}, {true, 2, false},
                                       {false, 2, false}, {true, 1, true},  {true, 2, true}};
  for (const char* t : {"bulk=3;mma=1", "bulk=4;mma=1", "bulk=3;mma=1;fused=1"})
    v.push_back(SparseAttendTuning::parse(t));
  return v;
}

void combine_splits(const DecodeShape& s, int splits, const SplitWorkspace& ws, float* out, cudaStream_t stream) {
  const unsigned rows = unsigned(s.batch) * s.n_q_heads;
  auto launch = [&](auto kernel) {
    launch_dependent(kernel, rows, kCombineThreads, splits * sizeof(float), stream, ws.out(), ws.lse(), splits, out);
  };
  if (s.head_dim == 64) launch(combine_splits_kernel<64>);
  else if (s.head_dim == 128) launch(combine_splits_kernel<128>);
  else launch(combine_splits_kernel<256>);
  SAAP_CU_LAUNCHED();
}

}  // namespace saap::cuda
