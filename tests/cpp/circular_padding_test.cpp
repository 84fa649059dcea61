#include "circular_padding.hpp"

#include <gtest/gtest.h>
#include <torch/script.h>

#include "fixtures.hpp"
#include "txt2img/bundle.hpp"

namespace {

torch::Tensor roll(const torch::Tensor& x, int64_t dy, int64_t dx) { return torch::roll(x, {dy, dx}, {2, 3}); }

struct TinyModules {
  torch::jit::Module unet, decoder;
};
TinyModules load_tiny() {
  auto bundle = txt2img::Bundle::open(fixtures() / "tiny");
  TinyModules m{bundle.load_module("unet.pt", torch::kCPU), bundle.load_module("vae_decoder.pt", torch::kCPU)};
  m.unet.eval();
  m.decoder.eval();
  return m;
}

// With circular padding every layer commutes with a shift by a multiple of the U-Net's downsampling (and the
// decoder's output shifts by its upsampling times as much): the image wraps around, so copies of it tile seamlessly.
// With zero padding the edges break that.
TEST(CircularPadding, MakesTheUNetAndDecoderWrapAround) {
  c10::InferenceMode inference;
  auto m = load_tiny();
  torch::manual_seed(0);
  const auto latents = torch::randn({1, 4, 8, 16});
  const auto context = torch::randn({1, 77, 32});
  const auto t = torch::tensor(500);
  const auto shifted = roll(latents, 4, 8);
  const auto unet = [&](const torch::Tensor& x) { return m.unet.forward({x, t, context}).toTensor(); };
  const auto decode = [&](const torch::Tensor& x) { return m.decoder.forward({x}).toTensor(); };
  const auto plain = unet(latents);
  EXPECT_FALSE(torch::allclose(unet(shifted), roll(plain, 4, 8), 1e-4, 1e-4));

  EXPECT_GT(txt2img::detail::pad_circularly(m.unet), 0u);
  EXPECT_GT(txt2img::detail::pad_circularly(m.decoder), 0u);
  const auto circular = unet(latents);
  EXPECT_FALSE(torch::allclose(circular, plain, 1e-4, 1e-4));
  EXPECT_TRUE(torch::allclose(unet(shifted), roll(circular, 4, 8), 1e-4, 1e-5));
  const auto image = decode(latents);
  const int64_t scale = image.size(3) / latents.size(3);
  EXPECT_TRUE(torch::allclose(decode(shifted), roll(image, 4 * scale, 8 * scale), 1e-4, 1e-5));
}

TEST(CircularPadding, SwitchesNothingInAModuleWithoutTheConverterSwitch) {
  auto bundle = txt2img::Bundle::open(fixtures() / "tiny");
  auto text_encoder = bundle.load_module("text_encoder.pt", torch::kCPU);
  EXPECT_EQ(txt2img::detail::pad_circularly(text_encoder), 0u);
}

}  // namespace
