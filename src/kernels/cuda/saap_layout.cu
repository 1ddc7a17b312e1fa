// Host side of the Saap layout: prefill build and decode append.
#include <algorithm>

#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/saap_layout.cuh"
#include "saap_impl.h"

namespace saap::cuda {

namespace {
SaapGeom geom(const DecodeShape& s, const SaapConfig& c, int64_t rows) {
  return SaapGeom{c.n_partitions, c.sinks,     c.window, c.append_page, c.append_pages_per_partition,
                  s.head_dim,     s.n_kv_heads, rows,     c.max_prefill};
}

// Block per (b, h): the partition of each token in the recent window, from the prefill
// assignment (by routing key), kept until the token leaves the window.
__global__ void saap_ring_part_kernel(const int32_t* __restrict__ assign, const int32_t* __restrict__ lengths,
                                      int64_t max_len, SaapGeom g, int32_t* __restrict__ ring_part) {
  const int bh = blockIdx.x, b = bh / g.n_kv_heads;
  const int64_t n = lengths[b];
  for (int64_t t = max(int64_t(g.S), n - g.W) + threadIdx.x; t < n; t += blockDim.x)
    ring_part[int64_t(bh) * g.W + (t - g.S) % g.W] = assign[int64_t(bh) * max_len + t];
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
  if (cfg_.separate_routing_keys) {
    saap_ring_part_kernel<<<bh, 256, 0, stream>>>(assign, lengths.get(), max_len, g, m.ring_part.get());
    SAAP_CU_LAUNCHED();
  }
  // lengths and slot_of are freed on return.
  SAAP_CU(cudaStreamSynchronize(stream));
  m.built = true;
  m.safe_appends = std::min<int64_t>(int64_t(cfg_.append_page) * cfg_.append_pages_per_partition, m.append_pool_pages);
}

void SaapIndex::append(const void* k_new, const void* v_new, cudaStream_t stream) {
  SAAP_CU_REQUIRE(!cfg_.separate_routing_keys, InvalidArgument, "%s",
                  "this index assigns by separate routing keys (pre-RoPE): pass k_route_new");
  append(k_new, v_new, nullptr, stream);
}

void SaapIndex::append(const void* k_new, const void* v_new, const void* k_route_new, cudaStream_t stream) {
  prepare_append(k_new, v_new, k_route_new, stream);
  launch_append(k_new, v_new, k_route_new, stream);
}

void SaapIndex::prepare_append(const void* k_new, const void* v_new, const void* k_route_new, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(k_new && v_new, InvalidArgument, "null pointer: k_new=%p v_new=%p", k_new, v_new);
  SAAP_CU_REQUIRE(!cfg_.separate_routing_keys || k_route_new, InvalidArgument, "%s",
                  "null k_route_new: this index assigns by separate routing keys (pre-RoPE)");
  SAAP_CU_REQUIRE(cfg_.separate_routing_keys || !k_route_new, InvalidArgument, "%s",
                  "k_route_new given, but this index assigns by its stored keys (separate_routing_keys is off)");
  SAAP_CU_REQUIRE(m.centroids.size() > 0, InvalidArgument, "%s", "set_centroids() must be called first");
  SAAP_CU_REQUIRE(m.built, InvalidArgument, "%s", "build() must be called before append()");
  ensure_append_room(stream);
}

void SaapIndex::launch_append(const void* k_new, const void* v_new, const void* k_route_new, cudaStream_t stream) {
  auto& m = *impl_;
  const SaapGeom g = geom(shape_, cfg_, rows_);
  const int bh = shape_.batch * shape_.n_kv_heads;
  dispatch_decode(shape_, [&](auto t, auto d, auto) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    launch_dependent(saap_append_kernel<T, D>, dim3(kSearchParts, bh), dim3(kAppendThreads), 0, stream, g,
                     m.centroids.get(), static_cast<const float*>(m.half_norm.get()),
                     static_cast<const uint4*>(k_new), static_cast<const uint4*>(v_new),
                     static_cast<const uint4*>(k_route_new), reinterpret_cast<uint4*>(m.kpool.get()),
                     reinterpret_cast<uint4*>(m.vpool.get()), m.append_pages.get(), m.append_count.get(),
                     m.next_page.get(), m.seq_len.get(), m.best.get(),
                     cfg_.separate_routing_keys ? m.ring_part.get() : nullptr, m.tickets.get(), m.flags.get());
  });
  SAAP_CU_LAUNCHED();
}

int SaapIndex::repacks() const { return impl_->repacks; }

namespace {
// The most appends k <= partition_room that cannot exhaust free_pages pages. Each append adds one
// token to one partition of each (b, h) and opens at most one page; a partition given k_c tokens
// opens at most ceil(k_c / P) pages, at most one more than k_c / P. So k appends open at most
// min(k, ceil(k / P) + min(k, C)) pages.
int64_t safe_appends_for(int64_t partition_room, int64_t free_pages, int64_t P, int64_t C) {
  auto fits = [&](int64_t k) { return std::min(k, (k + P - 1) / P + std::min(k, C)) <= free_pages; };
  int64_t lo = 0, hi = std::max<int64_t>(0, partition_room);
  if (!fits(0)) return 0;
  while (lo < hi) {  // the largest k in [0, partition_room] that fits (fits is monotone)
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
}  // namespace

int64_t SaapIndex::append_room(cudaStream_t stream) {
  auto& m = *impl_;
  const int64_t bh = int64_t(shape_.batch) * shape_.n_kv_heads, C = cfg_.n_partitions, P = cfg_.append_page;
  const int64_t full = P * cfg_.append_pages_per_partition;
  std::vector<int32_t> cnt(bh * C), next(bh);
  SAAP_CU(cudaMemcpyAsync(cnt.data(), m.append_count.get(), cnt.size() * 4, cudaMemcpyDeviceToHost, stream));
  SAAP_CU(cudaMemcpyAsync(next.data(), m.next_page.get(), next.size() * 4, cudaMemcpyDeviceToHost, stream));
  SAAP_CU(cudaStreamSynchronize(stream));
  // The smallest room left, in tokens of a partition and in free pages of a (b, h) pool.
  int64_t partition_room = full, free_pages = m.append_pool_pages;
  for (int32_t x : cnt) partition_room = std::min<int64_t>(partition_room, full - x);
  for (int32_t x : next) free_pages = std::min<int64_t>(free_pages, (rows_ - x) / P);
  return safe_appends_for(partition_room, free_pages, P, C);
}

void SaapIndex::ensure_append_room(cudaStream_t stream) {
  auto& m = *impl_;
  if (m.safe_appends > 0) {
    --m.safe_appends;
    return;
  }
  // No reservation left: the counters must be read, which a stream capture cannot do (a named
  // error here rather than an invalidated capture).
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  SAAP_CU(cudaStreamIsCapturing(stream, &capture));
  SAAP_CU_REQUIRE(capture == cudaStreamCaptureStatusNone, InvalidArgument, "%s",
                  "an append recorded in a stream capture needs reserve_appends() first (reading the counters "
                  "would synchronise)");
  int64_t room = append_room(stream);
  if (room <= 0) {
    repack(stream, 1);
    room = append_room(stream);
  }
  m.safe_appends = room - 1;  // this append is one of them
}

void SaapIndex::reserve_appends(int64_t n, cudaStream_t stream) {
  auto& m = *impl_;
  SAAP_CU_REQUIRE(n >= 0, InvalidArgument, "reserve_appends: n = %lld must be >= 0", (long long)n);
  SAAP_CU_REQUIRE(m.built, InvalidArgument, "%s", "build() must be called before reserve_appends()");
  int64_t room = append_room(stream);
  if (room < n) {
    repack(stream, n);
    room = append_room(stream);
    SAAP_CU_REQUIRE(room >= n, Unsupported, "reserve_appends: a re-pack left room for %lld appends, %lld asked",
                    (long long)room, (long long)n);
  }
  m.safe_appends = room;
}

void SaapIndex::repack(cudaStream_t stream, int64_t min_room) {
  auto& m = *impl_;
  const int64_t bh = int64_t(shape_.batch) * shape_.n_kv_heads, C = cfg_.n_partitions, P = cfg_.append_page;
  const int64_t A = cfg_.append_pages_per_partition, D = shape_.head_dim, fixed = cfg_.sinks + cfg_.window;
  std::vector<int32_t> pcount(bh * C), acount(bh * C), start(bh * C);
  SAAP_CU(cudaMemcpyAsync(pcount.data(), m.part_count.get(), pcount.size() * 4, cudaMemcpyDeviceToHost, stream));
  SAAP_CU(cudaMemcpyAsync(acount.data(), m.append_count.get(), acount.size() * 4, cudaMemcpyDeviceToHost, stream));
  SAAP_CU(cudaStreamSynchronize(stream));
  int64_t region = cfg_.max_prefill;
  for (int64_t r = 0; r < bh; ++r) {
    int64_t at = fixed;
    for (int64_t c = 0; c < C; ++c) {
      start[r * C + c] = int32_t(at);
      at += pcount[r * C + c] + acount[r * C + c];
      pcount[r * C + c] += acount[r * C + c];
    }
    region = std::max(region, at - fixed);
  }
  // Enough pages for a partition to fill all its pages while every other opens one, and for
  // min_room appends (safe_appends_for's bound); each partition's pages hold min_room tokens.
  const int64_t A_new = std::max<int64_t>(A, (min_room + P - 1) / P);
  const int64_t pool_pages =
      std::max({m.append_pool_pages, C + A_new, (min_room + P - 1) / P + std::min<int64_t>(min_room, C)});
  const int64_t rows = fixed + region + pool_pages * P;
  SAAP_CU_REQUIRE(rows < (int64_t(1) << 31), Unsupported, "re-pack needs %lld slots per head, over int32 slot indices",
                  (long long)rows);
  const SaapGeom g_old = geom(shape_, cfg_, rows_);
  SaapConfig cfg = cfg_;
  cfg.max_prefill = region;
  const SaapGeom g_new = geom(shape_, cfg, rows);
  DeviceBuffer<uint16_t> kpool(bh * rows * D), vpool(bh * rows * D);
  DeviceBuffer<int32_t> d_start(start.size());
  SAAP_CU(cudaMemcpyAsync(d_start.get(), start.data(), start.size() * 4, cudaMemcpyHostToDevice, stream));
  saap_repack_kernel<<<dim3(unsigned(C + 1), unsigned(bh)), 256, 0, stream>>>(
      g_old, g_new, m.part_start.get(), m.part_count.get(), m.append_pages.get(), m.append_count.get(), d_start.get(),
      reinterpret_cast<const uint4*>(m.kpool.get()), reinterpret_cast<const uint4*>(m.vpool.get()),
      reinterpret_cast<uint4*>(kpool.get()), reinterpret_cast<uint4*>(vpool.get()));
  SAAP_CU_LAUNCHED();
  const std::vector<int32_t> next(bh, int32_t(fixed + region));
  SAAP_CU(cudaMemcpyAsync(m.part_start.get(), d_start.get(), start.size() * 4, cudaMemcpyDeviceToDevice, stream));
  SAAP_CU(cudaMemcpyAsync(m.part_count.get(), pcount.data(), pcount.size() * 4, cudaMemcpyHostToDevice, stream));
  SAAP_CU(cudaMemsetAsync(m.append_count.get(), 0, m.append_count.bytes(), stream));
  SAAP_CU(cudaMemcpyAsync(m.next_page.get(), next.data(), next.size() * 4, cudaMemcpyHostToDevice, stream));
  // The last selection named old slots.
  SAAP_CU(cudaMemsetAsync(m.segment_count.get(), 0, m.segment_count.bytes(), stream));
  SAAP_CU(cudaMemsetAsync(m.selected_tokens.get(), 0, m.selected_tokens.bytes(), stream));
  SAAP_CU(cudaStreamSynchronize(stream));  // host vectors are copy sources; the old pools are freed below
  m.kpool = std::move(kpool);
  m.vpool = std::move(vpool);
  if (A_new != A) {  // the page table is empty after a re-pack: only its size changes
    m.append_pages.resize(bh * C * A_new);
    cfg.append_pages_per_partition = int(A_new);
  }
  const int64_t seg = cfg.segment;
  const int64_t max_segments = (cfg.sinks + seg - 1) / seg + (cfg.window + seg - 1) / seg + (region + seg - 1) / seg +
                               C + pool_pages;
  if (max_segments > max_segments_) {
    m.segments.resize(bh * max_segments * 2);
    max_segments_ = max_segments;
  }
  m.append_pool_pages = pool_pages;
  cfg_ = cfg;
  rows_ = rows;
  ++m.repacks;
}

}  // namespace saap::cuda
