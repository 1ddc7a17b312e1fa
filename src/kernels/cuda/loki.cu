// Host side of Loki: storage in the PCA basis, low-rank scoring, exact top-k, gather decode.
#include <algorithm>
#include <type_traits>

#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/loki.h"
#include "saap/kernels/cuda/loki_decode.cuh"
#include "saap/kernels/cuda/loki_kernels.cuh"

namespace saap::cuda {

struct LokiIndex::Impl {
  DeviceBuffer<uint16_t> k_low, k_rest, v;  // kv_dtype bits
  DeviceBuffer<float> basis, q_rot, scores;
  DeviceBuffer<int2> cand;   // (token, score key) of the threshold bin
  DeviceBuffer<int2> list2;  // the candidates at the second-level digit
  // hist, list2_count and done are zero between select() calls: the last block of each stage
  // clears what it consumed, so a step needs no memset launches.
  DeviceBuffer<int32_t> hist, sel, sel_count, cand_count, seq_len, pos0, count;
  DeviceBuffer<int2> bin_need;
  DeviceBuffer<int32_t> list2_count;
  DeviceBuffer<uint32_t> done;  // [2][bh]: finished blocks of the scoring and the refine launch
  std::vector<int32_t> host_len;  // [bh], mirrors seq_len so appends are checked without a sync
};

LokiIndex::LokiIndex(const DecodeShape& shape, int64_t max_len, int rank)
    : shape_(shape), max_len_(max_len), rank_(rank), impl_(new Impl) {
  shape_.check();
  SAAP_CU_REQUIRE(rank == 8 || rank == 16 || rank == 32, Unsupported, "rank %d; 8, 16 or 32 is supported", rank);
  SAAP_CU_REQUIRE(rank < shape_.head_dim, InvalidArgument, "rank %d must be < head_dim %d", rank, shape_.head_dim);
  SAAP_CU_REQUIRE(max_len >= 1 && max_len < (int64_t(1) << 31), InvalidArgument, "max_len %lld outside [1, 2^31)",
                  (long long)max_len);
  const int64_t bh = int64_t(shape_.batch) * shape_.n_kv_heads, D = shape_.head_dim;
  auto& m = *impl_;
  m.k_low.resize(bh * max_len * rank);
  m.k_rest.resize(bh * max_len * (D - rank));
  m.v.resize(bh * max_len * D);
  m.q_rot.resize(int64_t(shape_.batch) * shape_.n_q_heads * D);
  m.scores.resize(bh * max_len);
  m.sel.resize(bh * max_len);
  m.cand.resize(bh * max_len);
  m.hist.resize(bh * (kLokiBins + kLoki2Bins));  // first level, then the candidates' second level
  for (auto* p : {&m.sel_count, &m.cand_count, &m.seq_len, &m.pos0, &m.count}) p->resize(bh);
  m.bin_need.resize(bh);
  m.list2_count.resize(bh);
  m.list2.resize(bh * max_len);
  m.done.resize(2 * bh);
  SAAP_CU(cudaMemset(m.hist.get(), 0, m.hist.bytes()));
  SAAP_CU(cudaMemset(m.list2_count.get(), 0, m.list2_count.bytes()));
  SAAP_CU(cudaMemset(m.done.get(), 0, m.done.bytes()));
  SAAP_CU(cudaMemset(m.seq_len.get(), 0, m.seq_len.bytes()));
  SAAP_CU(cudaMemset(m.sel_count.get(), 0, m.sel_count.bytes()));
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
  const int Hkv = shape_.n_kv_heads, D = shape_.head_dim, G = shape_.group(), bh = shape_.batch * Hkv;
  loki_rotate_q_kernel<<<dim3(shape_.n_q_heads, shape_.batch), 4 * D, 5 * D * 4, stream>>>(q, m.basis.get(), shape_.n_q_heads,
                                                                                 G, D, m.q_rot.get());
  SAAP_CU_LAUNCHED();
  // Tokens per block so that the grid is one wave of `resident` blocks (a multiple of 256, so
  // the filter's 8 warps split it evenly).
  auto grid_for = [&](const void* kernel, int64_t& chunk) {
    const int per_head = choose_splits(shape_, max_len_, resident_blocks(kernel, 256), 2048);
    chunk = ((max_len_ + per_head - 1) / per_head + 255) / 256 * 256;
    return dim3(unsigned((max_len_ + chunk - 1) / chunk), bh);
  };
  uint32_t* score_done = m.done.get();
  uint32_t* refine_done = m.done.get() + bh;
  if (shape_.kv_dtype == DType::BF16 && (rank_ == 16 || rank_ == 32)) {
    const auto* kl = reinterpret_cast<const __nv_bfloat16*>(m.k_low.get());
    auto* kernel = rank_ == 16 ? loki_score_mma_kernel<16> : loki_score_mma_kernel<32>;
    int64_t chunk;
    const dim3 grid = grid_for(reinterpret_cast<const void*>(kernel), chunk);
    launch_dependent(kernel, grid, 256, 0, stream, kl, m.q_rot.get(), m.seq_len.get(), G, D, max_len_, chunk, k_frac,
                     m.scores.get(), m.hist.get(), score_done, m.bin_need.get(), m.sel_count.get(), m.cand_count.get());
  } else {
    dispatch_decode(shape_, [&](auto t, auto, auto gmax) {
      using T = decltype(t);
      constexpr int GMAX = decltype(gmax)::value;
      auto* kernel = loki_score_kernel<T, 8, GMAX>;  // bf16 reaches here only at rank 8
      if constexpr (std::is_same_v<T, __half>)
        kernel = rank_ == 8 ? kernel : rank_ == 16 ? loki_score_kernel<T, 16, GMAX> : loki_score_kernel<T, 32, GMAX>;
      int64_t chunk;
      const dim3 grid = grid_for(reinterpret_cast<const void*>(kernel), chunk);
      launch_dependent(kernel, grid, 256, 0, stream, reinterpret_cast<const T*>(m.k_low.get()), m.q_rot.get(),
                       m.seq_len.get(), G, D, max_len_, chunk, k_frac, m.scores.get(), m.hist.get(), score_done,
                       m.bin_need.get(), m.sel_count.get(), m.cand_count.get());
    });
  }
  SAAP_CU_LAUNCHED();
  int32_t* hist2 = m.hist.get() + int64_t(bh) * kLokiBins;
  int64_t fchunk;
  const dim3 fgrid = grid_for(reinterpret_cast<const void*>(loki_filter_kernel), fchunk);
  launch_dependent(loki_filter_kernel, fgrid, kFilterThreads, 0, stream, m.scores.get(), m.seq_len.get(), max_len_,
                   fchunk, m.bin_need.get(), m.sel_count.get(), m.sel.get(), m.cand_count.get(), m.cand.get(), hist2);
  SAAP_CU_LAUNCHED();
  const int refine_blocks =
      choose_splits(shape_, max_len_, resident_blocks(reinterpret_cast<const void*>(loki_refine_kernel), kRefineThreads),
                    4096);
  launch_dependent(loki_refine_kernel, dim3(refine_blocks, bh), kRefineThreads, 0, stream, max_len_, m.bin_need.get(),
                   m.cand_count.get(), m.cand.get(), hist2, m.sel_count.get(), m.sel.get(), m.list2_count.get(),
                   m.list2.get(), refine_done);
  SAAP_CU_LAUNCHED();
  last_k_frac_ = float(k_frac);
}

void LokiIndex::attend(float scale, float* out, SplitWorkspace& ws, cudaStream_t stream,
                       const SparseAttendTuning& tuning) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(out, InvalidArgument, "%s", "null out");
  SAAP_CU_REQUIRE(tuning.waves >= 1 && tuning.waves <= 8, InvalidArgument, "attend tuning waves = %d outside [1, 8]",
                  tuning.waves);
  SAAP_CU_REQUIRE(!(tuning.prefetch && tuning.mma), InvalidArgument, "%s",
                  "attend tuning: prefetch and mma are two different loops; choose one");
  const int64_t expect = std::max<int64_t>(1, int64_t(last_k_frac_ * float(max_len_)));
  int splits = 0;
  dispatch_decode(shape_, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    auto launch = [&](auto kernel, int resident) {
      splits = choose_splits(shape_, expect, resident * tuning.waves);
      ws.ensure(int64_t(shape_.batch) * shape_.n_q_heads, splits, shape_.head_dim);
      launch_dependent(kernel, dim3(splits, shape_.n_kv_heads, shape_.batch), kDecodeWarps * 32, 0, stream,
                       reinterpret_cast<const T*>(m.k_low.get()), reinterpret_cast<const T*>(m.k_rest.get()),
                       reinterpret_cast<const T*>(m.v.get()), rank_, max_len_, m.sel.get(), m.sel_count.get(),
                       m.q_rot.get(), shape_.n_kv_heads, shape_.group(), scale, splits, ws.out(), ws.lse());
    };
    auto with = [&](auto loop_c) {
      auto* kernel = loki_decode_kernel<T, D, GMAX, decltype(loop_c)::value>;
      static const int resident = resident_blocks(reinterpret_cast<const void*>(kernel), kDecodeWarps * 32);
      launch(kernel, resident);
    };
    using Loop = DenseLoop;
    if (tuning.prefetch) {
      with(std::integral_constant<Loop, Loop::Prefetch>{});
    } else if (tuning.mma && rank_ * 4 == D) {  // a lane's key quarter is contiguous only at R = D / 4
      if constexpr (dense_mma_supported<T, D>())
        with(std::integral_constant<Loop, Loop::Mma>{});
      else
        with(std::integral_constant<Loop, Loop::Plain>{});
    } else {
      with(std::integral_constant<Loop, Loop::Plain>{});
    }
  });
  SAAP_CU_LAUNCHED();
  combine_splits(shape_, splits, ws, out, stream);
}

const float* LokiIndex::scores() const { return impl_->scores.get(); }
const int32_t* LokiIndex::selected() const { return impl_->sel.get(); }
const int32_t* LokiIndex::selected_count_device() const { return impl_->sel_count.get(); }
const void* LokiIndex::k_low() const { return impl_->k_low.get(); }
const void* LokiIndex::k_rest() const { return impl_->k_rest.get(); }
const float* LokiIndex::q_rot() const { return impl_->q_rot.get(); }
std::vector<int32_t> LokiIndex::selected_count() const {
  std::vector<int32_t> r(impl_->sel_count.size());
  SAAP_CU(cudaMemcpy(r.data(), impl_->sel_count.get(), r.size() * 4, cudaMemcpyDeviceToHost));
  return r;
}
std::vector<int32_t> LokiIndex::seq_len() const {
  std::vector<int32_t> r(impl_->seq_len.size());
  SAAP_CU(cudaMemcpy(r.data(), impl_->seq_len.get(), r.size() * 4, cudaMemcpyDeviceToHost));
  return r;
}

}  // namespace saap::cuda
