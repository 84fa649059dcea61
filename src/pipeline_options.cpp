#include "txt2img/pipeline_options.hpp"

#include <torch/cuda.h>

#include "txt2img/error.hpp"

namespace txt2img {

std::optional<torch::ScalarType> dtype_named(const std::string& name) {
  if (name == "fp16") return torch::kFloat16;
  if (name == "bf16") return torch::kBFloat16;
  if (name == "fp32") return torch::kFloat32;
  return std::nullopt;
}

std::optional<GraphOptimization> graph_optimization_named(const std::string& name) {
  if (name == "none") return GraphOptimization::None;
  if (name == "freeze") return GraphOptimization::Freeze;
  if (name == "optimize") return GraphOptimization::FreezeAndOptimize;
  return std::nullopt;
}

std::optional<Decoder> decoder_named(const std::string& name) {
  if (name == "full") return Decoder::Full;
  if (name == "taesd") return Decoder::Taesd;
  return std::nullopt;
}

std::string attention_kernel_name(AttentionKernel kernel) {
  switch (kernel) {
    case AttentionKernel::Default:
      return "default";
    case AttentionKernel::Flash:
      return "flash";
    case AttentionKernel::MemoryEfficient:
      return "memory-efficient";
    case AttentionKernel::CuDNN:
      return "cudnn";
    case AttentionKernel::Math:
      return "math";
  }
  return "?";
}

std::string safety_mode_name(SafetyMode mode) {
  switch (mode) {
    case SafetyMode::Replace:
      return "replace";
    case SafetyMode::Report:
      return "report";
    case SafetyMode::Off:
      return "off";
  }
  return "";
}

std::optional<AttentionKernel> attention_kernel_named(const std::string& name) {
  for (auto kernel : {AttentionKernel::Default, AttentionKernel::Flash, AttentionKernel::MemoryEfficient,
                      AttentionKernel::CuDNN, AttentionKernel::Math})
    if (attention_kernel_name(kernel) == name) return kernel;
  return std::nullopt;
}

namespace {

// `index` an int, so that a name's index past what a torch::Device holds is refused before it is narrowed to one.
void check_cuda_index(int index, const std::string& name) {
  const auto count = static_cast<int>(torch::cuda::device_count());
  if (count == 0)
    throw Error(ErrorKind::Usage, "device " + name +
                                      ": this LibTorch sees no CUDA device (a build without CUDA, or no card "
                                      "visible to it); run on the CPU (--device cpu)");
  if (index >= count)
    throw Error(ErrorKind::Usage, "device " + name + ": this LibTorch sees only " + std::to_string(count) +
                                      " CUDA devices (cuda:0 to cuda:" + std::to_string(count - 1) + ")");
}

}  // namespace

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  const std::string prefix = "cuda:";
  const bool indexed = name.size() > prefix.size() && name.size() <= prefix.size() + 3 &&
                       name.compare(0, prefix.size(), prefix) == 0 &&
                       name.find_first_not_of("0123456789", prefix.size()) == std::string::npos;
  if (name != "cuda" && !indexed)
    throw Error(ErrorKind::Usage, "device \"" + name + "\" must be cpu, cuda or cuda:K (K from 0)");
  const int index = indexed ? std::stoi(name.substr(prefix.size())) : 0;
  check_cuda_index(index, name);
  return {torch::kCUDA, static_cast<c10::DeviceIndex>(index)};
}

void check_placement(torch::Device device, torch::ScalarType dtype) {
  if (dtype != torch::kFloat32 && dtype != torch::kFloat16 && dtype != torch::kBFloat16)
    throw Error(ErrorKind::Usage,
                "dtype " + std::string(c10::toString(dtype)) + ": txt2img runs in fp32, fp16 or bf16");
  if (device.is_cuda())
    check_cuda_index(device.index(), device.str());
  else if (!device.is_cpu())
    throw Error(ErrorKind::Usage, "device " + device.str() + ": txt2img runs on the CPU or on CUDA");
  if (dtype == torch::kFloat16 && device.is_cpu())
    throw Error(ErrorKind::Usage,
                "fp16 needs a CUDA device (LibTorch's CPU kernels lack half precision); use --dtype fp32 or bf16 "
                "on the CPU");
}

}  // namespace txt2img
