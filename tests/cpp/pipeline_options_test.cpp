// The options by name, and the devices and dtypes txt2img refuses before loading anything.
#include "txt2img/pipeline_options.hpp"

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "expect_error.hpp"

namespace {

using txt2img::ErrorKind;

TEST(PipelineOptions, NamesAsTheCommandLineGivesThem) {
  EXPECT_EQ(txt2img::dtype_named("fp16"), torch::kFloat16);
  EXPECT_EQ(txt2img::dtype_named("bf16"), torch::kBFloat16);
  EXPECT_EQ(txt2img::dtype_named("fp32"), torch::kFloat32);
  EXPECT_EQ(txt2img::dtype_named("float32"), std::nullopt);
  EXPECT_EQ(txt2img::graph_optimization_named("optimize"), txt2img::GraphOptimization::FreezeAndOptimize);
  EXPECT_EQ(txt2img::decoder_named("taesd"), txt2img::Decoder::Taesd);
  EXPECT_EQ(txt2img::attention_kernel_named("memory-efficient"), txt2img::AttentionKernel::MemoryEfficient);
  EXPECT_EQ(txt2img::attention_kernel_named("sdpa"), std::nullopt);
}

TEST(PipelineOptions, ParsesTheCpuAndCudaDevices) {
  EXPECT_EQ(txt2img::parse_device("cpu"), torch::Device(torch::kCPU));
  const auto count = static_cast<int>(torch::cuda::device_count());
  if (count > 0) {
    EXPECT_EQ(txt2img::parse_device("cuda"), torch::Device(torch::kCUDA, 0));
    EXPECT_EQ(txt2img::parse_device("cuda:" + std::to_string(count - 1)), torch::Device(torch::kCUDA, count - 1));
  }
}

TEST(PipelineOptions, RefusesMalformedDeviceNames) {
  for (const std::string name : {"tpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda:1234", "cuda0", " cpu", "cuda:1 "})
    expect_error([&] { txt2img::parse_device(name); }, ErrorKind::Usage,
                 {"device \"" + name + "\"", "cpu, cuda or cuda:K"});
}

TEST(PipelineOptions, RefusesCudaDevicesThisLibTorchDoesNotSee) {
  const auto count = static_cast<int>(torch::cuda::device_count());
  // 999 is past what a torch::Device's index holds: refused before it is narrowed to one.
  for (const std::string& name : {"cuda:" + std::to_string(count), std::string("cuda:999")})
    expect_error([&] { txt2img::parse_device(name); }, ErrorKind::Usage,
                 {"device " + name + ": this LibTorch sees ",
                  count == 0 ? "no CUDA device" : "only " + std::to_string(count) + " CUDA devices"});
  if (count == 0) {
    expect_error([] { txt2img::parse_device("cuda"); }, ErrorKind::Usage, {"device cuda: ", "no CUDA device"});
    expect_error([] { txt2img::check_placement(torch::Device(torch::kCUDA, 0), torch::kFloat32); }, ErrorKind::Usage,
                 {"device cuda:0: this LibTorch sees no CUDA device", "run on the CPU (--device cpu)"});
  }
}

TEST(PipelineOptions, RefusesDtypesAndDevicesTxt2imgCannotRun) {
  expect_error([] { txt2img::check_placement(torch::kCPU, torch::kInt); }, ErrorKind::Usage,
               {"dtype Int", "fp32, fp16 or bf16"});
  expect_error([] { txt2img::check_placement(torch::kCPU, torch::kFloat16); }, ErrorKind::Usage,
               {"fp16 needs a CUDA device", "use --dtype fp32 or bf16 on the CPU"});
  expect_error([] { txt2img::check_placement(torch::Device(torch::kMeta), torch::kFloat32); }, ErrorKind::Usage,
               {"device meta", "the CPU or on CUDA"});
  txt2img::check_placement(torch::kCPU, torch::kFloat32);
  txt2img::check_placement(torch::kCPU, torch::kBFloat16);
}

}  // namespace
