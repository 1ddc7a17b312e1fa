// Opt-in per-phase GPU time of a prefill (CudaLlamaModel::set_phase_timing): a CUDA event is
// recorded on the stream after each launch, and the time between two consecutive events is
// charged to the phase of the launch between them. Events on one stream do not reorder or overlap
// the work, so the phases add up to the whole; they cost a few microseconds each, so the timed
// prefill runs of a benchmark leave timing off.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "saap/kernels/cuda/check.h"
#include "saap/model/cuda_llama.h"

namespace saap::cuda {

class PhaseTimer {
 public:
  PhaseTimer() = default;
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;
  ~PhaseTimer() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }

  bool on() const { return on_; }
  void set_on(bool on) { on_ = on; }

  // Forgets the previous prefill's marks and records the first event.
  void start(cudaStream_t stream) {
    if (!on_) return;
    marks_.clear();
    record(stream);
  }
  // Charges the time since the previous mark to `phase`, with the FLOPs and the bytes the launch
  // must move at least (each tensor read or written once), which the report turns into rates.
  void lap(PrefillPhase::Kind phase, cudaStream_t stream, double flops, double bytes) {
    if (!on_) return;
    marks_.push_back({phase, flops, bytes});
    record(stream);
  }
  // Waits for the last event; the phases in the order of PrefillPhase::Kind, those never marked left out.
  std::vector<PrefillPhase> collect() const {
    std::vector<PrefillPhase> by_kind(PrefillPhase::kCount);
    for (int k = 0; k < PrefillPhase::kCount; ++k) by_kind[size_t(k)].kind = PrefillPhase::Kind(k);
    if (!on_ || marks_.empty()) return {};
    SAAP_CU(cudaEventSynchronize(events_[marks_.size()]));
    for (size_t i = 0; i < marks_.size(); ++i) {
      float ms = 0.f;
      SAAP_CU(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]));
      PrefillPhase& p = by_kind[size_t(marks_[i].kind)];
      p.ms += ms;
      p.flops += marks_[i].flops;
      p.bytes += marks_[i].bytes;
      p.launches += 1;
    }
    std::vector<PrefillPhase> out;
    for (const PrefillPhase& p : by_kind)
      if (p.launches > 0) out.push_back(p);
    return out;
  }

 private:
  struct Mark {
    PrefillPhase::Kind kind;
    double flops, bytes;
  };
  void record(cudaStream_t stream) {
    const size_t i = marks_.size();  // the event that ends mark i - 1
    while (events_.size() <= i) {
      cudaEvent_t e = nullptr;
      SAAP_CU(cudaEventCreate(&e));
      events_.push_back(e);
    }
    SAAP_CU(cudaEventRecord(events_[i], stream));
  }
  bool on_ = false;
  std::vector<cudaEvent_t> events_;  // events_[i] starts mark i
  std::vector<Mark> marks_;
};

}  // namespace saap::cuda
