#include "vae_tiling.hpp"

#include <gtest/gtest.h>
#include <torch/script.h>

#include "fixtures.hpp"
#include "txt2img/bundle.hpp"

namespace {

// 16x24 latents in 8x8 tiles overlapping by 4: 3 rows by 5 columns, with interior tiles overlapped on every side.
torch::Tensor tiling_latents() {
  torch::manual_seed(0);
  return torch::randn({1, 4, 16, 24});
}

TEST(VaeTiling, BlendsALocalDecoderExactly) {
  // A decoder whose every pixel depends on its own latent only: any error here is the blend's, not the tiling's.
  auto upsample = [](const torch::Tensor& z) {
    return torch::upsample_nearest2d(z.narrow(1, 0, 3), {z.size(2) * 8, z.size(3) * 8});
  };
  auto latents = tiling_latents();
  EXPECT_TRUE(torch::allclose(txt2img::decode_tiled(upsample, latents, 8, 8, 4), upsample(latents), 0, 1e-5));
}

TEST(VaeTiling, TiledDecodeIsCloseToTheWholeDecode) {
  c10::InferenceMode inference;
  auto bundle = txt2img::Bundle::open(fixtures() / "tiny");
  auto decoder = bundle.load_module("vae_decoder.pt", torch::kCPU);
  decoder.eval();
  auto decode = [&](const torch::Tensor& z) { return decoder.forward({z}).toTensor(); };
  auto latents = tiling_latents();
  const int64_t scale = bundle.manifest().vae_scale_factor;
  EXPECT_FALSE(txt2img::needs_tiling(latents, 24));
  EXPECT_TRUE(txt2img::needs_tiling(latents, 8));
  auto tiled = txt2img::decode_tiled(decode, latents, scale, 8, 4);
  auto whole = decode(latents);
  EXPECT_EQ(tiled.sizes(), (std::vector<int64_t>{1, 3, 16 * scale, 24 * scale}));
  EXPECT_TRUE(whole.equal(txt2img::decode_tiled(decode, latents, scale, 24, 4)));  // one tile: the whole decode
  // The difference in 8-bit levels. Each tile normalises (GroupNorm) and attends over itself only; with this random
  // decoder and tiles this small that moves pixels a lot (measured: mean 25.1, max 231 levels); with the pipeline's
  // 64-latent tiles and 16 overlap at 128x128 latents it was mean 2.6, max 52.
  auto levels = [](const torch::Tensor& x) { return ((x * 0.5 + 0.5).clamp(0, 1) * 255).round(); };
  EXPECT_LT((levels(tiled) - levels(whole)).abs().mean().item<double>(), 30);
}

}  // namespace
