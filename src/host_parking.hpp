// Where a module's weights wait in host memory while another module has the device (--low-vram on a GPU).
#pragma once

#include <torch/script.h>

#include <vector>

namespace txt2img {

// Host buffers for a module's parameters and buffers, allocated on the first park and reused at every later one,
// page-locked when the weights come from CUDA: the copies then run at the bus's speed, where moving the module
// with Module::to allocates fresh pageable host memory each time (every page faulted in, then copied through a
// staging buffer). The price: the page-locked memory stays allocated, at least the module's size (PyTorch's
// page-locked allocator may round each block up), while the weights are back on the device too.
class HostParking {
 public:
  // Copies every parameter and buffer of `module` into the host buffers and makes them the module's; their device
  // memory goes back to the allocator. The weights keep their dtype and layout.
  void park(torch::jit::Module& module);
  // Copies them to `device` (new device memory; the host buffers stay for the next park).
  void unpark(torch::jit::Module& module, torch::Device device);

 private:
  std::vector<torch::Tensor> host_;  // in the order of tensors(module)
};

}  // namespace txt2img
