#include "txt2img/pipeline_options.hpp"

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

std::optional<AttentionKernel> attention_kernel_named(const std::string& name) {
  for (auto kernel : {AttentionKernel::Default, AttentionKernel::Flash, AttentionKernel::MemoryEfficient,
                      AttentionKernel::CuDNN, AttentionKernel::Math})
    if (attention_kernel_name(kernel) == name) return kernel;
  return std::nullopt;
}

}  // namespace txt2img
