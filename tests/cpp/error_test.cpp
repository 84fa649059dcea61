// LibTorch failures as user-facing errors: the meaningful line, and an out-of-memory hint.
#include "txt2img/error.hpp"

#include <c10/util/Exception.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

namespace {

using txt2img::backend_failure;
using txt2img::ErrorKind;

TEST(BackendFailure, KeepsTheFirstLineOfAC10Error) {
  try {
    torch::ones({2, 3}).matmul(torch::ones({4, 5}));
    FAIL() << "no error";
  } catch (const c10::Error& e) {
    const auto error = backend_failure(e);
    EXPECT_EQ(error.kind(), ErrorKind::Runtime);
    const std::string what = error.what();
    EXPECT_NE(what.find("cannot be multiplied"), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    EXPECT_EQ(what.find("out of memory"), std::string::npos) << what;
  }
}

TEST(BackendFailure, TakesTheLastLineOfATorchScriptTraceback) {
  const std::runtime_error script(
      "The following operation failed in the TorchScript interpreter.\n"
      "Traceback of TorchScript, serialized code (most recent call last):\n"
      "  File \"code/__torch__/unet.py\", line 9, in forward\n"
      "    _1 = _0(q, k, v, )\n"
      "         ~~ <--- HERE\n"
      "RuntimeError: Expected all tensors to be on the same device\n\n");
  EXPECT_STREQ(backend_failure(script).what(), "Expected all tensors to be on the same device");
}

TEST(BackendFailure, OutOfMemoryOnTheHostOrTheDeviceGetsAHint) {
  const std::runtime_error host(
      "The following operation failed in the TorchScript interpreter.\n"
      "RuntimeError: [enforce fail at alloc_cpu.cpp:75] err == 0. DefaultCPUAllocator: can't allocate memory: you "
      "tried to allocate 274877906944 bytes. Error code 12 (Cannot allocate memory)\n");
  const c10::OutOfMemoryError device({__func__, __FILE__, __LINE__}, "CUDA out of memory. Tried to allocate 2 GiB");
  const std::runtime_error device_in_script(
      "The following operation failed in the TorchScript interpreter.\n"
      "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n");
  for (const std::exception* failure : {static_cast<const std::exception*>(&host),
                                        static_cast<const std::exception*>(&device),
                                        static_cast<const std::exception*>(&device_in_script)}) {
    const auto error = backend_failure(*failure);
    const std::string what = error.what();
    EXPECT_EQ(error.kind(), ErrorKind::Runtime);
    EXPECT_EQ(what.rfind("out of memory (", 0), 0u) << what;
    EXPECT_NE(what.find("--batch-size"), std::string::npos) << what;
    EXPECT_NE(what.find("--low-vram"), std::string::npos) << what;
    EXPECT_TRUE(txt2img::is_out_of_memory(*failure)) << what;
  }
  EXPECT_FALSE(txt2img::is_out_of_memory(std::runtime_error("mat1 and mat2 shapes cannot be multiplied")));
}

}  // namespace
