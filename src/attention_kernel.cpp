#include "attention_kernel.hpp"

#include <ATen/Context.h>
#include <torch/version.h>

#include <optional>
#include <string>

#include "txt2img/bundle.hpp"
#include "txt2img/error.hpp"

// The switches came with the kernels: flash and math with LibTorch 1.13's first fused attention, the memory-efficient
// kernel's with 2.0, cuDNN's by 2.5.
#define TXT2IMG_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))
#define TXT2IMG_HAS_MEMORY_EFFICIENT_SWITCH TXT2IMG_TORCH_AT_LEAST(2, 0)
#define TXT2IMG_HAS_CUDNN_SWITCH TXT2IMG_TORCH_AT_LEAST(2, 5)

namespace txt2img {
namespace {

using Switches = AttentionKernelScope::Switches;

void set_switches(const Switches& s) {
  auto& context = at::globalContext();
  context.setSDPUseFlash(s.flash);
  context.setSDPUseMath(s.math);
#if TXT2IMG_HAS_MEMORY_EFFICIENT_SWITCH
  context.setSDPUseMemEfficient(s.memory_efficient);
#endif
#if TXT2IMG_HAS_CUDNN_SWITCH
  context.setSDPUseCuDNN(s.cudnn);
#endif
}

}  // namespace

bool has_switch(AttentionKernel kernel) {
  switch (kernel) {
    case AttentionKernel::MemoryEfficient:
      return TXT2IMG_HAS_MEMORY_EFFICIENT_SWITCH;
    case AttentionKernel::CuDNN:
      return TXT2IMG_HAS_CUDNN_SWITCH;
    default:
      return true;
  }
}

bool runs_on(AttentionKernel kernel, const torch::Device& device) {
  return device.is_cuda() || (kernel != AttentionKernel::MemoryEfficient && kernel != AttentionKernel::CuDNN);
}

void check_attention_kernel(AttentionKernel kernel, const torch::Device& device) {
  const std::string name = attention_kernel_name(kernel);
  if (!has_switch(kernel))
    throw Error(ErrorKind::Usage, "attention kernel " + name + ": LibTorch " + libtorch_version() +
                                      " cannot select it (the memory-efficient kernel needs 2.0, cuDNN's 2.5)");
  if (!runs_on(kernel, device))
    throw Error(ErrorKind::Usage, "attention kernel " + name + " runs on CUDA only, not on " + device.str());
}

AttentionKernelScope::Switches AttentionKernelScope::current() {
  auto& context = at::globalContext();
  Switches s;
  s.flash = context.userEnabledFlashSDP();
  s.math = context.userEnabledMathSDP();
#if TXT2IMG_HAS_MEMORY_EFFICIENT_SWITCH
  s.memory_efficient = context.userEnabledMemEfficientSDP();
#endif
#if TXT2IMG_HAS_CUDNN_SWITCH
  s.cudnn = context.userEnabledCuDNNSDP();
#endif
  return s;
}

AttentionKernelScope::AttentionKernelScope(AttentionKernel kernel) : changed_(kernel != AttentionKernel::Default) {
  if (!changed_) return;
  found_ = current();
  Switches only;
  only.flash = kernel == AttentionKernel::Flash;
  only.memory_efficient = kernel == AttentionKernel::MemoryEfficient;
  only.cudnn = kernel == AttentionKernel::CuDNN;
  only.math = kernel == AttentionKernel::Math;
  set_switches(only);
}

AttentionKernelScope::~AttentionKernelScope() {
  if (changed_) set_switches(found_);
}

}  // namespace txt2img
