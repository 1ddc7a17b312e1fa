// Sparse decode inside the CUDA model runner, on the real model (env SAAP_MODEL_PATH, the
// SmolLM2-135M-Instruct GGUF) and the recorded artifacts (env SAAP_ARTIFACTS, a folder holding
// saap-c256-pre.safetensors, kmeans-c256-pre.safetensors and loki-pre.safetensors; /tmp/pieces on
// the GPU machine).
//
//   1. Bad input: an unknown method name is InvalidArgument, a kmeans artifact given to saap BadFile
//      (the CPU's artifact check).
//   2. Parity with the CPU method on the runner's own activations: two sequences of eval.txt
//      (tokens from tests/model/data/cuda_reference_long.txt) are prefilled densely (512 tokens)
//      and decoded teacher-forced through Saap (C = 256, pre-RoPE, 5%, 4 sinks + 16 window),
//      every step a CUDA graph replay. At sampled steps the runner's keys (post-RoPE and the
//      pre-RoPE routing keys, bf16) and pre-RoPE queries of every layer are copied back and fed to
//      the CPU SaapAttention (saap_methods) as fp32; its selected positions are compared with the
//      GPU's per (layer, sequence, KV head, step). The GPU's positions come from the slots its
//      segments name, each slot's K and V bytes looked up among the cache's positions. A differing
//      set is counted as an assignment difference when some candidate key sits in another
//      partition on the two devices (both assign with the fp32 centroids: only summation order
//      can split a near tie), else as a ranking difference (both route with the fp32 weights:
//      only summation order can split a near tie of the group densities). Limit (issue 13):
//      identical sets for >= 99%. (H200 runs: at 2df0f1e, with bf16 centroids, 0.38 identical,
//      every difference from assignment; at 5f292d1, with bf16 router weights, 0.972, every
//      difference from ranking, and 1.000 against the CPU method given the bf16-rounded weights;
//      the GPU now stores the artifact as it is, fp32.)
//      The same parity at a fixed budget of 48 tokens (budget_tokens: rules::Budget on both devices).
//      And Loki's (k_f 0.125, d_f 0.25) on the same tokens: the GPU's sets against the float64 rule
//      on its own stored low-rank keys, and against the CPU method's up to the bf16 storage of the
//      rotated keys (loki_parity).
//   3. Every GPU method decodes through its index inside the graph: method_nll on two windows of
//      512 tokens gives finite NLL, and a K/V fraction in (0, 1] (printed beside dense's), for
//      saap, kmeans, partition-oracle, quest and oracle at a lookup fraction and at budget_tokens,
//      streaming, h2o and loki. Streaming's fraction must equal its fixed reads' exactly; the
//      oracle's K rows scored must equal every prefix its budget does not cover, and its K/V read
//      (and H2O's) must lie between each head's k and the group's union bound. H2O: method_prefill
//      of the first n - 1 tokens must leave the logits method_nll scored token n - 1 with (the same
//      steps through the method; 1e-4 of the NLL).
//   4. With SAAP_GEMMA_PATH and the Gemma-3 artifacts (SAAP_GEMMA_ARTIFACTS, default /tmp/gemma_art:
//      gemma3-calib-3x16k-{saap,kmeans}-c1024.safetensors): the parity of 2 on the global layers of
//      Gemma-3 (head_dim 256, 4 query heads over 1 KV head, C = 1024) at 0.05 and at 64 tokens, and
//      the runs of 3 on its reference prompt (641 tokens); with gemma3-calib-3x16k-loki-pre.safetensors
//      there too, Loki's parity of 2 at d_f 0.25 (rank 64) and Loki among the runs of 3. Skipped, and
//      said so, without them
//      (GEMMA_ART, scripts/gpu_gemma.sh's name for the folder, is read too) and under
//      SAAP_TEST_QUICK.
// Exit 77 without a GPU, model or artifacts, unless SAAP_REQUIRE_GPU=1. SAAP_TEST_QUICK=1 (what
// scripts/gpu_run.sh sets under compute-sanitizer) runs the same checks on shorter sequences
// (64 + 48 tokens of parity, 256-token windows) at budgets those lengths allow (25%, 10%).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_test_util.h"
#include "model/cuda_reference.h"
#include "saap/core/error.h"
#include "saap/core/kv_cache.h"
#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/loki.h"
#include "saap/kernels/cuda/saap.h"
#include "saap/methods/loki.h"
#include "saap/methods/registry.h"
#include "saap/methods/saap.h"
#include "saap/model/cuda_llama.h"

using namespace saap;

namespace {

void skip(const char* why) {
  const char* r = std::getenv("SAAP_REQUIRE_GPU");
  const bool required = r && std::string(r) == "1";
  std::printf("%s: %s\n", why, required ? "FAIL (SAAP_REQUIRE_GPU=1)" : "skipped");
  std::exit(required ? 1 : 77);
}

bool file_exists(const std::string& p) {
  std::FILE* f = std::fopen(p.c_str(), "rb");
  if (f) std::fclose(f);
  return f != nullptr;
}

template <class F>
void expect_error(cutest::Tally& tally, ErrorKind kind, const char* what, F&& f) {
  int got = 0;  // 0: no error was thrown
  std::string msg = "no error";
  try {
    f();
  } catch (const Error& e) {
    got = int(e.kind());
    msg = e.what();
  }
  std::printf("  %s: %s\n", what, msg.c_str());
  tally.check(got == int(kind), what, double(got), double(int(kind)));
}

std::vector<uint16_t> copy_bits(const void* d, size_t n) {
  std::vector<uint16_t> h(n);
  SAAP_CU(cudaMemcpy(h.data(), d, n * 2, cudaMemcpyDeviceToHost));
  return h;
}

float bits_to_float(uint16_t u) { return float(cutest::from_bits(u, DType::BF16)); }

std::string row_key(const uint16_t* k, const uint16_t* v, int D) {
  std::string s(reinterpret_cast<const char*>(k), size_t(D) * 2);
  s.append(reinterpret_cast<const char*>(v), size_t(D) * 2);
  return s;
}

struct ParityCounts {
  int64_t compared = 0, identical = 0, assignment = 0, ranking = 0, unmapped = 0;
};

// Section 2's runner for one method spec: the model loaded for `batch` sequences of max_ctx
// tokens, decoding through the spec's method; the CPU method of the same spec; and the spec's
// artifact, checked against the model's identity as `method`'s.
template <class Artifact>
struct ParityRun {
  std::unique_ptr<cuda::CudaLlamaModel> model;
  MethodFactory factory;
  Artifact art;
};

template <class Artifact>
ParityRun<Artifact> load_parity_run(const std::string& model_path, const MethodSpec& spec, int batch, int64_t max_ctx,
                                    const char* method) {
  cuda::CudaLlamaOptions o;
  o.max_batch = batch;
  o.max_context = max_ctx;
  o.method = spec;
  auto model = cuda::CudaLlamaModel::load(model_path, o);
  const ArtifactIdentity id = model_artifact_identity(model->identity(), model->config());
  ArtifactIdentity want = id;
  want.method = method;
  return {std::move(model), make_method_factory(spec, id), Artifact::load(spec.artifact, want)};
}

// The sequences `seq` prefilled densely (`prefill` tokens each), then decoded teacher-forced for
// `steps` tokens, every step a graph replay; after the sampled steps (s % 61 == 7, and the last)
// the runner is synchronised and at_sample(len) called, len the prefix length after the step.
// Returns how many steps were sampled.
template <class AtSample>
int decode_sampled(cuda::CudaLlamaModel& model, const std::vector<std::vector<int32_t>>& seq, int64_t prefill,
                   int64_t steps, AtSample&& at_sample) {
  const int B = int(seq.size());
  std::vector<int32_t> head;
  for (int b = 0; b < B; ++b) head.insert(head.end(), seq[b].begin(), seq[b].begin() + prefill);
  model.prefill(head.data(), B, prefill);
  int samples = 0;
  for (int64_t s = 0; s < steps; ++s) {
    std::vector<int32_t> in(B);
    for (int b = 0; b < B; ++b) in[b] = seq[b][size_t(prefill + s)];
    model.decode_step(in.data());
    if (s % 61 != 7 && s != steps - 1) continue;
    ++samples;
    model.synchronize();
    at_sample(prefill + s + 1);
  }
  return samples;
}

// Section 2 for one model and one Saap spec (a lookup fraction or budget_tokens): the B = seq.size()
// sequences `seq` (prefill + steps tokens each) prefilled densely, then decoded teacher-forced, the
// GPU's selections compared with the CPU method's at sampled steps on every layer that has an index.
void saap_parity(cutest::Tally& tally, const std::string& model_path, const MethodSpec& spec,
                 const std::vector<std::vector<int32_t>>& seq, int64_t prefill, int64_t steps,
                 const std::string& label) {
  const int B = int(seq.size());
  const int64_t max_ctx = prefill + steps;
  const ParityRun<PartitionArtifact> run = load_parity_run<PartitionArtifact>(model_path, spec, B, max_ctx, "saap");
  const LlamaConfig& c = run.model->config();
  const int L = c.n_layers, Hq = c.n_heads, Hkv = c.n_kv_heads, D = c.head_dim, G = Hq / Hkv;
  const int C = run.art.partitions;

  ParityCounts pc;
  const int samples = decode_sampled(*run.model, seq, prefill, steps, [&](int64_t len) {
    const int64_t q_pos = len - 1;
    for (int l = 0; l < L; ++l) {
      const cuda::CudaLlamaModel::LayerView v = run.model->layer_view(l);
      if (!v.saap) continue;  // a layer without a method (Gemma-3's local layers)
      const size_t cache_n = size_t(B) * Hkv * max_ctx * D;
      const auto kc = copy_bits(v.k_cache, cache_n), vc = copy_bits(v.v_cache, cache_n);
      const auto kr = copy_bits(v.k_route, cache_n);
      std::vector<float> qr(size_t(B) * Hq * D);
      SAAP_CU(cudaMemcpy(qr.data(), v.q_route, qr.size() * 4, cudaMemcpyDeviceToHost));
      // The GPU layout: every slot's partition, and the selected slots.
      const cuda::SaapIndex& idx = *v.saap;
      const int64_t rows = idx.rows(), bh_n = int64_t(B) * Hkv;
      const auto pk = copy_bits(idx.k_pool(), size_t(bh_n * rows * D));
      const auto pv = copy_bits(idx.v_pool(), size_t(bh_n * rows * D));
      const int A = idx.config().append_pages_per_partition, P = idx.config().append_page;
      std::vector<int32_t> pstart(size_t(bh_n) * C), pcount(pstart.size()), acount(pstart.size()),
          apages(pstart.size() * A);
      SAAP_CU(cudaMemcpy(pstart.data(), idx.part_start(), pstart.size() * 4, cudaMemcpyDeviceToHost));
      SAAP_CU(cudaMemcpy(pcount.data(), idx.part_count(), pcount.size() * 4, cudaMemcpyDeviceToHost));
      SAAP_CU(cudaMemcpy(acount.data(), idx.append_count(), acount.size() * 4, cudaMemcpyDeviceToHost));
      SAAP_CU(cudaMemcpy(apages.data(), idx.append_pages(), apages.size() * 4, cudaMemcpyDeviceToHost));
      const cutest::SaapSegments segs = cutest::read_segments(idx);
      for (int b = 0; b < B; ++b) {
        // The CPU method over the same keys, as fp32: post-RoPE K/V [Hkv][max_ctx][D], pre-RoPE
        // keys [len][Hkv][D], the pre-RoPE query of every head.
        std::vector<float> keys(size_t(Hkv) * max_ctx * D), vals(keys.size()), k_pre(size_t(len) * Hkv * D);
        for (int h = 0; h < Hkv; ++h)
          for (int64_t p = 0; p < len; ++p)
            for (int j = 0; j < D; ++j) {
              const size_t g = ((size_t(b) * Hkv + h) * max_ctx + p) * D + j;
              keys[(size_t(h) * max_ctx + p) * D + j] = bits_to_float(kc[g]);
              vals[(size_t(h) * max_ctx + p) * D + j] = bits_to_float(vc[g]);
              k_pre[(size_t(p) * Hkv + h) * D + j] = bits_to_float(kr[g]);
            }
        const LayerKV kv = cutest::f32_layer_kv(keys.data(), vals.data(), Hkv, D, max_ctx, len);
        auto cpu = run.factory(LayerShape{l, Hq, Hkv, D, max_ctx});
        cpu->place(kv, 0, len, k_pre.data());
        const float* q_pre = qr.data() + size_t(b) * Hq * D;
        Selection sel;
        cpu->select(kv, QueryView{q_pre, q_pre, Hq, q_pos}, sel);
        for (int h = 0; h < Hkv; ++h) {
          const int64_t bh = int64_t(b) * Hkv + h;
          std::map<std::string, int32_t> where;
          for (int64_t p = 0; p < len; ++p) {
            const size_t g = ((size_t(b) * Hkv + h) * max_ctx + p) * D;
            where[row_key(&kc[g], &vc[g], D)] = int32_t(p);
          }
          auto position_of = [&](int64_t slot) {
            const size_t g = size_t(bh * rows + slot) * D;
            const auto it = where.find(row_key(&pk[g], &pv[g], D));
            return it == where.end() ? -1 : it->second;
          };
          std::set<int32_t> gpu;
          for (int64_t slot : segs.slots[size_t(bh)]) gpu.insert(position_of(slot));
          const std::set<int32_t> cpu_set(sel.positions[size_t(h * G)].begin(), sel.positions[size_t(h * G)].end());
          ++pc.compared;
          if (gpu.count(-1)) ++pc.unmapped;
          if (gpu == cpu_set) {
            ++pc.identical;
            continue;
          }
          // Assignment: the GPU's partition of every candidate key against the CPU's.
          const float* cent = run.art.layers.at(l).centroids.data() + size_t(h) * C * D;
          bool assignment_differs = false;
          for (int cc = 0; cc < C; ++cc) {
            const size_t pcx = size_t(bh) * C + cc;
            std::vector<int64_t> slots;
            for (int i = 0; i < pcount[pcx]; ++i) slots.push_back(pstart[pcx] + i);
            for (int i = 0; i < acount[pcx]; ++i) slots.push_back(int64_t(apages[pcx * A + i / P]) + i % P);
            for (int64_t slot : slots) {
              const int32_t p = position_of(slot);
              if (p < 0) continue;
              const float* k = &k_pre[(size_t(p) * Hkv + h) * D];
              const int32_t cpu_c = nearest_centroid(cent, C, D, run.art.spherical, k);
              assignment_differs |= cpu_c != cc;
            }
          }
          ++(assignment_differs ? pc.assignment : pc.ranking);
          if (pc.assignment + pc.ranking <= 5)
            std::printf("  differs: layer %d, sequence %d, kv head %d, position %lld: GPU %zu vs CPU %zu tokens (%s)\n",
                        l, b, h, (long long)q_pos, gpu.size(), cpu_set.size(),
                        assignment_differs ? "assignment" : "ranking");
        }
      }
    }
  });
  const double same = double(pc.identical) / double(std::max<int64_t>(pc.compared, 1));
  std::printf("%s parity: %lld (layer, sequence, kv head, step) sets at %d steps; identical to the CPU method's %lld "
              "(%.4f), differing by assignment %lld, by ranking %lld; slots naming no cached token: %lld\n",
              label.c_str(), (long long)pc.compared, samples, (long long)pc.identical, same, (long long)pc.assignment,
              (long long)pc.ranking, (long long)pc.unmapped);
  tally.check(pc.unmapped == 0, (label + ": every selected slot holds a cached token").c_str(), double(pc.unmapped), 0);
  tally.check(pc.compared > 0 && same >= 0.99,
              (label + ": sets identical to the CPU method's (fp32 artifact; issue 13)").c_str(), same, 0.99);
}

// Section 2b, Loki: `seq` prefilled densely, then decoded teacher-forced through Loki (each query
// head its own top k of q'[:r] . k'[:r]), every step a graph replay. At sampled steps, on every
// layer, the GPU's selection per (sequence, query head) is checked twice:
//   - against the rule in float64 on the GPU's own stored inputs (its bf16 low-rank keys k_low and
//     its rotated query q_rot): identical, except where the k-th and the next score lie within
//     the fp32 rounding of the GPU's scores (counted as fp32 ties);
//   - against the CPU method (LokiAttention) given the same keys (the runner's bf16 cache, as fp32)
//     and the same query (P q_rot). The CPU keeps the rotated coordinates c in fp32, the GPU in
//     bf16 (each rounded by at most 2^-8 relative, bf16's unit roundoff), so a set may differ where
//     that rounding can reorder two keys: every key a the CPU takes and the GPU does not must
//     score (CPU coordinates, float64) within e(a) + e(b) of every key b the GPU takes instead,
//     e(t) = 2^-8 sum_j |q'_j c_j(t)| + 1e-5 sum_j |q'_j| sum_i |P_ji k_i(t)| (the second term: the
//     fp32 rotations and scores of both devices). Any swap the rounding causes meets this (the
//     GPU ranks b above a, the CPU a above b, and each score moved by at most e); differences
//     beyond it are rule differences (limit 0). The share of identical sets is printed. On one 256-token window of eval.txt at rank 16, k_f 0.125, that rounding alone
//     moves the CPU's perplexity from 10.20 to 7.09 (scripts/loki_bf16_emulation.py,
//     results/loki_bf16_emulation_2026-12-03.txt): the perplexities of the two devices are not
//     comparable there, their selections are, and this is the comparison.
void loki_parity(cutest::Tally& tally, const std::string& model_path, const MethodSpec& spec,
                 const std::vector<std::vector<int32_t>>& seq, int64_t prefill, int64_t steps) {
  const int B = int(seq.size());
  const int64_t max_ctx = prefill + steps;
  const ParityRun<LokiArtifact> run = load_parity_run<LokiArtifact>(model_path, spec, B, max_ctx, "loki");
  const LlamaConfig& c = run.model->config();
  const int L = c.n_layers, Hq = c.n_heads, Hkv = c.n_kv_heads, D = c.head_dim, G = Hq / Hkv;
  const std::string label = spec.describe();

  int64_t compared = 0, gpu_rule = 0, fp32_ties = 0, identical = 0, storage = 0, unexplained = 0;
  const int samples = decode_sampled(*run.model, seq, prefill, steps, [&](int64_t len) {
    const int64_t q_pos = len - 1;
    for (int l = 0; l < L; ++l) {
      const cuda::CudaLlamaModel::LayerView v = run.model->layer_view(l);
      if (!v.loki) continue;  // a layer without a method (Gemma-3's local layers)
      const cuda::LokiIndex& idx = *v.loki;
      const int R = idx.rank();
      const int64_t ml = idx.max_len();
      const auto kc = copy_bits(v.k_cache, size_t(B) * Hkv * max_ctx * D);
      const auto klow = copy_bits(idx.k_low(), size_t(B) * Hkv * ml * R);
      std::vector<float> qrot(size_t(B) * Hq * D);
      SAAP_CU(cudaMemcpy(qrot.data(), idx.q_rot(), qrot.size() * 4, cudaMemcpyDeviceToHost));
      std::vector<int32_t> gsel(size_t(B) * Hq * ml);
      SAAP_CU(cudaMemcpy(gsel.data(), idx.selected(), gsel.size() * 4, cudaMemcpyDeviceToHost));
      const auto gcount = idx.selected_count();
      const int64_t k = rules::loki_keys(spec.k_f, len);
      for (int b = 0; b < B; ++b) {
        // The CPU method on the runner's keys (fp32 copies of the bf16 cache) and P q_rot.
        std::vector<float> keys(size_t(Hkv) * max_ctx * D), q(size_t(Hq) * D);
        for (int h = 0; h < Hkv; ++h)
          for (int64_t p = 0; p < len; ++p)
            for (int j = 0; j < D; ++j)
              keys[(size_t(h) * max_ctx + p) * D + j] = bits_to_float(kc[((size_t(b) * Hkv + h) * max_ctx + p) * D + j]);
        for (int hq = 0; hq < Hq; ++hq) {
          const float* P = run.art.basis(l, hq / G);  // row j: axis j
          for (int i = 0; i < D; ++i) {
            double a = 0;
            for (int j = 0; j < D; ++j) a += double(P[size_t(j) * D + i]) * qrot[(size_t(b) * Hq + hq) * D + j];
            q[size_t(hq) * D + i] = float(a);
          }
        }
        // Selection only: the values are not read.
        const LayerKV kv = cutest::f32_layer_kv(keys.data(), keys.data(), Hkv, D, max_ctx, len);
        auto cpu = run.factory(LayerShape{l, Hq, Hkv, D, max_ctx});
        cpu->place(kv, 0, len, nullptr);
        Selection sel;
        cpu->select(kv, QueryView{q.data(), q.data(), Hq, q_pos}, sel);
        for (int hq = 0; hq < Hq; ++hq) {
          const int h = hq / G;
          const size_t row = size_t(b) * Hq + hq;
          const float* qr = &qrot[row * D];
          const std::set<int32_t> gpu(&gsel[row * ml], &gsel[row * ml] + std::min<int64_t>(gcount[row], len));
          ++compared;
          // The rule on the GPU's own inputs, float64: scores, and each score's fp32 rounding bound.
          std::vector<double> sg(len), eg(len);
          for (int64_t t = 0; t < len; ++t) {
            double a = 0, m = 0;
            for (int j = 0; j < R; ++j) {
              const double x = double(qr[j]) * bits_to_float(klow[((size_t(b) * Hkv + h) * ml + t) * R + j]);
              a += x;
              m += std::abs(x);
            }
            sg[t] = a;
            eg[t] = 1e-5 * m;
          }
          std::vector<int32_t> order(static_cast<size_t>(len));
          std::iota(order.begin(), order.end(), 0);
          std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
            return rules::ranks_before(float(sg[x]), x, float(sg[y]), y);
          });
          const std::set<int32_t> want_gpu(order.begin(), order.begin() + std::min(k, len));
          if (gpu != want_gpu) {
            const bool tie = k < len && sg[order[k - 1]] - sg[order[k]] <= eg[order[k - 1]] + eg[order[k]];
            ++(tie ? fp32_ties : gpu_rule);
          }
          // The CPU's set against the GPU's.
          std::set<int32_t> cset;
          if (sel.all)
            for (int64_t t = 0; t < len; ++t) cset.insert(int32_t(t));
          else
            cset.insert(sel.positions[size_t(hq)].begin(), sel.positions[size_t(hq)].end());
          if (cset == gpu) {
            ++identical;
            continue;
          }
          // Scores on the CPU's coordinates c = P k (float64 of the same fp32 inputs) and the
          // bf16 storage bound of each.
          const float* P = run.art.basis(l, h);
          auto cpu_score = [&](int32_t t, double& bound) {
            double a = 0, m = 0, m_abs = 0;
            for (int j = 0; j < R; ++j) {
              double cj = 0, cj_abs = 0;
              for (int i = 0; i < D; ++i) {
                const double x = double(P[size_t(j) * D + i]) * keys[(size_t(h) * max_ctx + t) * D + i];
                cj += x;
                cj_abs += std::abs(x);
              }
              a += double(qr[j]) * cj;
              m += std::abs(double(qr[j]) * cj);
              m_abs += std::abs(double(qr[j])) * cj_abs;
            }
            bound = std::ldexp(m, -8) + 1e-5 * m_abs;
            return a;
          };
          std::vector<std::pair<double, double>> only_cpu, only_gpu;  // (score, bound)
          for (int32_t a : cset)
            if (!gpu.count(a)) {
              double e = 0;
              const double sa = cpu_score(a, e);
              only_cpu.push_back({sa, e});
            }
          for (int32_t g : gpu)
            if (!cset.count(g)) {
              double e = 0;
              const double sb = cpu_score(g, e);
              only_gpu.push_back({sb, e});
            }
          bool explained = !only_cpu.empty() && only_cpu.size() == only_gpu.size();
          for (const auto& [sa, ea] : only_cpu)
            for (const auto& [sb, eb] : only_gpu) explained &= sa - sb <= ea + eb;
          ++(explained ? storage : unexplained);
          if (!explained && unexplained <= 5)
            std::printf("  loki differs beyond bf16 storage: layer %d, sequence %d, head %d, position %lld\n", l, b,
                        hq, (long long)q_pos);
        }
      }
    }
  });
  std::printf("%s parity: %lld (layer, sequence, head, step) sets at %d steps; GPU vs the float64 rule on its own "
              "stored keys: %lld differ (%lld more at fp32 ties); CPU vs GPU: identical %lld (%.4f), differing within "
              "the bf16 storage of k' %lld, beyond it %lld\n",
              label.c_str(), (long long)compared, samples, (long long)gpu_rule, (long long)fp32_ties,
              (long long)identical, double(identical) / double(std::max<int64_t>(compared, 1)), (long long)storage,
              (long long)unexplained);
  tally.check(compared > 0 && gpu_rule == 0, (label + ": GPU sets = the float64 rule on its stored keys").c_str(),
              double(gpu_rule), 0);
  tally.check(compared > 0 && unexplained == 0,
              (label + ": CPU vs GPU sets differ only within the bf16 storage of k'").c_str(), double(unexplained), 0);
}

// Expected K/V reads of method_nll over n tokens as fractions of the dense reads, when a decode
// step at an n-token prefix reads per(j) K/V tokens and index(j) K rows to decide; the first n0
// positions (dense_prefix) are prefilled whole. Every (sequence, KV head, layer) counts the same, so
// the ratio is one sum over j: prefill j = 1..n0, then the decode steps' prefixes j = n0+1..n-1.
template <class Per, class Index>
std::pair<double, double> expected_fractions(int64_t n, int64_t n0, Per per, Index index) {
  double kv = 0, idx = 0, dense = 0;
  for (int64_t j = 1; j < n; ++j) {
    kv += j <= n0 ? double(j) : double(per(j));
    idx += j <= n0 ? 0.0 : double(index(j));
    dense += double(j);
  }
  return {kv / dense, idx / dense};
}

// Section 3 for one model: every GPU method decodes `tokens` ([B][n]) through method_nll, inside
// the graph: finite NLL and a K/V fraction in (0, 1] for each. Where the reads are known without
// the data they must match exactly: streaming reads rules::fixed_reads of every prefix, the oracle
// scores all of K of a prefix its budget does not cover (index rows) and reads at least each
// head's k and at most the group's G k or the prefix (the union). f: the lookup fraction;
// loki_art "" skips Loki.
void every_method(cutest::Tally& tally, const std::string& model_path, const std::vector<int32_t>& tokens, int B,
                  int64_t n, double f, const std::string& saap_art, const std::string& kmeans_art,
                  const std::string& loki_art) {
  auto run = [&](const MethodSpec& spec) {
    cuda::CudaLlamaOptions o;
    o.max_batch = B;
    o.max_context = n;
    o.method = spec;
    auto model = cuda::CudaLlamaModel::load(model_path, o);
    const LlamaConfig& c = model->config();
    std::vector<float> nll(tokens.size());
    if (spec.name == "dense")
      model->prefill(tokens.data(), B, n, nullptr, nll.data());
    else
      model->method_nll(tokens.data(), B, n, nll.data());
    double sum = 0;
    for (int b = 0; b < B; ++b)
      for (int64_t t = 0; t + 1 < n; ++t) sum += nll[size_t(b) * n + t];
    const double mean = sum / double(B * (n - 1));
    const cuda::KvReads reads = model->kv_reads();
    const double frac = spec.name == "dense" ? 1.0 : reads.fraction();
    const double index_frac = reads.dense_tokens > 0 ? reads.index_tokens / reads.dense_tokens : 0.0;
    const int64_t n0 = model->dense_prefix(n);
    std::printf("  %-55s dense prefix %4lld, perplexity %9.3f, K/V read %.4f, K rows to decide %.4f\n",
                spec.describe().c_str(), (long long)n0, std::exp(mean), frac, index_frac);
    const std::string what = spec.describe() + ": finite NLL, K/V fraction in (0, 1]";
    tally.check(std::isfinite(mean) && frac > 0 && frac <= 1.0, what.c_str(), mean, 0);
    const rules::Budget budget{spec.lookup, spec.budget_tokens};
    const int G = c.n_heads / c.n_kv_heads;
    if (spec.name == "streaming") {
      const auto want = expected_fractions(
          n, n0, [&](int64_t j) { return rules::fixed_reads(j, spec.sinks, std::max(spec.window, 1)).count(); },
          [](int64_t) { return 0; });
      tally.check(std::fabs(frac - want.first) <= 1e-9 && index_frac == 0,
                  (spec.describe() + ": K/V fraction = the fixed reads' exactly").c_str(), frac, want.first);
    }
    if (spec.name == "h2o") {  // each head reads k; the group's union at most G k or the prefix
      const auto least = expected_fractions(n, n0, [&](int64_t j) { return budget.topk(j); }, [](int64_t) { return 0; });
      const auto most = expected_fractions(
          n, n0, [&](int64_t j) { return std::min<int64_t>(j, G * budget.topk(j)); }, [](int64_t) { return 0; });
      tally.check(frac >= least.first - 1e-9 && frac <= most.first + 1e-9 && index_frac == 0,
                  (spec.describe() + ": K/V read between each head's k and the group's union bound").c_str(), frac,
                  most.first);
      // method_prefill of tokens [0, n - 1): its last logits are those method_nll scored token n - 1 with.
      std::vector<int32_t> head;
      for (int b = 0; b < B; ++b)
        head.insert(head.end(), tokens.begin() + size_t(b) * n, tokens.begin() + size_t(b) * n + n - 1);
      model->method_prefill(head.data(), B, n - 1);
      std::vector<float> logits(size_t(B) * c.vocab_size);
      model->last_logits(logits.data());
      double worst = 0;
      for (int b = 0; b < B; ++b) {
        const float* l = logits.data() + size_t(b) * c.vocab_size;
        const float mx = *std::max_element(l, l + c.vocab_size);
        double z = 0;
        for (int i = 0; i < c.vocab_size; ++i) z += std::exp(double(l[i] - mx));
        const double got = double(mx) + std::log(z) - l[tokens[size_t(b) * n + n - 1]];
        worst = std::max(worst, std::fabs(got - nll[size_t(b) * n + n - 2]));
      }
      tally.check(worst < 1e-4, (spec.describe() + ": method_prefill's last logits = method_nll's at n - 2").c_str(),
                  worst, 1e-4);
    }
    if (spec.name == "oracle") {
      const auto least = expected_fractions(
          n, n0, [&](int64_t j) { return budget.topk(j); }, [&](int64_t j) { return budget.topk(j) < j ? j : 0; });
      const auto most = expected_fractions(
          n, n0, [&](int64_t j) { return std::min<int64_t>(j, G * budget.topk(j)); }, [](int64_t) { return 0; });
      tally.check(std::fabs(index_frac - least.second) <= 1e-9,
                  (spec.describe() + ": K rows scored = every prefix the budget does not cover").c_str(), index_frac,
                  least.second);
      tally.check(frac >= least.first - 1e-9 && frac <= most.first + 1e-9,
                  (spec.describe() + ": K/V read between each head's k and the group's union bound").c_str(), frac,
                  most.first);
    }
  };
  std::vector<MethodSpec> specs;
  MethodSpec dense;
  specs.push_back(dense);
  MethodSpec saap_run;
  saap_run.name = "saap";
  saap_run.lookup = f;
  saap_run.sinks = 4;
  saap_run.window = 16;
  saap_run.artifact = saap_art;
  MethodSpec kmeans = saap_run;
  kmeans.name = "kmeans";
  kmeans.artifact = kmeans_art;
  MethodSpec part = kmeans;
  part.name = "partition-oracle";
  MethodSpec quest;
  quest.name = "quest";
  quest.lookup = f;
  quest.sinks = 4;
  quest.window = 16;
  MethodSpec streaming;
  streaming.name = "streaming";
  streaming.sinks = 4;
  streaming.window = 32;
  MethodSpec oracle;
  oracle.name = "oracle";
  oracle.lookup = f;
  for (const MethodSpec& s : {saap_run, kmeans, part, quest, oracle}) {
    specs.push_back(s);
    MethodSpec fixed = s;  // the same method at a fixed budget of n / 8 tokens (more than sinks + window)
    fixed.budget_tokens = n / 8;
    specs.push_back(fixed);
  }
  specs.push_back(streaming);
  MethodSpec h2o;
  h2o.name = "h2o";
  h2o.lookup = f;
  specs.push_back(h2o);
  h2o.budget_tokens = n / 8;
  specs.push_back(h2o);
  if (!loki_art.empty()) {
    MethodSpec loki;
    loki.name = "loki";
    loki.k_f = f;
    loki.d_f = 0.25;
    loki.artifact = loki_art;
    specs.push_back(loki);
  }
  for (const MethodSpec& s : specs) {
    try {
      run(s);
    } catch (const Error& e) {
      std::printf("  %s: %s\n", s.describe().c_str(), e.what());
      tally.check(false, (s.describe() + " runs").c_str(), 1, 0);
    }
  }
}

}  // namespace

int main() {
  cutest::require_gpu();
  const char* model_env = std::getenv("SAAP_MODEL_PATH");
  if (!model_env || !*model_env) skip("SAAP_MODEL_PATH is not set");
  const std::string model_path = model_env;
  const char* art_env = std::getenv("SAAP_ARTIFACTS");
  const std::string dir = art_env && *art_env ? art_env : "/tmp/pieces";
  const std::string saap_art = dir + "/saap-c256-pre.safetensors", kmeans_art = dir + "/kmeans-c256-pre.safetensors",
                    loki_art = dir + "/loki-pre.safetensors";
  if (!file_exists(saap_art) || !file_exists(kmeans_art) || !file_exists(loki_art))
    skip(("artifacts not found in " + dir + " (set SAAP_ARTIFACTS)").c_str());
  const char* quick_env = std::getenv("SAAP_TEST_QUICK");
  const bool quick = quick_env && std::string(quick_env) == "1";
  cutest::Tally tally;
  const testref::LongRef ref = testref::read_long_reference(testref::long_reference_path(SAAP_SOURCE_DIR));

  MethodSpec saap_spec;
  saap_spec.name = "saap";
  saap_spec.lookup = quick ? 0.25 : 0.05;  // sinks + window must leave the budget room at max_context
  saap_spec.sinks = 4;
  saap_spec.window = 16;
  saap_spec.artifact = saap_art;

  // 1. Bad input.
  {
    cuda::CudaLlamaOptions o;
    o.max_context = 256;
    o.method.name = "no-such-method";
    expect_error(tally, ErrorKind::InvalidArgument, "an unknown method: InvalidArgument",
                 [&] { cuda::CudaLlamaModel::load(model_path, o); });
    o.method = saap_spec;
    o.method.artifact = kmeans_art;
    expect_error(tally, ErrorKind::BadFile, "saap given a kmeans artifact: BadFile",
                 [&] { cuda::CudaLlamaModel::load(model_path, o); });
  }

  // 2. Parity with the CPU method.
  const int B = 2;
  const int64_t prefill = quick ? 64 : 512, steps = quick ? 48 : 512, max_ctx = prefill + steps;
  std::vector<std::vector<int32_t>> seq(B);
  for (int b = 0; b < B; ++b) seq[b].assign(ref.tokens.begin() + b * 2048, ref.tokens.begin() + b * 2048 + max_ctx);
  saap_parity(tally, model_path, saap_spec, seq, prefill, steps, saap_spec.describe());
  {  // A fixed budget of tokens: the same rule on both devices (rules::Budget), the fill under it.
    MethodSpec fixed = saap_spec;
    fixed.budget_tokens = quick ? 28 : 48;  // sinks 4 + window 16 leave 8 or 28 tokens to the partitions
    saap_parity(tally, model_path, fixed, seq, prefill, steps, fixed.describe());
  }

  {  // 2b. Loki: the GPU's rule on real keys, and its parity with the CPU method.
    MethodSpec loki;
    loki.name = "loki";
    loki.k_f = quick ? 0.25 : 0.125;
    loki.d_f = 0.25;
    loki.artifact = loki_art;
    loki_parity(tally, model_path, loki, seq, prefill, steps);
  }

  // 3. Every GPU method through its index, inside the graph.
  {
    const int64_t n = quick ? 256 : 512;
    const double f = quick ? 0.1 : 0.05;
    std::vector<int32_t> tokens;
    // From the reference tokens, not seq: under SAAP_TEST_QUICK seq holds only prefill + steps = 112.
    for (int b = 0; b < B; ++b)
      tokens.insert(tokens.end(), ref.tokens.begin() + b * 2048, ref.tokens.begin() + b * 2048 + n);
    every_method(tally, model_path, tokens, B, n, f, saap_art, kmeans_art, loki_art);
  }

  // 4. Gemma-3 (SAAP_GEMMA_PATH, its artifacts in SAAP_GEMMA_ARTIFACTS, default /tmp/gemma_art):
  // Saap and k-means with C = 1024, head_dim 256, 4 query heads over 1 KV head, on the global
  // layers only. Tokens: the Gemma reference prompt (BOS + 640 tokens of eval.txt), twice.
  const char* gemma_env = std::getenv("SAAP_GEMMA_PATH");
  const char* gemma_art_env = std::getenv("SAAP_GEMMA_ARTIFACTS");
  if (!gemma_art_env || !*gemma_art_env) gemma_art_env = std::getenv("GEMMA_ART");  // scripts/gpu_gemma.sh's name
  const std::string gemma_dir = gemma_art_env && *gemma_art_env ? gemma_art_env : "/tmp/gemma_art";
  const std::string gemma_saap = gemma_dir + "/gemma3-calib-3x16k-saap-c1024.safetensors",
                    gemma_kmeans = gemma_dir + "/gemma3-calib-3x16k-kmeans-c1024.safetensors";
  if (quick) {
    std::printf("Gemma-3: section 4 skipped under SAAP_TEST_QUICK (its kernels at head_dim 256 and C = 1024 are "
                "covered by cuda_test_saap_select and cuda_test_oracle_streaming)\n");
  } else if (!gemma_env || !*gemma_env || !file_exists(gemma_saap) || !file_exists(gemma_kmeans)) {
    std::printf("Gemma-3: SAAP_GEMMA_PATH or %s, %s missing: section 4 skipped\n", gemma_saap.c_str(),
                gemma_kmeans.c_str());
  } else {
    const std::string gemma_path = gemma_env;
    const testref::LogitsRef gref = testref::read_reference(testref::gemma3_reference_path(SAAP_SOURCE_DIR));
    const std::vector<int32_t>& prompt = gref.prompts.at(0).tokens;
    const int64_t gn = int64_t(prompt.size());  // 641
    MethodSpec g_saap = saap_spec;
    g_saap.artifact = gemma_saap;
    g_saap.lookup = 0.05;  // 0.05 of 641 = 33 tokens: 13 left to the partitions after sinks 4 + window 16
    const std::vector<std::vector<int32_t>> gseq(2, prompt);
    const int64_t gprefill = 320;
    saap_parity(tally, gemma_path, g_saap, gseq, gprefill, gn - gprefill, "gemma3 " + g_saap.describe());
    MethodSpec g_fixed = g_saap;
    g_fixed.budget_tokens = 64;
    saap_parity(tally, gemma_path, g_fixed, gseq, gprefill, gn - gprefill, "gemma3 " + g_fixed.describe());
    // Loki at d_f 0.25 = rank 64 of head_dim 256 (the GPU refused it before radix_topk.cuh), when
    // the Gemma Loki artifact is there (scripts/gemma_longctx_train.sh writes it beside the others).
    const std::string gemma_loki = gemma_dir + "/gemma3-calib-3x16k-loki-pre.safetensors";
    const bool have_loki = file_exists(gemma_loki);
    if (have_loki) {
      MethodSpec g_loki;
      g_loki.name = "loki";
      g_loki.k_f = 0.05;
      g_loki.d_f = 0.25;
      g_loki.artifact = gemma_loki;
      loki_parity(tally, gemma_path, g_loki, gseq, gprefill, gn - gprefill);
    } else {
      std::printf("Gemma-3: %s missing: its Loki parity and Loki run skipped\n", gemma_loki.c_str());
    }
    std::vector<int32_t> gtokens;
    for (int b = 0; b < 2; ++b) gtokens.insert(gtokens.end(), prompt.begin(), prompt.end());
    every_method(tally, gemma_path, gtokens, 2, gn, 0.05, gemma_saap, gemma_kmeans, have_loki ? gemma_loki : "");
  }
  return tally.finish();
}
