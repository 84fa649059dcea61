// SeededNoise: one CPU generator per row, and A1111's variation seeds and seed resize in a row's first draw.
#include "txt2img/noise.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "philox.hpp"
#include "txt2img/error.hpp"

namespace {

torch::Tensor randn(uint64_t seed, const std::vector<int64_t>& shape) {
  auto generator = at::detail::createCPUGenerator(seed);
  return torch::randn(shape, generator, torch::kFloat32);
}

const std::vector<int64_t> kShape = {1, 4, 6, 5};

// Each row draws from its own seed's generator, whatever the other rows are; restart begins again.
TEST(SeededNoise, EachRowIsItsSeedsSequence) {
  txt2img::SeededNoise noise({5, 9});
  const auto first = noise.draw({2, 4, 6, 5}), second = noise.draw({2, 4, 6, 5});
  auto five = at::detail::createCPUGenerator(5);
  EXPECT_TRUE(torch::equal(first[0], torch::randn(kShape, five, torch::kFloat32)[0]));
  EXPECT_TRUE(torch::equal(second[0], torch::randn(kShape, five, torch::kFloat32)[0]));
  EXPECT_TRUE(torch::equal(first[1], randn(9, kShape)[0]));
  noise.restart();
  EXPECT_TRUE(torch::equal(noise.draw({2, 4, 6, 5}), first));
}

// With A1111's NV generator a row's draws are Philox's at counter offsets 0, 1, 2, ... of its seed, as A1111's
// ImageRNG draws them (first noise, then each step's); its ENSD seeds the draws after the first anew, a variation's
// noise and a seed resize's come from fresh generators of their seeds, and restart begins again.
TEST(SeededNoise, NvRowsArePhiloxDrawsOfTheirSeeds) {
  using txt2img::detail::philox_randn;
  txt2img::SeededNoise noise({5, 9}, {}, 0, {}, txt2img::NoiseRng::kNv);
  const auto first = noise.draw({2, 4, 6, 5}), second = noise.draw({2, 4, 6, 5});
  EXPECT_TRUE(torch::equal(first[0], philox_randn(5, 0, kShape)[0]));
  EXPECT_TRUE(torch::equal(first[1], philox_randn(9, 0, kShape)[0]));
  EXPECT_TRUE(torch::equal(second[1], philox_randn(9, 1, kShape)[0]));
  noise.restart();
  EXPECT_TRUE(torch::equal(noise.draw({2, 4, 6, 5}), first));

  txt2img::SeededNoise ensd({5}, {}, 31337, {}, txt2img::NoiseRng::kNv);
  EXPECT_TRUE(torch::equal(ensd.draw(kShape), philox_randn(5, 0, kShape)));
  EXPECT_TRUE(torch::equal(ensd.draw(kShape), philox_randn(5 + 31337, 0, kShape)));
  EXPECT_TRUE(torch::equal(ensd.draw(kShape), philox_randn(5 + 31337, 1, kShape)));

  txt2img::SeededNoise varied({5}, {{100, 0.3}}, 0, {}, txt2img::NoiseRng::kNv);
  EXPECT_TRUE(torch::equal(varied.draw(kShape)[0],
                           txt2img::slerp_noise(0.3, philox_randn(5, 0, kShape)[0], philox_randn(100, 0, kShape)[0])));

  // Resized from 2x3 latents: the seed's noise at that size, centred in the row generator's own first draw.
  txt2img::SeededNoise resized({5}, {}, 0, {2, 3}, txt2img::NoiseRng::kNv);
  auto expected = philox_randn(5, 0, kShape);
  expected.narrow(2, 2, 2).narrow(3, 1, 3).copy_(philox_randn(5, 0, {1, 4, 2, 3}));
  EXPECT_TRUE(torch::equal(resized.draw(kShape), expected));
  EXPECT_TRUE(torch::equal(resized.draw(kShape), philox_randn(5, 1, kShape)));
}

// A1111's slerp, in double from the same two draws: along each image row (dim 1 of [C, H, W]) the noise moves on
// the great circle from the seed's to the variation seed's by the strength's share of the angle between them.
torch::Tensor slerp_in_double(double t, const torch::Tensor& low, const torch::Tensor& high) {
  const auto a = low.to(torch::kFloat64), b = high.to(torch::kFloat64);
  const auto omega = torch::acos((a / a.norm(2, {1}, true) * (b / b.norm(2, {1}, true))).sum(1, true));
  return (torch::sin((1 - t) * omega) * a + torch::sin(t * omega) * b) / torch::sin(omega);
}

TEST(SeededNoise, VariationSeedsMixTheFirstDrawAsA1111Does) {
  const auto seed = randn(5, kShape)[0], other = randn(100, kShape)[0];
  txt2img::SeededNoise mixed({5, 5}, {{100, 0.3}, {7, 0.0}});
  const auto first = mixed.draw({2, 4, 6, 5});
  EXPECT_TRUE(torch::allclose(first[0].to(torch::kFloat64), slerp_in_double(0.3, seed, other), 1e-5, 1e-6))
      << (first[0].to(torch::kFloat64) - slerp_in_double(0.3, seed, other)).abs().max();
  EXPECT_TRUE(torch::equal(first[1], seed));  // strength 0: the seed's noise, whatever the variation seed
  // Later draws (a sampler's step noise) come from the seed's generator alone, which the first draw advanced.
  txt2img::SeededNoise plain({5});
  plain.draw(kShape);
  EXPECT_TRUE(torch::equal(mixed.draw({2, 4, 6, 5})[0], plain.draw(kShape)[0]));
  // A restart (a hires pass) mixes its first draw again.
  mixed.restart();
  EXPECT_TRUE(torch::equal(mixed.draw({2, 4, 6, 5}), first));

  // The ends: strength 1 is the variation seed's noise exactly.
  txt2img::SeededNoise full({5}, {{100, 1.0}});
  EXPECT_TRUE(torch::equal(full.draw(kShape)[0], other));
}

// A1111's eta noise seed delta: the first draw (the initial noise) is the seed's, every later one (a sampler's step
// noise) comes from a generator of seed + delta; a restart begins with the seed's again.
TEST(SeededNoise, EtaNoiseSeedDeltaReseedsTheDrawsAfterTheFirst) {
  txt2img::SeededNoise noise({5, 9}, {}, 31337);
  const auto first = noise.draw({2, 4, 6, 5});
  EXPECT_TRUE(torch::equal(first[0], randn(5, kShape)[0]));
  auto delta = at::detail::createCPUGenerator(9 + 31337);
  const auto second = noise.draw({2, 4, 6, 5}), third = noise.draw({2, 4, 6, 5});
  EXPECT_TRUE(torch::equal(second[1], torch::randn(kShape, delta, torch::kFloat32)[0]));
  EXPECT_TRUE(torch::equal(third[1], torch::randn(kShape, delta, torch::kFloat32)[0]));
  noise.restart();
  EXPECT_TRUE(torch::equal(noise.draw({2, 4, 6, 5}), first));
  EXPECT_TRUE(torch::equal(noise.draw({2, 4, 6, 5}), second));
}

// A1111's Seed resize from: the first draw is the seed's noise at the resize's size from a fresh generator, pasted
// centred into the row generator's own draw; a larger side is cropped centred, with A1111's floor-divided offsets:
// into 6x8 latents a 9x5 noise goes rows 2..6 (of 9) to rows 0..4, all 5 columns to columns 1..5.
TEST(SeededNoise, SeedResizePastesTheSeedsNoiseCentred) {
  txt2img::SeededNoise noise({5, 9}, {}, 0, {9, 5});
  const std::vector<int64_t> shape = {2, 4, 6, 8};
  const auto first = noise.draw(shape);
  for (auto [row, seed] : {std::pair{0, 5}, {1, 9}}) {
    auto expected = randn(seed, {1, 4, 6, 8});  // what the row draws without a resize
    const auto resized = randn(seed, {1, 4, 9, 5});
    expected.narrow(2, 0, 5).narrow(3, 1, 5).copy_(resized.narrow(2, 2, 5));
    EXPECT_TRUE(torch::equal(first[row], expected[0])) << "row " << row;
  }
  // Step noise goes on from the row's generator as without a resize, and a restart (the hires pass) resizes again,
  // into its own size.
  txt2img::SeededNoise plain({5, 9});
  plain.draw(shape);
  EXPECT_TRUE(torch::equal(noise.draw(shape), plain.draw(shape)));
  noise.restart();
  const auto hires = noise.draw({2, 4, 3, 4});
  auto expected = randn(5, {1, 4, 3, 4});
  // 9x5 into 3x4: rows 3..5 (offset (3 - 9) // 2 = -3); the offset of the columns is (4 - 5) // 2 = -1 by Python's
  // floor, so A1111 takes 5 - 2 = 3 of them, 1..3, and the last column keeps the row generator's draw.
  expected.narrow(3, 0, 3).copy_(randn(5, {1, 4, 9, 5}).narrow(2, 3, 3).narrow(3, 1, 3));
  EXPECT_TRUE(torch::equal(hires[0], expected[0]));
  // A resize to the drawn size, or of one side only, is none (A1111 needs both sides and another shape).
  for (txt2img::SeedResize same : {txt2img::SeedResize{6, 8}, txt2img::SeedResize{9, 0}}) {
    txt2img::SeededNoise unchanged({5, 9}, {}, 0, same);
    txt2img::SeededNoise reference({5, 9});
    EXPECT_TRUE(torch::equal(unchanged.draw(shape), reference.draw(shape)));
  }
}

// With a variation, A1111 mixes the two noises at the resize's size, then pastes the mix.
TEST(SeededNoise, SeedResizeMixesTheVariationAtItsSize) {
  txt2img::SeededNoise noise({5}, {{100, 0.3}}, 0, {4, 10});
  const auto first = noise.draw({1, 4, 6, 8});
  auto expected = randn(5, {1, 4, 6, 8});
  const auto mixed = txt2img::slerp_noise(0.3, randn(5, {1, 4, 4, 10})[0], randn(100, {1, 4, 4, 10})[0]);
  expected.narrow(2, 1, 4).copy_(mixed.unsqueeze(0).narrow(3, 1, 8));
  EXPECT_TRUE(torch::equal(first, expected));
}

TEST(SeededNoise, SeedResizeRefusesNegativeSizes) {
  try {
    txt2img::SeededNoise noise({5}, {}, 0, {-8, 64});
    ADD_FAILURE() << "no error";
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), txt2img::ErrorKind::Usage);
  }
}

// Nearly parallel noises take A1111's linear fallback, which weighs them the other way round from the slerp.
TEST(SeededNoise, NearlyParallelNoisesTakeA1111sLinearFallback) {
  const auto low = randn(5, kShape)[0];
  const auto high = low * 1.001 + 1e-4;
  const auto mixed = txt2img::slerp_noise(0.25, low, high);
  EXPECT_TRUE(torch::equal(mixed, low * 0.25 + high * 0.75));
}

TEST(SeededNoise, SlerpRefusesNoisesItCannotMix) {
  const auto low = randn(5, kShape)[0];
  for (const auto& [a, b] : std::vector<std::pair<torch::Tensor, torch::Tensor>>{{low.flatten(), low.flatten()},
                                                                                 {low.unsqueeze(0), low.unsqueeze(0)},
                                                                                 {low, low[0]},
                                                                                 {low, low.to(torch::kFloat64)},
                                                                                 {low, torch::Tensor()}}) {
    try {
      txt2img::slerp_noise(0.5, a, b);
      ADD_FAILURE() << "no error";
    } catch (const txt2img::Error& e) {
      EXPECT_EQ(e.kind(), txt2img::ErrorKind::Runtime);
      EXPECT_NE(std::string(e.what()).find("[C, H, W]"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
