// The decoder's activation memory grows with the image area, faster than linearly: its mid-block self-attention holds
// one (h*w)^2 score matrix at latent resolution (16384^2, 1 GiB in float32, for 128x128 latents = 1024x1024 pixels),
// and its last up-blocks run 256- and 128-channel convolutions at full pixel resolution. Decoding fixed-size tiles
// bounds it by the tile area. The price is that each tile sees only its own neighbourhood (the attention and the
// convolutions' receptive field stop at the tile edge), so the tiles overlap and are cross-faded to hide the seams;
// the image differs slightly from a whole decode.
#include "vae_tiling.hpp"

#include <vector>

namespace txt2img {
namespace {

struct Span {
  int64_t start, size;
};

// Tiles covering [0, length): as few as keep neighbours overlapping by at least `overlap`, spread evenly so every
// overlap is about the same width.
std::vector<Span> spans(int64_t length, int64_t tile, int64_t overlap) {
  if (length <= tile) return {{0, length}};
  const int64_t stride = tile - overlap;
  const int64_t count = 1 + (length - tile + stride - 1) / stride;
  std::vector<Span> out;
  for (int64_t i = 0; i < count; ++i) out.push_back({i * (length - tile) / (count - 1), tile});
  return out;
}

// Per-pixel blend weight of one tile along one axis: 1 inside, rising linearly across the overlap with the previous
// tile and falling across the overlap with the next (never 0, so every pixel has some weight), so two neighbours
// cross-fade in their overlap. decode_tiled divides by the summed weights, which keeps the blend a weighted mean
// where three tiles meet along an axis too.
torch::Tensor ramp(const std::vector<Span>& tiles, size_t i, int64_t scale) {
  const int64_t size = tiles[i].size * scale;
  auto pos = torch::arange(size, torch::kFloat32) + 0.5;
  auto weight = torch::ones({size});
  if (i > 0) {
    const int64_t left = (tiles[i - 1].start + tiles[i - 1].size - tiles[i].start) * scale;
    weight = torch::minimum(weight, pos / left);
  }
  if (i + 1 < tiles.size()) {
    const int64_t right = (tiles[i].start + tiles[i].size - tiles[i + 1].start) * scale;
    weight = torch::minimum(weight, (size - pos) / right);
  }
  return weight;
}

}  // namespace

bool needs_tiling(const torch::Tensor& latents, int64_t tile) {
  return latents.size(2) > tile || latents.size(3) > tile;
}

torch::Tensor decode_tiled(const std::function<torch::Tensor(const torch::Tensor&)>& decode,
                           const torch::Tensor& latents, int64_t scale, int64_t tile, int64_t overlap) {
  TORCH_CHECK(overlap >= 0 && 2 * overlap <= tile, "tile overlap must be from 0 to half the tile");
  const auto rows = spans(latents.size(2), tile, overlap);
  const auto cols = spans(latents.size(3), tile, overlap);
  const auto device = latents.device();
  torch::Tensor image, total_weight;
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto wy = ramp(rows, r, scale).to(device).view({-1, 1});
    for (size_t c = 0; c < cols.size(); ++c) {
      const auto wx = ramp(cols, c, scale).to(device).view({1, -1});
      auto piece = decode(latents.narrow(2, rows[r].start, rows[r].size).narrow(3, cols[c].start, cols[c].size));
      if (!image.defined()) {
        image = torch::zeros({latents.size(0), piece.size(1), latents.size(2) * scale, latents.size(3) * scale},
                             piece.options());
        total_weight = torch::zeros({latents.size(2) * scale, latents.size(3) * scale}, piece.options());
      }
      const auto weight = wy * wx;
      const auto ys = rows[r].start * scale, xs = cols[c].start * scale;
      image.narrow(2, ys, piece.size(2)).narrow(3, xs, piece.size(3)) += piece * weight;
      total_weight.narrow(0, ys, piece.size(2)).narrow(1, xs, piece.size(3)) += weight;
    }
  }
  return image / total_weight;
}

}  // namespace txt2img
