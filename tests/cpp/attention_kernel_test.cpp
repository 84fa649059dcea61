// The kernel of scaled_dot_product_attention: its names, LibTorch's process-wide switches, and what Pipeline::load
// refuses.
#include "attention_kernel.hpp"

#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "expect_error.hpp"
#include "fixtures.hpp"
#include "txt2img/bundle.hpp"
#include "txt2img/pipeline.hpp"

namespace {

using txt2img::AttentionKernel;
using txt2img::ErrorKind;

const AttentionKernel kAll[] = {AttentionKernel::Default, AttentionKernel::Flash, AttentionKernel::MemoryEfficient,
                                AttentionKernel::CuDNN, AttentionKernel::Math};

TEST(AttentionKernel, EachNameNamesItsKernel) {
  for (auto kernel : kAll) EXPECT_EQ(txt2img::attention_kernel_named(txt2img::attention_kernel_name(kernel)), kernel);
  EXPECT_EQ(txt2img::attention_kernel_name(AttentionKernel::MemoryEfficient), "memory-efficient");
  EXPECT_FALSE(txt2img::attention_kernel_named("Flash").has_value());
  EXPECT_FALSE(txt2img::attention_kernel_named("").has_value());
}

// Whether the switches are those of `kernel` alone; a kernel without a switch in this LibTorch reports on.
void expect_only(AttentionKernel kernel) {
  using txt2img::has_switch;
  const auto s = txt2img::AttentionKernelScope::current();
  EXPECT_EQ(s.flash, kernel == AttentionKernel::Flash);
  EXPECT_EQ(s.math, kernel == AttentionKernel::Math);
  EXPECT_EQ(s.memory_efficient,
            kernel == AttentionKernel::MemoryEfficient || !has_switch(AttentionKernel::MemoryEfficient));
  EXPECT_EQ(s.cudnn, kernel == AttentionKernel::CuDNN || !has_switch(AttentionKernel::CuDNN));
}

TEST(AttentionKernel, AScopeAllowsItsKernelAloneAndPutsBackTheSwitchesItFound) {
  auto& context = at::globalContext();
  context.setSDPUseMath(false);  // not PyTorch's default: the scopes must restore what they found
  {
    txt2img::AttentionKernelScope math(AttentionKernel::Math);
    expect_only(AttentionKernel::Math);
    {
      txt2img::AttentionKernelScope flash(AttentionKernel::Flash);
      expect_only(AttentionKernel::Flash);
    }
    expect_only(AttentionKernel::Math);
    for (auto kernel : {AttentionKernel::MemoryEfficient, AttentionKernel::CuDNN})
      if (txt2img::has_switch(kernel)) {
        txt2img::AttentionKernelScope only(kernel);
        expect_only(kernel);
      }
    {
      txt2img::AttentionKernelScope unchanged(AttentionKernel::Default);
      expect_only(AttentionKernel::Math);
    }
  }
  EXPECT_TRUE(context.userEnabledFlashSDP());
  EXPECT_FALSE(context.userEnabledMathSDP());
  context.setSDPUseMath(true);
}

TEST(AttentionKernel, CudaOnlyKernelsAreRefusedOnTheCpu) {
  for (auto kernel : {AttentionKernel::Default, AttentionKernel::Flash, AttentionKernel::Math}) {
    EXPECT_TRUE(txt2img::runs_on(kernel, torch::kCPU));
    txt2img::check_attention_kernel(kernel, torch::kCPU);
  }
  for (auto kernel : {AttentionKernel::MemoryEfficient, AttentionKernel::CuDNN}) {
    EXPECT_FALSE(txt2img::runs_on(kernel, torch::kCPU));
    EXPECT_TRUE(txt2img::runs_on(kernel, torch::Device("cuda:1")));
    const auto name = "attention kernel " + txt2img::attention_kernel_name(kernel);
    expect_error([&] { txt2img::check_attention_kernel(kernel, torch::kCPU); }, ErrorKind::Usage,
                 {name, txt2img::has_switch(kernel) ? "runs on CUDA only" : "cannot select it"});
  }
}

TEST(AttentionKernel, OnlyBundlesExportedWithPyTorch2AttendThroughSdpa) {
  txt2img::Manifest m;
  for (const auto* version : {"1.13.0a0", "1.13.1", "0.4", "", "garbage"}) {
    m.torch_version = version;
    EXPECT_FALSE(txt2img::attends_through_sdpa(m)) << version;
  }
  for (const auto* version : {"2.0.1", "2.11.0+cu130", "3.0"}) {
    m.torch_version = version;
    EXPECT_TRUE(txt2img::attends_through_sdpa(m)) << version;
  }
}

// A bundle exported without scaled_dot_product_attention is refused a kernel (choosing one would measure nothing);
// one exported with it makes the same image with the math kernel in its U-Net as with PyTorch's choice, and the
// switches are PyTorch's again afterwards.
TEST(AttentionKernel, PipelineTakesAKernelOnlyForABundleThatAttendsThroughSdpa) {
  auto bundle = txt2img::Bundle::open(fixtures() / "tiny");
  txt2img::PipelineOptions math;
  math.attention_kernel = AttentionKernel::Math;
  if (!txt2img::attends_through_sdpa(bundle.manifest())) {
    expect_error(
        [&] { txt2img::Pipeline::load(bundle, math); }, ErrorKind::Usage,
        {"attention kernel math", "exported by PyTorch " + bundle.manifest().torch_version, "plain matrix products"});
    return;
  }
  txt2img::GenerationParams params;
  params.steps = 2;
  auto image = [&](const txt2img::PipelineOptions& options) {
    auto pipeline = txt2img::Pipeline::load(bundle, options);
    txt2img::SeededNoise noise({3});
    return pipeline.generate({"a red cube"}, {""}, params, noise)[0].rgb;
  };
  const auto chosen = image({}), by_math = image(math);
  EXPECT_TRUE(at::globalContext().userEnabledFlashSDP() && at::globalContext().userEnabledMathSDP());
  ASSERT_EQ(chosen.size(), by_math.size());
  for (size_t i = 0; i < chosen.size(); ++i) EXPECT_LE(std::abs(chosen[i] - by_math[i]), 2) << i;
}

}  // namespace
