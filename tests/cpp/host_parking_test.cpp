// HostParking: a module's weights moved to host buffers that are kept from one park to the next, and back.
#include "host_parking.hpp"

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cstdlib>
#include <filesystem>

#include "fixtures.hpp"

namespace {

std::vector<torch::Tensor> weights(torch::jit::Module& module) {
  std::vector<torch::Tensor> out;
  for (const auto& p : module.parameters()) out.push_back(p);
  for (const auto& b : module.buffers()) out.push_back(b);
  return out;
}

// The text encoder's output for fixed ids, on whichever device its weights are.
torch::Tensor encode(torch::jit::Module& module) {
  torch::NoGradGuard no_grad;
  const auto device = (*module.parameters().begin()).device();
  return module.forward({torch::arange(77, torch::kInt64).view({1, 77}).to(device)}).toTensor().cpu();
}

// Parks and unparks `module` (on `device`) twice: the weights and the output stay the same, and the second park
// reuses the first's host buffers.
void park_twice(torch::jit::Module& module, torch::Device device) {
  const auto before = encode(module);
  std::vector<torch::Tensor> values;
  for (const auto& t : weights(module)) values.push_back(t.cpu().clone());
  txt2img::HostParking parking;
  parking.park(module);
  std::vector<const void*> parked;
  for (const auto& t : weights(module)) {
    EXPECT_TRUE(t.device().is_cpu());
    EXPECT_EQ(t.is_pinned(), device.is_cuda());
    parked.push_back(t.data_ptr());
  }
  // Parked, the module computes on the CPU: the same numbers, up to the two devices' rounding.
  EXPECT_TRUE(torch::allclose(encode(module), before, 1e-4, 1e-5));
  parking.unpark(module, device);
  auto back = weights(module);
  ASSERT_EQ(back.size(), values.size());
  for (size_t i = 0; i < back.size(); ++i) {
    EXPECT_EQ(back[i].device(), device);
    EXPECT_NE(back[i].data_ptr(), parked[i]);  // a copy: the host buffer is kept apart for the next park
    EXPECT_TRUE(torch::equal(back[i].cpu(), values[i]));
  }
  EXPECT_TRUE(torch::equal(encode(module), before));
  parking.park(module);
  auto again = weights(module);
  for (size_t i = 0; i < again.size(); ++i) EXPECT_EQ(again[i].data_ptr(), parked[i]);
  parking.unpark(module, device);
  EXPECT_TRUE(torch::equal(encode(module), before));
}

TEST(HostParking, KeepsTheWeightsAndReusesItsBuffers) {
  auto module = torch::jit::load((fixtures() / "tiny" / "text_encoder.pt").string());
  park_twice(module, torch::kCPU);
}

TEST(HostParking, ParksCudaWeightsInPageLockedMemory) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto module = torch::jit::load((fixtures() / "tiny" / "text_encoder.pt").string());
  module.to(torch::Device(torch::kCUDA, 0));
  park_twice(module, torch::Device(torch::kCUDA, 0));
}

}  // namespace
