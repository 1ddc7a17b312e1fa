// Dense perplexity of the CUDA model runner over a text, windowed exactly as the CPU's
// `saap eval ppl` (src/eval/perplexity.cpp): non-overlapping windows of W tokens, each a fresh
// sequence (BOS + W-1 text tokens when the vocabulary asks for BOS; SmolLM2 does not), scored on
// its W-1 next tokens. Windows run `--batch` at a time as one batched prefill; the NLL is computed
// on the GPU from the fp32 logits. The CPU runner's figure for eval.txt, 12 x 2048: 23.21.
//
// Usage: gpu_ppl --text eval.txt [--model PATH (default $SAAP_MODEL_PATH)] [--window 2048]
//                [--max-windows 12] [--batch 12] [--attention tc|simple]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "saap/core/error.h"
#include "saap/model/cuda_llama.h"
#include "saap/model/gguf.h"
#include "saap/model/tokenizer.h"

using namespace saap;

int main(int argc, char** argv) try {
  std::string model_path = std::getenv("SAAP_MODEL_PATH") ? std::getenv("SAAP_MODEL_PATH") : "", text_path;
  int64_t window = 2048, max_windows = 12;
  int batch = 12;
  cuda::PrefillKernel kernel = cuda::PrefillKernel::TensorCore;
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (i + 1 >= argc) throw Error(ErrorKind::InvalidArgument, "option " + a + " needs a value");
    const char* v = argv[i + 1];
    if (a == "--model") model_path = v;
    else if (a == "--text") text_path = v;
    else if (a == "--window") window = std::atoll(v);
    else if (a == "--max-windows") max_windows = std::atoll(v);
    else if (a == "--batch") batch = std::atoi(v);
    else if (a == "--attention") kernel = std::string(v) == "simple" ? cuda::PrefillKernel::Simple : cuda::PrefillKernel::TensorCore;
    else throw Error(ErrorKind::InvalidArgument, "unknown option " + a);
  }
  if (model_path.empty() || text_path.empty())
    throw Error(ErrorKind::InvalidArgument, "need --text and --model (or SAAP_MODEL_PATH)");
  if (window < 2 || batch < 1 || max_windows < 0)
    throw Error(ErrorKind::InvalidArgument, "--window >= 2, --batch >= 1, --max-windows >= 0");

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
  auto model = cuda::CudaLlamaModel::load(model_path, o);
  std::printf("%s: %zu tokens, %lld windows of %lld (%s), batch %d\n", text_path.c_str(), text.size(),
              (long long)windows, (long long)window, bos.empty() ? "no BOS" : "BOS + text", batch);

  const auto t0 = std::chrono::steady_clock::now();
  double total = 0;
  int64_t scored = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    const int nb = int(std::min<int64_t>(batch, windows - w0));
    std::vector<int32_t> tokens(size_t(nb) * window);
    for (int b = 0; b < nb; ++b) {
      int32_t* dst = &tokens[size_t(b) * window];
      if (!bos.empty()) *dst++ = bos[0];
      std::copy_n(text.begin() + (w0 + b) * per_window, per_window, dst);
    }
    std::vector<float> nll(tokens.size());
    model->prefill(tokens.data(), nb, window, nullptr, nll.data());
    for (int b = 0; b < nb; ++b) {
      double sum = 0;
      for (int64_t t = 0; t + 1 < window; ++t) sum += nll[size_t(b) * window + t];
      std::printf("window %lld: mean nll %.4f\n", (long long)(w0 + b), sum / double(window - 1));
      total += sum;
      scored += window - 1;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double mean = total / double(scored);
  std::printf("perplexity %.4f (mean nll %.5f) over %lld scored tokens, %.2f s on the GPU runner (bf16)\n",
              std::exp(mean), mean, (long long)scored, secs);
  return std::isfinite(mean) ? 0 : int(ErrorKind::NonFinite);
} catch (const saap::Error& e) {
  std::fprintf(stderr, "gpu_ppl: %s\n", e.what());
  return int(e.kind());
}
