// Checks shared by the CUDA tests of the per-head top-k decoders (OracleTopKDecoder, H2ODecoder)
// against their CPU methods: the CPU's fp32 view of a sequence's 16-bit cache, the decoder's
// selection read back, and one sequence's per-head positions, group unions and output compared
// with the CPU method's Selection (the output against float64 attention over the CPU's positions).
#pragma once
#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "kernels/cuda/cuda_test_util.h"
#include "saap/methods/method.h"

namespace cutest {

// Sequence b's K and V of a cache [batch][n_kv_heads][capacity][head_dim] (16-bit bits) in fp32
// (exact), and the LayerKV a CPU method reads them through (length 0: the caller sets it).
// Moves (the vectors keep their storage, so kv stays valid), never copies.
struct CpuCache {
  std::vector<float> keys, values;
  saap::LayerKV kv;

  CpuCache(const std::vector<uint16_t>& k, const std::vector<uint16_t>& v, int b, int n_kv_heads, int64_t capacity,
           int head_dim, saap::DType t) {
    const size_t per_seq = size_t(n_kv_heads) * size_t(capacity) * size_t(head_dim);
    keys.resize(per_seq);
    values.resize(per_seq);
    for (size_t i = 0; i < per_seq; ++i) {
      keys[i] = float(from_bits(k[size_t(b) * per_seq + i], t));
      values[i] = float(from_bits(v[size_t(b) * per_seq + i], t));
    }
    kv = f32_layer_kv(keys.data(), values.data(), n_kv_heads, head_dim, capacity, 0);
  }
  CpuCache(CpuCache&&) = default;
  CpuCache(const CpuCache&) = delete;
  CpuCache& operator=(const CpuCache&) = delete;
};

// A per-head decoder's selection after a step: counts [batch * Hq], positions [batch * Hq][max_len]
// (the first counts[row] of each row), unions [batch * Hkv] (the K/V rows each group reads).
struct PerHeadSelection {
  std::vector<int32_t> counts, positions, unions;
};

template <class Decoder>
PerHeadSelection read_selection(const Decoder& gpu, const saap::cuda::DecodeShape& shape, int64_t max_len) {
  const size_t rows = size_t(shape.batch) * shape.n_q_heads;
  PerHeadSelection s;
  s.counts.resize(rows);
  s.positions.resize(rows * size_t(max_len));
  s.unions.resize(size_t(shape.batch) * shape.n_kv_heads);
  SAAP_CU(cudaMemcpy(s.counts.data(), gpu.counts(), s.counts.size() * 4, cudaMemcpyDeviceToHost));
  SAAP_CU(cudaMemcpy(s.positions.data(), gpu.positions(), s.positions.size() * 4, cudaMemcpyDeviceToHost));
  SAAP_CU(cudaMemcpy(s.unions.data(), gpu.selected_tokens(), s.unions.size() * 4, cudaMemcpyDeviceToHost));
  return s;
}

// Running tallies of compare_sequence.
struct PerHeadAgreement {
  int64_t heads = 0, same = 0;         // query heads compared; those whose positions equal the CPU's
  int64_t groups = 0, union_same = 0;  // KV groups compared; those whose union count equals the CPU's
  double worst = 0;                    // output vs float64 attention over the CPU's positions (inf: NaN seen)
};

// Sequence b (prefix n) of a step: each query head's GPU positions against the CPU method's
// Selection sel (in_any_order: compared as sets, for a decoder that lists them in no set order;
// else the lists must be equal, order included), each group's union count against the CPU's, and
// each head's GPU output out [batch * Hq][D] against float64 attention over the CPU's positions.
// q_b: the sequence's query rows [Hq][D]; k, v: the 16-bit cache [batch][Hkv][max_len][D].
inline void compare_sequence(const saap::cuda::DecodeShape& shape, int64_t max_len, int b, int64_t n,
                             const saap::Selection& sel, const PerHeadSelection& gpu, const std::vector<float>& out,
                             const float* q_b, const std::vector<uint16_t>& k, const std::vector<uint16_t>& v,
                             float scale, bool in_any_order, PerHeadAgreement& a) {
  const int G = shape.group(), D = shape.head_dim;
  for (int h = 0; h < shape.n_kv_heads; ++h) {
    std::set<int32_t> cpu_union;
    const size_t base = (size_t(b) * shape.n_kv_heads + h) * size_t(max_len) * D;
    for (int g = 0; g < G; ++g) {
      const int hq = h * G + g;
      const size_t row = size_t(b) * shape.n_q_heads + hq;
      std::vector<int32_t> want;
      if (sel.all)
        for (int32_t p = 0; p < n; ++p) want.push_back(p);
      else
        want = sel.positions[size_t(hq)];
      cpu_union.insert(want.begin(), want.end());
      const auto first = gpu.positions.begin() + row * size_t(max_len);
      std::vector<int32_t> got(first, first + std::max(0, gpu.counts[row]));
      if (in_any_order) {
        std::sort(want.begin(), want.end());
        std::sort(got.begin(), got.end());
      }
      ++a.heads;
      a.same += got == want;
      const std::vector<int64_t> at(want.begin(), want.end());
      std::vector<double> ref(static_cast<size_t>(D));
      ref_attention(q_b + size_t(hq) * D, &k[base], &v[base], at, D, scale, shape.kv_dtype, ref.data());
      const std::vector<float> o(out.begin() + row * D, out.begin() + (row + 1) * D);
      const double e = rel_error(o, ref);
      a.worst = std::isnan(e) ? INFINITY : std::max(a.worst, e);
    }
    ++a.groups;
    a.union_same += gpu.unions[size_t(b) * shape.n_kv_heads + h] == int32_t(cpu_union.size());
  }
}

}  // namespace cutest
