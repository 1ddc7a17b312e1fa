#include "cli/device.h"

#include "saap/core/error.h"
#ifdef SAAP_HAVE_CUDA
#include "saap/eval/cuda_backend.h"
#endif

namespace saap::cli {

namespace {

const char* const kNoCudaBuild =
    "--device cuda: this saap was built without CUDA (configure where nvcc is present: cmake --preset default, "
    "or cmake --preset cuda-only on the GPU machine)";

}  // namespace

std::unique_ptr<EvalBackend> open_backend(const BackendRequest& r) {
  if (r.device == "cuda") {
#ifdef SAAP_HAVE_CUDA
    CudaBackendOptions o;
    o.max_batch = r.max_batch;
    o.max_context = r.max_context;
    o.method = r.spec;
    return make_cuda_eval_backend(r.model_path, o);
#else
    SAAP_THROW_MSG(Unsupported, kNoCudaBuild);
#endif
  }
  SAAP_CHECK_FMT(r.device == "cpu", InvalidArgument, "--device '%s' must be cpu or cuda", r.device.c_str());
  auto model = LlamaModel::load(r.model_path, r.progress);
  MethodFactory factory = make_method_factory(r.spec, model_artifact_identity(*model));
  return std::make_unique<CpuEvalBackend>(model, std::move(factory), r.spec.describe(), r.chunk);
}

void refuse_cuda(const std::string& device, const std::string& subcommand, const std::string& why) {
  SAAP_CHECK_FMT(device != "cuda", Unsupported, "saap %s --device cuda: %s; run it with --device cpu",
                 subcommand.c_str(), why.c_str());
}

std::string cuda_status(nlohmann::json& result) {
#ifdef SAAP_HAVE_CUDA
  result["cuda_build"] = true;
  const CudaDeviceStatus s = cuda_device_status();
  result["gpu"] = s.name.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.name);
  result["cuda_usable"] = s.usable;
  result["cuda_reason"] = s.usable ? nlohmann::json(nullptr) : nlohmann::json(s.reason);
  if (s.usable)
    return "built with CUDA; GPU: " + s.name + " (sm_" + std::to_string(s.major) + std::to_string(s.minor) +
           "): --device cuda can use it";
  return "built with CUDA; GPU: " + (s.name.empty() ? std::string("none found") : s.name) +
         ": --device cuda cannot run (" + s.reason + ")";
#else
  result["cuda_build"] = false;
  result["gpu"] = nullptr;
  result["cuda_usable"] = false;
  result["cuda_reason"] = "built without CUDA";
  return "built without CUDA: --device cuda cannot run";
#endif
}

}  // namespace saap::cli
