// SeededNoise: one CPU generator per row, and A1111's variation seeds mixed into a row's first draw.
#include "txt2img/noise.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

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
