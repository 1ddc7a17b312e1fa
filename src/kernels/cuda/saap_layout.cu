// Host side of the Saap layout: prefill build and decode append.
#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/saap_layout.cuh"
#include "saap_impl.h"

namespace saap::cuda {

namespace {
SaapGeom geom(const DecodeShape& s, const SaapConfig& c, int64_t rows) {
  return SaapGeom{c.n_partitions, c.sinks,     c.window, c.append_page, c.append_pages_per_partition,
                  s.head_dim,     s.n_kv_heads, rows,     c.max_prefill};
}
}  // namespace

void SaapIndex::build(const void* k, const void* v, int64_t max_len, const std::vector<int32_t>& h_lengths,
                      const int32_t* assign, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(k && v && assign, InvalidArgument, "null pointer: k=%p v=%p assign=%p", k, v, (const void*)assign);
  SAAP_CU_REQUIRE(int(h_lengths.size()) == shape_.batch, InvalidArgument, "h_lengths has %zu entries, batch is %d",
                  h_lengths.size(), shape_.batch);
  for (int b = 0; b < shape_.batch; ++b)
    SAAP_CU_REQUIRE(h_lengths[b] >= 0 && h_lengths[b] <= max_len && h_lengths[b] <= cfg_.max_prefill, InvalidArgument,
                    "h_lengths[%d] = %d outside [0, min(max_len=%lld, max_prefill=%lld)]", b, h_lengths[b],
                    (long long)max_len, (long long)cfg_.max_prefill);
  const SaapGeom g = geom(shape_, cfg_, rows_);
  const int bh = shape_.batch * shape_.n_kv_heads;
  DeviceBuffer<int32_t> lengths(h_lengths.size()), slot_of(size_t(bh) * max_len);
  SAAP_CU(cudaMemcpyAsync(lengths.get(), h_lengths.data(), h_lengths.size() * 4, cudaMemcpyHostToDevice, stream));
  SAAP_CU(cudaMemsetAsync(m.part_count.get(), 0, m.part_count.bytes(), stream));
  const dim3 tok_grid(unsigned((max_len + 255) / 256), bh);
  saap_count_kernel<<<tok_grid, 256, 0, stream>>>(assign, lengths.get(), max_len, g, m.part_count.get(),
                                                 m.flags.get());
  SAAP_CU_LAUNCHED();
  saap_scan_kernel<<<bh, 1024, 0, stream>>>(lengths.get(), g, m.part_count.get(), m.part_start.get(), m.cursor.get(),
                                            m.append_count.get(), m.next_page.get(), m.seq_len.get());
  SAAP_CU_LAUNCHED();
  saap_slot_kernel<<<tok_grid, 256, 0, stream>>>(assign, lengths.get(), max_len, g, m.part_start.get(),
                                                m.cursor.get(), slot_of.get());
  SAAP_CU_LAUNCHED();
  const int64_t vecs = max_len * (shape_.head_dim / 8);
  saap_copy_kernel<<<dim3(unsigned((vecs + 255) / 256), bh), 256, 0, stream>>>(
      static_cast<const uint4*>(k), static_cast<const uint4*>(v), lengths.get(), max_len, g, slot_of.get(),
      reinterpret_cast<uint4*>(m.kpool.get()), reinterpret_cast<uint4*>(m.vpool.get()));
  SAAP_CU_LAUNCHED();
  // lengths and slot_of are freed on return.
  SAAP_CU(cudaStreamSynchronize(stream));
}

void SaapIndex::append(const void* k_new, const void* v_new, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(k_new && v_new, InvalidArgument, "null pointer: k_new=%p v_new=%p", k_new, v_new);
  SAAP_CU_REQUIRE(m.centroids.size() > 0, InvalidArgument, "%s", "set_centroids() must be called first");
  const SaapGeom g = geom(shape_, cfg_, rows_);
  const int bh = shape_.batch * shape_.n_kv_heads;
  dispatch_decode(shape_, [&](auto t, auto d, auto) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    saap_evict_search_kernel<T, D><<<dim3(kSearchParts, bh), 256, 0, stream>>>(
        g, reinterpret_cast<const T*>(m.centroids.get()), m.half_norm.get(),
        reinterpret_cast<const uint4*>(m.kpool.get()), m.seq_len.get(), m.best.get());
    SAAP_CU_LAUNCHED();
    saap_append_kernel<D><<<bh, 128, 0, stream>>>(
        static_cast<const uint4*>(k_new), static_cast<const uint4*>(v_new), g, reinterpret_cast<uint4*>(m.kpool.get()),
        reinterpret_cast<uint4*>(m.vpool.get()), m.append_pages.get(), m.append_count.get(), m.next_page.get(),
        m.seq_len.get(), m.best.get(), m.flags.get());
  });
  SAAP_CU_LAUNCHED();
}

}  // namespace saap::cuda
