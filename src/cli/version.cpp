#include <torch/cuda.h>

#include <string>

#include "cli/commands.hpp"
#include "txt2img/bundle.hpp"
#include "txt2img/device_memory.hpp"

namespace txt2img::cli {

// The LibTorch it runs on, whether it can use a GPU and its malloc: the first things to know when a run is slower
// than expected.
std::string version_string() {
  std::string devices = "CPU only";
  if (built_with_cuda()) {
    const auto count = torch::cuda::device_count();
    devices = count == 0 ? "CUDA build, no CUDA device visible"
                         : "CUDA: " + std::to_string(count) + " device" + (count == 1 ? "" : "s");
  }
  return std::string("txt2img ") + TXT2IMG_VERSION + " (LibTorch " + libtorch_version() + ", " + devices + ", " +
         host_allocator() + ")";
}

}  // namespace txt2img::cli
