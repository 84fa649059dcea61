#include "host_parking.hpp"

#include <torch/cuda.h>

#include <set>

namespace txt2img {
namespace {

// A module's parameters, then its buffers, each tensor once (a shared submodule lists its own twice).
std::vector<torch::Tensor> tensors(torch::jit::Module& module) {
  std::vector<torch::Tensor> out;
  std::set<const c10::TensorImpl*> seen;
  const auto add = [&](const torch::Tensor& t) {
    if (seen.insert(t.unsafeGetTensorImpl()).second) out.push_back(t);
  };
  for (const auto& parameter : module.parameters()) add(parameter);
  for (const auto& buffer : module.buffers()) add(buffer);
  return out;
}

}  // namespace

void HostParking::park(torch::jit::Module& module) {
  torch::NoGradGuard no_grad;
  auto held = tensors(module);
  if (host_.empty()) {
    std::vector<torch::Tensor> host;  // kept only once every buffer is allocated
    for (const auto& t : held)
      host.push_back(
          torch::empty_strided(t.sizes(), t.strides(), t.options().device(torch::kCPU).pinned_memory(t.is_cuda())));
    host_ = std::move(host);
  }
  TORCH_CHECK(host_.size() == held.size(), "the module's tensors changed between parks");
  std::set<c10::DeviceIndex> cuda_devices;
  for (size_t i = 0; i < held.size(); ++i) {
    if (held[i].is_cuda()) cuda_devices.insert(held[i].device().index());
    host_[i].copy_(held[i], /*non_blocking=*/held[i].is_cuda());
  }
  // The copies must be done before the device memory is handed back and the host buffers read.
  for (const auto index : cuda_devices) torch::cuda::synchronize(index);
  for (size_t i = 0; i < held.size(); ++i) held[i].set_data(host_[i]);
}

void HostParking::unpark(torch::jit::Module& module, torch::Device device) {
  torch::NoGradGuard no_grad;
  auto held = tensors(module);
  TORCH_CHECK(host_.size() == held.size(), "unpark without park");
  // From page-locked memory the copies to CUDA run asynchronously; the next park's copy into the same buffers is
  // queued after them on the same stream.
  for (size_t i = 0; i < held.size(); ++i)
    held[i].set_data(host_[i].to(device, /*non_blocking=*/device.is_cuda(), /*copy=*/true));
}

}  // namespace txt2img
