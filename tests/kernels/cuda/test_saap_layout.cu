// Saap partitioned layout: prefill build places every token exactly once (sinks, recent ring, its
// partition's contiguous range), and decode appends move the token leaving the window into the
// append pages of its nearest centroid (checked against a float64 CPU search); when the pages run
// out, the index re-packs and the same invariants hold. With separate routing keys (pre-RoPE
// artifacts) the token's partition is the nearest centroid of its routing key instead: the
// caller's assignment for prefill tokens, a float64 search of the appended routing key otherwise.
#include <algorithm>
#include <map>
#include <string>

#include "kernels/cuda/cuda_test_util.h"
#include "saap/kernels/cuda/saap.h"

using namespace saap;

namespace {
std::string row_key(const uint16_t* k, const uint16_t* v, int d) {
  std::string s(reinterpret_cast<const char*>(k), d * 2);
  s.append(reinterpret_cast<const char*>(v), d * 2);
  return s;
}
}  // namespace

int main() {
  cutest::require_gpu();
  cutest::Tally tally;
  cutest::Rng rng(cutest::test_seed());
  struct Case {
    int batch, hkv, d, C;
    DType t;
    std::vector<int32_t> lens;
    int appends;
    int pages = 16;            // append pages per partition
    int64_t max_prefill = 300;
    int min_repacks = 0;
    bool route = false;        // separate routing keys
    // reserve_appends(appends) first, then every append is one replay of a CUDA graph that
    // captured append(): capture fails if append() synchronises, and no re-pack may follow.
    bool graph = false;
  };
  // The third case overflows: 2 pages of 8 per partition, 3 partitions, 150 appends, so appends
  // must re-pack (several times, and past max_prefill) instead of dropping tokens. The last two
  // reserve room for all 150 appends at once (a re-pack that grows the pages per partition to 19)
  // and replay a captured append.
  for (const Case& c : {Case{2, 2, 128, 37, DType::BF16, {300, 20}, 50}, Case{1, 3, 64, 5, DType::F16, {130}, 70},
                        Case{1, 2, 64, 3, DType::BF16, {64}, 150, 2, 64, 2},
                        Case{2, 2, 128, 9, DType::BF16, {200, 3}, 60, 16, 300, 0, true},
                        Case{1, 1, 64, 4, DType::F16, {64}, 150, 2, 64, 2, true},
                        Case{1, 2, 64, 3, DType::BF16, {64}, 150, 2, 64, 1, false, true},
                        Case{2, 1, 128, 4, DType::F16, {64, 40}, 150, 2, 64, 1, true, true}}) {
    cuda::DecodeShape s{c.batch, c.hkv, c.hkv, c.d, c.t};
    cuda::SaapConfig cfg;
    cfg.n_partitions = c.C;
    cfg.sinks = 4;
    cfg.window = 16;
    cfg.append_page = 8;
    cfg.append_pages_per_partition = c.pages;
    cfg.max_prefill = c.max_prefill;
    cfg.max_new_tokens = c.appends;
    cfg.separate_routing_keys = c.route;
    const int64_t max_len = cfg.max_prefill;
    cuda::SaapIndex idx(s, cfg);
    auto cent = cutest::random_f32(rng, size_t(c.hkv) * c.C * c.d);
    idx.set_centroids(cent);
    const int bh_n = c.batch * c.hkv;
    // All tokens a (b, h) has seen, prefill then appended: rows [bh][t][d].
    const int64_t total_len = max_len + c.appends;
    std::vector<uint16_t> allk(size_t(bh_n) * total_len * c.d), allv(allk.size());
    // Routing keys of the appended tokens (route cases): unrelated to the stored keys, so a
    // token placed by its stored key is caught.
    const auto allr = cutest::random_kv(rng, allk.size(), c.t);
    auto hk = cutest::random_kv(rng, size_t(bh_n) * max_len * c.d, c.t);
    auto hv = cutest::random_kv(rng, hk.size(), c.t);
    std::vector<int32_t> assign(size_t(bh_n) * max_len);
    std::uniform_int_distribution<int> pick(0, c.C - 1);
    for (auto& a : assign) a = pick(rng);
    for (int bh = 0; bh < bh_n; ++bh)
      for (int64_t t = 0; t < max_len; ++t)
        for (int j = 0; j < c.d; ++j) {
          allk[(bh * total_len + t) * c.d + j] = hk[(bh * max_len + t) * c.d + j];
          allv[(bh * total_len + t) * c.d + j] = hv[(bh * max_len + t) * c.d + j];
        }
    auto dk = cutest::upload(hk), dv = cutest::upload(hv);
    auto da = cutest::upload(assign);
    idx.build(dk.get(), dv.get(), max_len, c.lens, da.get());
    // Graph cases: the appended token's buffers, which the captured append reads at every replay.
    cuda::DeviceBuffer<uint16_t> gk(size_t(bh_n) * c.d), gv(gk.size()), gr(gk.size());
    cudaStream_t stream = nullptr;
    cudaGraphExec_t exec = nullptr;
    int repacks_reserved = 0;
    if (c.graph) {
      idx.reserve_appends(c.appends);
      repacks_reserved = idx.repacks();
      SAAP_CU(cudaStreamCreate(&stream));
      cudaGraph_t graph;
      SAAP_CU(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      if (c.route) idx.append(gk.get(), gv.get(), gr.get(), stream);
      else idx.append(gk.get(), gv.get(), stream);
      SAAP_CU(cudaStreamEndCapture(stream, &graph));
      SAAP_CU(cudaGraphInstantiate(&exec, graph, 0));
      SAAP_CU(cudaGraphDestroy(graph));
    }
    for (int a = 0; a < c.appends; ++a) {
      auto nk = cutest::random_kv(rng, size_t(bh_n) * c.d, c.t), nv = cutest::random_kv(rng, size_t(bh_n) * c.d, c.t);
      for (int bh = 0; bh < bh_n; ++bh) {
        const int64_t t = c.lens[bh / c.hkv] + a;
        for (int j = 0; j < c.d; ++j) {
          allk[(bh * total_len + t) * c.d + j] = nk[size_t(bh) * c.d + j];
          allv[(bh * total_len + t) * c.d + j] = nv[size_t(bh) * c.d + j];
        }
      }
      auto dnk = cutest::upload(nk), dnv = cutest::upload(nv);
      if (c.graph) {
        SAAP_CU(cudaMemcpy(gk.get(), nk.data(), nk.size() * 2, cudaMemcpyHostToDevice));
        SAAP_CU(cudaMemcpy(gv.get(), nv.data(), nv.size() * 2, cudaMemcpyHostToDevice));
        if (c.route)
          for (int bh = 0; bh < bh_n; ++bh)
            SAAP_CU(cudaMemcpy(gr.get() + size_t(bh) * c.d, &allr[(bh * total_len + c.lens[bh / c.hkv] + a) * c.d],
                               size_t(c.d) * 2, cudaMemcpyHostToDevice));
        SAAP_CU(cudaGraphLaunch(exec, stream));
        SAAP_CU(cudaStreamSynchronize(stream));
      } else if (c.route) {
        std::vector<uint16_t> nr(size_t(bh_n) * c.d);
        for (int bh = 0; bh < bh_n; ++bh)
          std::copy_n(&allr[(bh * total_len + c.lens[bh / c.hkv] + a) * c.d], c.d, &nr[size_t(bh) * c.d]);
        auto dnr = cutest::upload(nr);
        idx.append(dnk.get(), dnv.get(), dnr.get());
      } else {
        idx.append(dnk.get(), dnv.get());
      }
    }
    idx.check();
    SAAP_CU(cudaDeviceSynchronize());
    if (c.graph) {
      tally.check(idx.repacks() == repacks_reserved, "graph replays of append after reserve_appends: no re-pack",
                  idx.repacks() - repacks_reserved, 0);
      SAAP_CU(cudaGraphExecDestroy(exec));
      SAAP_CU(cudaStreamDestroy(stream));
    }
    const int64_t rows = idx.rows();
    tally.check(idx.repacks() >= c.min_repacks, "re-packs when the append pages run out", idx.repacks(),
                c.min_repacks);
    std::vector<uint16_t> pk(size_t(bh_n) * rows * c.d), pv(pk.size());
    SAAP_CU(cudaMemcpy(pk.data(), idx.k_pool(), pk.size() * 2, cudaMemcpyDeviceToHost));
    SAAP_CU(cudaMemcpy(pv.data(), idx.v_pool(), pv.size() * 2, cudaMemcpyDeviceToHost));
    auto get = [&](const int32_t* p, size_t n) {
      std::vector<int32_t> h(n);
      SAAP_CU(cudaMemcpy(h.data(), p, n * 4, cudaMemcpyDeviceToHost));
      return h;
    };
    // reserve_appends may have grown the pages per partition.
    const int A = idx.config().append_pages_per_partition, S = cfg.sinks, W = cfg.window;
    auto pstart = get(idx.part_start(), size_t(bh_n) * c.C), pcount = get(idx.part_count(), size_t(bh_n) * c.C);
    auto acount = get(idx.append_count(), size_t(bh_n) * c.C), apages = get(idx.append_pages(), size_t(bh_n) * c.C * A);
    int64_t misplaced = 0, missing = 0, far = 0, checked_evicted = 0;
    for (int bh = 0; bh < bh_n; ++bh) {
      const int64_t n = c.lens[bh / c.hkv] + c.appends;
      std::map<std::string, int64_t> where;  // token content -> token index
      for (int64_t t = 0; t < n; ++t)
        where[row_key(&allk[(bh * total_len + t) * c.d], &allv[(bh * total_len + t) * c.d], c.d)] = t;
      std::vector<int> seen(n, 0);
      auto visit = [&](int64_t slot, int part) {  // part: -1 for sinks/ring
        auto it = where.find(row_key(&pk[(bh * rows + slot) * c.d], &pv[(bh * rows + slot) * c.d], c.d));
        if (it == where.end()) {
          ++misplaced;
          return;
        }
        const int64_t t = it->second;
        seen[t]++;
        const bool sink = t < S, recent = t >= S && t >= n - W;
        if (part < 0) {
          if (!(sink && slot == t) && !(recent && slot == S + (t - S) % W)) ++misplaced;
          return;
        }
        if (sink || recent) ++misplaced;
        const int64_t prefill_len = c.lens[bh / c.hkv];
        // Partitioned at build, or (routing keys) a prefill token whose partition the caller gave.
        if (t < prefill_len - W || (c.route && t < prefill_len)) {
          if (assign[bh * max_len + t] != part) ++misplaced;
        } else {  // evicted from the window by an append: nearest centroid of its (routing) key
          const std::vector<uint16_t>& keys = c.route ? allr : allk;
          ++checked_evicted;
          const int h = bh % c.hkv;
          double best = -INFINITY, mine = 0;
          for (int k = 0; k < c.C; ++k) {
            double dot = 0, nn = 0;
            for (int j = 0; j < c.d; ++j) {
              const double cj = double(cent[(size_t(h) * c.C + k) * c.d + j]);
              dot += cj * cutest::from_bits(keys[(bh * total_len + t) * c.d + j], c.t);
              nn += cj * cj;
            }
            best = std::max(best, dot - nn / 2);
            if (k == part) mine = dot - nn / 2;
          }
          if (best - mine > 1e-3 * (1 + std::abs(best))) ++far;
        }
      };
      for (int64_t slot = 0; slot < std::min<int64_t>(S, n); ++slot) visit(slot, -1);
      for (int64_t slot = S; slot < S + std::min<int64_t>(W, std::max<int64_t>(0, n - S)); ++slot) visit(slot, -1);
      for (int k = 0; k < c.C; ++k) {
        const size_t pc = size_t(bh) * c.C + k;
        for (int i = 0; i < pcount[pc]; ++i) visit(pstart[pc] + i, k);
        for (int i = 0; i < acount[pc]; ++i) visit(apages[pc * A + i / cfg.append_page] + i % cfg.append_page, k);
      }
      for (int64_t t = 0; t < n; ++t) missing += seen[t] != 1;
    }
    const std::string tag = std::string(c.t == DType::BF16 ? "bf16" : "f16") + " d=" + std::to_string(c.d) +
                            " C=" + std::to_string(c.C) + ": ";
    tally.check(misplaced == 0, (tag + "slots holding a wrong or unknown token").c_str(), double(misplaced), 0);
    tally.check(missing == 0, (tag + "tokens not stored exactly once").c_str(), double(missing), 0);
    tally.check(far == 0 && checked_evicted > 0,
                (tag + (c.route ? "routing-key " : "") + "evicted tokens not at a nearest centroid").c_str(), double(far), 0);
    const auto ctr = idx.counters();
    bool len_ok = true;
    for (int bh = 0; bh < bh_n; ++bh) len_ok &= ctr.seq_len[bh] == c.lens[bh / c.hkv] + c.appends;
    tally.check(len_ok, (tag + "sequence lengths after appends").c_str(), len_ok, 1);
  }
  // Out-of-range assignments are reported, not silently dropped.
  {
    cuda::DecodeShape s{1, 1, 1, 64, DType::BF16};
    cuda::SaapConfig cfg;
    cfg.n_partitions = 4;
    cfg.sinks = 1;
    cfg.window = 2;
    cfg.max_prefill = 16;
    cuda::SaapIndex idx(s, cfg);
    auto hk = cutest::random_kv(rng, 16 * 64, DType::BF16);
    auto dk = cutest::upload(hk);
    std::vector<int32_t> a(16, 1);
    a[7] = 9;
    auto da = cutest::upload(a);
    idx.build(dk.get(), dk.get(), 16, {16}, da.get());
    bool threw = false;
    try {
      idx.check();
    } catch (const Error& e) {
      threw = e.kind() == ErrorKind::InvalidArgument;
      std::printf("expected error: %s\n", e.what());
    }
    tally.check(threw, "assignment 9 with 4 partitions is reported", threw, 1);
    // An index assigning by its stored keys refuses a routing key, and one assigning by routing
    // keys refuses an append without one (a token would silently land by the wrong key).
    threw = false;
    try {
      idx.append(dk.get(), dk.get(), dk.get());
    } catch (const Error& e) {
      threw = e.kind() == ErrorKind::InvalidArgument;
      std::printf("expected error: %s\n", e.what());
    }
    tally.check(threw, "a routing key for a stored-key index is refused", threw, 1);
    cfg.separate_routing_keys = true;
    cuda::SaapIndex ridx(s, cfg);
    ridx.set_centroids(cutest::random_f32(rng, size_t(4) * 64));
    a[7] = 1;
    auto da2 = cutest::upload(a);
    ridx.build(dk.get(), dk.get(), 16, {16}, da2.get());
    threw = false;
    try {
      ridx.append(dk.get(), dk.get());
    } catch (const Error& e) {
      threw = e.kind() == ErrorKind::InvalidArgument;
      std::printf("expected error: %s\n", e.what());
    }
    tally.check(threw, "an append without its routing key is refused (routing-key index)", threw, 1);
  }
  return tally.finish();
}
