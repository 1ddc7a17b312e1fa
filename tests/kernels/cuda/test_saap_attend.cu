// Saap's attend (saap_attend: the register-loop kernel and every bulk-ring tuning of
// saap_attend_candidates) over segment tables made here, not by select(), vs float64 attention
// over the rows the tables name. The tables reach what select() rarely or never writes: a (b, h)
// with no segment at all (its output must be zeros), zero-length segments, runs that start and end
// inside a segment, runs past the last token (empty splits), one split over all rows, and hundreds
// of one-row segments in one run (past the bulk kernel's kSaapStagedSegments, so its producer reads
// the segment table itself). Shapes: batch 1 and 8, head dims 64, 128 and 256, GQA groups 1, 2, 3,
// 4, 7 and 8, bf16 and f16.
#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_test_util.h"
#include "saap/kernels/cuda/saap.h"

using namespace saap;

namespace {

struct Tables {
  std::vector<int32_t> segments, count, split_begin;  // [bh][max_segments][2], [bh], [bh][splits + 1][2]
  std::vector<std::vector<int64_t>> slots;             // [bh]: every row the segments name, in order
};

// Kind of (b, h): 0 random segments (some empty, some long), 1 none, 2 many one-row segments.
Tables make_tables(cutest::Rng& rng, int bh_n, int64_t rows, int64_t max_segments, int splits) {
  Tables t;
  t.segments.assign(size_t(bh_n) * max_segments * 2, 0);
  t.count.assign(bh_n, 0);
  t.split_begin.assign(size_t(bh_n) * (splits + 1) * 2, 0);
  t.slots.resize(bh_n);
  for (int bh = 0; bh < bh_n; ++bh) {
    const int kind = bh % 5 == 1 ? 1 : bh % 5 == 3 ? 2 : 0;
    std::vector<std::pair<int32_t, int32_t>> segs;
    if (kind == 0) {
      const int n = std::uniform_int_distribution<int>(1, int(std::min<int64_t>(max_segments, 40)))(rng);
      for (int i = 0; i < n; ++i) {
        const int len = std::uniform_int_distribution<int>(0, 9)(rng) == 0
                            ? 0
                            : std::uniform_int_distribution<int>(1, 200)(rng);
        const int32_t first = std::uniform_int_distribution<int32_t>(0, int32_t(rows - len))(rng);
        segs.push_back({first, len});
      }
    } else if (kind == 2) {
      const int n = int(std::min<int64_t>(max_segments, 300));
      for (int i = 0; i < n; ++i) segs.push_back({std::uniform_int_distribution<int32_t>(0, int32_t(rows - 1))(rng), 1});
    }
    t.count[bh] = int32_t(segs.size());
    std::vector<int64_t> first_token;  // token number of each segment's first row
    int64_t total = 0;
    for (size_t k = 0; k < segs.size(); ++k) {
      t.segments[(size_t(bh) * max_segments + k) * 2] = segs[k].first;
      t.segments[(size_t(bh) * max_segments + k) * 2 + 1] = segs[k].second;
      first_token.push_back(total);
      for (int r = 0; r < segs[k].second; ++r) t.slots[bh].push_back(segs[k].first + r);
      total += segs[k].second;
    }
    // Runs as select() cuts them: run j starts at token j * per, at the segment holding it.
    const int64_t per = std::max<int64_t>(1, (total + splits - 1) / splits);
    for (int j = 0; j <= splits; ++j) {
      const int64_t tok = int64_t(j) * per;
      int32_t k = int32_t(segs.size()), o = 0;
      if (tok < total)
        for (size_t i = 0; i < segs.size(); ++i)
          if (tok >= first_token[i] && tok < first_token[i] + segs[i].second) {
            k = int32_t(i);
            o = int32_t(tok - first_token[i]);
            break;
          }
      t.split_begin[(size_t(bh) * (splits + 1) + j) * 2] = k;
      t.split_begin[(size_t(bh) * (splits + 1) + j) * 2 + 1] = o;
    }
  }
  return t;
}

}  // namespace

int main() {
  cutest::require_gpu();
  cutest::Tally tally;
  cutest::Rng rng(cutest::test_seed());
  // Tunings: name() parses back to itself; a malformed field, a ring outside 2..8 stages, mma or
  // fused without the ring, waves outside 1..8, and a ring larger than the shared memory (8 stages
  // of 32 KiB with mma at d = 128) are named errors (InvalidArgument).
  for (const cuda::SaapAttendTuning& t : cuda::saap_attend_candidates())
    tally.check(cuda::SaapAttendTuning::parse(t.name()).name() == t.name(),
                ("tuning '" + t.name() + "' parses back to itself").c_str(), 1, 1);
  for (const char* bad : {"bulk=x", "stages=3", "bulk", "bulk=1", "bulk=9", "mma=1", "fused=1", "bulk=3;waves=0",
                          "bulk=3;waves=9", "bulk=8;mma=1"}) {
    bool threw = false;
    try {
      const cuda::SaapAttendTuning t = cuda::SaapAttendTuning::parse(bad);
      cuda::SplitWorkspace ws;
      cuda::DeviceBuffer<int32_t> tables(8);
      cuda::DeviceBuffer<float> buf(128);
      cuda::DeviceBuffer<uint16_t> pool(128);
      cuda::saap_attend({1, 1, 1, 128, DType::BF16}, t, pool.get(), pool.get(), 1, tables.get(), tables.get(), 1,
                        tables.get(), 1, buf.get(), 1.f, buf.get(), ws);
    } catch (const Error& e) {
      threw = e.kind() == ErrorKind::InvalidArgument;
      std::printf("expected error: %s\n", e.what());
    }
    tally.check(threw, (std::string("saap attend tuning '") + bad + "' is refused (InvalidArgument)").c_str(), threw,
                1);
  }
  struct Case {
    int batch, hq, hkv, d;
    DType t;
  };
  for (const Case& c : {Case{1, 4, 4, 64, DType::BF16}, Case{1, 32, 8, 128, DType::BF16},
                        Case{8, 16, 8, 128, DType::BF16}, Case{1, 7, 1, 128, DType::F16},
                        Case{8, 8, 1, 64, DType::F16}, Case{2, 9, 3, 256, DType::BF16},
                        Case{1, 4, 1, 256, DType::F16}, Case{8, 32, 8, 64, DType::BF16}}) {
    const cuda::DecodeShape s{c.batch, c.hq, c.hkv, c.d, c.t};
    const int D = c.d, G = c.hq / c.hkv, bh_n = c.batch * c.hkv;
    const int64_t rows = 1500, max_segments = 320;
    const auto kh = cutest::random_kv(rng, size_t(bh_n) * rows * D, c.t);
    const auto vh = cutest::random_kv(rng, kh.size(), c.t);
    auto dk = cutest::upload(kh);
    auto dv = cutest::upload(vh);
    const auto q = cutest::random_f32(rng, size_t(c.batch) * c.hq * D);
    auto dq = cutest::upload(q);
    const float scale = 1.f / std::sqrt(float(D));
    for (int splits : {1, 7, 48, 300}) {
      const Tables tb = make_tables(rng, bh_n, rows, max_segments, splits);
      auto dseg = cutest::upload(tb.segments);
      auto dcount = cutest::upload(tb.count);
      auto dstarts = cutest::upload(tb.split_begin);
      // float64 reference; a (b, h) with no rows: zeros.
      std::vector<double> ref(q.size(), 0.0);
      for (int bh = 0; bh < bh_n; ++bh) {
        if (tb.slots[bh].empty()) continue;
        const int b = bh / c.hkv, h = bh % c.hkv;
        for (int g = 0; g < G; ++g) {
          const size_t row = (size_t(b) * c.hq + h * G + g) * D;
          cutest::ref_attention(&q[row], &kh[size_t(bh) * rows * D], &vh[size_t(bh) * rows * D], tb.slots[bh], D,
                                scale, c.t, &ref[row]);
        }
      }
      for (const cuda::SaapAttendTuning& tuning : cuda::saap_attend_candidates()) {
        cuda::DeviceBuffer<float> dout(q.size());
        cutest::poison(dout);
        cuda::SplitWorkspace ws;
        cuda::saap_attend(s, tuning, dk.get(), dv.get(), rows, dseg.get(), dcount.get(), max_segments, dstarts.get(),
                          splits, dq.get(), scale, dout.get(), ws);
        SAAP_CU(cudaDeviceSynchronize());
        const auto out = cutest::download(dout);
        const std::string tag = std::string(c.t == DType::BF16 ? "bf16" : "f16") + " b=" + std::to_string(c.batch) +
                                " d=" + std::to_string(D) + " G=" + std::to_string(G) + " splits=" +
                                std::to_string(splits) + " [" + tuning.name() + "]: ";
        // Same 16-bit K/V and fp32 queries on both sides; the device accumulates in fp32 (error near
        // 1e-6 relative; the tensor-core logits carry the fp32 query in three bf16 terms). A dropped
        // or doubled row moves a row of ~100-1000 rows by ~1e-3, far above the limit.
        const double err = cutest::rel_error(out, ref);
        tally.check(err < 1e-4, (tag + "attention rel error vs float64").c_str(), err, 1e-4);
        // The (b, h) without rows: exact zeros (no NaN from an empty softmax, no poison left).
        int64_t nonzero = 0;
        for (int bh = 0; bh < bh_n; ++bh)
          if (tb.slots[bh].empty()) {
            const int b = bh / c.hkv, h = bh % c.hkv;
            for (int i = 0; i < G * D; ++i) nonzero += out[(size_t(b) * c.hq + h * G) * D + i] != 0.f;
          }
        tally.check(nonzero == 0, (tag + "outputs of an empty selection that are not 0").c_str(), double(nonzero), 0);
      }
    }
  }
  return tally.finish();
}
