#include "circular_padding.hpp"

namespace txt2img::detail {

size_t pad_circularly(torch::jit::Module& module) {
  size_t switched = 0;
  for (auto submodule : module.modules()) {
    if (!submodule.hasattr("tiling")) continue;
    submodule.setattr("tiling", true);
    ++switched;
  }
  return switched;
}

}  // namespace txt2img::detail
