// The sampling loop's U-Net call, noise_pred = unet(x_t, t, context[, guidance]), and how it executes: as a TorchScript call, or
// on CUDA captured once per input shape as a CUDA graph and replayed (one launch instead of the U-Net's thousand
// or so kernel launches a step, which dominate at fp16 on a fast card). With channels_last the convolution weights
// and the input are NHWC, the layout tensor-core convolutions prefer.
#pragma once

#include <torch/script.h>

#include <memory>
#include <vector>

#include "host_parking.hpp"
#include "txt2img/pipeline_options.hpp"

namespace txt2img {

// Converts a module's 4-D parameters (convolution weights) to channels_last, in place.
void to_channels_last(torch::jit::Module& module);

class UNetCall {
 public:
  // Throws Error(Usage) when cuda_graph is asked for off CUDA or in a build without CUDA.
  UNetCall(torch::jit::Module module, torch::Device device, bool channels_last, bool cuda_graph,
           AttentionKernel attention_kernel = AttentionKernel::Default);
  UNetCall(UNetCall&&) noexcept;
  UNetCall& operator=(UNetCall&&) noexcept;
  ~UNetCall();

  // The result is the caller's own tensor (a replayed graph's output buffer is copied out). `guidance` is for U-Nets
  // with a guidance embedding (LCM models: the guidance scale minus 1, one value per row); undefined for others.
  torch::Tensor operator()(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& context,
                           const torch::Tensor& guidance = {});

  // The module whose weights a call reads (changing them in place keeps a captured graph valid).
  torch::jit::Module& module() { return module_; }

  // Moves the weights (keeping their dtype and layout). A captured graph is dropped when they move: it reads the
  // weights where they were, and the next call captures again. `parked`: to the host into buffers kept from one
  // move to the next (HostParking, page-locked from CUDA), and back from them.
  void to(torch::Device device, bool parked = false);

 private:
  struct CapturedGraph;

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& context,
                        const torch::Tensor& guidance);
  // Captures one call of these shapes, in the memory pool of `sharing_pool` where given (else a new one).
  std::unique_ptr<CapturedGraph> capture(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& context,
                                         const torch::Tensor& guidance, CapturedGraph* sharing_pool);

  torch::jit::Module module_;
  torch::Device device_ = torch::kCPU;
  HostParking parking_;
  bool parked_ = false;  // the weights are in parking_'s buffers
  bool channels_last_ = false;
  bool cuda_graph_ = false;
  AttentionKernel attention_kernel_ = AttentionKernel::Default;
  // The captured calls of the current pass, one per input shape (the negative prompts' rows and the prompts' take
  // turns where their contexts differ in length), the most recently used last.
  std::vector<std::unique_ptr<CapturedGraph>> graphs_;
};

}  // namespace txt2img
