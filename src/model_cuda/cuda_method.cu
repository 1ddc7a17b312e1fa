// Decode through the sparse GPU indexes inside the CUDA model runner: the method's checks at load,
// the per-layer index build after a prefill, the attention of a decode step, and perplexity under
// the method (teacher-forced decode, the CPU's AttentionMode::MethodEverywhere).
#include <algorithm>
#include <cmath>

#include "saap/core/error.h"
#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/reduce.cuh"
#include "saap/methods/loki.h"
#include "saap/methods/quest.h"
#include "saap/methods/saap.h"
#include "src/model_cuda/cuda_llama_impl.h"

namespace saap::cuda {

namespace {

// Saap appends reserved per host look at the index counters: a sync every this many steps.
constexpr int64_t kReservedSteps = 64;

// Block per sequence b: the step's new token (at cache row lengths[b] - 1) as the indexes take it,
// k_new / v_new [batch][Hkv][D] from the cache (post-RoPE, the values attention reads); with
// route_cache non-null also its pre-RoPE key from qkv [batch][QKV] (bf16), into k_route [batch][Hkv][D]
// and route_cache [batch][Hkv][max_len][D], and the pre-RoPE query into q_route [batch][Hq][D].
__global__ void step_inputs_kernel(const __nv_bfloat16* __restrict__ qkv, int qkv_width, int Hq, int Hkv, int D,
                                   const __nv_bfloat16* __restrict__ kc, const __nv_bfloat16* __restrict__ vc,
                                   int64_t max_len, const int32_t* __restrict__ lengths, __nv_bfloat16* k_new,
                                   __nv_bfloat16* v_new, __nv_bfloat16* k_route, __nv_bfloat16* route_cache,
                                   float* q_route) {
  const int b = blockIdx.x;
  const int64_t pos = lengths[b] - 1;
  const __nv_bfloat16* row = qkv + int64_t(b) * qkv_width;
  for (int i = threadIdx.x; i < Hkv * D; i += blockDim.x) {
    const int h = i / D, j = i % D;
    const int64_t cache = ((int64_t(b) * Hkv + h) * max_len + pos) * D + j;
    k_new[int64_t(b) * Hkv * D + i] = kc[cache];
    v_new[int64_t(b) * Hkv * D + i] = vc[cache];
    if (route_cache) {
      const __nv_bfloat16 k = row[Hq * D + i];
      k_route[int64_t(b) * Hkv * D + i] = k;
      route_cache[cache] = k;
    }
  }
  if (route_cache)
    for (int i = threadIdx.x; i < Hq * D; i += blockDim.x) q_route[int64_t(b) * Hq * D + i] = __bfloat162float(row[i]);
}

// Block per prefill row (b, t) of a chunk [b][n] at positions pos0 + t: its pre-RoPE keys into
// route_cache [batch][Hkv][max_len][D].
__global__ void save_routing_keys_kernel(const __nv_bfloat16* __restrict__ qkv, int qkv_width, int Hq, int Hkv,
                                         int D, int64_t n, int64_t pos0, int64_t max_len,
                                         __nv_bfloat16* route_cache) {
  const int64_t r = blockIdx.x, b = r / n, pos = pos0 + r % n;
  const __nv_bfloat16* row = qkv + r * qkv_width + int64_t(Hq) * D;
  for (int i = threadIdx.x; i < Hkv * D; i += blockDim.x) route_cache[((b * Hkv + i / D) * max_len + pos) * D + i % D] = row[i];
}

// Teacher forcing: the input of sequence b is its true token at the next position, tokens[b][lengths[b]].
__global__ void teacher_input_kernel(const int32_t* __restrict__ tokens, int64_t n, const int32_t* __restrict__ lengths,
                                     int batch, int32_t* next_tokens) {
  for (int b = threadIdx.x; b < batch; b += blockDim.x) {
    const int64_t pos = lengths[b];
    next_tokens[b] = pos < n ? tokens[int64_t(b) * n + pos] : 0;
  }
}

// Block per sequence b: the NLL (fp32, nats) of its true next token under the logits of its last
// position p = lengths[b] - 1: nll[b][p] = log sum_j exp(logit_j) - logit[tokens[b][p + 1]], NaN at
// p = n - 1 (no next token).
__global__ void step_nll_kernel(const float* __restrict__ logits, int vocab, const int32_t* __restrict__ tokens,
                                int64_t n, const int32_t* __restrict__ lengths, float* __restrict__ nll) {
  __shared__ float red[32];
  const int b = blockIdx.x;
  const int64_t p = lengths[b] - 1;
  const float* l = logits + int64_t(b) * vocab;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, l[j]);
  mx = block_reduce<true>(mx, red);
  float sum = 0.f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) sum += expf(l[j] - mx);
  sum = block_reduce<false>(sum, red);
  if (threadIdx.x == 0 && p >= 0 && p < n) {
    const int32_t target = p + 1 < n ? tokens[int64_t(b) * n + p + 1] : -1;
    nll[int64_t(b) * n + p] = target >= 0 && target < vocab ? mx + logf(sum) - l[target] : NAN;
  }
}

// reads[0] += the K/V tokens the index selected per (b, KV head) this step; reads[1] += the causal
// prefix of each (b, KV head), lengths[b] (the new token included, as the CPU's n_ctx). With
// keys_decide (the oracle), reads[2] += that prefix again wherever the budget does not cover it:
// the K rows scored to choose, as the CPU oracle's index_bytes.
__global__ void count_reads_kernel(const int32_t* __restrict__ selected, const int32_t* __restrict__ lengths,
                                   int batch, int Hkv, bool keys_decide, rules::Budget budget,
                                   unsigned long long* reads) {
  if (threadIdx.x != 0) return;
  unsigned long long kv = 0, dense = 0, index = 0;
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < Hkv; ++h) {
      kv += unsigned(selected[b * Hkv + h]);
      dense += unsigned(lengths[b]);
      if (keys_decide && budget.topk(lengths[b]) < lengths[b]) index += unsigned(lengths[b]);
    }
  reads[0] += kv;
  reads[1] += dense;
  reads[2] += index;
}

// The window a streaming step reads: the CPU method (StreamingAttention) reads window 0 as 1, the
// query's own position.
int streaming_window(const MethodSpec& s) { return std::max(s.window, 1); }

MethodKind kind_of(const std::string& name) {
  if (name == "dense") return MethodKind::Dense;
  if (name == "saap" || name == "kmeans" || name == "partition-oracle") return MethodKind::Partition;
  if (name == "loki") return MethodKind::Loki;
  if (name == "quest") return MethodKind::Quest;
  if (name == "streaming") return MethodKind::Streaming;
  if (name == "oracle") return MethodKind::Oracle;
  if (name == "h2o") return MethodKind::H2O;
  SAAP_THROW_FMT(Unsupported,
                 "method = '%s' has no GPU path; the CUDA runner decodes through dense, oracle, streaming, h2o, saap, "
                 "kmeans, partition-oracle, loki and quest",
                 name.c_str());
}

PartitionRouting routing_of(const std::string& name) {
  if (name == "kmeans") return PartitionRouting::KMeans;
  if (name == "partition-oracle") return PartitionRouting::PartitionOracle;
  return PartitionRouting::Saap;
}

// Whether the method reads the whole causal prefix of a query whose prefix holds j tokens
// (saap::rules: what sinks and window cover, or what the budget buys).
bool reads_whole_prefix(const MethodSpec& s, MethodKind kind, int64_t j) {
  switch (kind) {
    case MethodKind::Dense:
      return true;
    case MethodKind::Loki:
      return rules::loki_keys(s.k_f, j) >= j;
    case MethodKind::Oracle:
      return rules::Budget{s.lookup, s.budget_tokens}.topk(j) >= j;
    case MethodKind::H2O:
      // Position 0 alone (what seed_first_query stands for): a later query that reads its whole
      // prefix still adds its weights to the accumulators, so it goes through the method.
      return j <= 1;
    case MethodKind::Streaming:
      return rules::fixed_reads(j, s.sinks, streaming_window(s)).count() >= j;
    case MethodKind::Partition:
    case MethodKind::Quest: {
      if (rules::fixed_reads(j, s.sinks, s.window).count() >= j) return true;
      return rules::Budget{s.lookup, s.budget_tokens}.total(j) >= j;
    }
  }
  return false;
}

}  // namespace

void CudaLlamaModel::Impl::setup_method() {
  const MethodSpec& spec = options.method;
  method_info(spec.name);            // InvalidArgument for a name no method has
  method.kind = kind_of(spec.name);  // Unsupported for a CPU-only method
  check_method_spec(spec);
  if (method.kind == MethodKind::Dense) return;
  const LlamaConfig& c = config;
  method.identity = model_artifact_identity(identity, c);
  // The CPU's own checks: the factory loads and checks the artifact against this model, and each
  // layer's method checks its layer and budget (a layer the artifact lacks, a budget that sinks
  // and window fill at max_context, ...). As on the CPU, only global layers get a method (Gemma-3's
  // local layers keep their exact window).
  const MethodFactory cpu = make_method_factory(spec, method.identity);
  for (int l = 0; l < c.n_layers; ++l)
    if (c.is_global(l)) cpu(LayerShape{l, c.n_heads, c.n_kv_heads, c.head_dim, options.max_context});

  if (method.kind == MethodKind::Partition) {
    method.routing = routing_of(spec.name);
    ArtifactIdentity want = method.identity;
    want.method = method.routing == PartitionRouting::Saap ? "saap" : "kmeans";  // kmeans reads any partition
    method.partition = std::make_shared<const PartitionArtifact>(PartitionArtifact::load(spec.artifact, want));
    method.pre_rope = method.partition->pre_rope;
  } else if (method.kind == MethodKind::Loki) {
    ArtifactIdentity want = method.identity;
    want.method = "loki";
    method.loki = std::make_shared<const LokiArtifact>(LokiArtifact::load(spec.artifact, want));
  }
  const int64_t B = options.max_batch, Hkv = c.n_kv_heads, D = c.head_dim;
  method.k_new.resize(size_t(B * Hkv * D));
  method.v_new.resize(size_t(B * Hkv * D));
  if (method.kind == MethodKind::Partition) {
    method.assign.resize(size_t(B * Hkv * options.max_context));
    if (method.pre_rope) {
      // Gemma's pre-RoPE q and k are the QK-normed ones (rope_split_qkv writes them here).
      if (c.qk_norm) qk_normed.resize(size_t(rows) * (c.n_heads + 2 * c.n_kv_heads) * D);
      method.k_route.resize(size_t(B * Hkv * D));
      method.q_route.resize(size_t(c.n_layers) * B * c.n_heads * D);
      method.route_cache.resize(size_t(c.n_layers) * layer_stride());
    }
  }
  if (method.kind == MethodKind::Streaming) method.selected.resize(size_t(B * Hkv));
  method.reads.resize(3);
  SAAP_CU(cudaMemset(method.reads.get(), 0, method.reads.bytes()));
  make_indexes(options.max_batch);  // the GPU's own checks (shapes, ranks) and memory, now
}

void CudaLlamaModel::Impl::make_indexes(int batch) {
  if (method.kind == MethodKind::Dense || method.index_batch == batch) return;
  const LlamaConfig& c = config;
  const MethodSpec& spec = options.method;
  method.saap.clear();
  method.lokis.clear();
  method.quest.clear();
  method.oracle.reset();
  method.h2o.clear();
  method.index_batch = 0;
  if (method.kind == MethodKind::Streaming) return;  // no index
  if (method.kind == MethodKind::Oracle) {  // scratch for one layer's step at this batch, on the cache's stride
    const DecodeShape shape{batch, c.n_heads, c.n_kv_heads, c.head_dim, DType::BF16};
    method.oracle = std::make_unique<OracleTopKDecoder>(shape, options.max_context);
    method.index_batch = batch;
    return;
  }
  if (method.kind == MethodKind::H2O) {  // per global layer: its accumulators, on the cache's stride
    const DecodeShape shape{batch, c.n_heads, c.n_kv_heads, c.head_dim, DType::BF16};
    for (int l = 0; l < c.n_layers; ++l)
      method.h2o.push_back(c.is_global(l) ? std::make_unique<H2ODecoder>(
                                                shape, options.max_context, rules::Budget{spec.lookup, spec.budget_tokens})
                                          : nullptr);
    method.index_batch = batch;
    return;
  }
  // Loki and Quest check on the host that an append fits max_len, and a graph capture records one
  // append beyond the eager step it follows: one row of slack keeps the last step legal.
  const int64_t max_len = options.max_context + 1;
  for (int l = 0; l < c.n_layers; ++l) {
    if (!c.is_global(l)) {  // a local layer (Gemma-3): no index; the method's vector stays indexed by layer
      if (method.kind == MethodKind::Partition) method.saap.emplace_back();
      if (method.kind == MethodKind::Loki) method.lokis.emplace_back();
      if (method.kind == MethodKind::Quest) method.quest.emplace_back();
      continue;
    }
    switch (method.kind) {
      case MethodKind::Partition: {
        SaapConfig cfg;
        cfg.sinks = spec.sinks;
        cfg.window = spec.window;
        cfg.max_prefill = options.max_context;
        cfg.max_new_tokens = options.max_context;
        cfg.append_page = 16;  // a partition's appends in pages of 16: less pool memory than 64
        cfg.append_pages_per_partition = 8;
        method.saap.push_back(SaapIndex::from_artifact(*method.partition, method.identity, l, batch, DType::BF16, cfg,
                                                       method.routing));
        break;
      }
      case MethodKind::Loki:
        method.lokis.push_back(
            LokiIndex::from_artifact(*method.loki, method.identity, l, batch, DType::BF16, max_len, spec.d_f));
        break;
      case MethodKind::Quest: {
        const DecodeShape shape{batch, c.n_heads, c.n_kv_heads, c.head_dim, DType::BF16};
        method.quest.push_back(
            std::make_unique<QuestIndex>(shape, max_len, QuestConfig{spec.page_size, spec.sinks, spec.window}));
        break;
      }
      case MethodKind::Dense:
      case MethodKind::Streaming:
      case MethodKind::Oracle:
      case MethodKind::H2O:
        break;
    }
  }
  method.index_batch = batch;
}

int64_t CudaLlamaModel::Impl::dense_prefix(int64_t n) const {
  int64_t m = 0;
  while (m < n && reads_whole_prefix(options.method, method.kind, m + 1)) ++m;
  return m;
}

// The CPU method's formula for each served layer, at the runner's bf16 cache. The GPU reads the same
// index tensors: the Saap router's fp32 weights (w1, b1, w2, b2, as the CPU since 2b5eaa7), k-means'
// fp32 centroids, Quest's bf16 page min/max, Loki's bf16 r-coordinate keys. Not counted, as on the
// CPU: the centroids a Saap/k-means append reads to assign the new key (SaapIndex::
// index_bytes_per_step, the kernel bench's figure, includes them), and the partition oracle's
// exact scoring (the CPU charges it nothing: it is an upper bound to compare against, not a method).
int64_t CudaLlamaModel::Impl::index_bytes_per_query(int64_t n_ctx) const {
  const LlamaConfig& c = config;
  const MethodSpec& spec = options.method;
  int64_t bytes = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    if (!c.is_global(l)) continue;  // Gemma-3's local layers read their exact window, no index
    const LayerShape shape{l, c.n_heads, c.n_kv_heads, c.head_dim, options.max_context};
    switch (method.kind) {
      case MethodKind::Partition:
        if (method.routing == PartitionRouting::Saap) bytes += saap_index_bytes(*method.partition, shape);
        if (method.routing == PartitionRouting::KMeans) bytes += kmeans_index_bytes(*method.partition, shape);
        break;
      case MethodKind::Quest:
        bytes += quest_index_bytes(quest_params(spec), shape, n_ctx, DType::BF16);
        break;
      case MethodKind::Loki:
        bytes += loki_index_bytes(LokiParams{spec.k_f, spec.d_f}, shape, n_ctx, DType::BF16);
        break;
      case MethodKind::Dense:
      case MethodKind::Streaming:
      case MethodKind::Oracle:  // its K rows: index_tokens, counted on the device
      case MethodKind::H2O:     // none: its scores are a by-product of attention (as the CPU counts)
        break;
    }
  }
  return bytes;
}

void CudaLlamaModel::Impl::save_routing_keys(int layer, int b, int64_t n, int64_t pos0) {
  if (method.kind != MethodKind::Partition || !method.pre_rope) return;
  const LlamaConfig& c = config;
  const int QKV = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
  save_routing_keys_kernel<<<unsigned(int64_t(b) * n), 128, 0, stream>>>(
      route_source(), QKV, c.n_heads, c.n_kv_heads, c.head_dim, n, pos0, options.max_context,
      method.route_cache.get() + size_t(layer) * layer_stride());
  SAAP_CU_LAUNCHED();
}

void CudaLlamaModel::Impl::build_indexes_after_prefill(int64_t n) {
  if (method.kind == MethodKind::Dense) return;
  make_indexes(batch);
  const std::vector<int32_t> lengths(static_cast<size_t>(batch), static_cast<int32_t>(n));
  const int64_t L = options.max_context;
  for (int l = 0; l < config.n_layers; ++l) {
    if (!config.is_global(l)) continue;  // Gemma-3's local layers have no index
    const bf16_t* kc = k_cache.get() + size_t(l) * layer_stride();
    const bf16_t* vc = v_cache.get() + size_t(l) * layer_stride();
    switch (method.kind) {
      case MethodKind::Partition: {
        SaapIndex& idx = *method.saap[size_t(l)];
        const bf16_t* keys = method.pre_rope ? method.route_cache.get() + size_t(l) * layer_stride() : kc;
        idx.assign_prefill(keys, L, lengths, method.assign.get(), stream);
        idx.build(kc, vc, L, lengths, method.assign.get(), stream);
        idx.check();
        break;
      }
      case MethodKind::Loki:
        method.lokis[size_t(l)]->store(kc, vc, L, lengths, stream);
        break;
      case MethodKind::Quest:
        method.quest[size_t(l)]->store(kc, vc, L, lengths, stream);
        break;
      case MethodKind::H2O:  // no query went through the method: the CPU's state after an exact prefill
        method.h2o[size_t(l)]->reset(stream);
        break;
      case MethodKind::Dense:
      case MethodKind::Streaming:  // read the dense cache as it is
      case MethodKind::Oracle:
        break;
    }
  }
  SAAP_CU(cudaStreamSynchronize(stream));
  method.appends_left = 0;  // the first step reserves
}

void CudaLlamaModel::Impl::reserve_step() {
  if (method.kind != MethodKind::Partition) return;
  if (method.appends_left > 0) return;
  // The eager step and the capture that follow a (re-)capture each count one append on the host,
  // on top of the steps that run: reserve for both.
  const int64_t n = kReservedSteps;
  bool moved = false;
  for (auto& idx : method.saap) {
    if (!idx) continue;  // a local layer
    const int repacks = idx->repacks();
    idx->reserve_appends(n + 2, stream);
    moved |= idx->repacks() != repacks;
  }
  if (moved) drop_graph();  // the pools and the segment table moved: the graph names the old ones
  method.appends_left = n;
}

void CudaLlamaModel::Impl::decode_attention(int layer, bf16_t* kc, bf16_t* vc, float scale) {
  const LlamaConfig& c = config;
  const DecodeShape shape{batch, c.n_heads, c.n_kv_heads, c.head_dim, DType::BF16};
  if (method.kind == MethodKind::Dense) {
    dense_decode(shape, kc, vc, options.max_context, lengths.get(), q32.get(), scale, att32.get(), split_ws, stream);
    return;
  }
  const MethodSpec& spec = options.method;
  const rules::Budget budget{spec.lookup, spec.budget_tokens};
  if (method.kind == MethodKind::Streaming || method.kind == MethodKind::Oracle ||
      method.kind == MethodKind::H2O) {  // no index to feed
    const int32_t* selected = nullptr;
    if (method.kind == MethodKind::Streaming) {
      streaming_decode(shape, kc, vc, options.max_context, lengths.get(), q32.get(), scale, spec.sinks,
                       streaming_window(spec), att32.get(), split_ws, method.selected.get(), stream);
      selected = method.selected.get();
    } else if (method.kind == MethodKind::H2O) {
      H2ODecoder& h2o = *method.h2o[size_t(layer)];
      h2o.decode(kc, vc, lengths.get(), q32.get(), scale, att32.get(), split_ws, stream);
      selected = h2o.selected_tokens();
    } else {
      method.oracle->decode(kc, vc, lengths.get(), q32.get(), scale, budget, att32.get(), split_ws, stream);
      selected = method.oracle->selected_tokens();
    }
    count_reads_kernel<<<1, 32, 0, stream>>>(selected, lengths.get(), batch, c.n_kv_heads,
                                             method.kind == MethodKind::Oracle, budget, method.reads.get());
    SAAP_CU_LAUNCHED();
    return;
  }
  const int QKV = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
  const bool route = method.kind == MethodKind::Partition && method.pre_rope;
  float* q_route = route ? method.q_route.get() + size_t(layer) * options.max_batch * c.n_heads * c.head_dim : nullptr;
  step_inputs_kernel<<<unsigned(batch), 256, 0, stream>>>(
      route_source(), QKV, c.n_heads, c.n_kv_heads, c.head_dim, kc, vc, options.max_context, lengths.get(),
      method.k_new.get(), method.v_new.get(), route ? method.k_route.get() : nullptr,
      route ? method.route_cache.get() + size_t(layer) * layer_stride() : nullptr, q_route);
  SAAP_CU_LAUNCHED();
  const int32_t* selected = nullptr;
  switch (method.kind) {
    case MethodKind::Partition: {
      SaapIndex& idx = *method.saap[size_t(layer)];
      // The partition oracle ranks by the post-RoPE query whatever the artifact's keys.
      const bool by_route = route && method.routing != PartitionRouting::PartitionOracle;
      idx.append_select(method.k_new.get(), method.v_new.get(), route ? method.k_route.get() : nullptr,
                        by_route ? q_route : q32.get(), budget, stream);
      idx.attend(q32.get(), scale, att32.get(), split_ws, stream);
      selected = idx.selected_tokens();
      break;
    }
    case MethodKind::Loki: {
      LokiIndex& idx = *method.lokis[size_t(layer)];
      idx.append(method.k_new.get(), method.v_new.get(), stream);
      idx.select(q32.get(), spec.k_f, stream);
      idx.attend(scale, att32.get(), split_ws, stream);
      selected = idx.selected_tokens();  // the union of the group's heads, as the CPU counts it
      break;
    }
    case MethodKind::Quest: {
      QuestIndex& idx = *method.quest[size_t(layer)];
      idx.append(method.k_new.get(), method.v_new.get(), stream);
      idx.select(q32.get(), budget, stream);
      idx.attend(q32.get(), scale, att32.get(), split_ws, stream);
      selected = idx.selected_tokens();
      break;
    }
    case MethodKind::Dense:
    case MethodKind::Streaming:
    case MethodKind::Oracle:
    case MethodKind::H2O:
      break;
  }
  count_reads_kernel<<<1, 32, 0, stream>>>(selected, lengths.get(), batch, c.n_kv_heads, false, budget,
                                           method.reads.get());
  SAAP_CU_LAUNCHED();
}

void CudaLlamaModel::Impl::teacher_input() {
  teacher_input_kernel<<<1, 256, 0, stream>>>(method.tf_tokens.get(), method.tf_n, lengths.get(), batch,
                                               next_tokens.get());
  SAAP_CU_LAUNCHED();
}

void CudaLlamaModel::Impl::teacher_nll() {
  step_nll_kernel<<<unsigned(batch), 256, 0, stream>>>(logits.get(), config.vocab_size, method.tf_tokens.get(),
                                                        method.tf_n, lengths.get(), method.tf_nll.get());
  SAAP_CU_LAUNCHED();
}

// ---------------------------------------------------------------------------------------------

int64_t CudaLlamaModel::dense_prefix(int64_t n) const { return impl_->dense_prefix(n); }

CudaLlamaModel::LayerView CudaLlamaModel::layer_view(int layer) const {
  const Impl& m = *impl_;
  SAAP_CHECK_FMT(layer >= 0 && layer < m.config.n_layers, InvalidArgument, "layer = %d outside [0, %d)", layer,
                 m.config.n_layers);
  const size_t at = size_t(layer) * m.layer_stride();
  LayerView v;
  v.k_cache = m.k_cache.get() + at;
  v.v_cache = m.v_cache.get() + at;
  if (m.method.route_cache.size()) {
    v.k_route = m.method.route_cache.get() + at;
    v.q_route = m.method.q_route.get() + size_t(layer) * m.options.max_batch * m.config.n_heads * m.config.head_dim;
  }
  if (!m.method.saap.empty()) v.saap = m.method.saap[size_t(layer)].get();
  if (!m.method.lokis.empty()) v.loki = m.method.lokis[size_t(layer)].get();
  return v;
}

// Every position through the method (the CPU's AttentionMode::MethodEverywhere): tokens [batch][n]
// are prefilled densely up to dense_prefix(n), where the method reads the whole prefix anyway, and
// tokens [n0, fed) are fed teacher-forced through the method, one graph-replayed step each. With nll,
// it receives host [batch][n] the NLL of token t + 1 at position t for t < fed (NaN from there).
void CudaLlamaModel::teacher_forced(const int32_t* tokens, int batch, int64_t n, int64_t fed, float* nll) {
  Impl& m = *impl_;
  const LlamaConfig& c = m.config;
  const CudaLlamaOptions& options = m.options;
  MethodState& method = m.method;
  SAAP_CHECK_MSG(tokens != nullptr, InvalidArgument, "a teacher-forced run needs tokens");
  SAAP_CHECK_FMT(batch >= 1 && batch <= options.max_batch, InvalidArgument, "batch = %d must be in [1, %d]", batch,
                 options.max_batch);
  SAAP_CHECK_FMT(n >= 1 && n <= options.max_context, InvalidArgument,
                 "a sequence of n = %lld tokens; max_context = %lld", (long long)n, (long long)options.max_context);
  const int64_t n0 = m.dense_prefix(n);
  // Dense prefill of the positions the method reads whole anyway (token ids checked there).
  std::vector<int32_t> head(size_t(batch) * n0);
  for (int b = 0; b < batch; ++b) std::copy_n(tokens + size_t(b) * n, n0, head.begin() + size_t(b) * n0);
  std::vector<float> head_nll(nll ? head.size() : 0);
  prefill(head.data(), batch, n0, nullptr, nll ? head_nll.data() : nullptr);
  if (nll)
    for (int b = 0; b < batch; ++b) {
      std::copy_n(head_nll.begin() + size_t(b) * n0, n0, nll + size_t(b) * n);
      for (int64_t t = n0; t < n; ++t) nll[size_t(b) * n + t] = NAN;
    }
  // Every prefill position read its whole causal prefix: n0 (n0 + 1) / 2 tokens per KV head, in the
  // layers the method serves (the global layers: what the CPU's global_stats() counts).
  const double prefix = double(batch) * c.n_kv_heads * c.n_global_layers() * double(n0) * double(n0 + 1) / 2;
  method.host_reads.kv_tokens += prefix;
  method.host_reads.dense_tokens += prefix;
  // And its index as the method would read it at that query, as the CPU counts it (Saap and k-means
  // charge their router or centroids even where they then read the whole prefix; Quest and Loki
  // charge nothing there), though the dense prefill itself reads no index.
  for (int64_t j = 1; j <= n0; ++j) method.host_reads.index_bytes += double(batch) * double(m.index_bytes_per_query(j));
  // H2O's dense prefix is position 0 alone (dense_prefix): its state is the CPU's after it.
  if (method.kind == MethodKind::H2O)
    for (auto& h : method.h2o)
      if (h) h->seed_first_query(m.stream);
  if (n0 == n) return;

  for (int64_t i = 0; i < int64_t(batch) * n; ++i)
    SAAP_CHECK_FMT(tokens[i] >= 0 && tokens[i] < c.vocab_size, InvalidArgument,
                   "token id %d at sequence %lld, index %lld is outside the vocabulary [0, %d)", tokens[i],
                   (long long)(i / n), (long long)(i % n), c.vocab_size);
  // Sized once for the largest run: the graph names these buffers.
  const size_t most = size_t(options.max_batch) * size_t(options.max_context);
  if (method.tf_tokens.size() < most) {
    m.drop_graph();
    method.tf_tokens.resize(most);
    method.tf_nll.resize(most);
  }
  if (method.tf_n != n) m.drop_graph();  // n is an argument of the recorded kernels
  method.tf_n = n;
  method.teacher = true;
  SAAP_CU(cudaMemcpyAsync(method.tf_tokens.get(), tokens, size_t(batch) * n * 4, cudaMemcpyHostToDevice, m.stream));
  m.teacher_nll();  // the prefill's last position scores token n0
  try {
    for (int64_t p = n0; p < fed; ++p) {  // feeds token p, scores token p + 1
      m.launch_step();
      m.length += 1;
    }
  } catch (...) {
    method.teacher = false;
    m.drop_graph();
    throw;
  }
  if (nll)
    for (int b = 0; b < batch; ++b)
      SAAP_CU(cudaMemcpyAsync(nll + size_t(b) * n + n0 - 1, method.tf_nll.get() + size_t(b) * n + n0 - 1,
                              size_t(fed - n0 + 1) * 4, cudaMemcpyDeviceToHost, m.stream));
  SAAP_CU(cudaStreamSynchronize(m.stream));
  method.teacher = false;
  if (nll)
    for (int b = 0; b < batch; ++b)
      for (int64_t t = fed; t < n; ++t) nll[size_t(b) * n + t] = NAN;
}

void CudaLlamaModel::method_nll(const int32_t* tokens, int batch, int64_t n, float* nll) {
  SAAP_CHECK_MSG(nll != nullptr, InvalidArgument, "method_nll needs an nll buffer");
  teacher_forced(tokens, batch, n, n - 1, nll);
}

void CudaLlamaModel::method_prefill(const int32_t* tokens, int batch, int64_t n) {
  teacher_forced(tokens, batch, n, n, nullptr);
}

KvReads CudaLlamaModel::kv_reads() const {
  const Impl& m = *impl_;
  KvReads r = m.method.host_reads;
  if (m.method.reads.size()) {
    unsigned long long dev[3] = {0, 0, 0};
    SAAP_CU(cudaMemcpyAsync(dev, m.method.reads.get(), sizeof dev, cudaMemcpyDeviceToHost, m.stream));
    SAAP_CU(cudaStreamSynchronize(m.stream));
    r.kv_tokens += double(dev[0]);
    r.dense_tokens += double(dev[1]);
    r.index_tokens += double(dev[2]);
  }
  return r;
}

void CudaLlamaModel::reset_kv_reads() {
  Impl& m = *impl_;
  m.method.host_reads = KvReads{};
  if (m.method.reads.size()) SAAP_CU(cudaMemsetAsync(m.method.reads.get(), 0, m.method.reads.bytes(), m.stream));
}

}  // namespace saap::cuda
