// SaapIndex construction, parameter upload, checks and read-back.
#include <algorithm>

#include "saap/kernels/cuda/saap_decode.cuh"
#include "saap_impl.h"

namespace saap::cuda {

namespace {
template <class T>
void upload(DeviceBuffer<T>& d, const std::vector<T>& h) {
  d.resize(h.size());
  SAAP_CU(cudaMemcpy(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

SaapIndex::SaapIndex(const DecodeShape& shape, const SaapConfig& cfg) : shape_(shape), cfg_(cfg), impl_(new Impl) {
  shape_.check();
  const int C = cfg.n_partitions;
  SAAP_CU_REQUIRE(C >= 1 && C <= 4096, Unsupported, "n_partitions %d; 1..4096 supported", C);
  SAAP_CU_REQUIRE(cfg.sinks >= 0 && cfg.window >= 1, InvalidArgument, "sinks %d must be >= 0 and window %d >= 1",
                  cfg.sinks, cfg.window);
  SAAP_CU_REQUIRE(cfg.segment >= 1 && cfg.append_page >= 1 && cfg.append_pages_per_partition >= 1, InvalidArgument,
                  "segment %d, append_page %d, append_pages_per_partition %d must all be >= 1", cfg.segment,
                  cfg.append_page, cfg.append_pages_per_partition);
  SAAP_CU_REQUIRE(cfg.max_prefill >= 1 && cfg.max_new_tokens >= 0, InvalidArgument,
                  "max_prefill %lld must be >= 1, max_new_tokens %lld >= 0", (long long)cfg.max_prefill,
                  (long long)cfg.max_new_tokens);
  // Every append may open a page in a different partition until each has one partly filled.
  const int64_t P = cfg.append_page;
  impl_->append_pool_pages = std::min<int64_t>(cfg.max_new_tokens, C + ceil_div(cfg.max_new_tokens, P));
  rows_ = cfg.sinks + cfg.window + cfg.max_prefill + impl_->append_pool_pages * P;
  SAAP_CU_REQUIRE(rows_ < (int64_t(1) << 31), Unsupported, "%lld slots per head exceed int32 slot indices",
                  (long long)rows_);
  // Worst case: everything selected, each range cut into segment-sized pieces.
  const int64_t seg = cfg.segment;
  max_segments_ = ceil_div(cfg.sinks, seg) + ceil_div(cfg.window, seg) + ceil_div(cfg.max_prefill, seg) + C +
                  impl_->append_pool_pages;
  const int64_t bh = int64_t(shape_.batch) * shape_.n_kv_heads;
  auto& m = *impl_;
  m.kpool.resize(bh * rows_ * shape_.head_dim);
  m.vpool.resize(bh * rows_ * shape_.head_dim);
  for (auto* p : {&m.part_start, &m.part_count, &m.cursor, &m.append_count}) p->resize(bh * C);
  m.append_pages.resize(bh * C * cfg.append_pages_per_partition);
  for (auto* p : {&m.next_page, &m.seq_len, &m.selected_tokens, &m.segment_count}) p->resize(bh);
  m.segments.resize(bh * max_segments_ * 2);
  m.split_begin.resize(bh * (kSaapMaxSplits + 1) * 2);
  SAAP_CU(cudaMemset(m.split_begin.get(), 0, m.split_begin.bytes()));
  m.flags.resize(2);
  m.best.resize(bh);
  if (cfg.separate_routing_keys) m.ring_part.resize(bh * cfg.window);
  SAAP_CU(cudaMemset(m.best.get(), 0, m.best.bytes()));
  m.tickets.resize(bh);
  SAAP_CU(cudaMemset(m.tickets.get(), 0, m.tickets.bytes()));
  m.logits.resize(int64_t(shape_.batch) * shape_.n_q_heads * C);  // >= [batch][n_kv_heads][C] of the other routings
  SAAP_CU(cudaMemset(m.flags.get(), 0, m.flags.bytes()));
  SAAP_CU(cudaMemset(m.seq_len.get(), 0, m.seq_len.bytes()));
  SAAP_CU(cudaMemset(m.segment_count.get(), 0, m.segment_count.bytes()));
}

SaapIndex::Impl::Impl() {
  SAAP_CU(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  SAAP_CU(cudaEventCreateWithFlags(&forked, cudaEventDisableTiming));
  SAAP_CU(cudaEventCreateWithFlags(&routed, cudaEventDisableTiming));
}

SaapIndex::Impl::~Impl() {
  if (cublas) cublasDestroy(cublas);
  if (routed) cudaEventDestroy(routed);
  if (forked) cudaEventDestroy(forked);
  if (side) cudaStreamDestroy(side);
}

SaapIndex::~SaapIndex() = default;

void SaapIndex::set_centroids(const std::vector<float>& h, bool spherical) {
  const int64_t n = int64_t(shape_.n_kv_heads) * cfg_.n_partitions * shape_.head_dim;
  SAAP_CU_REQUIRE(int64_t(h.size()) == n, InvalidArgument, "centroids has %zu values, expected n_kv_heads*C*D = %lld",
                  h.size(), (long long)n);
  std::vector<float> hn(size_t(shape_.n_kv_heads) * cfg_.n_partitions);
  for (size_t c = 0; c < hn.size(); ++c) {
    double s = 0;
    for (int j = 0; j < shape_.head_dim; ++j) s += double(h[c * shape_.head_dim + j]) * h[c * shape_.head_dim + j];
    hn[c] = spherical ? 0.f : float(s / 2);
  }
  upload(impl_->centroids, h);  // fp32: bf16 centroids moved ~60% of the CPU's selections (issue 13 parity)
  upload(impl_->half_norm, hn);
  spherical_ = spherical;
}

void SaapIndex::set_classifier(const std::vector<float>& w1, const std::vector<float>& b1,
                               const std::vector<float>& w2, const std::vector<float>& b2) {
  const int64_t Hq = shape_.n_q_heads, D = shape_.head_dim, C = cfg_.n_partitions, H = cfg_.classifier_hidden;
  SAAP_CU_REQUIRE(H >= 32 && H <= 1024 && H % 32 == 0, Unsupported, "classifier_hidden %lld; a multiple of 32 in "
                  "[32, 1024] is supported", (long long)H);
  SAAP_CU_REQUIRE(int64_t(w1.size()) == Hq * H * D, InvalidArgument, "w1 has %zu values, expected %lld", w1.size(),
                  (long long)(Hq * H * D));
  SAAP_CU_REQUIRE(int64_t(b1.size()) == Hq * H, InvalidArgument, "b1 has %zu values, expected %lld", b1.size(),
                  (long long)(Hq * H));
  SAAP_CU_REQUIRE(int64_t(w2.size()) == Hq * C * H, InvalidArgument, "w2 has %zu values, expected %lld", w2.size(),
                  (long long)(Hq * C * H));
  SAAP_CU_REQUIRE(int64_t(b2.size()) == Hq * C, InvalidArgument, "b2 has %zu values, expected %lld", b2.size(),
                  (long long)(Hq * C));
  // fp32, as the CPU router reads them: in bf16, 51 of 1800 of the runner's selections ranked a
  // near tie the other way (issue 13 parity); the price is twice the router bytes per step.
  upload(impl_->w1, w1);
  upload(impl_->w2, w2);
  upload(impl_->b1, b1);
  upload(impl_->b2, b2);
  impl_->hidden = int(H);
}

void SaapIndex::check() const {
  int32_t f[2];
  SAAP_CU(cudaMemcpy(f, impl_->flags.get(), sizeof f, cudaMemcpyDeviceToHost));
  SAAP_CU_REQUIRE(!f[0], InvalidArgument, "an assignment was outside [0, n_partitions = %d)", cfg_.n_partitions);
  SAAP_CU_REQUIRE(!f[1], OutOfMemory,
                  "an append found no room (append_pages_per_partition %d, max_new_tokens %lld); a token was dropped",
                  cfg_.append_pages_per_partition, (long long)cfg_.max_new_tokens);
}

SaapCounters SaapIndex::counters() const {
  const size_t bh = size_t(shape_.batch) * shape_.n_kv_heads;
  SaapCounters c;
  c.seq_len.resize(bh);
  c.selected_tokens.resize(bh);
  c.segments.resize(bh);
  SAAP_CU(cudaMemcpy(c.seq_len.data(), impl_->seq_len.get(), bh * 4, cudaMemcpyDeviceToHost));
  SAAP_CU(cudaMemcpy(c.selected_tokens.data(), impl_->selected_tokens.get(), bh * 4, cudaMemcpyDeviceToHost));
  SAAP_CU(cudaMemcpy(c.segments.data(), impl_->segment_count.get(), bh * 4, cudaMemcpyDeviceToHost));
  return c;
}

const void* SaapIndex::k_pool() const { return impl_->kpool.get(); }
const void* SaapIndex::v_pool() const { return impl_->vpool.get(); }
const int32_t* SaapIndex::part_start() const { return impl_->part_start.get(); }
const int32_t* SaapIndex::part_count() const { return impl_->part_count.get(); }
const int32_t* SaapIndex::append_pages() const { return impl_->append_pages.get(); }
const int32_t* SaapIndex::append_count() const { return impl_->append_count.get(); }
const int32_t* SaapIndex::segments() const { return impl_->segments.get(); }
const int32_t* SaapIndex::selected_tokens() const { return impl_->selected_tokens.get(); }
const float* SaapIndex::logits() const { return impl_->logits.get(); }

int64_t SaapIndex::index_bytes_per_step() const {
  const int64_t Hq = shape_.n_q_heads, Hkv = shape_.n_kv_heads, D = shape_.head_dim, C = cfg_.n_partitions;
  const int64_t sizes_and_assignment = Hkv * C * (D * 4 + 4);  // fp32 centroids of the append's assignment
  switch (cfg_.routing) {
    case PartitionRouting::Saap: {
      const int64_t H = impl_->hidden;
      return Hq * (H * D + C * H) * 4 + Hq * (H + C) * 4 + sizes_and_assignment;  // fp32 weights and biases
    }
    case PartitionRouting::KMeans:
      return Hkv * C * D * 4 + sizes_and_assignment;  // the centroids again, scored against the query
    case PartitionRouting::PartitionOracle:
      break;  // reads every key to decide: a measuring stick, its reads are not counted (as on the CPU)
  }
  return sizes_and_assignment;
}

}  // namespace saap::cuda
