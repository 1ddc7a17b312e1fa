// The Llama forward pass on the GPU. Read prefill() and record_step() top to bottom: they are the
// whole model, in the same order as LlamaSession::forward (src/model/llama.cpp). A Gemma-3 model
// runs its own blocks and decode step (cuda_gemma3.cu) inside the same prefill() and decode_step().
#include <algorithm>
#include <cmath>

#include "saap/core/error.h"
#include "saap/kernels/cuda/llama_ops.h"
#include "src/model_cuda/cuda_llama_impl.h"

namespace saap::cuda {

CudaLlamaModel::Impl::~Impl() {
  drop_graph();
  if (cublas) cublasDestroy(cublas);
  if (stream) cudaStreamDestroy(stream);
}

void CudaLlamaModel::Impl::drop_graph() {
  if (graph_exec) cudaGraphExecDestroy(graph_exec);
  if (graph) cudaGraphDestroy(graph);
  graph_exec = nullptr;
  graph = nullptr;
  graph_batch = 0;
  graph_teacher = false;
}

// Y[rows][out] = X[rows][in] · W[out][in]ᵀ + beta · Y, row-major; bf16 inputs, fp32 accumulation,
// output of y_type. cuBLAS is column-major, and a row-major [r][c] matrix with row stride c is the
// column-major c x r matrix (ld = c). So, column-major: Yᶜ (out x rows, ld out) = Wᶜᵀ · Xᶜ with
// Wᶜ = W viewed as in x out (ld in, transposed: op T) and Xᶜ = X viewed as in x rows (ld in, op N):
// m = out, n = rows, k = in.
void CudaLlamaModel::Impl::gemm_typed(const bf16_t* x, const bf16_t* w, void* y, cudaDataType y_type, int64_t rows,
                                      int in, int out, float beta) {
  SAAP_CU_REQUIRE(rows >= 1 && rows <= INT32_MAX, InvalidArgument, "gemm rows = %lld", (long long)rows);
  if (options.gemm_autotune) {
    tuned_gemm.run(x, w, y, y_type, rows, in, out, beta, stream);
    return;
  }
  const float alpha = 1.f;
  SAAP_CUBLAS(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, out, int(rows), in, &alpha, w, CUDA_R_16BF, in, x,
                           CUDA_R_16BF, in, &beta, y, y_type, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
void CudaLlamaModel::Impl::gemm(const bf16_t* x, const bf16_t* w, float* y, int64_t rows, int in, int out,
                                float beta) {
  gemm_typed(x, w, y, CUDA_R_32F, rows, in, out, beta);
}
void CudaLlamaModel::Impl::gemm(const bf16_t* x, const bf16_t* w, bf16_t* y, int64_t rows, int in, int out,
                                float beta) {
  gemm_typed(x, w, y, CUDA_R_16BF, rows, in, out, beta);
}

// The transformer blocks over the chunk rows [b][n] (tokens at positions pos0 .. pos0 + n - 1 of
// every sequence), whose embeddings are in x. Each block, as on the CPU:
//   x += Wo · attention(RoPE(Wq·h), RoPE(Wk·h), Wv·h),  h = RMSNorm(x)
//   x += W_down · (silu(W_gate·h) ⊙ W_up·h),           h = RMSNorm(x)
void CudaLlamaModel::Impl::prefill_layers(int b, int64_t n, int64_t pos0) {
  if (gemma3) return gemma3_prefill_layers(b, n, pos0);
  const LlamaConfig& c = config;
  const int E = c.n_embd, D = c.head_dim, Q = c.n_heads * D, QKV = (c.n_heads + 2 * c.n_kv_heads) * D;
  const int KV = c.n_kv_heads * D, F = c.n_ff;
  const int64_t rows = int64_t(b) * n;
  const RopeTable rope{rope_table.get(), options.max_context, c.rope.n_rot, c.rope.style == RopeStyle::NeoX};
  const QkvLayout qkv_layout{b, n, c.n_heads, c.n_kv_heads, D, options.max_context};
  const PrefillShape attn{b, c.n_heads, c.n_kv_heads, D, n, pos0, options.max_context};
  const float scale = 1.f / std::sqrt(float(D));
  // The work of each launch for the phase timer (nothing is computed unless it is on): FLOPs, and
  // the bytes of every tensor read or written once. R = rows; element sizes from the buffers.
  const double R = double(rows), bf = sizeof(bf16_t), f32 = sizeof(float);
  const double qkv_el = sizeof(*qkv.get()), gu_el = sizeof(*gate_up.get());
  const double pairs = double(b) * (double(n) * pos0 + double(n) * (n + 1) / 2);  // causal (query, key) pairs
  auto gemm_bytes = [&](double r, int in, int out, double out_el, bool accumulate) {
    return r * in * bf + double(in) * out * bf + r * out * out_el * (accumulate ? 2 : 1);
  };
  // The MLP is row-local: it runs over slices of mlp_rows rows (the whole chunk when 0), whose
  // gate_up and h reuse the same buffer rows, so a slice's intermediates can stay in L2.
  const int64_t slice = options.mlp_rows > 0 ? std::min(options.mlp_rows, rows) : rows;
  auto lap = [&](PrefillPhase::Kind kind, double flops, double bytes) { phases.lap(kind, stream, flops, bytes); };
  for (int l = 0; l < c.n_layers; ++l) {
    const CudaLlamaLayer& L = layers[size_t(l)];
    bf16_t* kc = k_cache.get() + size_t(l) * layer_stride();
    bf16_t* vc = v_cache.get() + size_t(l) * layer_stride();
    rms_norm_rows(x.get(), L.attn_norm.get(), rows, E, c.rms_eps, xn.get(), stream);
    lap(PrefillPhase::Norm, 3 * R * E, R * E * (f32 + bf));
    gemm(xn.get(), L.wqkv.get(), qkv.get(), rows, E, QKV, 0.f);
    lap(PrefillPhase::GemmQkv, 2 * R * E * QKV, gemm_bytes(R, E, QKV, qkv_el, false));
    save_routing_keys(l, b, n, pos0);  // a pre-RoPE partition method assigns the prefill by these
    rope_split_qkv(qkv_layout, qkv.get(), rope, pos0, nullptr, q.get(), kc, vc, stream);
    lap(PrefillPhase::RopeSplit, 6 * R * (Q + KV) / 2, R * QKV * qkv_el + R * (Q + 2 * KV) * bf);
    prefill_attention(attn, q.get(), kc, vc, scale, att.get(), stream, options.prefill_kernel);
    lap(PrefillPhase::Attention, 4 * pairs * D * c.n_heads,
        2 * R * Q * bf + 2 * double(b) * KV * double(pos0 + n) * bf);
    gemm(att.get(), L.wo.get(), x.get(), rows, Q, E, 1.f);
    lap(PrefillPhase::GemmO, 2 * R * Q * E, gemm_bytes(R, Q, E, f32, true));

    for (int64_t r0 = 0; r0 < rows; r0 += slice) {
      const int64_t sr = std::min(slice, rows - r0);
      const double S = double(sr);
      float* xs = x.get() + r0 * E;
      rms_norm_rows(xs, L.ffn_norm.get(), sr, E, c.rms_eps, xn.get(), stream);
      lap(PrefillPhase::Norm, 3 * S * E, S * E * (f32 + bf));
      gemm(xn.get(), L.w_gate_up.get(), gate_up.get(), sr, E, 2 * F, 0.f);
      lap(PrefillPhase::GemmGateUp, 2 * S * E * 2 * F, gemm_bytes(S, E, 2 * F, gu_el, false));
      swiglu_rows(gate_up.get(), sr, F, h.get(), stream);
      lap(PrefillPhase::Swiglu, 6 * S * F, S * F * (2 * gu_el + bf));
      gemm(h.get(), L.w_down.get(), xs, sr, F, E, 1.f);
      lap(PrefillPhase::GemmDown, 2 * S * F * E, gemm_bytes(S, F, E, f32, true));
    }
  }
}

// One decode step; in teacher-forced runs (method_nll) the input is the true token and the step
// also scores the next true token. Only kernel launches on `stream`: this is what the CUDA graph
// records.
void CudaLlamaModel::Impl::record_step() {
  if (method.teacher) teacher_input();
  if (gemma3)
    gemma3_record_step();
  else
    llama_record_step();
  if (method.teacher) teacher_nll();
}

// One token per sequence: embeddings of next_tokens (and lengths += 1), the blocks with the
// attention of the method (decode_attention: dense split-KV over the cache rows [0, lengths[b]), or
// the layer's sparse index), the unembedding and the greedy choice.
void CudaLlamaModel::Impl::llama_record_step() {
  const LlamaConfig& c = config;
  const int E = c.n_embd, D = c.head_dim, Q = c.n_heads * D, QKV = (c.n_heads + 2 * c.n_kv_heads) * D;
  const RopeTable rope{rope_table.get(), options.max_context, c.rope.n_rot, c.rope.style == RopeStyle::NeoX};
  const QkvLayout qkv_layout{batch, 1, c.n_heads, c.n_kv_heads, D, options.max_context};
  const float scale = 1.f / std::sqrt(float(D));
  embed_rows(next_tokens.get(), token_embd.get(), c.vocab_size, E, batch, x.get(), lengths.get(), stream);
  for (int l = 0; l < c.n_layers; ++l) {
    const CudaLlamaLayer& L = layers[size_t(l)];
    bf16_t* kc = k_cache.get() + size_t(l) * layer_stride();
    bf16_t* vc = v_cache.get() + size_t(l) * layer_stride();
    rms_norm_rows(x.get(), L.attn_norm.get(), batch, E, c.rms_eps, xn.get(), stream);
    gemm(xn.get(), L.wqkv.get(), qkv.get(), batch, E, QKV, 0.f);
    rope_split_qkv(qkv_layout, qkv.get(), rope, 0, lengths.get(), q32.get(), kc, vc, stream);
    decode_attention(l, kc, vc, scale);
    to_bf16(att32.get(), int64_t(batch) * Q, att.get(), stream);
    gemm(att.get(), L.wo.get(), x.get(), batch, Q, E, 1.f);

    rms_norm_rows(x.get(), L.ffn_norm.get(), batch, E, c.rms_eps, xn.get(), stream);
    gemm(xn.get(), L.w_gate_up.get(), gate_up.get(), batch, E, 2 * c.n_ff, 0.f);
    swiglu_rows(gate_up.get(), batch, c.n_ff, h.get(), stream);
    gemm(h.get(), L.w_down.get(), x.get(), batch, c.n_ff, E, 1.f);
  }
  rms_norm_rows(x.get(), output_norm.get(), batch, E, c.rms_eps, xn.get(), stream);
  gemm(xn.get(), unembedding(), logits.get(), batch, E, c.vocab_size, 0.f);
  argmax_rows(logits.get(), batch, c.vocab_size, next_tokens.get(), stream);
}

void CudaLlamaModel::Impl::launch_step() {
  reserve_step();
  if (graph_exec && (graph_batch != batch || graph_teacher != method.teacher)) drop_graph();
  if (graph_exec) {
    SAAP_CU(cudaGraphLaunch(graph_exec, stream));
  } else {
    // The first step runs eagerly: it lets cuBLAS pick its kernels and the decode kernels size
    // their split workspaces, so the capture below records launches only. Global mode: a call
    // that would synchronise inside the step fails the capture instead of passing unnoticed.
    record_step();
    SAAP_CU(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    try {
      record_step();
    } catch (...) {
      cudaGraph_t broken = nullptr;
      cudaStreamEndCapture(stream, &broken);
      if (broken) cudaGraphDestroy(broken);
      throw;
    }
    SAAP_CU(cudaStreamEndCapture(stream, &graph));
    SAAP_CU(cudaGraphInstantiate(&graph_exec, graph, 0));
    graph_batch = batch;
    graph_teacher = method.teacher;
  }
  if (method.kind == MethodKind::Partition) --method.appends_left;
  if (method.kind == MethodKind::Dense) {  // every query read its whole causal prefix (length + 1 tokens)
    const double read = double(batch) * config.n_kv_heads * config.n_layers * double(length + 1);
    method.host_reads.kv_tokens += read;
    method.host_reads.dense_tokens += read;
  } else {  // each sequence's query (length + 1 tokens of prefix) read its index in every served layer
    method.host_reads.index_bytes += double(batch) * double(index_bytes_per_query(length + 1));
  }
}

// ---------------------------------------------------------------------------------------------

namespace {
// Only auto, tc and tc128 run head_dim 256 and sliding windows (prefill_attention.h): Unsupported,
// naming the kernel, rather than a failure at the first prefill.
void check_prefill_kernel(const LlamaConfig& c, PrefillKernel kernel) {
  const bool any_shape = kernel == PrefillKernel::Auto || kernel == PrefillKernel::TensorCore ||
                         kernel == PrefillKernel::TensorCore128;
  SAAP_CHECK_FMT(any_shape || (c.head_dim == 64 && c.n_global_layers() == c.n_layers), Unsupported,
                 "prefill attention kernel %s runs head_dim 64 without sliding windows; %s (head_dim %d) needs tc or "
                 "tc128", prefill_kernel_name(kernel), c.architecture.c_str(), c.head_dim);
}
}  // namespace

std::unique_ptr<CudaLlamaModel> CudaLlamaModel::load(const std::string& gguf_path, const CudaLlamaOptions& options) {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  SAAP_CHECK_FMT(e == cudaSuccess && devices > 0, Unsupported, "no CUDA device (%s)",
                 e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
  int dev = 0, major = 0, minor = 0;
  SAAP_CU(cudaGetDevice(&dev));
  SAAP_CU(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  SAAP_CU(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  SAAP_CHECK_FMT(major >= 9, Unsupported, "GPU compute capability %d.%d; saap's CUDA kernels are built for sm_90",
                 major, minor);
  SAAP_CHECK_FMT(options.max_batch >= 1 && options.max_batch <= 65535, InvalidArgument,
                 "max_batch = %d must be in [1, 65535]", options.max_batch);
  SAAP_CHECK_FMT(options.max_context >= 1 && options.max_context <= (int64_t(1) << 31), InvalidArgument,
                 "max_context = %lld must be in [1, 2^31]", (long long)options.max_context);
  SAAP_CHECK_FMT(options.max_prefill_rows >= 1, InvalidArgument, "max_prefill_rows = %lld must be >= 1",
                 (long long)options.max_prefill_rows);
  SAAP_CHECK_FMT(options.mlp_rows >= 0, InvalidArgument, "mlp_rows = %lld must be >= 0", (long long)options.mlp_rows);

  auto m = std::make_unique<Impl>();
  m->options = options;
  load_llama_weights(gguf_path, *m);
  const LlamaConfig& c = m->config;
  SAAP_CHECK_FMT(options.max_context <= c.context_length, InvalidArgument,
                 "max_context = %lld exceeds the model's context length %lld", (long long)options.max_context,
                 (long long)c.context_length);
  check_prefill_kernel(c, options.prefill_kernel);

  const int64_t B = options.max_batch, R = std::max<int64_t>(options.max_prefill_rows, B);
  const int64_t E = c.n_embd, Q = int64_t(c.n_heads) * c.head_dim;
  const int64_t QKV = int64_t(c.n_heads + 2 * c.n_kv_heads) * c.head_dim, F = c.n_ff, V = c.vocab_size;
  m->rows = R;
  const size_t cache = 2 * size_t(c.n_layers) * m->layer_stride() * sizeof(bf16_t);
  const int64_t y_el = c.post_norms ? E * 4 : 0;  // y, Gemma's sub-block outputs
  const size_t acts = size_t(R) * (E * 4 + E * 2 + QKV * 2 + Q * 2 + Q * 2 + 2 * F * 2 + F * 2 + 4 + y_el) +
                      size_t(std::max<int64_t>(B, Impl::kLogitRows)) * V * 4;
  size_t free_bytes = 0, total_bytes = 0;
  SAAP_CU(cudaMemGetInfo(&free_bytes, &total_bytes));
  SAAP_CHECK_FMT(cache + acts + (size_t(64) << 20) <= free_bytes, OutOfMemory,
                 "KV cache %.2f GiB (max_batch %d x max_context %lld) + activations %.2f GiB (max_prefill_rows %lld) "
                 "exceed the free GPU memory %.2f GiB",
                 cache / 1073741824.0, options.max_batch, (long long)options.max_context, acts / 1073741824.0,
                 (long long)R, free_bytes / 1073741824.0);

  m->k_cache.resize(cache / 2 / sizeof(bf16_t));
  m->v_cache.resize(cache / 2 / sizeof(bf16_t));
  m->x.resize(size_t(R * E));
  m->xn.resize(size_t(R * E));
  m->qkv.resize(size_t(R * QKV));
  m->q.resize(size_t(R * Q));
  m->att.resize(size_t(R * Q));
  m->q32.resize(size_t(B * Q));
  m->att32.resize(size_t(B * Q));
  m->gate_up.resize(size_t(R * 2 * F));
  m->h.resize(size_t(R * F));
  if (c.post_norms) m->y.resize(size_t(R * E));
  m->x_last.resize(size_t(B * E));
  m->logits.resize(size_t(std::max<int64_t>(B, Impl::kLogitRows) * V));
  m->chunk_tokens.resize(size_t(R));
  m->next_tokens.resize(size_t(B));
  m->lengths.resize(size_t(B));
  SAAP_CU(cudaMemset(m->lengths.get(), 0, m->lengths.bytes()));
  SAAP_CU(cudaMemset(m->next_tokens.get(), 0, m->next_tokens.bytes()));
  m->cublas_ws.resize(size_t(32) << 20);

  SAAP_CU(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
  SAAP_CUBLAS(cublasCreate(&m->cublas));
  SAAP_CUBLAS(cublasSetStream(m->cublas, m->stream));
  // A fixed workspace: cuBLAS must not allocate while a decode step is being captured.
  SAAP_CUBLAS(cublasSetWorkspace(m->cublas, m->cublas_ws.get(), m->cublas_ws.bytes()));
  m->tuned_gemm.init(m->cublas_ws.get(), m->cublas_ws.bytes());  // the same stream: one workspace serves both
  m->setup_method();
  return std::unique_ptr<CudaLlamaModel>(new CudaLlamaModel(std::move(m)));
}

CudaLlamaModel::CudaLlamaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaLlamaModel::~CudaLlamaModel() = default;

const LlamaConfig& CudaLlamaModel::config() const { return impl_->config; }
const std::string& CudaLlamaModel::identity() const { return impl_->identity; }
const CudaLlamaOptions& CudaLlamaModel::options() const { return impl_->options; }
int CudaLlamaModel::batch() const { return impl_->batch; }
int64_t CudaLlamaModel::length() const { return impl_->length; }
size_t CudaLlamaModel::weight_bytes() const { return impl_->weight_bytes; }
size_t CudaLlamaModel::cache_bytes() const { return impl_->k_cache.bytes() + impl_->v_cache.bytes(); }
cudaStream_t CudaLlamaModel::stream() const { return impl_->stream; }
void CudaLlamaModel::synchronize() const { SAAP_CU(cudaStreamSynchronize(impl_->stream)); }

void CudaLlamaModel::prefill(const int32_t* tokens, int batch, int64_t n, float* all_logits, float* nll) {
  Impl& m = *impl_;
  const LlamaConfig& c = m.config;
  SAAP_CHECK_FMT(batch >= 1 && batch <= m.options.max_batch, InvalidArgument, "batch = %d must be in [1, %d]", batch,
                 m.options.max_batch);
  SAAP_CHECK_FMT(n >= 1 && n <= m.options.max_context, InvalidArgument, "prompt of n = %lld tokens; max_context = %lld",
                 (long long)n, (long long)m.options.max_context);
  SAAP_CHECK_MSG(tokens != nullptr, InvalidArgument, "prefill needs tokens");
  for (int64_t i = 0; i < int64_t(batch) * n; ++i)
    SAAP_CHECK_FMT(tokens[i] >= 0 && tokens[i] < c.vocab_size, InvalidArgument,
                   "token id %d at sequence %lld, index %lld is outside the vocabulary [0, %d)", tokens[i],
                   (long long)(i / n), (long long)(i % n), c.vocab_size);
  SAAP_CU(cudaStreamSynchronize(m.stream));  // a decode step in flight may still read the buffers
  if (batch != m.graph_batch) m.drop_graph();
  m.batch = batch;
  m.length = 0;

  const int E = c.n_embd;
  const int64_t V = c.vocab_size;
  if (m.prompt.size() < size_t(batch * n)) m.prompt.resize(size_t(batch * n));
  SAAP_CU(cudaMemcpyAsync(m.prompt.get(), tokens, size_t(batch * n) * 4, cudaMemcpyHostToDevice, m.stream));
  if (nll && m.nll.size() < size_t(batch * n)) m.nll.resize(size_t(batch * n));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(n, m.rows / batch));
  const double unembed_bytes = double(V) * E * sizeof(bf16_t);
  m.phases.start(m.stream);
  for (int64_t t0 = 0; t0 < n; t0 += chunk) {
    const int64_t cn = std::min(chunk, n - t0), rows = int64_t(batch) * cn;
    // chunk_tokens [batch][cn] = prompt[b][t0 .. t0 + cn)
    SAAP_CU(cudaMemcpy2DAsync(m.chunk_tokens.get(), size_t(cn) * 4, m.prompt.get() + t0, size_t(n) * 4,
                              size_t(cn) * 4, size_t(batch), cudaMemcpyDeviceToDevice, m.stream));
    m.phases.lap(PrefillPhase::Copies, m.stream, 0, 2.0 * rows * 4);
    embed_rows(m.chunk_tokens.get(), m.token_embd.get(), c.vocab_size, E, rows, m.x.get(), nullptr, m.stream,
               c.embed_scale);
    m.phases.lap(PrefillPhase::Embed, m.stream, 0, double(rows) * E * (sizeof(bf16_t) + 4));
    m.prefill_layers(batch, cn, t0);

    if (all_logits || nll) {  // every row of the chunk, kLogitRows at a time
      for (int64_t r0 = 0; r0 < rows; r0 += Impl::kLogitRows) {
        const int64_t nr = std::min(Impl::kLogitRows, rows - r0);
        rms_norm_rows(m.x.get() + r0 * E, m.output_norm.get(), nr, E, c.rms_eps, m.xn.get(), m.stream);
        m.gemm(m.xn.get(), m.unembedding(), m.logits.get(), nr, E, int(V), 0.f);
        if (nll) prompt_nll_rows(m.logits.get(), nr, int(V), {m.prompt.get(), n, cn, t0, r0}, m.nll.get(), m.stream);
        if (all_logits) {
          for (int64_t r = r0; r < r0 + nr;) {  // runs of rows of one sequence are contiguous on the host
            const int64_t b = r / cn, t = r % cn, run = std::min(cn - t, r0 + nr - r);
            SAAP_CU(cudaMemcpyAsync(all_logits + (b * n + t0 + t) * V, m.logits.get() + (r - r0) * V,
                                    size_t(run * V) * 4, cudaMemcpyDeviceToHost, m.stream));
            r += run;
          }
          SAAP_CU(cudaStreamSynchronize(m.stream));  // m.logits is reused by the next group
        }  // else the next group's GEMM follows the NLL kernel on the stream
        m.phases.lap(PrefillPhase::AllLogits, m.stream, 2.0 * nr * E * V,
                     unembed_bytes + double(nr) * V * 4 * (nll ? 2 : 1) + (all_logits ? double(nr) * V * 4 : 0));
      }
    }
    if (t0 + cn == n) {  // the last position of each sequence: row b * cn + cn - 1
      SAAP_CU(cudaMemcpy2DAsync(m.x_last.get(), size_t(E) * 4, m.x.get() + (cn - 1) * E, size_t(cn * E) * 4,
                                size_t(E) * 4, size_t(batch), cudaMemcpyDeviceToDevice, m.stream));
      rms_norm_rows(m.x_last.get(), m.output_norm.get(), batch, E, c.rms_eps, m.xn.get(), m.stream);
      m.gemm(m.xn.get(), m.unembedding(), m.logits.get(), batch, E, int(V), 0.f);
      argmax_rows(m.logits.get(), batch, int(V), m.next_tokens.get(), m.stream);
      m.phases.lap(PrefillPhase::LastLogits, m.stream, 2.0 * batch * E * V, unembed_bytes + 2.0 * batch * V * 4);
    }
  }
  const std::vector<int32_t> lengths(static_cast<size_t>(batch), static_cast<int32_t>(n));
  SAAP_CU(cudaMemcpyAsync(m.lengths.get(), lengths.data(), size_t(batch) * 4, cudaMemcpyHostToDevice, m.stream));
  if (nll)
    SAAP_CU(cudaMemcpyAsync(nll, m.nll.get(), size_t(batch * n) * 4, cudaMemcpyDeviceToHost, m.stream));
  SAAP_CU(cudaStreamSynchronize(m.stream));
  m.length = n;
  m.build_indexes_after_prefill(n);
}

void CudaLlamaModel::set_prefill_kernel(PrefillKernel kernel) {
  check_prefill_kernel(impl_->config, kernel);
  impl_->options.prefill_kernel = kernel;
}
void CudaLlamaModel::set_gemm_autotune(bool on) { impl_->options.gemm_autotune = on; }
void CudaLlamaModel::set_mlp_rows(int64_t rows) {
  SAAP_CHECK_FMT(rows >= 0, InvalidArgument, "mlp_rows = %lld must be >= 0", (long long)rows);
  impl_->options.mlp_rows = rows;
}
void CudaLlamaModel::set_phase_timing(bool on) { impl_->phases.set_on(on); }
std::vector<PrefillPhase> CudaLlamaModel::prefill_phases() const { return impl_->phases.collect(); }

const char* PrefillPhase::name() const {
  switch (kind) {
    case Embed: return "embed";
    case Norm: return "rms_norm";
    case GemmQkv: return "gemm_qkv";
    case RopeSplit: return "rope_split";
    case Attention: return "attention";
    case GemmO: return "gemm_o";
    case GemmGateUp: return "gemm_gate_up";
    case Swiglu: return "swiglu";
    case GemmDown: return "gemm_down";
    case LastLogits: return "last_logits";
    case AllLogits: return "all_logits";
    case Copies: return "copies";
    case kCount: break;
  }
  return "unknown";
}

void CudaLlamaModel::decode_step(const int32_t* tokens) {
  Impl& m = *impl_;
  SAAP_CHECK_MSG(m.batch >= 1, InvalidArgument, "decode_step before any prefill");
  SAAP_CHECK_FMT(m.length + 1 <= m.options.max_context, InvalidArgument,
                 "decode step at length %lld overflows max_context = %lld", (long long)m.length,
                 (long long)m.options.max_context);
  if (tokens) {
    for (int b = 0; b < m.batch; ++b)
      SAAP_CHECK_FMT(tokens[b] >= 0 && tokens[b] < m.config.vocab_size, InvalidArgument,
                     "token id %d of sequence %d is outside the vocabulary [0, %d)", tokens[b], b,
                     m.config.vocab_size);
    SAAP_CU(cudaMemcpyAsync(m.next_tokens.get(), tokens, size_t(m.batch) * 4, cudaMemcpyHostToDevice, m.stream));
  }
  m.launch_step();
  m.length += 1;
}

void CudaLlamaModel::last_logits(float* logits) const {
  const Impl& m = *impl_;
  SAAP_CHECK_MSG(m.batch >= 1 && logits != nullptr, InvalidArgument, "last_logits needs a prefill and a buffer");
  SAAP_CU(cudaMemcpyAsync(logits, m.logits.get(), size_t(m.batch) * m.config.vocab_size * 4, cudaMemcpyDeviceToHost,
                          m.stream));
  SAAP_CU(cudaStreamSynchronize(m.stream));
}

std::vector<int32_t> CudaLlamaModel::greedy_tokens() const {
  const Impl& m = *impl_;
  std::vector<int32_t> out(size_t(m.batch));
  if (m.batch == 0) return out;
  SAAP_CU(cudaMemcpyAsync(out.data(), m.next_tokens.get(), out.size() * 4, cudaMemcpyDeviceToHost, m.stream));
  SAAP_CU(cudaStreamSynchronize(m.stream));
  return out;
}

}  // namespace saap::cuda
