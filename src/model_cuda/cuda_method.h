// The sparse attention method of a CudaLlamaModel: which GPU index each layer uses, the artifact it
// came from, and the buffers a decode step hands the indexes. The logic is in cuda_method.cu
// (CudaLlamaModel::Impl::setup_method, decode_attention, build_indexes_after_prefill, ...).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "saap/core/safetensors.h"
#include "saap/kernels/cuda/h2o.h"
#include "saap/kernels/cuda/loki.h"
#include "saap/kernels/cuda/oracle_topk.h"
#include "saap/kernels/cuda/quest.h"
#include "saap/kernels/cuda/saap.h"
#include "saap/kernels/cuda/streaming.h"
#include "saap/model/cuda_llama.h"

namespace saap {
struct PartitionArtifact;
struct LokiArtifact;
}  // namespace saap

namespace saap::cuda {

enum class MethodKind {
  Dense,      // dense_decode over the whole cache
  Partition,  // SaapIndex: saap, kmeans, partition-oracle
  Loki,       // LokiIndex
  Quest,      // QuestIndex
  Streaming,  // streaming_decode: sinks and the recent window of the dense cache, no index
  Oracle,     // OracleTopKDecoder: every query head's exact top-k of the whole prefix
  H2O,        // H2ODecoder: recent half + heavy hitters by attention accumulated over the queries
};

struct MethodState {
  MethodKind kind = MethodKind::Dense;
  PartitionRouting routing = PartitionRouting::Saap;
  // A partition artifact of pre-RoPE keys: keys are assigned and queries routed by their pre-RoPE
  // projections (the partition oracle still ranks by the post-RoPE query).
  bool pre_rope = false;
  ArtifactIdentity identity;  // of the model, what the artifact was checked against
  std::shared_ptr<const PartitionArtifact> partition;
  std::shared_ptr<const LokiArtifact> loki;

  int index_batch = 0;  // batch the indexes below were made for
  std::vector<std::unique_ptr<SaapIndex>> saap;    // [layer] when kind == Partition
  std::vector<std::unique_ptr<LokiIndex>> lokis;   // [layer] when kind == Loki
  std::vector<std::unique_ptr<QuestIndex>> quest;  // [layer] when kind == Quest
  // Oracle: scratch only (the scores and selections of one layer's step), shared by the layers.
  std::unique_ptr<OracleTopKDecoder> oracle;
  // H2O: per layer its state (the accumulated attention of every sequence's queries) and scratch.
  std::vector<std::unique_ptr<H2ODecoder>> h2o;  // [layer] when kind == H2O (null: a local layer)
  DeviceBuffer<int32_t> selected;  // [max_batch][Hkv]: K/V tokens a streaming step read

  // What a step hands the indexes (bf16 [max_batch][Hkv][D] each): the new token's post-RoPE key
  // and value, and its pre-RoPE routing key.
  DeviceBuffer<__nv_bfloat16> k_new, v_new, k_route;
  // Pre-RoPE queries of the last step, per layer: [layer][max_batch][Hq][D] (pre_rope only).
  DeviceBuffer<float> q_route;
  // Pre-RoPE keys of every cached position: [layer][max_batch][Hkv][max_context][D] (pre_rope only).
  DeviceBuffer<__nv_bfloat16> route_cache;
  DeviceBuffer<int32_t> assign;  // [max_batch][Hkv][max_context]: prefill assignment scratch

  // K/V read: sparse steps count on the device ([0] tokens read, [1] causal prefix, [2] K rows read
  // to decide: the oracle's whole prefix), the rest here.
  DeviceBuffer<unsigned long long> reads;
  KvReads host_reads;
  // Decode steps the Saap indexes may still append without a host look (reserve_appends).
  int64_t appends_left = 0;

  // Teacher forcing (method_nll): the true tokens [batch][tf_n] feed each step, whose NLL of the
  // next true token goes to tf_nll [batch][tf_n].
  bool teacher = false;
  int64_t tf_n = 0;
  DeviceBuffer<int32_t> tf_tokens;
  DeviceBuffer<float> tf_nll;
};

}  // namespace saap::cuda
