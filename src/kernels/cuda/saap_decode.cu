// Host side of Saap decode: classify + select, then the sparse split-KV attention and combine.
#include <algorithm>

#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/saap_decode.cuh"
#include "saap/kernels/cuda/saap_select.cuh"
#include "saap_impl.h"

namespace saap::cuda {

void SaapIndex::select(const float* q_route, double lookup, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(q_route, InvalidArgument, "%s", "null q_route");
  SAAP_CU_REQUIRE(rules::lookup_in_range(lookup), InvalidArgument, "lookup = %g must be in (0, 1]", lookup);
  const int C = cfg_.n_partitions;
  // Saap ranks by the G heads' router logits; the other routings write one key per KV group.
  int rows_per_group = 1;
  switch (cfg_.routing) {
    case PartitionRouting::Saap: {
      SAAP_CU_REQUIRE(m.hidden > 0, InvalidArgument, "%s", "set_classifier() must be called first");
      const dim3 cgrid((C + kClassifyRows - 1) / kClassifyRows, shape_.n_q_heads, shape_.batch);
      const auto* w1 = reinterpret_cast<const __nv_bfloat16*>(m.w1.get());
      const auto* w2 = reinterpret_cast<const __nv_bfloat16*>(m.w2.get());
      if (shape_.head_dim == 64)
        saap_classify_kernel<64><<<cgrid, 256, 0, stream>>>(q_route, w1, m.b1.get(), w2, m.b2.get(), shape_.n_q_heads,
                                                            m.hidden, C, m.logits.get());
      else
        saap_classify_kernel<128><<<cgrid, 256, 0, stream>>>(q_route, w1, m.b1.get(), w2, m.b2.get(),
                                                             shape_.n_q_heads, m.hidden, C, m.logits.get());
      SAAP_CU_LAUNCHED();
      rows_per_group = shape_.group();
      break;
    }
    case PartitionRouting::KMeans:
      rank_kmeans(q_route, stream);
      break;
    case PartitionRouting::PartitionOracle:
      rank_by_attention(q_route, stream);
      break;
  }
  const SaapGeom g{C, cfg_.sinks, cfg_.window, cfg_.append_page, cfg_.append_pages_per_partition, shape_.head_dim,
                   shape_.n_kv_heads, rows_, cfg_.max_prefill};
  saap_select_kernel<<<shape_.batch * shape_.n_kv_heads, kSelectThreads, 0, stream>>>(
      m.logits.get(), shape_.n_kv_heads * rows_per_group, rows_per_group, g, cfg_.segment, lookup, m.seq_len.get(),
      m.part_start.get(), m.part_count.get(), m.append_pages.get(), m.append_count.get(), max_segments_,
      reinterpret_cast<int2*>(m.segments.get()), m.segment_count.get(), m.selected_tokens.get());
  SAAP_CU_LAUNCHED();
  m.last_lookup = float(lookup);
}

void SaapIndex::attend(const float* q, float scale, float* out, SplitWorkspace& ws, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(q && out, InvalidArgument, "null pointer: q=%p out=%p", (const void*)q, (void*)out);
  // Expected tokens per head from the last selection's budget; the split count only balances work.
  const int64_t expect = std::max<int64_t>(
      int64_t(m.last_lookup * float(cfg_.max_prefill + cfg_.max_new_tokens)), cfg_.sinks + cfg_.window);
  int splits = 0;
  dispatch_decode(shape_, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    auto* kernel = saap_decode_kernel<T, D, GMAX>;
    static const int resident = resident_blocks(reinterpret_cast<const void*>(kernel), kDecodeWarps * 32);
    splits = choose_splits(shape_, expect, resident, 2 * cfg_.segment);
    ws.ensure(int64_t(shape_.batch) * shape_.n_q_heads, splits, shape_.head_dim);
    dim3 grid(splits, shape_.n_kv_heads, shape_.batch);
    kernel<<<grid, kDecodeWarps * 32, 0, stream>>>(
        reinterpret_cast<const T*>(m.kpool.get()), reinterpret_cast<const T*>(m.vpool.get()), rows_,
        reinterpret_cast<const int2*>(m.segments.get()), m.segment_count.get(), max_segments_, q, shape_.n_kv_heads,
        shape_.group(), scale, splits, ws.out(), ws.lse());
  });
  SAAP_CU_LAUNCHED();
  combine_splits(shape_, splits, ws, out, stream);
}

}  // namespace saap::cuda
