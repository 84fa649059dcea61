// Selecting the kernel of scaled_dot_product_attention (PipelineOptions::attention_kernel), which LibTorch keeps as
// process-wide switches, one per kernel.
#pragma once

#include <torch/script.h>

#include "txt2img/pipeline.hpp"

namespace txt2img {

// The memory-efficient and cuDNN kernels are CUDA's; flash and math run on the CPU too.
bool runs_on(AttentionKernel kernel, const torch::Device& device);

// Throws Error(Usage) when `device` cannot run `kernel` or this LibTorch has no switch for it.
void check_attention_kernel(AttentionKernel kernel, const torch::Device& device);

// Leaves `kernel` the only one enabled (Default: the switches as the process started).
void select_attention_kernel(AttentionKernel kernel);

}  // namespace txt2img
