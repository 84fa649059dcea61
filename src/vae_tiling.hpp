// VAE decoding in overlapping latent tiles, for --low-vram (PipelineOptions::low_vram).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>

namespace txt2img {

// Whether latents [N, C, h, w] are larger than one tile side in either direction.
bool needs_tiling(const torch::Tensor& latents, int64_t tile);

// Decodes latents [N, C, h, w] into float32 images [N, 3, h * scale, w * scale] by calling `decode` on tiles of at
// most tile x tile latents that overlap their neighbours by at least `overlap` latents, and blending the decoded
// tiles with linear ramps across each overlap. `decode` maps a latent tile to its float32 image tile.
torch::Tensor decode_tiled(const std::function<torch::Tensor(const torch::Tensor&)>& decode,
                           const torch::Tensor& latents, int64_t scale, int64_t tile, int64_t overlap);

}  // namespace txt2img
