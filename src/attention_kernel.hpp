// The U-Net's kernel of scaled_dot_product_attention (PipelineOptions::attention_kernel). LibTorch keeps one
// process-wide switch per kernel; the choice holds only during the U-Net's calls, because other modules attend
// through heads no kernel but the memory-efficient one (or math) takes: the VAE's one head is 512 wide, above the
// flash kernel's 256 and cuDNN's limits.
#pragma once

#include <torch/script.h>

#include "txt2img/pipeline_options.hpp"

namespace txt2img {

// The memory-efficient and cuDNN kernels are CUDA's; PyTorch's CPU attention has a flash kernel and math.
bool runs_on(AttentionKernel kernel, const torch::Device& device);

// Whether this LibTorch has a switch for `kernel` (the memory-efficient kernel's came with 2.0, cuDNN's by 2.5).
bool has_switch(AttentionKernel kernel);

// Throws Error(Usage) when `device` cannot run `kernel` or this LibTorch has no switch for it.
void check_attention_kernel(AttentionKernel kernel, const torch::Device& device);

// Allows `kernel` alone while it lives (Default changes nothing), then puts back the switches it found.
class AttentionKernelScope {
 public:
  explicit AttentionKernelScope(AttentionKernel kernel);
  ~AttentionKernelScope();
  AttentionKernelScope(const AttentionKernelScope&) = delete;
  AttentionKernelScope& operator=(const AttentionKernelScope&) = delete;

  struct Switches {
    bool flash = true, memory_efficient = true, cudnn = true, math = true;
  };
  // LibTorch's switches now; a LibTorch without a kernel's switch reports it as on.
  static Switches current();

 private:
  bool changed_ = false;
  Switches found_;
};

}  // namespace txt2img
