// One trained artifact, two backends: an artifact is built in memory, saved as `saap train` saves
// it, and loaded by the CPU methods (their factories) and by the GPU indexes (from_artifact). The
// same keys and queries go through both, and both are checked against a float64 reference
// computed here from the inputs alone (selection_rules.h for the budget, order and fill):
//   - the selected positions per (KV head, step) must be identical, or differ only where the
//     reference finds two keys within rounding of each other (counted and printed as ties);
//   - the outputs must agree (see the tolerance below).
// Covered: saap, kmeans (symmetric), partition-oracle and loki; GQA groups 1, 3 and 8; head dims
// 64 and 128; spherical and L2 partitions; pre- and post-RoPE artifacts. The steps of one
// sequence are the rows of a batch (each row a prefix of another length), so one GPU build
// serves every step.
//
// What the data is made of, and why: partitions of very uneven sizes (Zipf), so the fill rule's
// skip-and-continue matters; router weights scaled so that each head's softmax over partitions
// is spread, not one-hot, so the density normalisation and the group sum change the ranking;
// a fractional lookup (0.33), so the budget's rounding matters. Router weights, centroids, keys
// and values are bf16-exact: the GPU stores K/V in bf16 (router weights and centroids in fp32),
// and the test must compare the rules, not that rounding.
#include <cuda_bf16.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "kernels/cuda/cuda_reference.h"
#include "kernels/cuda/cuda_test_util.h"
#include "saap/core/kv_cache.h"
#include "saap/kernels/cuda/loki.h"
#include "saap/kernels/cuda/saap.h"
#include "saap/methods/loki.h"
#include "saap/methods/partition_oracle.h"
#include "saap/methods/registry.h"
#include "saap/methods/saap.h"
#include "saap/methods/symmetric_kmeans.h"

using namespace saap;

namespace {

float bf16(float x) { return float(cutest::from_bits(cutest::to_bits(x, DType::BF16), DType::BF16)); }
std::vector<float> bf16_normal(cutest::Rng& rng, size_t n, double sd) {
  std::normal_distribution<double> nd(0.0, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = bf16(float(nd(rng)));
  return v;
}

// A RoPE-like rotation of (2i, 2i+1) pairs by pos * 10000^(-2i/D): post-RoPE vectors differ from
// pre-RoPE ones, so a backend that routes or assigns with the wrong one is caught.
void rotate(float* x, int D, int64_t pos) {
  for (int i = 0; i < D / 2; ++i) {
    const double a = double(pos) * std::pow(10000.0, -2.0 * i / D);
    const double x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = float(x0 * std::cos(a) - x1 * std::sin(a));
    x[2 * i + 1] = float(x0 * std::sin(a) + x1 * std::cos(a));
  }
}

struct Case {
  int D, hq, hkv, C, hidden;
  bool spherical, pre_rope;
  int64_t n_max;
  std::vector<int32_t> steps;  // prefix lengths, one per batch row
};

// Everything one case feeds both backends.
struct Data {
  ArtifactIdentity model;
  PartitionArtifact part;
  LokiArtifact loki;
  std::vector<float> k_pre, k, v;  // [n][hkv][D], bf16-exact (k: post-RoPE)
  std::vector<float> q_pre, q;     // [steps][hq][D]
};

Data make_data(cutest::Rng& rng, const Case& c) {
  Data d;
  const int D = c.D, C = c.C, H = c.hidden;
  d.model = ArtifactIdentity{"", 1, "parity-test-model-d" + std::to_string(D), 2, c.hq, c.hkv, D};
  d.part.identity = d.model;
  d.part.identity.method = "saap";
  d.part.partitions = C;
  d.part.hidden = H;
  d.part.pre_rope = c.pre_rope;
  d.part.spherical = c.spherical;
  std::vector<std::vector<float>> centers(size_t(c.hkv));
  for (int layer = 0; layer < 2; ++layer) {  // layer 1 is tested; layer 0 differs, so a wrong layer shows
    PartitionLayer pl;
    pl.centroids.resize(size_t(c.hkv) * C * D);
    for (int h = 0; h < c.hkv; ++h)
      for (int p = 0; p < C; ++p) {
        auto u = bf16_normal(rng, D, 1.0);
        double nn = 0;
        for (float x : u) nn += double(x) * x;
        // Spherical k-means centroids have unit norm; L2 ones carry the keys' scale.
        const double s = c.spherical ? 1.0 / std::sqrt(nn) : 3.0 / std::sqrt(nn);
        for (int j = 0; j < D; ++j) pl.centroids[(size_t(h) * C + p) * D + j] = bf16(float(u[j] * s));
      }
    // Routers: hidden units of order 1, logits spread over a few units (softmax not one-hot).
    for (int h = 0; h < c.hq; ++h) {
      PartitionClassifier r(D, H, C);
      r.w1 = bf16_normal(rng, size_t(H) * D, 1.0 / std::sqrt(double(D)));
      r.b1 = bf16_normal(rng, H, 0.3);
      r.w2 = bf16_normal(rng, size_t(C) * H, 1.2 / std::sqrt(double(H)));
      r.b2 = bf16_normal(rng, C, 0.5);
      pl.classifiers.push_back(std::move(r));
    }
    if (layer == 1)
      for (int h = 0; h < c.hkv; ++h)
        centers[h].assign(pl.centroids.begin() + size_t(h) * C * D, pl.centroids.begin() + size_t(h + 1) * C * D);
    d.part.layers[layer] = std::move(pl);
  }
  // Keys near their partition's centroid, partitions drawn with Zipf weights (sizes ~ 1/(c+1)).
  std::vector<double> w(C);
  for (int p = 0; p < C; ++p) w[p] = 1.0 / (p + 1);
  std::discrete_distribution<int> pick(w.begin(), w.end());
  // Noise of 0.3 of the centroid's norm keeps most keys nearest their own centroid, so the Zipf
  // weights show in the partition sizes.
  std::normal_distribution<double> noise(0.0, 0.3 / std::sqrt(double(D)));
  const int64_t n = c.n_max;
  d.k_pre.resize(size_t(n) * c.hkv * D);
  d.k.resize(d.k_pre.size());
  d.v = bf16_normal(rng, d.k_pre.size(), 1.0);
  for (int64_t t = 0; t < n; ++t)
    for (int h = 0; h < c.hkv; ++h) {
      const int p = pick(rng);
      float* kp = &d.k_pre[(size_t(t) * c.hkv + h) * D];
      const double scale = c.spherical ? 3.0 : 1.0, norm = c.spherical ? 1.0 : 3.0;
      for (int j = 0; j < D; ++j) kp[j] = bf16(float(scale * (centers[h][size_t(p) * D + j] + norm * noise(rng))));
      float* kk = &d.k[(size_t(t) * c.hkv + h) * D];
      std::copy_n(kp, D, kk);
      rotate(kk, D, t);
      for (int j = 0; j < D; ++j) kk[j] = bf16(kk[j]);
    }
  // Queries: spread enough that attention is neither uniform nor one-hot.
  const size_t qn = c.steps.size() * size_t(c.hq) * D;
  d.q_pre = bf16_normal(rng, qn, 0.6);
  d.q = d.q_pre;
  for (size_t s = 0; s < c.steps.size(); ++s)
    for (int h = 0; h < c.hq; ++h) rotate(&d.q[(s * c.hq + h) * D], D, c.steps[s] - 1);
  // Loki: a random signed permutation per (layer, KV head). The rotated keys stay bf16-exact, so the
  // GPU's bf16 storage of them changes nothing and scores agree to fp32 summation order. It is not
  // an involution, so a basis uploaded transposed would be caught.
  d.loki.identity = d.model;
  d.loki.identity.method = "loki";
  d.loki.pre_rope = false;
  d.loki.components.assign(size_t(2) * c.hkv * D * D, 0.f);
  d.loki.variances.assign(size_t(2) * c.hkv * D, 1.f);
  d.loki.explained_ratio.assign(size_t(2) * c.hkv * D, 1.f / D);
  for (int lh = 0; lh < 2 * c.hkv; ++lh) {
    std::vector<int> perm(D);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int j = 0; j < D; ++j)
      d.loki.components[(size_t(lh) * D + j) * D + perm[j]] = (rng() & 1) ? 1.f : -1.f;
  }
  return d;
}

// Positions of a (b, h) row of the GPU Saap layout, from the slots its segments name: each slot's
// K and V bytes are looked up among the sequence's tokens (all distinct at random data).
std::vector<std::set<int32_t>> gpu_partition_selection(const cuda::SaapIndex& idx, const Data& d, const Case& c) {
  const int D = c.D, bh_n = int(c.steps.size()) * c.hkv;
  const int64_t rows = idx.rows();
  std::vector<uint16_t> pk(size_t(bh_n) * rows * D), pv(pk.size());
  SAAP_CU(cudaMemcpy(pk.data(), idx.k_pool(), pk.size() * 2, cudaMemcpyDeviceToHost));
  SAAP_CU(cudaMemcpy(pv.data(), idx.v_pool(), pv.size() * 2, cudaMemcpyDeviceToHost));
  std::vector<std::map<std::string, int32_t>> where(c.hkv);
  for (int64_t t = 0; t < c.n_max; ++t)
    for (int h = 0; h < c.hkv; ++h) {
      std::string key;
      for (int j = 0; j < D; ++j) {
        const uint16_t kb = cutest::to_bits(d.k[(size_t(t) * c.hkv + h) * D + j], DType::BF16);
        const uint16_t vb = cutest::to_bits(d.v[(size_t(t) * c.hkv + h) * D + j], DType::BF16);
        key.append(reinterpret_cast<const char*>(&kb), 2).append(reinterpret_cast<const char*>(&vb), 2);
      }
      where[h][key] = int32_t(t);
    }
  const auto segs = cutest::read_segments(idx);
  std::vector<std::set<int32_t>> sel(bh_n);
  for (int bh = 0; bh < bh_n; ++bh)
    for (int64_t slot : segs.slots[bh]) {
      std::string key;
      for (int j = 0; j < D; ++j)
        key.append(reinterpret_cast<const char*>(&pk[(bh * rows + slot) * D + j]), 2)
            .append(reinterpret_cast<const char*>(&pv[(bh * rows + slot) * D + j]), 2);
      const auto it = where[bh % c.hkv].find(key);
      sel[bh].insert(it == where[bh % c.hkv].end() ? -1 : it->second);  // -1: a slot holding no token
    }
  return sel;
}

struct Counts {
  int64_t compared = 0, ties = 0, mismatches = 0;
};

}  // namespace

int main() {
  cutest::require_gpu();
  cutest::Tally tally;
  cutest::Rng rng(cutest::test_seed());
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("saap_parity_" + std::to_string(getpid()) + ".safetensors")).string();
  const std::string loki_path = path + ".loki";
  const int sinks = 4, window = 32;
  const double lookup = 0.33, k_f = 0.33;
  const std::vector<Case> cases = {
      {64, 6, 2, 24, 32, true, true, 600, {600, 555, 480, 333, 200, 97}},      // G = 3, spherical, pre-RoPE
      {128, 8, 1, 40, 64, false, false, 700, {700, 641, 512, 300, 129}},       // G = 8, L2, post-RoPE
      {64, 2, 2, 16, 32, true, false, 400, {400, 371, 250, 120}},              // G = 1 (Loki comparable per head)
  };
  for (const Case& c : cases) {
    const Data d = make_data(rng, c);
    d.part.save(path);
    d.loki.save(loki_path);
    const int D = c.D, G = c.hq / c.hkv, B = int(c.steps.size());
    const std::string tag = "d=" + std::to_string(D) + " G=" + std::to_string(G) + " C=" + std::to_string(c.C) +
                            (c.spherical ? " spherical" : " L2") + (c.pre_rope ? " pre-RoPE" : " post-RoPE") + ": ";
    // The CPU side: one cache, every position placed once; step s queries position steps[s] - 1.
    KVCache cache({1, c.hkv, D, c.n_max, DType::BF16});
    cache.append(0, d.k.data(), d.v.data(), c.n_max);
    const LayerKV kv = cache.layer(0);
    const LayerShape shape{1, c.hq, c.hkv, D, c.n_max};
    // The GPU side: dense [B][hkv][n_max][D] caches (row b holds the same sequence, length steps[b]).
    std::vector<uint16_t> kd(size_t(B) * c.hkv * c.n_max * D), vd(kd.size()), kpd(kd.size());
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < c.hkv; ++h)
        for (int64_t t = 0; t < c.n_max; ++t)
          for (int j = 0; j < D; ++j) {
            const size_t src = (size_t(t) * c.hkv + h) * D + j, dst = ((size_t(b) * c.hkv + h) * c.n_max + t) * D + j;
            kd[dst] = cutest::to_bits(d.k[src], DType::BF16);
            vd[dst] = cutest::to_bits(d.v[src], DType::BF16);
            kpd[dst] = cutest::to_bits(d.k_pre[src], DType::BF16);
          }
    auto dk = cutest::upload(kd), dv = cutest::upload(vd), dkp = cutest::upload(kpd);
    auto dq = cutest::upload(d.q), dqp = cutest::upload(d.q_pre);
    const float scale = 1.f / std::sqrt(float(D));

    // The reference partition of every token (float64 nearest centroid of its routing key).
    const auto& cent = d.part.layers.at(1).centroids;
    std::vector<int> part_of(size_t(c.n_max) * c.hkv);
    int64_t assign_near_ties = 0;
    for (int64_t t = 0; t < c.n_max; ++t)
      for (int h = 0; h < c.hkv; ++h) {
        const float* x = &(c.pre_rope ? d.k_pre : d.k)[(size_t(t) * c.hkv + h) * D];
        double best = -INFINITY, second = -INFINITY;
        int arg = 0;
        for (int p = 0; p < c.C; ++p) {
          double dot = 0, nn = 0;
          for (int j = 0; j < D; ++j) {
            const double m = cent[(size_t(h) * c.C + p) * D + j];
            dot += m * x[j];
            nn += m * m;
          }
          const double obj = c.spherical ? dot : dot - nn / 2;
          if (obj > best) second = best, best = obj, arg = p;
          else second = std::max(second, obj);
        }
        part_of[size_t(t) * c.hkv + h] = arg;
        assign_near_ties += best - second < 1e-5 * (1 + std::abs(best));
      }
    std::printf("%s%lld tokens, %lld assignments within 1e-5 of a tie\n", tag.c_str(), (long long)c.n_max,
                (long long)assign_near_ties);

    for (cuda::PartitionRouting routing :
         {cuda::PartitionRouting::Saap, cuda::PartitionRouting::KMeans, cuda::PartitionRouting::PartitionOracle}) {
      const std::string name = cuda::routing_name(routing);
      const std::string rt = tag + name + ": ";
      MethodSpec spec;
      spec.name = name;
      spec.lookup = lookup;
      spec.sinks = sinks;
      spec.window = window;
      spec.artifact = path;
      auto cpu = make_method_factory(spec, d.model)(shape);
      cpu->place(kv, 0, c.n_max, d.k_pre.data());
      cuda::SaapConfig cfg;
      cfg.sinks = sinks;
      cfg.window = window;
      cfg.segment = 48;
      cfg.max_prefill = c.n_max;
      cfg.max_new_tokens = 0;
      auto idx = cuda::SaapIndex::from_artifact(path, d.model, 1, B, DType::BF16, cfg, routing);
      tally.check(idx->pre_rope() == c.pre_rope && idx->spherical() == c.spherical,
                  (rt + "from_artifact keeps rope and spherical").c_str(), idx->pre_rope(), c.pre_rope);
      cuda::DeviceBuffer<int32_t> assign(size_t(B) * c.hkv * c.n_max);
      idx->assign_prefill(c.pre_rope ? dkp.get() : dk.get(), c.n_max, c.steps, assign.get());
      idx->build(dk.get(), dv.get(), c.n_max, c.steps, assign.get());
      // The oracle ranks with the attention query; Saap and k-means route with the artifact's.
      const bool route_pre = c.pre_rope && routing != cuda::PartitionRouting::PartitionOracle;
      idx->select(route_pre ? dqp.get() : dq.get(), lookup);  // the same double the CPU gets
      cuda::DeviceBuffer<float> dout(d.q.size());
      cutest::poison(dout);
      cuda::SplitWorkspace ws;
      idx->attend(dq.get(), scale, dout.get(), ws);
      idx->check();
      SAAP_CU(cudaDeviceSynchronize());
      const auto gout = cutest::download(dout);
      const auto gsel = gpu_partition_selection(*idx, d, c);

      Counts cpu_vs_ref, gpu_vs_ref, cpu_vs_gpu;
      double out_num = 0, out_den = 0, ref_num = 0, ref_den = 0;
      for (int s = 0; s < B; ++s) {
        const int64_t n = c.steps[s], pos = n - 1;
        const QueryView qv{&d.q[size_t(s) * c.hq * D], &d.q_pre[size_t(s) * c.hq * D], c.hq, pos};
        Selection sel;
        std::vector<float> cout_(size_t(c.hq) * D);
        LookupStats stats;
        cpu->select(kv, qv, sel);
        cpu->attend(kv, qv, sel, cout_.data(), stats);
        const rules::FixedReads fixed = rules::fixed_reads(n, sinks, window);
        const int64_t budget = rules::selectable_budget(lookup, n, sinks, window);
        for (int h = 0; h < c.hkv; ++h) {
          // Reference: candidate counts, the method's group key, the fill.
          std::vector<int64_t> counts(c.C, 0);
          for (int64_t t = fixed.sink_end; t < fixed.window_begin; ++t) counts[part_of[size_t(t) * c.hkv + h]]++;
          std::vector<double> key;
          double tie_tol = 1e-5;
          if (routing == cuda::PartitionRouting::Saap) {
            std::vector<std::vector<double>> logits;
            for (int g = 0; g < G; ++g) {
              const auto& r = d.part.layers.at(1).classifiers[size_t(h * G + g)];
              const float* qr = &(c.pre_rope ? d.q_pre : d.q)[(size_t(s) * c.hq + h * G + g) * D];
              logits.push_back(cutest::router_logits(r.w1.data(), r.b1.data(), r.w2.data(), r.b2.data(), D,
                                                     c.hidden, c.C, qr));
            }
            key = cutest::saap_group_keys(logits, counts);
          } else if (routing == cuda::PartitionRouting::KMeans) {
            std::vector<std::vector<double>> scores(G, std::vector<double>(c.C));
            bool tie = false;
            for (int g = 0; g < G; ++g) {
              const float* qr = &(c.pre_rope ? d.q_pre : d.q)[(size_t(s) * c.hq + h * G + g) * D];
              for (int p = 0; p < c.C; ++p) {
                double qm = 0, mm = 0;
                for (int j = 0; j < D; ++j) {
                  const double m = cent[(size_t(h) * c.C + p) * D + j];
                  qm += m * qr[j];
                  mm += m * m;
                }
                scores[g][p] = c.spherical ? qm : 2 * qm - mm;
              }
              tie |= cutest::has_near_tie(scores[g], std::vector<int64_t>(c.C, 1), 1e-5);
            }
            key = cutest::round_robin_keys(scores);
            if (tie) tie_tol = 1.0;  // a per-head near tie may swap two places of the merge
          } else {
            // True density: exact softmax of each head over the whole prefix, mass per partition
            // over its candidate keys, summed over the group.
            std::vector<double> dens(c.C, 0.0);
            for (int g = 0; g < G; ++g) {
              const float* qr = &d.q[(size_t(s) * c.hq + h * G + g) * D];
              std::vector<double> lg(n);
              double mx = -INFINITY, z = 0;
              for (int64_t t = 0; t < n; ++t) {
                double a = 0;
                for (int j = 0; j < D; ++j) a += double(qr[j]) * d.k[(size_t(t) * c.hkv + h) * D + j];
                mx = std::max(mx, lg[t] = a / std::sqrt(double(D)));
              }
              for (auto& a : lg) z += (a = std::exp(a - mx));
              for (int64_t t = fixed.sink_end; t < fixed.window_begin; ++t)
                dens[part_of[size_t(t) * c.hkv + h]] += lg[t] / z;
            }
            key.assign(c.C, -INFINITY);
            for (int p = 0; p < c.C; ++p)
              if (counts[p] > 0) key[p] = std::log(dens[p] / double(counts[p]));
          }
          const auto taken = cutest::fill_partitions(key, counts, budget);
          std::set<int32_t> ref;
          for (int64_t t = 0; t < n; ++t)
            if (t < fixed.sink_end || t >= fixed.window_begin || taken[part_of[size_t(t) * c.hkv + h]])
              ref.insert(int32_t(t));
          const bool tie = assign_near_ties > 0 || cutest::has_near_tie(key, counts, tie_tol);
          const auto& cpu_list = sel.positions[size_t(h * G)];
          const std::set<int32_t> cset(cpu_list.begin(), cpu_list.end());
          bool heads_agree = true;
          for (int g = 1; g < G; ++g)
            heads_agree &= std::set<int32_t>(sel.positions[size_t(h * G + g)].begin(),
                                             sel.positions[size_t(h * G + g)].end()) == cset;
          const std::set<int32_t>& gset = gsel[size_t(s) * c.hkv + h];
          auto tally_pair = [&](Counts& k, const std::set<int32_t>& a, const std::set<int32_t>& b) {
            ++k.compared;
            if (a == b) return;
            (tie ? k.ties : k.mismatches)++;
          };
          tally_pair(cpu_vs_ref, cset, ref);
          tally_pair(gpu_vs_ref, gset, ref);
          tally_pair(cpu_vs_gpu, cset, gset);
          if (!heads_agree) ++cpu_vs_gpu.mismatches;  // a partitioned method gives its group one read
          // Outputs: GPU vs CPU where both read the same set; GPU vs float64 attention over the
          // reference set where the GPU read it.
          for (int g = 0; g < G; ++g) {
            const size_t row = (size_t(s) * c.hq + h * G + g) * D;
            const size_t crow = size_t(h * G + g) * D;
            if (cset == gset)
              for (int j = 0; j < D; ++j) {
                out_num += std::pow(double(gout[row + j]) - cout_[crow + j], 2);
                out_den += std::pow(double(cout_[crow + j]), 2);
              }
            if (gset == ref) {
              std::vector<int64_t> pos_list(ref.begin(), ref.end());
              std::vector<uint16_t> kk(size_t(n) * D), vv(kk.size());
              for (int64_t t = 0; t < n; ++t)
                for (int j = 0; j < D; ++j) {
                  kk[t * D + j] = cutest::to_bits(d.k[(size_t(t) * c.hkv + h) * D + j], DType::BF16);
                  vv[t * D + j] = cutest::to_bits(d.v[(size_t(t) * c.hkv + h) * D + j], DType::BF16);
                }
              std::vector<double> r(D);
              cutest::ref_attention(&d.q[row], kk.data(), vv.data(), pos_list, D, scale, DType::BF16, r.data());
              for (int j = 0; j < D; ++j) {
                ref_num += std::pow(double(gout[row + j]) - r[j], 2);
                ref_den += r[j] * r[j];
              }
            }
          }
        }
      }
      std::printf("%sselections compared %lld: cpu/ref ties %lld, gpu/ref ties %lld, cpu/gpu ties %lld\n", rt.c_str(),
                  (long long)cpu_vs_gpu.compared, (long long)cpu_vs_ref.ties, (long long)gpu_vs_ref.ties,
                  (long long)cpu_vs_gpu.ties);
      tally.check(cpu_vs_ref.mismatches == 0, (rt + "CPU selections differing from the float64 reference").c_str(),
                  double(cpu_vs_ref.mismatches), 0);
      tally.check(gpu_vs_ref.mismatches == 0, (rt + "GPU selections differing from the float64 reference").c_str(),
                  double(gpu_vs_ref.mismatches), 0);
      tally.check(cpu_vs_gpu.mismatches == 0, (rt + "CPU vs GPU selections differing (not on a tie)").c_str(),
                  double(cpu_vs_gpu.mismatches), 0);
      // Both backends read the same bf16 K/V with the same fp32 queries and accumulate in fp32; they
      // differ only in summation order and exp, measured near 1e-6. A token read by one and not the
      // other moves the output by about its attention weight (>= 1e-3 here), far above 1e-4.
      const double out_err = out_den > 0 ? std::sqrt(out_num / out_den) : 0;
      tally.check(out_err < 1e-4, (rt + "GPU vs CPU output rel error (same selection)").c_str(), out_err, 1e-4);
      const double ref_err = ref_den > 0 ? std::sqrt(ref_num / ref_den) : 0;
      tally.check(ref_err < 1e-4, (rt + "GPU output vs float64 attention rel error").c_str(), ref_err, 1e-4);
    }

    // Loki: per query head on both devices (each head its own top-k of its low-rank scores).
    {
      const double d_f = 0.24;  // ceil(0.24 * 64) = ceil(15.36) = 16: a fractional rank (16 at D = 128: 0.12)
      const double df = D == 64 ? d_f : 0.12;
      const std::string rt = tag + "loki: ";
      MethodSpec spec;
      spec.name = "loki";
      spec.k_f = k_f;
      spec.d_f = df;
      spec.artifact = loki_path;
      auto cpu = make_method_factory(spec, d.model)(shape);
      cpu->place(kv, 0, c.n_max, nullptr);
      auto idx = cuda::LokiIndex::from_artifact(loki_path, d.model, 1, B, DType::BF16, c.n_max, df);
      const int R = idx->rank();
      tally.check(R == rules::loki_rank(df, D), (rt + "rank from d_f").c_str(), R, rules::loki_rank(df, D));
      idx->store(dk.get(), dv.get(), c.n_max, c.steps);
      idx->select(dq.get(), k_f);
      cuda::DeviceBuffer<float> dout(d.q.size());
      cutest::poison(dout);
      cuda::SplitWorkspace ws;
      idx->attend(scale, dout.get(), ws);
      SAAP_CU(cudaDeviceSynchronize());
      const auto gout = cutest::download(dout);
      std::vector<int32_t> gsel(size_t(B) * c.hq * c.n_max);
      SAAP_CU(cudaMemcpy(gsel.data(), idx->selected(), gsel.size() * 4, cudaMemcpyDeviceToHost));
      const auto gcount = idx->selected_count();
      const float* comp = d.loki.basis(1, 0);
      Counts cpu_vs_ref, gpu_vs_ref, cpu_vs_gpu;
      double out_num = 0, out_den = 0;
      for (int s = 0; s < B; ++s) {
        const int64_t n = c.steps[s], pos = n - 1;
        const QueryView qv{&d.q[size_t(s) * c.hq * D], &d.q_pre[size_t(s) * c.hq * D], c.hq, pos};
        Selection sel;
        std::vector<float> cout_(size_t(c.hq) * D);
        LookupStats stats;
        cpu->select(kv, qv, sel);
        cpu->attend(kv, qv, sel, cout_.data(), stats);
        const int64_t k = rules::loki_keys(k_f, n);
        for (int h = 0; h < c.hkv; ++h) {
          comp = d.loki.basis(1, h);
          // Reference scores: q'[:R] . k'[:R] with k' = components . k, per head;
          // tol: a bound on the fp32 rounding of each score.
          std::vector<std::vector<double>> sc(G, std::vector<double>(n)), tol(G, std::vector<double>(n));
          for (int g = 0; g < G; ++g) {
            const float* qr = &d.q[(size_t(s) * c.hq + h * G + g) * D];
            for (int64_t t = 0; t < n; ++t) {
              const float* kr = &d.k[(size_t(t) * c.hkv + h) * D];
              double a = 0, m = 0;
              for (int j = 0; j < R; ++j) {
                double qj = 0, kj = 0;
                for (int i = 0; i < D; ++i) qj += double(comp[size_t(j) * D + i]) * qr[i], kj += double(comp[size_t(j) * D + i]) * kr[i];
                a += qj * kj;
                m += std::abs(qj * kj);
              }
              sc[g][t] = a;
              tol[g][t] = 1e-5 * m;
            }
          }
          auto topk = [&](const std::vector<double>& score, const std::vector<double>& err, bool& tie) {
            std::vector<int32_t> order(n);
            std::iota(order.begin(), order.end(), 0);
            std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
              return rules::ranks_before(float(score[a]), a, float(score[b]), b);
            });
            tie = k < n && score[order[k - 1]] - score[order[k]] <= err[order[k - 1]] + err[order[k]];
            return std::set<int32_t>(order.begin(), order.begin() + k);
          };
          for (int g = 0; g < G; ++g) {
            bool tie = false;
            const std::set<int32_t> ref = topk(sc[g], tol[g], tie);
            const size_t row = size_t(s) * c.hq + size_t(h) * G + g;
            const std::set<int32_t> gset(&gsel[row * c.n_max], &gsel[row * c.n_max] + gcount[row]);
            ++gpu_vs_ref.compared;
            if (gset != ref) (tie ? gpu_vs_ref.ties : gpu_vs_ref.mismatches)++;
            const auto& cl = sel.positions[size_t(h * G + g)];
            const std::set<int32_t> cset = sel.all ? [&] {
              std::set<int32_t> all;
              for (int64_t t = 0; t < n; ++t) all.insert(int32_t(t));
              return all;
            }() : std::set<int32_t>(cl.begin(), cl.end());
            ++cpu_vs_ref.compared;
            if (cset != ref) (tie ? cpu_vs_ref.ties : cpu_vs_ref.mismatches)++;
            ++cpu_vs_gpu.compared;
            if (cset != gset) (tie ? cpu_vs_gpu.ties : cpu_vs_gpu.mismatches)++;
            if (cset == gset)
              for (int j = 0; j < D; ++j) {
                out_num += std::pow(double(gout[row * D + j]) - cout_[size_t(h * G + g) * D + j], 2);
                out_den += std::pow(double(cout_[size_t(h * G + g) * D + j]), 2);
              }
          }
        }
      }
      std::printf("%sselections compared cpu %lld (ties %lld), gpu %lld (ties %lld), cpu/gpu %lld (ties %lld)\n",
                  rt.c_str(), (long long)cpu_vs_ref.compared, (long long)cpu_vs_ref.ties,
                  (long long)gpu_vs_ref.compared, (long long)gpu_vs_ref.ties, (long long)cpu_vs_gpu.compared,
                  (long long)cpu_vs_gpu.ties);
      tally.check(cpu_vs_ref.mismatches == 0, (rt + "CPU top-k differing from the float64 reference").c_str(),
                  double(cpu_vs_ref.mismatches), 0);
      tally.check(gpu_vs_ref.mismatches == 0, (rt + "GPU per-head top-k differing from the float64 reference").c_str(),
                  double(gpu_vs_ref.mismatches), 0);
      tally.check(cpu_vs_gpu.mismatches == 0, (rt + "CPU vs GPU selections differing (not on a tie)").c_str(),
                  double(cpu_vs_gpu.mismatches), 0);
      const double out_err = out_den > 0 ? std::sqrt(out_num / out_den) : 0;
      // Same reason as above: identical bf16 inputs, fp32 accumulation on both sides.
      tally.check(out_err < 1e-4 && out_den > 0, (rt + "GPU vs CPU output rel error (same selection)").c_str(), out_err,
                  1e-4);
    }
  }

  // Bad input: named errors, nothing built.
  {
    const Case c{64, 4, 2, 8, 32, true, true, 64, {64}};
    const Data d = make_data(rng, c);
    d.part.save(path);
    d.loki.save(loki_path);
    cuda::SaapConfig cfg;
    cfg.sinks = 4;
    cfg.window = 8;
    cfg.max_prefill = 64;
    auto refused = [&](const char* what, ErrorKind kind, auto&& fn) {
      bool ok = false;
      try {
        fn();
      } catch (const Error& e) {
        ok = e.kind() == kind;
        std::printf("expected error: %s\n", e.what());
      }
      tally.check(ok, what, ok, 1);
    };
    ArtifactIdentity other = d.model;
    other.n_kv_heads = 4;
    refused("an artifact for other KV heads is refused (BadFile)", ErrorKind::BadFile, [&] {
      cuda::SaapIndex::from_artifact(path, other, 1, 1, DType::BF16, cfg, cuda::PartitionRouting::Saap);
    });
    other = d.model;
    other.model_identity = "another-model";
    refused("an artifact for another model is refused (BadFile)", ErrorKind::BadFile, [&] {
      cuda::SaapIndex::from_artifact(path, other, 1, 1, DType::BF16, cfg, cuda::PartitionRouting::KMeans);
    });
    other = d.model;
    other.n_layers = 3;
    refused("an artifact with another layer count is refused (BadFile)", ErrorKind::BadFile,
            [&] { cuda::LokiIndex::from_artifact(loki_path, other, 1, 1, DType::BF16, 64, 0.25); });
    refused("a layer outside the model is refused (InvalidArgument)", ErrorKind::InvalidArgument, [&] {
      cuda::SaapIndex::from_artifact(path, d.model, 2, 1, DType::BF16, cfg, cuda::PartitionRouting::Saap);
    });
    refused("Loki d_f giving rank 12 is refused (Unsupported)", ErrorKind::Unsupported,
            [&] { cuda::LokiIndex::from_artifact(loki_path, d.model, 1, 1, DType::BF16, 64, 0.18); });
    PartitionArtifact km = d.part;
    km.identity.method = "kmeans";
    km.hidden = 0;
    for (auto& [l, layer] : km.layers) layer.classifiers.clear();
    km.save(path);
    refused("Saap routing on a k-means artifact is refused (BadFile)", ErrorKind::BadFile, [&] {
      cuda::SaapIndex::from_artifact(path, d.model, 1, 1, DType::BF16, cfg, cuda::PartitionRouting::Saap);
    });
    refused("head_dim 96 is refused (Unsupported: the kernels instantiate 64, 128 and 256)", ErrorKind::Unsupported,
            [&] { cuda::SaapIndex(cuda::DecodeShape{1, 4, 2, 96, DType::BF16}, cfg); });
  }
  std::filesystem::remove(path);
  std::filesystem::remove(loki_path);
  return tally.finish();
}
