// Host side of Saap decode: classify + select, and append_select, which runs the routing beside
// the append (the append and the attend are in saap_layout.cu and saap_attend.cu). The kernels are
// launched as programmatic dependents (launch.cuh), so each one's launch overlaps the previous
// one's tail; nothing here synchronises the host but an append's re-pack (reserve_appends).
#include <algorithm>
#include <type_traits>

#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/saap_decode.cuh"
#include "saap/kernels/cuda/saap_select.cuh"
#include "saap_impl.h"

namespace saap::cuda {

void SaapIndex::check_select(const float* q_route, const rules::Budget& budget) const {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(q_route, InvalidArgument, "%s", "null q_route");
  SAAP_CU_REQUIRE(budget.tokens >= 0, InvalidArgument, "budget tokens = %lld must be >= 0 (0: use lookup)",
                  (long long)budget.tokens);
  SAAP_CU_REQUIRE(budget.fixed() || rules::lookup_in_range(budget.lookup), InvalidArgument,
                  "lookup = %g must be in (0, 1] (no fixed budget of tokens given)", budget.lookup);
  SAAP_CU_REQUIRE(cfg_.routing != PartitionRouting::Saap || m.hidden > 0, InvalidArgument, "%s",
                  "set_classifier() must be called first");
  SAAP_CU_REQUIRE(cfg_.routing != PartitionRouting::KMeans ||
                      m.centroids.size() == size_t(shape_.n_kv_heads) * cfg_.n_partitions * shape_.head_dim,
                  InvalidArgument, "%s", "kmeans routing needs set_centroids() first");
}

void SaapIndex::select(const float* q_route, const rules::Budget& budget, cudaStream_t stream, cudaEvent_t routed) {
  check_select(q_route, budget);
  route(q_route, stream);
  if (routed) SAAP_CU(cudaEventRecord(routed, stream));
  rank_and_fill(budget, stream);
}

void SaapIndex::append_select(const void* k_new, const void* v_new, const void* k_route_new, const float* q_route,
                              const rules::Budget& budget, cudaStream_t stream) {
  auto& m = *impl_;
  check_select(q_route, budget);
  prepare_append(k_new, v_new, k_route_new, stream);  // throws, or re-packs, before anything is launched
  if (cfg_.routing == PartitionRouting::PartitionOracle) {
    launch_append(k_new, v_new, k_route_new, stream);
    route(q_route, stream);
    rank_and_fill(budget, stream);
    return;
  }
  // Fork where the query is written, before the append; join before the rank-and-fill.
  SAAP_CU(cudaEventRecord(m.forked, stream));
  SAAP_CU(cudaStreamWaitEvent(m.side, m.forked, 0));
  route(q_route, m.side);
  SAAP_CU(cudaEventRecord(m.routed, m.side));
  launch_append(k_new, v_new, k_route_new, stream);
  SAAP_CU(cudaStreamWaitEvent(stream, m.routed, 0));
  rank_and_fill(budget, stream);
}

void SaapIndex::route(const float* q_route, cudaStream_t stream) {
  auto& m = *impl_;
  const int C = cfg_.n_partitions;
  switch (cfg_.routing) {
    case PartitionRouting::Saap: {
      auto launch = [&](auto d) {
        constexpr int D = decltype(d)::value;
        auto* kernel = saap_classify_kernel<D>;
        // Above 48 KB of dynamic shared memory a kernel must opt in (once per instantiation).
        static const int resident = [&] {
          SAAP_CU(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kClassifyStageBytes));
          return resident_blocks(reinterpret_cast<const void*>(kernel), kClassifyThreads, kClassifyStageBytes);
        }();
        const int rows = classify_rows_per_block(C, m.hidden, shape_.n_q_heads, resident);
        const size_t stage = size_t(std::min(rows, C)) * m.hidden * sizeof(float);
        launch_dependent(kernel, dim3((C + rows - 1) / rows, shape_.n_q_heads), dim3(kClassifyThreads), stage, stream,
                         q_route, m.w1.get(), m.b1.get(), m.w2.get(), m.b2.get(), shape_.batch, shape_.n_q_heads,
                         m.hidden, C, rows, m.logits.get());
      };
      if (shape_.head_dim == 64) launch(std::integral_constant<int, 64>{});
      else if (shape_.head_dim == 128) launch(std::integral_constant<int, 128>{});
      else launch(std::integral_constant<int, 256>{});
      break;
    }
    case PartitionRouting::KMeans:
      rank_kmeans(q_route, stream);
      break;
    case PartitionRouting::PartitionOracle:
      rank_by_attention(q_route, stream);
      break;
  }
}

void SaapIndex::rank_and_fill(const rules::Budget& budget, cudaStream_t stream) {
  auto& m = *impl_;
  const int C = cfg_.n_partitions;
  const SaapGeom g{C, cfg_.sinks, cfg_.window, cfg_.append_page, cfg_.append_pages_per_partition, shape_.head_dim,
                   shape_.n_kv_heads, rows_, cfg_.max_prefill};
  // The attend splits: enough blocks for the tokens this budget buys (an upper bound: the context
  // the index was sized for), at least kSaapMinSplitTokens each, at most one wave of the device.
  const int64_t expect = std::max<int64_t>(budget.total(cfg_.max_prefill + cfg_.max_new_tokens),
                                           cfg_.sinks + cfg_.window);
  m.splits = choose_splits(shape_, expect, saap_attend_resident(shape_, attend_tuning_) * attend_tuning_.waves,
                           kSaapMinSplitTokens);
  // Saap ranks by the G heads' router logits; the other routings write one key per KV group.
  const int rows_per_group = cfg_.routing == PartitionRouting::Saap ? shape_.group() : 1;
  SaapSelectArgs args{m.logits.get(), shape_.n_kv_heads * rows_per_group, g, cfg_.segment, budget,
                      m.seq_len.get(), m.part_start.get(), m.part_count.get(), m.append_pages.get(),
                      m.append_count.get(), max_segments_, reinterpret_cast<int2*>(m.segments.get()),
                      m.segment_count.get(), m.selected_tokens.get(), m.splits,
                      reinterpret_cast<int2*>(m.split_begin.get())};
  launch_dependent(saap_select_kernel_for(rows_per_group), dim3(shape_.batch * shape_.n_kv_heads),
                   dim3(select_threads(C)), 0, stream, args);
  SAAP_CU_LAUNCHED();
}

}  // namespace saap::cuda
