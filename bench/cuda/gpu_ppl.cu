// Perplexity of the CUDA model runner over a text, windowed exactly as the CPU's `saap eval ppl`
// (src/eval/perplexity.cpp): non-overlapping windows of W tokens, each a fresh sequence (BOS + W-1
// text tokens when the vocabulary asks for BOS; SmolLM2 does not), scored on its W-1 next tokens.
// Windows run `--batch` at a time; the NLL is computed on the GPU from the fp32 logits. Dense: one
// batched prefill. A sparse --method: perplexity under the method as the CPU's
// AttentionMode::MethodEverywhere (CudaLlamaModel::method_nll: dense prefill of the positions the
// method reads whole, then teacher-forced decode through the GPU index, every step a CUDA graph
// replay), with the K/V fraction read counted as the CPU's LookupStats. The CPU runner's figures for
// eval.txt, 12 x 2048: dense 23.21 (SmolLM2), 22.69 (Gemma-3-270M, whose windows start with BOS);
// SmolLM2 with 4 sinks + 16 window (README): saap 5% 32.81, kmeans 5% 33.67. The model's
// architecture (llama, gemma3) comes from the GGUF; the window is the run's max_context, so a window
// past the model's context length (8192 for SmolLM2, 32768 for Gemma-3) is refused by name.
//
// Usage: gpu_ppl --text eval.txt [--model PATH|smollm2|gemma3 (default $SAAP_MODEL_PATH)]
//                [--window-len 2048] [--max-windows 12] [--batch 12] [--attention tc|tc128|tcw32|simple]
//                [--method dense|saap|kmeans|partition-oracle|loki|quest] [--artifact FILE]
//                [--lookup F] [--sinks S] [--window W] [--k-f F] [--d-f F] [--budget-tokens B]
//                [--page-size P] [--json FILE]
// The method options are the CPU CLI's (registry.h; one not applying to the method is refused).
// --json writes the figures per window with the run's provenance (date, machine and GPU, commit,
// command, the sha256 of the model, the text and the artifact), the method and its K/V fraction.
//        gpu_ppl --reference tests/model/data/cuda_reference_long.txt [--model PATH] [--attention tc|tc128|simple]
// The second form runs the CPU runner's 8192-token window of eval.txt (tokens, top-1, margin and
// NLL per position, written by tests/model/test_cuda_reference.cpp) and compares: top-1 agreement
// (>= 99% of the positions whose CPU top-2 margin exceeds 0.2), mean |d NLL|, and the window's
// perplexity (within 0.5% of the CPU's). Exit 1 when a limit fails.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "model/cuda_reference.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/model/cuda_llama.h"
#include "saap/model/gguf.h"
#include "saap/model/tokenizer.h"
#include "saap/provenance/provenance.h"

using namespace saap;

namespace {

int compare_with_reference(const std::string& model_path, const std::string& ref_path, cuda::PrefillKernel kernel) {
  const testref::LongRef ref = testref::read_long_reference(ref_path);
  const int64_t n = int64_t(ref.tokens.size());
  cuda::CudaLlamaOptions o;
  o.max_batch = 1;
  o.max_context = n;
  o.prefill_kernel = kernel;
  auto model = cuda::CudaLlamaModel::load(model_path, o);
  const int V = model->config().vocab_size;
  std::vector<float> logits(size_t(n) * V);
  const auto t0 = std::chrono::steady_clock::now();
  model->prefill(ref.tokens.data(), 1, n, logits.data());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t same = 0, decisive = 0, decisive_same = 0, scored = 0;
  double gpu_nll = 0, cpu_nll = 0, abs_dnll = 0;
  for (int64_t i = 0; i < n; ++i) {
    const testref::PositionRef p =
        testref::summarize(&logits[size_t(i) * V], V, 1, i + 1 < n ? ref.tokens[size_t(i + 1)] : -1);
    const bool ok = p.top_ids[0] == ref.top1[size_t(i)];
    same += ok;
    if (ref.margin[size_t(i)] > 0.2f) {
      ++decisive;
      decisive_same += ok;
    }
    if (i + 1 < n) {
      const double g = p.lse - p.next_logit;
      gpu_nll += g;
      cpu_nll += ref.nll[size_t(i)];
      abs_dnll += std::fabs(g - ref.nll[size_t(i)]);
      ++scored;
    }
  }
  const double agree = double(decisive_same) / double(std::max<int64_t>(decisive, 1));
  const double ppl_gpu = std::exp(gpu_nll / double(scored)), ppl_cpu = std::exp(cpu_nll / double(scored));
  const double rel = std::fabs(ppl_gpu / ppl_cpu - 1);
  std::printf("reference %s: %s, %lld tokens (prefill with all logits %.2f s)\n", ref_path.c_str(), ref.model.c_str(),
              (long long)n, secs);
  std::printf("top-1 same: %lld of %lld positions; %lld of %lld with CPU margin > 0.2 (%.4f, limit 0.99)\n",
              (long long)same, (long long)n, (long long)decisive_same, (long long)decisive, agree);
  std::printf("mean |d NLL| %.5f nats; perplexity GPU %.4f vs CPU %.4f: relative %.5f (limit 0.005)\n",
              abs_dnll / double(scored), ppl_gpu, ppl_cpu, rel);
  const bool pass = agree >= 0.99 && rel <= 0.005;
  std::printf("%s\n", pass ? "PASS" : "FAIL");
  return pass ? 0 : 1;
}

// The run's figures as JSON, with its provenance (the GPU the model ran on).
void write_json(const std::string& path, const cuda::CudaLlamaModel& model, const std::string& model_path,
                const std::string& text_path, const MethodSpec& spec, double kv_fraction, int64_t window, bool bos,
                const std::vector<double>& window_nll, int64_t scored, double mean, double secs) {
  std::vector<InputIdentity> inputs = {input_file("model", model_path), input_file("text", text_path)};
  if (!spec.artifact.empty()) inputs.push_back(input_file("artifact", spec.artifact));
  Provenance prov = collect_provenance(inputs);
  cudaDeviceProp prop{};
  int dev = 0;
  if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess) {
    const std::string driver = prov.gpus.empty() ? "" : prov.gpus.front().driver;
    prov.gpus = {{prop.name, driver}};
  }
  const LlamaConfig& c = model.config();
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throw Error(ErrorKind::InvalidArgument, "cannot write " + path);
  std::fprintf(f, "{\n \"what\": %s,\n",
               json_quote(std::string(spec.name == "dense" ? "dense perplexity"
                                                           : "perplexity under the method, every position through "
                                                             "it (MethodEverywhere)") +
                          " on non-overlapping windows of the text (" +
                          std::string(bos ? "BOS + window - 1 text tokens, window - 1 scored" : "window text tokens, "
                                                                                                "window - 1 scored") +
                          "), CUDA model runner (bf16 weights and KV cache, fp32 residual and softmax)")
                   .c_str());
  std::fprintf(f, " \"model\": %s,\n \"architecture\": %s,\n \"text\": %s,\n", json_quote(c.name).c_str(),
               json_quote(c.architecture).c_str(), json_quote(text_path).c_str());
  std::fprintf(f, " \"method\": %s,\n \"method_name\": %s,\n \"dense_prefix\": %lld,\n \"kv_fraction\": %.6f,\n",
               json_quote(spec.describe()).c_str(), json_quote(spec.name).c_str(),
               (long long)model.dense_prefix(window), kv_fraction);
  std::fprintf(f, " \"window_len\": %lld,\n \"windows\": %zu,\n \"bos\": %s,\n \"prefill_kernel\": %s,\n",
               (long long)window, window_nll.size(), bos ? "true" : "false",
               json_quote(cuda::prefill_kernel_name(model.options().prefill_kernel)).c_str());
  std::fprintf(f, " \"scored_tokens\": %lld,\n \"mean_nll\": %.10g,\n \"perplexity\": %.10g,\n \"seconds\": %.3f,\n",
               (long long)scored, mean, std::exp(mean), secs);
  std::fprintf(f, " \"window_nll\": [");
  for (size_t i = 0; i < window_nll.size(); ++i) std::fprintf(f, "%s%.10g", i ? ", " : "", window_nll[i]);
  std::fprintf(f, "],\n \"provenance\": %s\n}\n", provenance_json(prov, 1).c_str());
  if (std::fclose(f) != 0) throw Error(ErrorKind::InvalidArgument, "error writing " + path);
  std::printf("wrote %s\n", path.c_str());
}

}  // namespace

int main(int argc, char** argv) try {
  std::string model_path = std::getenv("SAAP_MODEL_PATH") ? std::getenv("SAAP_MODEL_PATH") : "", text_path, ref_path;
  std::string json_path;
  int64_t window = 2048, max_windows = 12;
  int batch = 12;
  cuda::PrefillKernel kernel = cuda::CudaLlamaOptions{}.prefill_kernel;  // the runner's default
  MethodSpec spec;
  std::vector<std::string> method_options;  // the registry's option names given (checked against the method)
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (i + 1 >= argc) throw Error(ErrorKind::InvalidArgument, "option " + a + " needs a value");
    const char* v = argv[i + 1];
    if (a == "--model") model_path = v;
    else if (a == "--text") text_path = v;
    else if (a == "--reference") ref_path = v;
    else if (a == "--window-len") window = std::atoll(v);
    else if (a == "--max-windows") max_windows = std::atoll(v);
    else if (a == "--batch") batch = std::atoi(v);
    else if (a == "--attention") kernel = cuda::prefill_kernel_from_name(v);
    else if (a == "--json") json_path = v;
    else if (set_method_option(spec, a, v)) {
      if (a != "--method") method_options.push_back(a);
    } else throw Error(ErrorKind::InvalidArgument, "unknown option " + a);
  }
  if (model_path.empty()) throw Error(ErrorKind::InvalidArgument, "need --model (or SAAP_MODEL_PATH)");
  model_path = saap::model_path(model_path);  // the names smollm2 and gemma3 (SAAP_GEMMA3_MODEL), or a file
  if (!ref_path.empty()) return compare_with_reference(model_path, ref_path, kernel);
  if (text_path.empty()) throw Error(ErrorKind::InvalidArgument, "need --text or --reference");
  if (window < 2 || batch < 1 || max_windows < 0)
    throw Error(ErrorKind::InvalidArgument, "--window-len >= 2, --batch >= 1, --max-windows >= 0");
  check_options_apply(spec.name, method_options);

  const GGUFFile file = GGUFFile::open(model_path);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  std::ifstream in(text_path, std::ios::binary);
  if (!in) throw Error(ErrorKind::NotFound, "cannot read " + text_path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::vector<int32_t> text = tok.encode(ss.str());
  const std::vector<int32_t> bos = tok.encode("", /*add_bos=*/true);
  const int64_t per_window = bos.empty() ? window : window - 1;
  int64_t windows = int64_t(text.size()) / per_window;
  if (max_windows > 0) windows = std::min(windows, max_windows);
  if (windows < 1) throw Error(ErrorKind::InvalidArgument, "the text holds no full window");
  batch = int(std::min<int64_t>(batch, windows));

  cuda::CudaLlamaOptions o;
  o.max_batch = batch;
  o.max_context = window;
  o.max_prefill_rows = std::max<int64_t>(32768, int64_t(batch) * window);
  o.prefill_kernel = kernel;
  o.method = spec;
  const auto t_load = std::chrono::steady_clock::now();
  auto model = cuda::CudaLlamaModel::load(model_path, o);
  const double load_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const bool dense = spec.name == "dense";
  std::printf("%s (%s): %s: %zu tokens, %lld windows of %lld (%s), batch %d, method %s (dense prefix %lld; load "
              "%.1f s)\n",
              model->config().name.c_str(), model->config().architecture.c_str(), text_path.c_str(), text.size(),
              (long long)windows, (long long)window, bos.empty() ? "no BOS" : "BOS + text", batch,
              spec.describe().c_str(), (long long)model->dense_prefix(window), load_secs);

  const auto t0 = std::chrono::steady_clock::now();
  double total = 0;
  int64_t scored = 0;
  std::vector<double> window_nll;
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    const int nb = int(std::min<int64_t>(batch, windows - w0));
    std::vector<int32_t> tokens(size_t(nb) * window);
    for (int b = 0; b < nb; ++b) {
      int32_t* dst = &tokens[size_t(b) * window];
      if (!bos.empty()) *dst++ = bos[0];
      std::copy_n(text.begin() + (w0 + b) * per_window, per_window, dst);
    }
    std::vector<float> nll(tokens.size());
    if (dense)
      model->prefill(tokens.data(), nb, window, nullptr, nll.data());
    else
      model->method_nll(tokens.data(), nb, window, nll.data());
    for (int b = 0; b < nb; ++b) {
      double sum = 0;
      for (int64_t t = 0; t + 1 < window; ++t) sum += nll[size_t(b) * window + t];
      std::printf("window %lld: mean nll %.4f\n", (long long)(w0 + b), sum / double(window - 1));
      window_nll.push_back(sum / double(window - 1));
      total += sum;
      scored += window - 1;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double mean = total / double(scored);
  // Dense reads everything by definition; a method's fraction is what its indexes selected.
  const double kv_fraction = dense ? 1.0 : model->kv_reads().fraction();
  std::printf("perplexity %.4f (mean nll %.5f) over %lld scored tokens, %.2f s on the GPU runner (bf16); "
              "method %s, K/V read %.4f of the causal prefix\n",
              std::exp(mean), mean, (long long)scored, secs, spec.describe().c_str(), kv_fraction);
  if (!json_path.empty())
    write_json(json_path, *model, model_path, text_path, spec, kv_fraction, window, !bos.empty(), window_nll, scored,
               mean, secs);
  return std::isfinite(mean) ? 0 : int(ErrorKind::NonFinite);
} catch (const saap::Error& e) {
  std::fprintf(stderr, "gpu_ppl: %s\n", e.what());
  return int(e.kind());
}
