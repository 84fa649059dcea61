#include <torch/version.h>

#include <string>

#include "cli/commands.hpp"

namespace txt2img::cli {

std::string version_string() {
  return std::string("txt2img ") + TXT2IMG_VERSION + " (LibTorch " + std::to_string(TORCH_VERSION_MAJOR) + "." +
         std::to_string(TORCH_VERSION_MINOR) + "." + std::to_string(TORCH_VERSION_PATCH) + ")";
}

}  // namespace txt2img::cli
