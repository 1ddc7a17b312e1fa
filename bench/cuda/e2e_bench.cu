// End-to-end speed of the CUDA model runner: prefill of a P-token prompt at batch B, then N greedy
// decode steps replayed from the captured CUDA graph. Prints a table and the CSV rows of
// results/gpu_e2e_<date>_<gpu>.csv (engine,method,batch,prompt_tokens,prefill_ms,decode_tok_s).
//
// Usage: e2e_bench [--model PATH (default $SAAP_MODEL_PATH)] [--prompts 2048,8000] [--batches 1,16]
//                  [--decode 128] [--reps 3] [--prefill-rows 65536] [--attention auto|tc|tc128|tcw32|tcw16|simple]
//                  [--csv FILE]   (also writes the rows there, after the run's provenance lines)
//                  [--phases]     (after the timed runs, one more prefill with per-phase GPU times)
//                  [--gemm-autotune on|off]  (default the runner's: on; the other way is timed too)
//                  [--mlp-rows N]     (MLP in row slices of N; slices of 2048 and 4096 are timed too)
//                  [--method saap|kmeans|partition-oracle|loki|quest --artifact FILE --lookup F ...]
//                     (decode through the method's GPU index, the CLI's options; its CSV method is
//                     e.g. saap@0.05; the prefill time then includes building every layer's index)
//
// The "8k" prompt is 8000 tokens so that prompt + decode steps fit SmolLM2's 8192-token context
// (the runner refuses a cache longer than the model's context, as the CPU runner does).
// Prompts are fixed pseudo-random token ids (speed does not depend on the text). Prefill time is
// host wall-clock around CudaLlamaModel::prefill (upload, every layer, last-position logits,
// synchronised), median of --reps after one warm-up; the same for the other tensor-core attention
// kernels (set_prefill_kernel), printed below each row. Decode: one eager step that captures the
// graph, then N graph launches timed by CUDA events; tokens/s = B * N / time. The context grows
// from P to P + N during the timed steps.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "saap/core/error.h"
#include "saap/kernels/cuda/check.h"
#include "saap/kernels/cuda/decode.h"
#include "saap/model/cuda_llama.h"
#include "saap/provenance/provenance.h"

using namespace saap;

namespace {

std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> v;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    v.push_back(std::strtoll(p, &end, 10));
    if (end == p) throw Error(ErrorKind::InvalidArgument, std::string("bad number list: ") + s);
    p = *end == ',' ? end + 1 : end;
  }
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The prefill attention alone at the model's shapes (one layer, the whole prompt as one chunk),
// to split the prefill time into attention and the rest: median ms of 3 after a warm-up, and the
// causal FLOP rate (4 * D flops per query-key pair, P(P+1)/2 pairs per sequence and head).
double attention_ms(const LlamaConfig& c, int64_t B, int64_t P, cuda::PrefillKernel kernel, double* tflops) {
  const size_t q_n = size_t(B) * P * c.n_heads * c.head_dim, kv_n = size_t(B) * c.n_kv_heads * P * c.head_dim;
  cuda::DeviceBuffer<__nv_bfloat16> q(q_n), k(kv_n), v(kv_n), out(q_n);
  // 0x3c3c: bf16 0.0115 everywhere (the speed does not depend on the values).
  SAAP_CU(cudaMemset(q.get(), 0x3c, q.bytes()));
  SAAP_CU(cudaMemset(k.get(), 0x3c, k.bytes()));
  SAAP_CU(cudaMemset(v.get(), 0x3c, v.bytes()));
  const cuda::PrefillShape s{int(B), c.n_heads, c.n_kv_heads, c.head_dim, P, 0, P};
  cudaEvent_t a, b;
  SAAP_CU(cudaEventCreate(&a));
  SAAP_CU(cudaEventCreate(&b));
  std::vector<double> ms;
  for (int r = 0; r < 4; ++r) {
    SAAP_CU(cudaEventRecord(a));
    cuda::prefill_attention(s, q.get(), k.get(), v.get(), 0.125f, out.get(), 0, kernel);
    SAAP_CU(cudaEventRecord(b));
    SAAP_CU(cudaEventSynchronize(b));
    float t = 0;
    SAAP_CU(cudaEventElapsedTime(&t, a, b));
    if (r > 0) ms.push_back(t);
  }
  SAAP_CU(cudaEventDestroy(a));
  SAAP_CU(cudaEventDestroy(b));
  const double m = median(ms);
  *tflops = double(B) * c.n_heads * (double(P) * (P + 1) / 2) * c.head_dim * 4 / (m * 1e-3) / 1e12;
  return m;
}

// One prefill with the model's phase timing on: GPU ms per kind of launch, its share, the FLOPs and
// least bytes the model counted for it, and the rates they give (against the H200's ~989 dense
// bf16 TFLOP/s and ~4.8 TB/s HBM; a phase far below both is latency- or launch-bound).
void print_phases(cuda::CudaLlamaModel& model, const std::vector<int32_t>& tokens, int64_t B, int64_t P) {
  model.set_phase_timing(true);
  model.prefill(tokens.data(), int(B), P);
  const std::vector<cuda::PrefillPhase> phases = model.prefill_phases();
  model.set_phase_timing(false);
  double total = 0;
  for (const auto& p : phases) total += p.ms;
  std::printf("  prefill phases, batch %lld, prompt %lld: %.2f ms of GPU time in all\n", (long long)B, (long long)P,
              total);
  std::printf("  %-14s %8s %9s %6s %10s %10s %9s %8s\n", "phase", "launches", "ms", "share", "GFLOP", "MB", "TFLOP/s",
              "GB/s");
  for (const auto& p : phases)
    std::printf("  %-14s %8lld %9.3f %5.1f%% %10.1f %10.1f %9.1f %8.0f\n", p.name(), (long long)p.launches, p.ms,
                100 * p.ms / total, p.flops / 1e9, p.bytes / 1e6, p.flops / (p.ms * 1e-3) / 1e12,
                p.bytes / (p.ms * 1e-3) / 1e9);
}

}  // namespace

int main(int argc, char** argv) try {
  std::string model_path = std::getenv("SAAP_MODEL_PATH") ? std::getenv("SAAP_MODEL_PATH") : "";
  std::vector<int64_t> prompts = {2048, 8000}, batches = {1, 16};
  int decode = 128, reps = 3;
  int64_t prefill_rows = 65536, mlp_rows = 0;
  std::string csv_path;
  bool phases = false, gemm_autotune = cuda::CudaLlamaOptions{}.gemm_autotune;
  cuda::PrefillKernel kernel = cuda::CudaLlamaOptions{}.prefill_kernel;  // the runner's default
  MethodSpec spec;
  std::vector<std::string> method_options;  // the registry's options given (checked against the method)
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--phases") {
      phases = true;
      continue;
    }
    const char* next = i + 1 < argc ? argv[i + 1] : nullptr;
    if (!next) throw Error(ErrorKind::InvalidArgument, "option " + a + " needs a value");
    if (a == "--model") model_path = next;
    else if (a == "--prompts") prompts = parse_list(next);
    else if (a == "--batches") batches = parse_list(next);
    else if (a == "--decode") decode = std::atoi(next);
    else if (a == "--reps") reps = std::max(1, std::atoi(next));
    else if (a == "--prefill-rows") prefill_rows = std::atoll(next);
    else if (a == "--mlp-rows") mlp_rows = std::atoll(next);
    else if (a == "--gemm-autotune" && (std::strcmp(next, "on") == 0 || std::strcmp(next, "off") == 0))
      gemm_autotune = std::strcmp(next, "on") == 0;
    else if (a == "--csv") csv_path = next;
    else if (a == "--attention") kernel = cuda::prefill_kernel_from_name(next);
    else if (set_method_option(spec, a, next)) {
      if (a != "--method") method_options.push_back(a);
    } else throw Error(ErrorKind::InvalidArgument, "unknown option " + a);
    ++i;
  }
  check_options_apply(spec.name, method_options);
  if (model_path.empty()) throw Error(ErrorKind::InvalidArgument, "no model: pass --model or set SAAP_MODEL_PATH");
  if (decode < 1) throw Error(ErrorKind::InvalidArgument, "--decode must be >= 1");

  cuda::CudaLlamaOptions o;
  o.max_batch = int(*std::max_element(batches.begin(), batches.end()));
  o.max_context = *std::max_element(prompts.begin(), prompts.end()) + decode + 1;
  o.max_prefill_rows = prefill_rows;
  o.prefill_kernel = kernel;
  o.gemm_autotune = gemm_autotune;
  o.mlp_rows = mlp_rows;
  o.method = spec;
  const auto t_load = std::chrono::steady_clock::now();
  auto model = cuda::CudaLlamaModel::load(model_path, o);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  cudaDeviceProp prop{};
  SAAP_CU(cudaGetDeviceProperties(&prop, 0));
  const LlamaConfig& c = model->config();
  std::printf("model %s (L%d E%d H%d/%d D%d F%d V%d), weights %.1f MiB bf16, KV cache %.1f MiB, load %.1f s, "
              "decode through %s\n",
              c.name.c_str(), c.n_layers, c.n_embd, c.n_heads, c.n_kv_heads, c.head_dim, c.n_ff, c.vocab_size,
              model->weight_bytes() / 1048576.0, model->cache_bytes() / 1048576.0, load_s, spec.describe().c_str());
  // The kernel that runs at the model's shapes (auto resolves by head_dim and window).
  const cuda::PrefillKernel resolved = cuda::resolve_prefill_kernel(
      cuda::PrefillShape{1, c.n_heads, c.n_kv_heads, c.head_dim, 1, 0, 1}, kernel);
  std::printf("gpu %s, attention %s (%s), GEMM autotune %s, prefill rows per chunk %lld, MLP rows per slice %lld, decode "
              "steps %d\n",
              prop.name, cuda::prefill_kernel_name(kernel), cuda::prefill_kernel_name(resolved),
              gemm_autotune ? "on" : "off", (long long)prefill_rows,
              (long long)mlp_rows, decode);

  cudaEvent_t e0, e1;
  SAAP_CU(cudaEventCreate(&e0));
  SAAP_CU(cudaEventCreate(&e1));
  std::vector<std::string> csv;
  std::printf("%6s %8s %12s %14s %12s\n", "batch", "prompt", "prefill_ms", "decode_tok_s", "step_ms");
  for (int64_t P : prompts) {
    for (int64_t B : batches) {
      std::vector<int32_t> tokens(size_t(B * P));
      uint32_t x = 12345;
      for (auto& t : tokens) {
        x = x * 1664525u + 1013904223u;
        t = int32_t((x >> 8) % uint32_t(c.vocab_size));
      }
      auto time_prefill = [&] {  // median host ms of `reps` prefills after a warm-up
        std::vector<double> prefill_ms;
        for (int r = 0; r <= reps; ++r) {
          const auto t0 = std::chrono::steady_clock::now();
          model->prefill(tokens.data(), int(B), P);
          const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
          if (r > 0) prefill_ms.push_back(ms);
        }
        return median(prefill_ms);
      };
      const double pms = time_prefill();
      model->decode_step();  // eager step; captures the graph
      model->synchronize();
      SAAP_CU(cudaEventRecord(e0, model->stream()));
      for (int i = 0; i < decode; ++i) model->decode_step();
      SAAP_CU(cudaEventRecord(e1, model->stream()));
      SAAP_CU(cudaEventSynchronize(e1));
      float decode_ms = 0;
      SAAP_CU(cudaEventElapsedTime(&decode_ms, e0, e1));
      const double tok_s = double(B) * decode / (decode_ms / 1e3);
      double tflops = 0;
      const double attn = attention_ms(c, B, P, kernel, &tflops);
      std::printf("%6lld %8lld %12.2f %14.1f %12.3f   attention %.3f ms/layer (%.0f TFLOP/s), x%d layers = %.1f ms\n",
                  (long long)B, (long long)P, pms, tok_s, decode_ms / decode, attn, tflops, c.n_layers,
                  attn * c.n_layers);
      // The other tensor-core variants at the same shape, the whole prefill and the attention alone,
      // to choose the default by measurement.
      for (cuda::PrefillKernel other : {cuda::PrefillKernel::TensorCore, cuda::PrefillKernel::TensorCore128,
                                        cuda::PrefillKernel::TensorCoreWarp32, cuda::PrefillKernel::TensorCoreWarp16}) {
        if (other == resolved) continue;
        model->set_prefill_kernel(other);
        const double other_prefill = time_prefill();
        model->set_prefill_kernel(kernel);
        double other_tflops = 0;
        const double other_ms = attention_ms(c, B, P, other, &other_tflops);
        std::printf("%15s prefill with %-6s %12.2f %29s attention %.3f ms/layer (%.0f TFLOP/s)\n", "",
                    cuda::prefill_kernel_name(other), other_prefill, "", other_ms, other_tflops);
      }
      // The GEMMs the other way (cuBLAS's choice vs cuBLASLt's candidates timed per shape).
      model->set_gemm_autotune(!o.gemm_autotune);
      const double other_gemm = time_prefill();  // the warm-up run tunes the new shapes
      model->set_gemm_autotune(o.gemm_autotune);
      std::printf("%15s prefill with GEMM autotune %-3s %8.2f\n", "", o.gemm_autotune ? "off" : "on", other_gemm);
      // The MLP in row slices whose intermediates may stay in L2.
      for (int64_t mlp_rows : {int64_t(2048), int64_t(4096)}) {
        if (mlp_rows == o.mlp_rows) continue;
        model->set_mlp_rows(mlp_rows);
        const double sliced = time_prefill();
        model->set_mlp_rows(o.mlp_rows);
        std::printf("%15s prefill with MLP slices of %-5lld %6.2f\n", "", (long long)mlp_rows, sliced);
      }
      if (phases) print_phases(*model, tokens, B, P);
      char line[160];
      std::snprintf(line, sizeof line, "saap,%s,%lld,%lld,%.3f,%.1f", method_budget_label(spec).c_str(), (long long)B,
                    (long long)P, pms, tok_s);
      csv.push_back(line);
    }
  }
  std::printf("\nengine,method,batch,prompt_tokens,prefill_ms,decode_tok_s\n");
  for (const auto& l : csv) std::printf("%s\n", l.c_str());
  if (!csv_path.empty()) {
    // The run's provenance (date, machine and GPUs, commit, command, the model's sha256) first.
    const Provenance prov = collect_provenance({input_file("model", model_path)});
    std::FILE* f = std::fopen(csv_path.c_str(), "w");
    if (!f) throw Error(ErrorKind::NotFound, "cannot write " + csv_path);
    std::fprintf(f, "%s", provenance_csv_lines(prov).c_str());
    std::fprintf(f, "engine,method,batch,prompt_tokens,prefill_ms,decode_tok_s\n");
    for (const auto& l : csv) std::fprintf(f, "%s\n", l.c_str());
    std::fclose(f);
  }
  return 0;
} catch (const saap::Error& e) {
  std::fprintf(stderr, "e2e_bench: %s\n", e.what());
  return int(e.kind());
}
