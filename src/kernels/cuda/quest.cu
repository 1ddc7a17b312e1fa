// Host side of Quest on the GPU: storage, prefill, append, and the score / select / attend step.
#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
#include <utility>

#include "saap/kernels/cuda/bulk_ring_resident.cuh"
#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/quest.h"
#include "saap/kernels/cuda/quest_attend_bulk.cuh"
#include "saap/kernels/cuda/quest_kernels.cuh"

namespace saap::cuda {

struct QuestIndex::Impl {
  DeviceBuffer<uint16_t> k, v, meta;
  DeviceBuffer<int32_t> seq_len, chunk_rows, chunk_count, partials, partial_count, selected_tokens, scored_pages;
  DeviceBuffer<float> keys;
  DeviceBuffer<uint32_t> hist;  // [bh][kQuestHistBins]: zero between steps (select zeroes what score counts)
  // The fused select's (quest_fused_select.cuh): reset between steps by its last phase.
  DeviceBuffer<QuestFusedScratch> scratch;  // [bh]
  DeviceBuffer<QuestFusedPlan> plan;        // [bh]
  DeviceBuffer<uint32_t> above;             // [bh][kQuestMaxSlices]
  DeviceBuffer<unsigned long long> cand;    // [bh][kQuestCandCap]
  // The cluster select's blocks per (b, h) and keys each caches (0: not chosen yet).
  int cluster = 0, cluster_key_cap = 0;
};

QuestIndex::QuestIndex(const DecodeShape& shape, int64_t max_len, const QuestConfig& cfg)
    : shape_(shape), cfg_(cfg), max_len_(max_len), impl_(std::make_unique<Impl>()) {
  shape_.check();
  SAAP_CU_REQUIRE(max_len >= 1 && max_len < (int64_t(1) << 31), InvalidArgument, "max_len = %lld outside [1, 2^31)",
                  (long long)max_len);
  SAAP_CU_REQUIRE(cfg.page_size >= 1 && cfg.page_size <= 1024, InvalidArgument, "page_size = %d outside [1, 1024]",
                  cfg.page_size);
  SAAP_CU_REQUIRE(cfg.sinks >= 0 && cfg.window >= 0, InvalidArgument, "sinks = %d and window = %d must be >= 0",
                  cfg.sinks, cfg.window);
  max_pages_ = (max_len + cfg.page_size - 1) / cfg.page_size;
  key_stride_ = (max_pages_ + 3) / 4 * 4;
  max_chunks_ = max_pages_ + 2;  // chunks of disjoint runs: at most one per P rows, plus rounding
  const int64_t bh = int64_t(shape.batch) * shape.n_kv_heads, D = shape.head_dim;
  auto& m = *impl_;
  m.k.resize(size_t(bh * max_len * D));
  m.v.resize(size_t(bh * max_len * D));
  m.meta.resize(size_t(bh * max_pages_ * 2 * D));
  m.keys.resize(size_t(bh * key_stride_));
  m.hist.resize(size_t(bh) * kQuestHistBins);
  SAAP_CU(cudaMemset(m.hist.get(), 0, m.hist.bytes()));
  m.scratch.resize(size_t(bh));
  const std::vector<QuestFusedScratch> reset(size_t(bh), QuestFusedScratch{~0u, 0u, 0ull, 0u, 0u});
  SAAP_CU(cudaMemcpy(m.scratch.get(), reset.data(), m.scratch.bytes(), cudaMemcpyHostToDevice));
  m.plan.resize(size_t(bh));
  m.above.resize(size_t(bh) * kQuestMaxSlices);
  m.cand.resize(size_t(bh) * kQuestCandCap);
  m.chunk_rows.resize(size_t(bh * max_chunks_));
  m.partials.resize(size_t(bh * kMaxPartials * 2));
  SAAP_CU(cudaMemset(m.partials.get(), 0, m.partials.bytes()));  // attend loads all four, uses the first count
  for (auto* b : {&m.seq_len, &m.chunk_count, &m.partial_count, &m.selected_tokens, &m.scored_pages}) {
    b->resize(size_t(bh));
    SAAP_CU(cudaMemset(b->get(), 0, b->bytes()));
  }
  host_len_.assign(size_t(shape.batch), 0);
}

QuestIndex::~QuestIndex() = default;

void QuestIndex::store(const void* k, const void* v, int64_t src_stride, const std::vector<int32_t>& h_lengths,
                       cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(k && v, InvalidArgument, "null pointer: k=%p v=%p", k, v);
  SAAP_CU_REQUIRE(int(h_lengths.size()) == shape_.batch, InvalidArgument, "%zu lengths for batch %d",
                  h_lengths.size(), shape_.batch);
  for (int b = 0; b < shape_.batch; ++b)
    SAAP_CU_REQUIRE(h_lengths[size_t(b)] >= 0 && h_lengths[size_t(b)] <= max_len_ && h_lengths[size_t(b)] <= src_stride,
                    InvalidArgument, "h_lengths[%d] = %d outside [0, min(max_len %lld, src_stride %lld)]", b,
                    h_lengths[size_t(b)], (long long)max_len_, (long long)src_stride);
  const int64_t D = shape_.head_dim, row = D * 2;  // bytes of one 16-bit row
  std::vector<int32_t> per_bh;
  for (int b = 0; b < shape_.batch; ++b)
    for (int h = 0; h < shape_.n_kv_heads; ++h) {
      per_bh.push_back(h_lengths[size_t(b)]);
      const int64_t bh = int64_t(b) * shape_.n_kv_heads + h;
      const size_t bytes = size_t(h_lengths[size_t(b)] * row);
      if (!bytes) continue;
      SAAP_CU(cudaMemcpyAsync(m.k.get() + bh * max_len_ * D, static_cast<const uint8_t*>(k) + bh * src_stride * row,
                              bytes, cudaMemcpyDeviceToDevice, stream));
      SAAP_CU(cudaMemcpyAsync(m.v.get() + bh * max_len_ * D, static_cast<const uint8_t*>(v) + bh * src_stride * row,
                              bytes, cudaMemcpyDeviceToDevice, stream));
    }
  SAAP_CU(cudaMemcpyAsync(m.seq_len.get(), per_bh.data(), per_bh.size() * 4, cudaMemcpyHostToDevice, stream));
  SAAP_CU(cudaStreamSynchronize(stream));  // per_bh lives on this stack frame
  const dim3 grid(unsigned(std::max<int64_t>(1, max_pages_)), unsigned(per_bh.size()));
  dispatch_decode(shape_, [&](auto t, auto, auto) {
    using T = decltype(t);
    quest_build_meta_kernel<T><<<grid, unsigned(D), 0, stream>>>(reinterpret_cast<const T*>(m.k.get()), max_len_,
                                                                m.seq_len.get(), cfg_.page_size, max_pages_, int(D),
                                                                reinterpret_cast<T*>(m.meta.get()));
  });
  SAAP_CU_LAUNCHED();
  for (int b = 0; b < shape_.batch; ++b) host_len_[size_t(b)] = h_lengths[size_t(b)];
}

void QuestIndex::append(const void* k_new, const void* v_new, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(k_new && v_new, InvalidArgument, "null pointer: k_new=%p v_new=%p", k_new, v_new);
  for (int b = 0; b < shape_.batch; ++b)
    SAAP_CU_REQUIRE(host_len_[size_t(b)] < max_len_, OutOfMemory, "sequence %d holds max_len = %lld tokens already", b,
                    (long long)max_len_);
  const unsigned bh = unsigned(shape_.batch * shape_.n_kv_heads);
  dispatch_decode(shape_, [&](auto t, auto, auto) {
    using T = decltype(t);
    launch_dependent(quest_append_kernel<T>, dim3(bh), dim3(unsigned(shape_.head_dim)), 0, stream,
                     reinterpret_cast<T*>(m.k.get()), reinterpret_cast<T*>(m.v.get()), max_len_,
                     static_cast<const T*>(k_new), static_cast<const T*>(v_new), m.seq_len.get(), cfg_.page_size,
                     max_pages_, shape_.head_dim, reinterpret_cast<T*>(m.meta.get()));
  });
  SAAP_CU_LAUNCHED();
  for (auto& l : host_len_) ++l;
}

// The fused select's arguments over this index's buffers.
template <class T>
static QuestFusedArgs<T> fused_args(QuestIndex::Impl& m, const QuestIndex& idx, const float* q, const QuestStep& step,
                                    int n_bh, int S) {
  QuestFusedArgs<T> a;
  a.meta = static_cast<const T*>(static_cast<const void*>(m.meta.get()));
  a.max_pages = idx.max_pages();
  a.seq_len = m.seq_len.get();
  a.q = q;
  a.n_bh = n_bh;
  a.G = idx.shape().group();
  a.step = step;
  a.key_stride = idx.key_stride();
  a.keys = m.keys.get();
  a.hist = m.hist.get();
  a.S = S;
  a.scratch = m.scratch.get();
  a.plan = m.plan.get();
  a.above = m.above.get();
  a.cand = m.cand.get();
  a.max_chunks = idx.max_chunks();
  a.chunk_rows = m.chunk_rows.get();
  a.chunk_count = m.chunk_count.get();
  a.partials = reinterpret_cast<int2*>(m.partials.get());
  a.partial_count = m.partial_count.get();
  a.selected_tokens = m.selected_tokens.get();
  a.scored_pages = m.scored_pages.get();
  return a;
}

// A cooperative launch of `grid` blocks (all resident: the caller sizes it from resident_blocks).
template <class... Params, class... Args>
static void launch_cooperative(void (*kernel)(Params...), int grid, int threads, size_t smem, cudaStream_t stream,
                               Args&&... args) {
  cudaLaunchConfig_t lc = {};
  lc.gridDim = dim3(unsigned(grid));
  lc.blockDim = dim3(unsigned(threads));
  lc.dynamicSmemBytes = smem;
  lc.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  lc.attrs = attr;
  lc.numAttrs = 1;
  SAAP_CU(cudaLaunchKernelEx(&lc, kernel, std::forward<Args>(args)...));
}

// Blocks of kernel (kQuestFusedThreads threads, smem bytes of dynamic shared memory) resident at
// once, after opting in to smem bytes (above 48 KB a kernel must).
template <class Kernel>
static int opt_in_resident_blocks(Kernel* kernel, size_t smem) {
  SAAP_CU(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  return resident_blocks(reinterpret_cast<const void*>(kernel), kQuestFusedThreads, smem);
}

QuestStep QuestIndex::checked_step(const float* q, const QuestBudget& budget) {
  SAAP_CU_REQUIRE(q, InvalidArgument, "%s", "null q");
  SAAP_CU_REQUIRE(reinterpret_cast<uintptr_t>(q) % 16 == 0, InvalidArgument,
                  "q = %p must be 16-byte aligned (the score kernel reads it in 16-byte loads)", (const void*)q);
  SAAP_CU_REQUIRE(budget.tokens > 0 || rules::lookup_in_range(budget.lookup), InvalidArgument,
                  "budget: lookup = %g outside (0, 1] and no fixed tokens (%lld)", budget.lookup,
                  (long long)budget.tokens);
  SAAP_CU_REQUIRE(budget.tokens >= 0, InvalidArgument, "budget tokens = %lld must be >= 0", (long long)budget.tokens);
  // What this select reads at most at the host's longest sequence (sizes attend's splits only).
  const int64_t n = *std::max_element(host_len_.begin(), host_len_.end());
  expect_tokens_ = budget.total(n);
  expect_tokens_ = std::max<int64_t>(expect_tokens_, std::min<int64_t>(n, cfg_.sinks + cfg_.window));
  return QuestStep{cfg_.page_size, cfg_.sinks, cfg_.window, budget.lookup, budget.tokens};
}

void QuestIndex::select(const float* q, const QuestBudget& budget, cudaStream_t stream, cudaEvent_t scored) {
  auto& m = *impl_;
  const QuestStep step = checked_step(q, budget);
  const int bh = shape_.batch * shape_.n_kv_heads;
  if (!cfg_.fused_select) return select_split(q, step, stream, scored);
  dispatch_decode(shape_, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    auto* kernel = quest_fused_select_kernel<T, D, GMAX>;
    // Every block resident (the grid barriers need it; the cooperative launch checks it).
    static const int resident = resident_blocks(reinterpret_cast<const void*>(kernel), kQuestFusedThreads);
    const int S = int(std::clamp<int64_t>(resident / int64_t(bh), 1, kQuestMaxSlices));
    const int grid = int(std::min<int64_t>(resident, int64_t(bh) * S));
    launch_cooperative(kernel, grid, kQuestFusedThreads, 0, stream, fused_args<T>(m, *this, q, step, bh, S));
  });
  SAAP_CU_LAUNCHED();
  if (scored) SAAP_CU(cudaEventRecord(scored, stream));  // one kernel: its score is not timed apart
}

void QuestIndex::select_attend(const float* q, const QuestBudget& budget, float scale, float* out, SplitWorkspace& ws,
                               cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(out, InvalidArgument, "%s", "null out");
  const QuestStep step = checked_step(q, budget);
  const int bh = shape_.batch * shape_.n_kv_heads;
  unsigned* tickets = ws.tickets(bh, stream);
  dispatch_decode(shape_, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    auto* kernel = quest_fused_step_kernel<T, D, GMAX>;
    constexpr size_t smem = sizeof(typename GroupAttender<T, D, GMAX, kQuestFusedThreads / 32>::Shared);
    static const int resident = opt_in_resident_blocks(kernel, smem);
    const int S = int(std::clamp<int64_t>(resident / int64_t(bh), 1, kQuestMaxSlices));
    const int grid = int(std::min<int64_t>(resident, int64_t(bh) * S));
    // The attention's splits over the whole grid, 64 tokens a split at least (as attend()).
    const int splits = choose_splits(shape_, std::max<int64_t>(expect_tokens_, 1), grid, 64);
    ws.ensure(int64_t(shape_.batch) * shape_.n_q_heads, splits, shape_.head_dim);
    launch_cooperative(kernel, grid, kQuestFusedThreads, smem, stream, fused_args<T>(m, *this, q, step, bh, S),
                       static_cast<const T*>(static_cast<const void*>(m.k.get())),
                       static_cast<const T*>(static_cast<const void*>(m.v.get())), max_len_, shape_.n_kv_heads,
                       shape_.batch, scale, splits, ws.out(), ws.lse(), tickets, out);
  });
  SAAP_CU_LAUNCHED();
}

void QuestIndex::select_split(const float* q, const QuestStep& step, cudaStream_t stream, cudaEvent_t scored) {
  auto& m = *impl_;
  const unsigned bh = unsigned(shape_.batch * shape_.n_kv_heads);
  dispatch_decode(shape_, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    constexpr int pages_per_pass = kQuestScoreWarps * (32 / (D / 8)) * kQuestScorePasses;
    auto* kernel = quest_score_kernel<T, D, GMAX>;
    // One wave of resident blocks, at most one block pass each over the capacity's pages.
    static const int resident = resident_blocks(reinterpret_cast<const void*>(kernel), kQuestScoreWarps * 32);
    const int64_t per_bh =
        std::clamp<int64_t>(resident / int64_t(bh), 1, (max_pages_ + pages_per_pass - 1) / pages_per_pass);
    launch_dependent(kernel, dim3(unsigned(per_bh), bh), dim3(kQuestScoreWarps * 32), 0, stream,
                     reinterpret_cast<const T*>(m.meta.get()), max_pages_, static_cast<const int32_t*>(m.seq_len.get()),
                     q, shape_.group(), step, key_stride_, m.keys.get(), m.hist.get());
  });
  SAAP_CU_LAUNCHED();
  if (scored) SAAP_CU(cudaEventRecord(scored, stream));
  const int64_t longest = *std::max_element(host_len_.begin(), host_len_.end());
  if ((longest + cfg_.page_size - 1) / cfg_.page_size >= cfg_.cluster_from_pages && select_clusters(step, stream))
    return;
  const int key_cap = int(std::min<int64_t>(key_stride_, kQuestCachedKeys));  // a multiple of 4
  const size_t cache_bytes = size_t(key_cap) * sizeof(float);
  static const bool opted_in = [] {  // above 48 KB of dynamic shared memory a kernel must opt in
    SAAP_CU(cudaFuncSetAttribute(quest_select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(kQuestCachedKeys * sizeof(float))));
    return true;
  }();
  (void)opted_in;
  launch_dependent(quest_select_kernel, dim3(bh), dim3(kQuestSelectThreads), cache_bytes, stream,
                   static_cast<const float*>(m.keys.get()), key_stride_, static_cast<const int32_t*>(m.seq_len.get()),
                   step, m.hist.get(), max_chunks_, m.chunk_rows.get(), m.chunk_count.get(),
                   reinterpret_cast<int2*>(m.partials.get()), m.partial_count.get(), m.selected_tokens.get(),
                   m.scored_pages.get(), key_cap);
}

// The launch of the cluster select: bh x C blocks of kQuestSelectThreads, in clusters of C,
// launched dependent (after the score kernel), smem bytes of dynamic shared memory each.
static cudaLaunchConfig_t cluster_select_config(unsigned bh, int C, size_t smem, cudaStream_t stream,
                                                cudaLaunchAttribute (&attr)[2]) {
  cudaLaunchConfig_t lc = {};
  lc.gridDim = dim3(bh * unsigned(C));
  lc.blockDim = dim3(kQuestSelectThreads);
  lc.dynamicSmemBytes = smem;
  lc.stream = stream;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(C);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  lc.attrs = attr;
  lc.numAttrs = 2;
  return lc;
}

// Dynamic shared memory of a cluster select block caching key_cap keys: the keys, then the
// cluster's shared values.
static size_t cluster_select_smem(int key_cap) {
  return size_t(key_cap) * sizeof(float) + sizeof(QuestClusterShared);
}

bool QuestIndex::select_clusters(const QuestStep& step, cudaStream_t stream) {
  auto& m = *impl_;
  const unsigned bh = unsigned(shape_.batch * shape_.n_kv_heads);
  auto* kernel = quest_select_cluster_kernel;
  cudaLaunchAttribute attr[2];
  if (m.cluster == 0) {  // once per index: its (b, h) count and key capacity are fixed
    static const bool opted_in = [&] {  // clusters of 16 are non-portable; above 48 KB a kernel must opt in
      SAAP_CU(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      SAAP_CU(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   int(cluster_select_smem(kQuestCachedKeys))));
      return true;
    }();
    (void)opted_in;
    int dev = 0, sms = 0;
    SAAP_CU(cudaGetDevice(&dev));
    SAAP_CU(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    // The most blocks per (b, h) (a power of two, at most 16) within the SM count whose clusters,
    // one per (b, h), the device holds all at once (a cluster's blocks share one GPC).
    const int64_t key4 = key_stride_ / 4;
    int C = 16;
    for (; C > 1; C /= 2) {
      if (int64_t(bh) * C > sms) continue;
      const int cap = int(std::min<int64_t>(kQuestCachedKeys, (key4 + C - 1) / C * 4));
      const cudaLaunchConfig_t lc = cluster_select_config(bh, C, cluster_select_smem(cap), stream, attr);
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &lc) == cudaSuccess && clusters >= int(bh)) break;
      (void)cudaGetLastError();  // a refused size is no error here: the next smaller one is tried
    }
    m.cluster = C;
    m.cluster_key_cap = int(std::min<int64_t>(kQuestCachedKeys, (key4 + C - 1) / C * 4));
  }
  if (m.cluster == 1) return false;  // the select kernel, without the cluster's exchanges
  const cudaLaunchConfig_t lc =
      cluster_select_config(bh, m.cluster, cluster_select_smem(m.cluster_key_cap), stream, attr);
  SAAP_CU(cudaLaunchKernelEx(&lc, kernel, static_cast<const float*>(m.keys.get()), key_stride_,
                             static_cast<const int32_t*>(m.seq_len.get()), step, m.hist.get(), max_chunks_,
                             m.chunk_rows.get(), m.chunk_count.get(), reinterpret_cast<int2*>(m.partials.get()),
                             m.partial_count.get(), m.selected_tokens.get(), m.scored_pages.get(),
                             m.cluster_key_cap));
  return true;
}

void QuestIndex::attend(const float* q, float scale, float* out, SplitWorkspace& ws, cudaStream_t stream,
                        const SparseAttendTuning& tuning) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(q && out, InvalidArgument, "null pointer: q=%p out=%p", (const void*)q, (void*)out);
  tuning.check();
  int splits = 0;
  // Fused: the attend kernel's last block per (b, h) combines (its tickets non-null); else combine_splits.
  unsigned* tickets = tuning.fused ? ws.tickets(int64_t(shape_.batch) * shape_.n_kv_heads, stream) : nullptr;
  dispatch_decode(shape_, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    // stages...: the ring's stage count for the bulk kernel (its parameter after splits), none else.
    auto launch = [&](auto kernel, int resident, size_t smem, auto... stages) {
      // 64 tokens a split at least (two block passes of the attender): a block's passes are
      // dependent loads, so a small selection spread thin finishes sooner than in 256-token splits.
      splits = choose_splits(shape_, std::max<int64_t>(expect_tokens_, 1), resident * tuning.waves, 64);
      ws.ensure(int64_t(shape_.batch) * shape_.n_q_heads, splits, shape_.head_dim);
      launch_dependent(kernel, dim3(splits, shape_.n_kv_heads, shape_.batch), dim3(kDecodeWarps * 32), smem, stream,
                       reinterpret_cast<const T*>(m.k.get()), reinterpret_cast<const T*>(m.v.get()), max_len_,
                       static_cast<const int32_t*>(m.chunk_rows.get()),
                       static_cast<const int32_t*>(m.chunk_count.get()), max_chunks_,
                       reinterpret_cast<const int2*>(m.partials.get()),
                       static_cast<const int32_t*>(m.partial_count.get()), cfg_.page_size, q, shape_.n_kv_heads,
                       shape_.group(), scale, splits, stages..., ws.out(), ws.lse(), tickets, out);
    };
    auto with_ring = [&](auto mma_c) {
      constexpr bool MMA = decltype(mma_c)::value;
      auto* kernel = quest_attend_bulk_kernel<T, D, GMAX, MMA>;
      static const BulkRingResidency resident =
          bulk_ring_resident<T, D, GMAX, MMA>(reinterpret_cast<const void*>(kernel));
      launch(kernel, resident.blocks_for(tuning.bulk, "quest attend"), dense_bulk_smem<T, D, GMAX, MMA>(tuning.bulk),
             tuning.bulk);
    };
    auto with_loop = [&](auto loop_c) {
      auto* kernel = quest_attend_kernel<T, D, GMAX, decltype(loop_c)::value>;
      static const int resident = resident_blocks(reinterpret_cast<const void*>(kernel), kDecodeWarps * 32);
      launch(kernel, resident, 0);
    };
    using Loop = DenseLoop;
    if (tuning.bulk > 0) {
      // The tensor-core ring where the shape has it (bf16, head dim 64 or 128), else the FMA ring.
      if constexpr (dense_mma_supported<T, D>())
        if (tuning.mma) return with_ring(std::true_type{});
      with_ring(std::false_type{});
    } else if (tuning.prefetch) {
      with_loop(std::integral_constant<Loop, Loop::Prefetch>{});
    } else {
      with_loop(std::integral_constant<Loop, Loop::Plain>{});
    }
  });
  if (!tuning.fused) combine_splits(shape_, splits, ws, out, stream);
}

QuestCounters QuestIndex::counters() const {
  auto& m = *impl_;
  SAAP_CU(cudaDeviceSynchronize());
  QuestCounters c;
  auto get = [](const DeviceBuffer<int32_t>& b) {
    std::vector<int32_t> h(b.size());
    SAAP_CU(cudaMemcpy(h.data(), b.get(), b.bytes(), cudaMemcpyDeviceToHost));
    return h;
  };
  c.seq_len = get(m.seq_len);
  c.selected_tokens = get(m.selected_tokens);
  c.scored_pages = get(m.scored_pages);
  return c;
}

int64_t QuestIndex::index_bytes_last_step() const {
  int64_t pages = 0;
  for (int32_t p : counters().scored_pages) pages += p;
  return pages * 2 * shape_.head_dim * 2;  // min and max, 16-bit values
}

const void* QuestIndex::k() const { return impl_->k.get(); }
const void* QuestIndex::v() const { return impl_->v.get(); }
const void* QuestIndex::meta() const { return impl_->meta.get(); }
const float* QuestIndex::page_keys() const { return impl_->keys.get(); }
const int32_t* QuestIndex::chunk_rows() const { return impl_->chunk_rows.get(); }
const int32_t* QuestIndex::chunk_count() const { return impl_->chunk_count.get(); }
const int32_t* QuestIndex::partials() const { return impl_->partials.get(); }
const int32_t* QuestIndex::partial_count() const { return impl_->partial_count.get(); }
const int32_t* QuestIndex::selected_tokens() const { return impl_->selected_tokens.get(); }

}  // namespace saap::cuda
