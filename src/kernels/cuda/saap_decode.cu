// Host side of Saap decode: classify + select, then the sparse split-KV attention and combine. The
// kernels are launched as programmatic dependents (launch.cuh), so each one's launch overlaps the
// previous one's tail; nothing here synchronises the host.
#include <algorithm>
#include <type_traits>
#include <utility>

#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/saap_decode.cuh"
#include "saap/kernels/cuda/saap_select.cuh"
#include "saap_impl.h"

namespace saap::cuda {

namespace {
// Blocks of this shape's attend kernel the whole device runs at once.
int attend_resident(const DecodeShape& s) {
  int resident = 0;
  dispatch_decode(s, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    static const int r = resident_blocks(reinterpret_cast<const void*>(saap_decode_kernel<T, D, GMAX>), kDecodeWarps * 32);
    resident = r;
  });
  return resident;
}
}  // namespace

const char* select_path_name(SelectPath p) {
  switch (p) {
    case SelectPath::Fused: return "fused";
    case SelectPath::TwoKernels: return "two-kernels";
  }
  return "?";
}

namespace {
// The fused select's launch: router chunks and rows per router block, selection blocks, dynamic
// shared memory.
struct FusedPlan {
  int n_chunks = 1, rows_per_block = 1, n_select = 1;
  size_t smem = 0;
};

// The fused kernel's shared-memory limit and the blocks the device holds at once, found (and the
// kernel's dynamic shared memory allowed) on first use.
template <int D>
std::pair<int, int> fused_limits() {
  static const auto limits = [] {
    int dev = 0, optin = 0, sms = 0;
    SAAP_CU(cudaGetDevice(&dev));
    SAAP_CU(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    SAAP_CU(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cudaFuncAttributes attr;
    SAAP_CU(cudaFuncGetAttributes(&attr, saap_fused_select_kernel<D>));
    const int max_dynamic = optin - int(attr.sharedSizeBytes);
    SAAP_CU(cudaFuncSetAttribute(saap_fused_select_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 max_dynamic));
    int per_sm = 0;
    SAAP_CU(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, saap_fused_select_kernel<D>, kSelectThreads,
                                                          size_t(max_dynamic)));
    return std::pair<int, int>(max_dynamic, sms * std::max(per_sm, 1));  // blocks held at once (full smem)
  }();
  return limits;
}

template <int D>
FusedPlan plan_fused(const DecodeShape& s, int C, int hidden) {
  const auto [max_dynamic, resident] = fused_limits<D>();
  FusedPlan p;
  const int bh = s.batch * s.n_kv_heads;
  // Selection blocks wait for router blocks: at most half of what the device holds at once, so the
  // router blocks always find SMs; the rest of the device runs the router in (about) one wave.
  p.n_select = std::max(1, std::min(bh, resident / 2));
  const int router_slots = std::max(1, resident - p.n_select);
  p.n_chunks = std::clamp(router_slots / s.n_q_heads, 1, C);
  const int fixed_floats = D + 2 * hidden;  // qs, hs, b1s
  const int max_rows = std::max(1, (max_dynamic / 4 - fixed_floats) / (hidden + 1));
  p.rows_per_block = std::min((C + p.n_chunks - 1) / p.n_chunks, max_rows);
  p.n_chunks = (C + p.rows_per_block - 1) / p.rows_per_block;
  p.smem = size_t(int64_t(p.rows_per_block) * hidden + fixed_floats + p.rows_per_block) * sizeof(float);
  return p;
}
}  // namespace

void prepare_fused_select(int head_dim) {
  if (head_dim == 64) fused_limits<64>();
  else if (head_dim == 128) fused_limits<128>();
  else fused_limits<256>();
}

void SaapIndex::select(const float* q_route, const rules::Budget& budget, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(q_route, InvalidArgument, "%s", "null q_route");
  SAAP_CU_REQUIRE(budget.tokens >= 0, InvalidArgument, "budget tokens = %lld must be >= 0 (0: use lookup)",
                  (long long)budget.tokens);
  SAAP_CU_REQUIRE(budget.fixed() || rules::lookup_in_range(budget.lookup), InvalidArgument,
                  "lookup = %g must be in (0, 1] (no fixed budget of tokens given)", budget.lookup);
  const int C = cfg_.n_partitions;
  const SaapGeom g{C, cfg_.sinks, cfg_.window, cfg_.append_page, cfg_.append_pages_per_partition, shape_.head_dim,
                   shape_.n_kv_heads, rows_, cfg_.max_prefill};
  // The attend splits: enough blocks for the tokens this budget buys (an upper bound: the context
  // the index was sized for), at least kSaapMinSplitTokens each, at most one wave of the device.
  const int64_t expect = std::max<int64_t>(budget.total(cfg_.max_prefill + cfg_.max_new_tokens),
                                           cfg_.sinks + cfg_.window);
  m.splits = choose_splits(shape_, expect, attend_resident(shape_), kSaapMinSplitTokens);
  // Saap ranks by the G heads' router logits; the other routings write one key per KV group.
  const int rows_per_group = cfg_.routing == PartitionRouting::Saap ? shape_.group() : 1;
  SaapSelectArgs args{m.logits.get(), shape_.n_kv_heads * rows_per_group, rows_per_group, g, cfg_.segment, budget,
                      m.seq_len.get(), m.part_start.get(), m.part_count.get(), m.append_pages.get(),
                      m.append_count.get(), max_segments_, reinterpret_cast<int2*>(m.segments.get()),
                      m.segment_count.get(), m.selected_tokens.get(), m.splits,
                      reinterpret_cast<int2*>(m.split_begin.get())};
  switch (cfg_.routing) {
    case PartitionRouting::Saap: {
      SAAP_CU_REQUIRE(m.hidden > 0, InvalidArgument, "%s", "set_classifier() must be called first");
      const float* w1 = m.w1.get();
      const float* w2 = m.w2.get();
      const float* b1 = m.b1.get();
      const float* b2 = m.b2.get();
      if (cfg_.select_path == SelectPath::Fused) {
        auto launch = [&](auto d) {
          constexpr int D = decltype(d)::value;
          const FusedPlan p = plan_fused<D>(shape_, C, m.hidden);
          const int n_routers = p.n_chunks * shape_.n_q_heads;
          launch_dependent(saap_fused_select_kernel<D>, dim3(n_routers + p.n_select), dim3(kSelectThreads), p.smem,
                           stream, q_route, w1, b1, w2, b2, shape_.batch, m.hidden, p.n_chunks, p.rows_per_block,
                           p.n_select, m.logits.get(), args, m.select_tickets.get(), m.flags.get());
        };
        if (shape_.head_dim == 64) launch(std::integral_constant<int, 64>());
        else if (shape_.head_dim == 128) launch(std::integral_constant<int, 128>());
        else launch(std::integral_constant<int, 256>());
        SAAP_CU_LAUNCHED();
        return;
      }
      const int cls_rows = classify_rows_per_block(m.hidden);
      const dim3 cgrid((C + cls_rows - 1) / cls_rows, shape_.n_q_heads);
      auto launch = [&](auto kernel) {
        launch_dependent(kernel, cgrid, dim3(kClassifyThreads), 0, stream, q_route, w1, b1, w2, b2, shape_.batch,
                         shape_.n_q_heads, m.hidden, C, cls_rows, m.logits.get());
      };
      if (shape_.head_dim == 64) launch(saap_classify_kernel<64>);
      else if (shape_.head_dim == 128) launch(saap_classify_kernel<128>);
      else launch(saap_classify_kernel<256>);
      break;
    }
    case PartitionRouting::KMeans:
      rank_kmeans(q_route, stream);
      break;
    case PartitionRouting::PartitionOracle:
      rank_by_attention(q_route, stream);
      break;
  }
  launch_dependent(saap_select_kernel, dim3(shape_.batch * shape_.n_kv_heads), dim3(kSelectThreads), 0, stream, args);
  SAAP_CU_LAUNCHED();
}

void SaapIndex::attend(const float* q, float scale, float* out, SplitWorkspace& ws, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(q && out, InvalidArgument, "null pointer: q=%p out=%p", (const void*)q, (void*)out);
  const int splits = m.splits;  // the runs the last select() cut
  ws.ensure(int64_t(shape_.batch) * shape_.n_q_heads, splits, shape_.head_dim);
  // The fused path combines inside the attend kernel while the splits are few.
  const bool fused_combine = cfg_.select_path == SelectPath::Fused && splits <= kSaapFusedCombineMaxSplits;
  dispatch_decode(shape_, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    launch_dependent(saap_decode_kernel<T, D, GMAX>, dim3(splits, shape_.n_kv_heads, shape_.batch),
                     dim3(kDecodeWarps * 32), 0, stream, reinterpret_cast<const T*>(m.kpool.get()),
                     reinterpret_cast<const T*>(m.vpool.get()), rows_, reinterpret_cast<const int2*>(m.segments.get()),
                     static_cast<const int32_t*>(m.segment_count.get()), max_segments_,
                     reinterpret_cast<const int2*>(m.split_begin.get()), q, shape_.n_kv_heads, shape_.group(), scale,
                     splits, ws.out(), ws.lse(), fused_combine ? out : nullptr, m.attend_tickets.get());
  });
  SAAP_CU_LAUNCHED();
  if (!fused_combine) combine_splits(shape_, splits, ws, out, stream);
}

}  // namespace saap::cuda
