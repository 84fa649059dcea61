#include "host_parking.hpp"

#include <torch/cuda.h>

#include "txt2img/error.hpp"

namespace txt2img {
namespace {

// A module's parameters, then its buffers, each once, as the tensors that the module holds.
std::vector<torch::Tensor> tensors(torch::jit::Module& module) {
  std::vector<torch::Tensor> out;
  for (const auto& parameter : module.parameters()) out.push_back(parameter);
  for (const auto& buffer : module.buffers()) out.push_back(buffer);
  return out;
}

}  // namespace

void HostParking::park(torch::jit::Module& module) {
  torch::NoGradGuard no_grad;
  auto held = tensors(module);
  if (host_.empty()) {
    for (const auto& t : held)
      host_.push_back(torch::empty_strided(t.sizes(), t.strides(),
                                           t.options().device(torch::kCPU).pinned_memory(t.is_cuda())));
  }
  TORCH_CHECK(host_.size() == held.size(), "the module's tensors changed between parks");
  bool from_cuda = false;
  for (size_t i = 0; i < held.size(); ++i) {
    from_cuda = from_cuda || held[i].is_cuda();
    host_[i].copy_(held[i], /*non_blocking=*/true);
  }
  // The copies must be done before the device memory is handed back and the host buffers read.
  if (from_cuda) torch::cuda::synchronize();
  for (size_t i = 0; i < held.size(); ++i) held[i].set_data(host_[i]);
}

void HostParking::unpark(torch::jit::Module& module, torch::Device device) {
  torch::NoGradGuard no_grad;
  auto held = tensors(module);
  TORCH_CHECK(host_.size() == held.size(), "unpark without park");
  // From page-locked memory the copies to CUDA run asynchronously; the next park's copy into the same buffers is
  // queued after them on the same stream.
  for (size_t i = 0; i < held.size(); ++i)
    held[i].set_data(host_[i].to(device, /*non_blocking=*/true, /*copy=*/true));
}

}  // namespace txt2img
