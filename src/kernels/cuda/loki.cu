// Host side of Loki: storage in the PCA basis; per-head low-rank scoring and top-k by the oracle
// top-k's kernels (per_head_topk.cuh), attention of each KV group over its heads' union, each K/V
// row read once with the heads that took it (union_attend_kernel).
#include <algorithm>
#include <type_traits>

#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/loki.h"
#include "saap/kernels/cuda/loki_kernels.cuh"
#include "saap/kernels/cuda/per_head_topk.cuh"

namespace saap::cuda {

struct LokiIndex::Impl {
  DeviceBuffer<uint16_t> k_low, k_rest, v;  // kv_dtype bits
  DeviceBuffer<float> basis, q_rot;
  DeviceBuffer<float> scores;          // [batch][n_q_heads][max_len]: each head's low-rank scores
  DeviceBuffer<int32_t> positions;     // [batch][n_q_heads][max_len]: each head's selection, ascending
  DeviceBuffer<int32_t> counts;        // [batch][n_q_heads]
  DeviceBuffer<int32_t> union_count;   // [batch][n_kv_heads]: tokens the group reads
  DeviceBuffer<int32_t> union_pos;     // [batch][n_kv_heads][max_len]: them, ascending
  DeviceBuffer<uint8_t> union_mask;    // [batch][n_kv_heads][max_len]: bit g: head g of the group took it
  radix_topk::Workspace topk_ws;
  DeviceBuffer<int32_t> seq_len, pos0, count;  // [bh]
  std::vector<int32_t> host_len;  // [bh], mirrors seq_len so appends are checked without a sync
};

LokiIndex::LokiIndex(const DecodeShape& shape, int64_t max_len, int rank)
    : shape_(shape), max_len_(max_len), rank_(rank), impl_(new Impl) {
  shape_.check();
  SAAP_CU_REQUIRE(supported_rank(rank), Unsupported, "rank %d; 8, 16, 32, 64 or 128 is supported", rank);
  SAAP_CU_REQUIRE(rank < shape_.head_dim, InvalidArgument, "rank %d must be < head_dim %d", rank, shape_.head_dim);
  // 2^24: positions and counts are int32, and the stores are indexed in int32 per (b, kv head).
  SAAP_CU_REQUIRE(max_len >= 1 && max_len < (int64_t(1) << 24), InvalidArgument, "max_len %lld outside [1, 2^24)",
                  (long long)max_len);
  const int64_t bh = int64_t(shape_.batch) * shape_.n_kv_heads, D = shape_.head_dim;
  const int64_t rows = int64_t(shape_.batch) * shape_.n_q_heads;
  auto& m = *impl_;
  m.k_low.resize(bh * max_len * rank);
  m.k_rest.resize(bh * max_len * (D - rank));
  m.v.resize(bh * max_len * D);
  m.q_rot.resize(rows * D);
  m.scores.resize(rows * max_len);
  m.positions.resize(rows * max_len);
  m.counts.resize(rows);
  m.union_count.resize(bh);
  m.union_pos.resize(bh * max_len);
  m.union_mask.resize(bh * max_len);
  m.topk_ws.ensure(rows, max_len, bh);  // now, not in select(): a graph capture may not allocate
  for (auto* p : {&m.seq_len, &m.pos0, &m.count}) p->resize(bh);
  SAAP_CU(cudaMemset(m.seq_len.get(), 0, m.seq_len.bytes()));
  SAAP_CU(cudaMemset(m.counts.get(), 0, m.counts.bytes()));
  SAAP_CU(cudaMemset(m.union_count.get(), 0, m.union_count.bytes()));
}

LokiIndex::~LokiIndex() = default;

void LokiIndex::set_basis(const std::vector<float>& basis) {
  const int64_t D = shape_.head_dim, n = int64_t(shape_.n_kv_heads) * D * D;
  SAAP_CU_REQUIRE(int64_t(basis.size()) == n, InvalidArgument, "basis has %zu values, expected n_kv_heads*D*D = %lld",
                  basis.size(), (long long)n);
  impl_->basis.resize(n);
  SAAP_CU(cudaMemcpy(impl_->basis.get(), basis.data(), n * 4, cudaMemcpyHostToDevice));
}

namespace {
template <class Fn>
void by_dtype(DType t, Fn&& fn) {
  if (t == DType::F16)
    fn(__half{});
  else
    fn(__nv_bfloat16{});
}
}  // namespace

void LokiIndex::store(const void* k, const void* v, int64_t src_stride, const std::vector<int32_t>& h_lengths,
                      cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(k && v, InvalidArgument, "null pointer: k=%p v=%p", k, v);
  SAAP_CU_REQUIRE(m.basis.size() > 0, InvalidArgument, "%s", "set_basis() must be called first");
  SAAP_CU_REQUIRE(int(h_lengths.size()) == shape_.batch, InvalidArgument, "h_lengths has %zu entries, batch is %d",
                  h_lengths.size(), shape_.batch);
  const int Hkv = shape_.n_kv_heads, D = shape_.head_dim;
  std::vector<int32_t> len(size_t(shape_.batch) * Hkv), zero(len.size(), 0);
  int64_t longest = 0;
  for (int b = 0; b < shape_.batch; ++b) {
    SAAP_CU_REQUIRE(h_lengths[b] >= 0 && h_lengths[b] <= std::min(src_stride, max_len_), InvalidArgument,
                    "h_lengths[%d] = %d outside [0, min(src_stride=%lld, max_len=%lld)]", b, h_lengths[b],
                    (long long)src_stride, (long long)max_len_);
    for (int h = 0; h < Hkv; ++h) len[size_t(b) * Hkv + h] = h_lengths[b];
    longest = std::max<int64_t>(longest, h_lengths[b]);
  }
  m.host_len = len;
  SAAP_CU(cudaMemcpyAsync(m.count.get(), len.data(), len.size() * 4, cudaMemcpyHostToDevice, stream));
  SAAP_CU(cudaMemcpyAsync(m.seq_len.get(), len.data(), len.size() * 4, cudaMemcpyHostToDevice, stream));
  SAAP_CU(cudaMemcpyAsync(m.pos0.get(), zero.data(), zero.size() * 4, cudaMemcpyHostToDevice, stream));
  if (longest > 0)
    by_dtype(shape_.kv_dtype, [&](auto t) {
      using T = decltype(t);
      loki_store_kernel<T><<<dim3(unsigned((longest + 15) / 16), shape_.batch * Hkv), D, 16 * D * 4, stream>>>(
          static_cast<const T*>(k), static_cast<const T*>(v), src_stride, false, m.pos0.get(), m.count.get(),
          m.basis.get(), Hkv, D, rank_, max_len_, reinterpret_cast<T*>(m.k_low.get()),
          reinterpret_cast<T*>(m.k_rest.get()), reinterpret_cast<T*>(m.v.get()));
    });
  SAAP_CU_LAUNCHED();
  SAAP_CU(cudaStreamSynchronize(stream));  // the host vectors above are the copies' sources
}

void LokiIndex::store_rotated(const void* k_pca, const void* v, int64_t src_stride,
                              const std::vector<int32_t>& h_lengths, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(k_pca && v, InvalidArgument, "null pointer: k_pca=%p v=%p", k_pca, v);
  SAAP_CU_REQUIRE(int(h_lengths.size()) == shape_.batch, InvalidArgument, "h_lengths has %zu entries, batch is %d",
                  h_lengths.size(), shape_.batch);
  const int Hkv = shape_.n_kv_heads, D = shape_.head_dim;
  std::vector<int32_t> len(size_t(shape_.batch) * Hkv);
  for (int b = 0; b < shape_.batch; ++b) {
    SAAP_CU_REQUIRE(h_lengths[b] >= 0 && h_lengths[b] <= std::min(src_stride, max_len_), InvalidArgument,
                    "h_lengths[%d] = %d outside [0, min(src_stride=%lld, max_len=%lld)]", b, h_lengths[b],
                    (long long)src_stride, (long long)max_len_);
    for (int h = 0; h < Hkv; ++h) len[size_t(b) * Hkv + h] = h_lengths[b];
  }
  m.host_len = len;
  SAAP_CU(cudaMemcpyAsync(m.count.get(), len.data(), len.size() * 4, cudaMemcpyHostToDevice, stream));
  SAAP_CU(cudaMemcpyAsync(m.seq_len.get(), len.data(), len.size() * 4, cudaMemcpyHostToDevice, stream));
  const int64_t vecs = src_stride * (D / 8);
  loki_split_kernel<<<dim3(unsigned((vecs + 255) / 256), shape_.batch * Hkv), 256, 0, stream>>>(
      static_cast<const uint4*>(k_pca), static_cast<const uint4*>(v), src_stride, m.count.get(), D, rank_, max_len_,
      reinterpret_cast<uint4*>(m.k_low.get()), reinterpret_cast<uint4*>(m.k_rest.get()),
      reinterpret_cast<uint4*>(m.v.get()));
  SAAP_CU_LAUNCHED();
  SAAP_CU(cudaStreamSynchronize(stream));  // `len` is a copy source
}

void LokiIndex::append(const void* k_new, const void* v_new, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(k_new && v_new, InvalidArgument, "null pointer: k_new=%p v_new=%p", k_new, v_new);
  SAAP_CU_REQUIRE(m.basis.size() > 0, InvalidArgument, "%s", "set_basis() must be called first");
  const int Hkv = shape_.n_kv_heads, D = shape_.head_dim, bh = shape_.batch * Hkv;
  SAAP_CU_REQUIRE(int(m.host_len.size()) == bh, InvalidArgument, "%s", "store() must be called before append()");
  for (int i = 0; i < bh; ++i)
    SAAP_CU_REQUIRE(m.host_len[i] < max_len_, InvalidArgument, "sequence %d is full (max_len %lld)", i / Hkv,
                    (long long)max_len_);
  for (auto& l : m.host_len) ++l;
  // One token at position seq_len: pos0 = seq_len, count = 1, then seq_len + 1; no host
  // synchronisation, so a CUDA graph may capture the append.
  loki_append_begin_kernel<<<(bh + 255) / 256, 256, 0, stream>>>(m.seq_len.get(), m.pos0.get(), m.count.get(), bh);
  SAAP_CU_LAUNCHED();
  by_dtype(shape_.kv_dtype, [&](auto t) {
    using T = decltype(t);
    loki_store_kernel<T><<<dim3(1, bh), D, 16 * D * 4, stream>>>(
        static_cast<const T*>(k_new), static_cast<const T*>(v_new), 1, true, m.pos0.get(), m.count.get(),
        m.basis.get(), Hkv, D, rank_, max_len_, reinterpret_cast<T*>(m.k_low.get()),
        reinterpret_cast<T*>(m.k_rest.get()), reinterpret_cast<T*>(m.v.get()));
  });
  SAAP_CU_LAUNCHED();
  loki_advance_kernel<<<(bh + 255) / 256, 256, 0, stream>>>(m.seq_len.get(), bh);
  SAAP_CU_LAUNCHED();
}

void LokiIndex::select(const float* q, double k_frac, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(q, InvalidArgument, "%s", "null q");
  SAAP_CU_REQUIRE(m.basis.size() > 0, InvalidArgument, "%s", "set_basis() must be called first");
  SAAP_CU_REQUIRE(rules::lookup_in_range(k_frac), InvalidArgument, "k_frac = %g must be in (0, 1]", k_frac);
  const int D = shape_.head_dim, G = shape_.group();
  const unsigned bh = unsigned(shape_.batch * shape_.n_kv_heads);
  loki_rotate_q_kernel<<<dim3(shape_.n_q_heads, shape_.batch), 4 * D, 5 * D * 4, stream>>>(
      q, m.basis.get(), shape_.n_q_heads, G, D, m.q_rot.get());
  SAAP_CU_LAUNCHED();
  // Each head's own scores q'[:r] . k'[:r], then the oracle's per-head selection with Loki's k.
  const per_head::PrefixLengths len{m.seq_len.get(), 1};  // seq_len is kept per (b, kv head)
  by_dtype(shape_.kv_dtype, [&](auto t) {
    using T = decltype(t);
    auto* score = rank_ == 8    ? per_head::score_per_head<T, 8>
                  : rank_ == 16 ? per_head::score_per_head<T, 16>
                  : rank_ == 32 ? per_head::score_per_head<T, 32>
                  : rank_ == 64 ? per_head::score_per_head<T, 64>
                                : per_head::score_per_head<T, 128>;
    score(reinterpret_cast<const T*>(m.k_low.get()), max_len_, bh, len, m.q_rot.get(), D, G, m.scores.get(), stream);
  });
  per_head::select_per_head(m.scores.get(), max_len_, int64_t(shape_.batch) * shape_.n_q_heads, G, len,
                            rules::loki_budget(k_frac), m.topk_ws, m.positions.get(), m.counts.get(),
                            m.union_count.get(), stream, radix_topk::UnionList{m.union_pos.get(), m.union_mask.get()});
  last_k_frac_ = k_frac;
}

void LokiIndex::attend(float scale, float* out, SplitWorkspace& ws, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(out, InvalidArgument, "%s", "null out");
  SAAP_CU_REQUIRE(last_k_frac_ > 0, InvalidArgument, "%s", "select() must be called before attend()");
  // A block row per KV group over the group's union list: the union of the heads' selections,
  // at most G times one head's k (and the prefix).
  const int G = shape_.group();
  const int64_t expect = std::min(max_len_, G * rules::loki_keys(last_k_frac_, max_len_));
  int splits = 0;
  dispatch_decode(shape_, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    using Keys = per_head::SplitKeys<T, D>;
    auto* kernel = per_head::union_attend_kernel<T, D, decltype(gmax)::value, Keys>;
    static const int resident = resident_blocks(reinterpret_cast<const void*>(kernel), kDecodeWarps * 32);
    splits = choose_splits(shape_, expect, resident, 64);
    ws.ensure(int64_t(shape_.batch) * shape_.n_q_heads, splits, shape_.head_dim);
    kernel<<<dim3(unsigned(splits), unsigned(shape_.batch * shape_.n_kv_heads)), kDecodeWarps * 32, 0, stream>>>(
        Keys{reinterpret_cast<const T*>(m.k_low.get()), reinterpret_cast<const T*>(m.k_rest.get()), rank_, max_len_},
        reinterpret_cast<const T*>(m.v.get()), max_len_, m.union_pos.get(), m.union_mask.get(), m.union_count.get(),
        m.q_rot.get(), G, scale, splits, ws.out(), ws.lse());
  });
  SAAP_CU_LAUNCHED();
  combine_splits(shape_, splits, ws, out, stream);
}

const float* LokiIndex::scores() const { return impl_->scores.get(); }
const int32_t* LokiIndex::selected() const { return impl_->positions.get(); }
const int32_t* LokiIndex::selected_count_device() const { return impl_->counts.get(); }
const int32_t* LokiIndex::selected_tokens() const { return impl_->union_count.get(); }
const void* LokiIndex::k_low() const { return impl_->k_low.get(); }
const void* LokiIndex::k_rest() const { return impl_->k_rest.get(); }
const float* LokiIndex::q_rot() const { return impl_->q_rot.get(); }
std::vector<int32_t> LokiIndex::selected_count() const {
  std::vector<int32_t> r(impl_->counts.size());
  SAAP_CU(cudaMemcpy(r.data(), impl_->counts.get(), r.size() * 4, cudaMemcpyDeviceToHost));
  return r;
}
std::vector<int32_t> LokiIndex::seq_len() const {
  std::vector<int32_t> r(impl_->seq_len.size());
  SAAP_CU(cudaMemcpy(r.data(), impl_->seq_len.get(), r.size() * 4, cudaMemcpyDeviceToHost));
  return r;
}

}  // namespace saap::cuda
