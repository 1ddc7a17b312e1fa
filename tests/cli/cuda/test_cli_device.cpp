// `saap ... --device cuda` as a user runs it, on the GPU machine: the CLI built there (cuda-only
// preset, no BLAS or FAISS) against itself with --device cpu, on the real model (SAAP_MODEL_PATH).
//   - eval ppl: GPU perplexity within 0.5% of the CPU's on the same windows (the bf16 bound the
//     README states for the runner: 23.2235 vs 23.2122 at 12 x 2048, +0.05%), same JSON fields
//     + "device", result files written with provenance;
//   - eval passkey (dense, 1024 tokens): the needles found (>= 9 of 10; the CPU finds all);
//   - generate: streams text, JSON with device "cuda";
//   - bench --device cuda (dense and quest): the end-to-end rows and CSV;
//   - eval ppl under streaming and oracle (lookup and --budget-tokens), GPU against CPU: perplexity
//     and lookup fraction (the CPU's byte accounting, the oracle's index bytes included);
//   - eval ppl under saap, kmeans, loki (artifacts in SAAP_ARTIFACTS, default /tmp/pieces, as
//     cuda_test_sparse names them; skipped with a note when absent) and quest: K/V fraction and the
//     index bytes (routers, centroids, page metadata, low-rank keys) against the CPU's;
//   - eval ppl under h2o, GPU against CPU (perplexity within 2%, lookup fraction within 0.02), and
//     eval passkey --method h2o --method-prefill on the GPU: exit 0, a lookup fraction in (0, 1);
//   - saap info names the GPU as usable; without FAISS, saap train refuses by name;
//   - a window longer than the model's context: named error, exit 2, no result file.
// Text: SAAP_EVAL_TEXT (the GPU machine's eval.txt), else tests/data/debian_handbook_head.txt, the
// first 12 KB of eval.txt: the same windows, and a text that no edit of the documentation moves.
// Windows are short (3 x 512) so that the CPU side, a plain loop GEMM without BLAS there, stays
// within seconds.
// Exit 77 without a GPU or without SAAP_MODEL_PATH, unless SAAP_REQUIRE_GPU=1.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "cli/cli_run.h"
#include "kernels/cuda/cuda_test_util.h"

namespace {

using cli_test::CliRun;
using cli_test::slurp;

CliRun run_saap(const std::string& args) {
  std::printf("$ saap %s\n", args.c_str());
  std::fflush(stdout);
  const CliRun r = cli_test::run_cli(args, "", "/tmp/saap_cli_device_" + std::to_string(::getpid()));
  if (r.code != 0) std::printf("exit %d: %s\n", r.code, r.err.c_str());
  return r;
}

nlohmann::json parse(const CliRun& r) {
  try {
    return nlohmann::json::parse(r.out);
  } catch (const std::exception& e) {
    std::printf("not JSON (%s): %.300s\n", e.what(), r.out.c_str());
    return nlohmann::json::object();
  }
}

}  // namespace

int main() {
  cutest::require_gpu();
  const char* model = std::getenv("SAAP_MODEL_PATH");
  if (!model || !*model) {
    const char* r = std::getenv("SAAP_REQUIRE_GPU");
    const bool required = r && std::string(r) == "1";
    std::printf("SAAP_MODEL_PATH is not set: %s\n", required ? "FAIL (SAAP_REQUIRE_GPU=1)" : "skipped");
    return required ? 1 : 77;
  }
  const char* text_env = std::getenv("SAAP_EVAL_TEXT");
  const std::string fixed_text = std::string(SAAP_SOURCE_DIR) + "/tests/data/debian_handbook_head.txt";
  const std::string text = text_env && *text_env ? text_env : fixed_text;
  const std::string out = "/tmp/saap_cli_device_out_" + std::to_string(::getpid());
  const std::string common = " --model '" + std::string(model) + "' ";
  cutest::Tally tally;

  // ---- info: the GPU is named and usable; a build without FAISS says it cannot train ----
  const nlohmann::json info = parse(run_saap("--json info"));
  tally.check(info.value("cuda_usable", false) && !info.value("gpu", nlohmann::json()).is_null(),
              "saap info: --device cuda can use the GPU", info.value("cuda_usable", false), 1);
  if (!info.value("training", true)) {  // the GPU machine: no FAISS
    const CliRun t = run_saap("train saap --calib c.safetensors --out o.safetensors");
    tally.check(t.code == 7 && t.err.find("built without FAISS; train on a machine with FAISS") != std::string::npos,
                "saap train without FAISS: exit 7, named", t.code, 7);
  }

  // ---- eval ppl: the GPU against the CPU on the same windows ----
  const std::string ppl = "--json eval ppl" + common + "--text '" + text + "' --window-len 512 --max-windows 3 --out '" + out + "'";
  const CliRun cpu = run_saap(ppl + " --device cpu"), gpu = run_saap(ppl + " --device cuda");
  tally.check(cpu.code == 0 && gpu.code == 0, "eval ppl exits 0 on both devices", gpu.code, 0);
  const nlohmann::json c = parse(cpu), g = parse(gpu);
  if (c.contains("perplexity") && g.contains("perplexity")) {
    const double pc = c["perplexity"].get<double>(), pg = g["perplexity"].get<double>();
    std::printf("perplexity: cpu %.4f, cuda %.4f over %lld windows\n", pc, pg, (long long)g["windows"].get<int64_t>());
    // 0.5%: the bf16 bound of the README and issue 13 (measured +0.05% at 12 x 2048).
    tally.check(std::fabs(pg / pc - 1) <= 0.005, "cuda perplexity within 0.5% of the cpu's", std::fabs(pg / pc - 1),
                0.005);
    tally.check(g["device"] == "cuda" && c["device"] == "cpu", "result carries its device", 0, 0);
    bool same_fields = true;
    for (const auto& [key, value] : c.items()) same_fields = same_fields && g.contains(key);
    tally.check(same_fields, "the cuda result has every field of the cpu's", 0, 0);
    tally.check(g["scored_tokens"] == c["scored_tokens"], "same scored tokens", g["scored_tokens"].get<double>(),
                c["scored_tokens"].get<double>());
    const std::string csv = slurp(out + "/ppl_dense_w512_cuda.csv");
    tally.check(csv.find("# commit:") != std::string::npos && csv.find(",cuda") != std::string::npos,
                "ppl_dense_w512_cuda.csv written with provenance and device", double(csv.size()), 0);
  }

  // ---- eval passkey: dense finds every needle at 1024 tokens ----
  const CliRun pk = run_saap("--json eval passkey" + common + "--device cuda --lengths 1024 --trials 2 --out '" + out + "'");
  const nlohmann::json p = parse(pk);
  const double accuracy = p.contains("passkey") ? p["passkey"]["accuracy"].get<double>() : -1;
  // The CPU runner found every needle at 1024 tokens (results/passkey_repeated_dense.json); bf16 may
  // flip one borderline trial of the ten, not more.
  tally.check(pk.code == 0 && accuracy >= 0.9, "passkey 1024 tokens, 5 depths x 2 trials, dense: accuracy >= 0.9",
              accuracy, 0.9);

  // ---- generate ----
  const CliRun gen = run_saap("--json generate" + common + "--device cuda --chat --prompt 'Why is the sky blue?' --max-tokens 24");
  const nlohmann::json j = parse(gen);
  tally.check(gen.code == 0 && j.value("device", "") == "cuda" && j.value("generated_tokens", 0) > 0,
              "generate --device cuda produces tokens", j.value("generated_tokens", 0), 1);
  if (j.contains("text")) std::printf("generated: %s\n", j["text"].get<std::string>().c_str());

  // ---- bench ----
  const CliRun b = run_saap("--json bench" + common +
                        "--device cuda --prompts 512 --batches 1,4 --decode-steps 16 --reps 1 --methods dense,quest --lookup 0.25 "
                            "--stem e2e --out '" + out + "'");
  const nlohmann::json bj = parse(b);
  bool rows_ok = b.code == 0 && bj.contains("rows") && bj["rows"].size() == 4;  // 2 methods x 2 batches
  if (rows_ok)
    for (const auto& row : bj["rows"]) rows_ok = rows_ok && row["prefill_ms"].get<double>() > 0 && row["decode_tok_s"].get<double>() > 0;
  tally.check(rows_ok && slurp(out + "/e2e.csv").find("prefill_ms") != std::string::npos,
              "bench --device cuda, dense and quest: 4 rows and e2e.csv", rows_ok, 1);

  // ---- methods without an artifact under --device cuda against --device cpu, the same windows ----
  // One window of 256 tokens, every position through the method (the CPU side decodes token by
  // token without BLAS). Streaming reads the same positions on both devices: its K/V fraction must
  // be the CPU's (1e-6) and its perplexity near it (1%: twice the dense bound, for one window of
  // 256 tokens instead of three of 512, read through a 36-token window; a wrong window or sink
  // moves it by far more). The oracle scores every key, so a near-tie at the k-th key may go the
  // other way under the GPU's bf16 activations: perplexity within 1%, K/V + index fraction within
  // 0.02 (the index part, all of K, is the same on both), at a lookup fraction and at a fixed
  // budget of tokens. H2O's heavy hitters accumulate over every query, so a near-tie flipped by bf16
  // activations carries on to later steps: perplexity within 2%, K/V fraction within 0.02.
  struct MethodCase {
    std::string args, label;
    double ppl_tol, fraction_tol;
  };
  const MethodCase method_cases[] = {
      {"--method streaming --sinks 4 --window 32", "streaming", 0.01, 1e-6},
      {"--method oracle --lookup 0.1", "oracle 0.1", 0.01, 0.02},
      {"--method oracle --budget-tokens 24", "oracle 24 tokens", 0.01, 0.02},
      {"--method h2o --lookup 0.1", "h2o 0.1", 0.02, 0.02},
  };
  for (const MethodCase& m : method_cases) {
    const std::string cmd = "--json eval ppl" + common + "--text '" + text + "' --window-len 256 --max-windows 1 " +
                            m.args + " --out '" + out + "/methods'";
    const CliRun mc = run_saap(cmd + " --device cpu"), mg = run_saap(cmd + " --device cuda");
    const nlohmann::json jc = parse(mc), jg = parse(mg);
    const bool ran = mc.code == 0 && mg.code == 0 && jc.contains("perplexity") && jg.contains("perplexity") &&
                     jc["lookup_fraction"].is_number() && jg["lookup_fraction"].is_number();
    tally.check(ran, ("eval ppl " + m.label + ": exits 0 on both devices with a lookup fraction").c_str(), mg.code, 0);
    if (!ran) continue;
    const double pc = jc["perplexity"].get<double>(), pg = jg["perplexity"].get<double>();
    const double fc = jc["lookup_fraction"].get<double>(), fg = jg["lookup_fraction"].get<double>();
    std::printf("%s: perplexity cpu %.4f, cuda %.4f; lookup fraction cpu %.5f, cuda %.5f\n", m.label.c_str(), pc, pg,
                fc, fg);
    tally.check(std::fabs(pg / pc - 1) <= m.ppl_tol, ("eval ppl " + m.label + ": cuda perplexity near the cpu's").c_str(),
                std::fabs(pg / pc - 1), m.ppl_tol);
    tally.check(std::fabs(fg - fc) <= m.fraction_tol,
                ("eval ppl " + m.label + ": cuda lookup fraction near the cpu's").c_str(), std::fabs(fg - fc),
                m.fraction_tol);
  }

  // ---- indexed methods: K/V fraction and index bytes, GPU against CPU, the same window ----
  // Both devices charge each query the CPU method's index bytes (saap_index_bytes, ...), but the
  // CPU's cache is fp32 and the GPU's bf16, so a fraction of dense bytes differs where the index
  // is not in the cache dtype: Saap's routers and k-means' centroids are fp32 on both, hence twice
  // the share of the GPU's half-size dense bytes (scale 2); Quest's page min/max and Loki's
  // low-rank keys are cache values, the same share on both (scale 1). So the GPU's total must be
  // kv_cpu + scale x index_cpu. Tolerances: K/V fraction within 0.02 (partition, page or key
  // rankings may flip a near-tie under the GPU's bf16 activations, as for the oracle above); the
  // index part within 2% relative (the GPU does not run the window's last position, whose NLL is
  // undefined: (W+1)/W = +0.4% for a per-query constant at W = 256; the rest is exact arithmetic
  // on the same prefix lengths); the total within the sum of both. Perplexity within 2%: a
  // lossier method than the oracle, read through a few partitions, pages or keys. Not for Loki:
  // at rank 16 and k_f 0.125 on this one 256-token window its perplexity is chaotic in any
  // rounding: storing the CPU's low-rank key coordinates in bf16, as the GPU stores them, moves
  // the CPU's perplexity from 10.20 to 7.09, bf16 activations with fp32 coordinates to 7.53, both
  // (the GPU's numerics) to 8.55; the H200 measured 8.10 against the CPU's 10.17
  // (scripts/loki_bf16_emulation.py, results/loki_bf16_emulation_2026-12-03.txt). What the two
  // devices share is the rule, and cuda_test_cuda_sparse checks it on the runner's real keys
  // (loki_parity: the GPU's sets equal the float64 rule on its stored keys, and the CPU's up to
  // the bf16 storage of the rotated keys); here Loki's perplexity is printed, not compared.
  {
    const char* art_env = std::getenv("SAAP_ARTIFACTS");
    const std::string dir = art_env && *art_env ? art_env : "/tmp/pieces";
    struct IndexedCase {
      std::string args, label, artifact;
      double index_scale;
      bool compare_ppl = true;
    };
    const std::string budget = " --lookup 0.25 --sinks 4 --window 16";
    const IndexedCase indexed[] = {
        {"--method saap" + budget, "saap", dir + "/saap-c256-pre.safetensors", 2.0},
        {"--method kmeans" + budget, "kmeans", dir + "/kmeans-c256-pre.safetensors", 2.0},
        {"--method quest --page-size 16" + budget, "quest", "", 1.0},
        {"--method loki --k-f 0.125 --d-f 0.25", "loki", dir + "/loki-pre.safetensors", 1.0, false},
    };
    for (const IndexedCase& m : indexed) {
      if (!m.artifact.empty() && ::access(m.artifact.c_str(), R_OK) != 0) {
        std::printf("%s: skipped, no artifact %s (set SAAP_ARTIFACTS)\n", m.label.c_str(), m.artifact.c_str());
        continue;
      }
      const std::string args = m.args + (m.artifact.empty() ? "" : " --artifact '" + m.artifact + "'");
      const std::string cmd = "--json eval ppl" + common + "--text '" + text + "' --window-len 256 --max-windows 1 " +
                              args + " --out '" + out + "/indexed'";
      const CliRun mc = run_saap(cmd + " --device cpu"), mg = run_saap(cmd + " --device cuda");
      const nlohmann::json jc = parse(mc), jg = parse(mg);
      bool ran = mc.code == 0 && mg.code == 0 && jc.contains("perplexity") && jg.contains("perplexity");
      for (const char* key : {"lookup_fraction", "kv_fraction"})
        ran = ran && jc.contains(key) && jg.contains(key) && jc[key].is_number() && jg[key].is_number();
      tally.check(ran, ("eval ppl " + m.label + ": exits 0 on both devices with both fractions").c_str(), mg.code, 0);
      if (!ran) continue;
      const double pc = jc["perplexity"].get<double>(), pg = jg["perplexity"].get<double>();
      const double kc = jc["kv_fraction"].get<double>(), kg = jg["kv_fraction"].get<double>();
      const double ic = jc["lookup_fraction"].get<double>() - kc, ig = jg["lookup_fraction"].get<double>() - kg;
      const double want_total = kc + m.index_scale * ic;
      std::printf("%s: perplexity cpu %.4f, cuda %.4f; K/V fraction cpu %.5f, cuda %.5f; index fraction cpu %.5f, "
                  "cuda %.5f (expected %.5f); total cuda %.5f (expected %.5f)\n",
                  m.label.c_str(), pc, pg, kc, kg, ic, ig, m.index_scale * ic, kg + ig, want_total);
      if (m.compare_ppl)
        tally.check(std::fabs(pg / pc - 1) <= 0.02,
                    ("eval ppl " + m.label + ": cuda perplexity near the cpu's").c_str(), std::fabs(pg / pc - 1), 0.02);
      tally.check(std::fabs(kg - kc) <= 0.02, ("eval ppl " + m.label + ": cuda K/V fraction near the cpu's").c_str(),
                  std::fabs(kg - kc), 0.02);
      // Every one of these methods reads an index at this budget: a zero would be a count left out.
      tally.check(ic > 0 && std::fabs(ig - m.index_scale * ic) <= 0.02 * m.index_scale * ic,
                  ("eval ppl " + m.label + ": cuda index fraction = the cpu's x the dtype scale (2%)").c_str(),
                  ic > 0 ? ig / (m.index_scale * ic) : 0.0, 1.0);
      tally.check(std::fabs(kg + ig - want_total) <= 0.02 + 0.02 * m.index_scale * ic,
                  ("eval ppl " + m.label + ": cuda lookup fraction = cpu K/V + scaled index").c_str(),
                  std::fabs(kg + ig - want_total), 0.02 + 0.02 * m.index_scale * ic);
    }
  }

  // ---- the prompt through the method on the GPU (teacher-forced): H2O sees every query ----
  const CliRun h2o_pk = run_saap("--json eval passkey" + common +
                                 "--device cuda --method h2o --lookup 0.1 --method-prefill --lengths 1024 --trials 1 "
                                 "--out '" + out + "/h2o'");
  const nlohmann::json hp = parse(h2o_pk);
  const double h2o_fraction =
      hp.contains("passkey") && hp["passkey"].contains("lookup_fraction") && hp["passkey"]["lookup_fraction"].is_number()
          ? hp["passkey"]["lookup_fraction"].get<double>()
          : -1;
  tally.check(h2o_pk.code == 0 && h2o_fraction > 0 && h2o_fraction < 1,
              "passkey --method h2o --method-prefill on cuda: exit 0, lookup fraction in (0, 1)", h2o_fraction, 1);

  // ---- bad input loses nothing ----
  const std::string bad_out = out + "/bad";
  const CliRun bad = run_saap("eval ppl" + common + "--device cuda --window-len 1000000 --out '" + bad_out + "'");
  tally.check(bad.code == 2 && ::access(bad_out.c_str(), F_OK) != 0,
              "a window beyond the context: exit 2, nothing written", bad.code, 2);

  std::system(("rm -rf '" + out + "'").c_str());
  return tally.finish();
}
