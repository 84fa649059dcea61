// AUTOMATIC1111's NV noise (its "RNG: NV", modules/rng_philox.py): on the CPU, the standard normals torch.randn draws
// on an NVIDIA GPU, so that an image A1111 made with its default GPU noise can be made again here.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <vector>

namespace txt2img::detail {

// A1111's rng_philox.Generator(seed).randn(shape) after `offset` earlier draws: element i is the first Box-Muller
// output (computed in double, as NumPy computes it there, then rounded to float32) of the first two words of
// Philox4x32-10 keyed by the seed's two 32-bit halves at counter {offset, 0, i, 0}. Throws Error(Runtime) for more
// than 2^32 elements or an offset of 2^32 or more, which A1111's counter does not hold either.
torch::Tensor philox_randn(uint64_t seed, uint64_t offset, const std::vector<int64_t>& shape);

}  // namespace txt2img::detail
