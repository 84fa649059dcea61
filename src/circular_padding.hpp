// AUTOMATIC1111's Tiling: images whose opposite edges meet, so that copies of them tile without seams.
#pragma once

#include <torch/script.h>

#include <cstddef>

namespace txt2img::detail {

// Switches the converter's padded convolutions (txt2img_convert.unet.Conv2d) in `module` and its submodules from zero
// to circular padding, as A1111 sets padding_mode "circular" on every Conv2d of its U-Net and VAE: each then sees the
// feature map wrapped around. Call before freezing, which makes the switch a constant of the graph. Returns how many
// convolutions it switched: 0 for a module that has none, or that a converter made before they had the switch.
size_t pad_circularly(torch::jit::Module& module);

}  // namespace txt2img::detail
