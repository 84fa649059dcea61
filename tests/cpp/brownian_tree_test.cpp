// The Brownian tree behind A1111's DPM++ SDE noise, against tests/fixtures/brownian_goldens.safetensors: torchsde
// v0.2.6's BrownianTree queried as k-diffusion's sample_dpmpp_sde queries it (tests/fixtures/make_brownian_goldens.py),
// and NumPy's SeedSequence states that seed its nodes.
#include "brownian_tree.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "philox.hpp"
#include "txt2img/safetensors.hpp"

namespace {

const txt2img::SafeTensors& brownian_goldens() {
  static const auto g = txt2img::SafeTensors::open(TXT2IMG_BROWNIAN_GOLDENS);
  return g;
}

// Pairs of (low, high) 32-bit halves back into words as NumPy splits each integer (no high word under 2^32).
std::vector<uint32_t> numpy_words(const torch::Tensor& halves) {
  std::vector<uint32_t> out;
  const auto h = halves.accessor<int64_t, 1>();
  for (int64_t i = 0; i + 1 < h.size(0); i += 2) {
    const auto words =
        txt2img::detail::uint32_words(static_cast<uint64_t>(h[i]) | static_cast<uint64_t>(h[i + 1]) << 32);
    out.insert(out.end(), words.begin(), words.end());
  }
  return out;
}

TEST(BrownianTree, SeedSequenceMatchesNumPy) {
  const auto& g = brownian_goldens();
  int cases = 0;
  for (; g.contains("seed_sequence" + std::to_string(cases) + "/state"); ++cases) {
    const std::string key = "seed_sequence" + std::to_string(cases) + "/";
    const auto state = g.get(key + "state");
    const auto got =
        txt2img::detail::seed_sequence_state(numpy_words(g.get(key + "entropy")), numpy_words(g.get(key + "spawn_key")),
                                             g.get(key + "pool_size").item<int64_t>(), state.size(0));
    for (int64_t i = 0; i < state.size(0); ++i) EXPECT_EQ(got[i], state[i].item<int64_t>()) << key << i;
  }
  EXPECT_EQ(cases, 5);
}

TEST(BrownianTree, MatchesTorchsdeBitForBit) {
  const auto& g = brownian_goldens();
  int cases = 0;
  for (; g.contains("case" + std::to_string(cases) + "/w"); ++cases) {
    const std::string key = "case" + std::to_string(cases) + "/";
    const auto ends = g.get(key + "t0_t1"), rounded = g.get(key + "rounded_t0_t1");
    EXPECT_EQ(txt2img::detail::python_round(ends[0].item<double>(), 6), rounded[0].item<double>()) << key;
    EXPECT_EQ(txt2img::detail::python_round(ends[1].item<double>(), 6), rounded[1].item<double>()) << key;
    const auto expected = g.get(key + "w");
    const auto queries = g.get(key + "queries");
    std::vector<int64_t> shape(expected.sizes().begin() + 1, expected.sizes().end());
    txt2img::detail::BrownianTree tree(ends[0].item<double>(), ends[1].item<double>(), shape,
                                       static_cast<uint64_t>(g.get(key + "seed").item<int64_t>()));
    ASSERT_GT(queries.size(0), 0);
    for (int64_t q = 0; q < queries.size(0); ++q) {
      const auto w = tree(queries[q][0].item<double>(), queries[q][1].item<double>());
      ASSERT_TRUE(torch::equal(w, expected[q]))
          << key << " query " << q << " max diff " << (w - expected[q]).abs().max().item<float>();
    }
  }
  EXPECT_EQ(cases, 5);
}

TEST(BrownianTree, NoiseMatchesKDiffusionsBrownianTreeNoiseSampler) {
  const auto& g = brownian_goldens();
  const auto ends = g.get("noise/sigma_min_max"), calls = g.get("noise/calls"), expected = g.get("noise/noise");
  std::vector<uint64_t> seeds;
  for (int64_t i = 0; i < g.get("noise/seeds").size(0); ++i)
    seeds.push_back(static_cast<uint64_t>(g.get("noise/seeds")[i].item<int64_t>()));
  std::vector<int64_t> shape(expected.sizes().begin() + 1, expected.sizes().end());
  txt2img::detail::BrownianTreeNoise noise(ends[0].item<float>(), ends[1].item<float>(), shape, seeds);
  ASSERT_GT(calls.size(0), 0);
  for (int64_t c = 0; c < calls.size(0); ++c) {
    const auto got = noise(calls[c][0].item<float>(), calls[c][1].item<float>());
    ASSERT_TRUE(torch::equal(got, expected[c]))
        << "call " << c << " max diff " << (got - expected[c]).abs().max().item<float>();
  }
}

}  // namespace

// On an NVIDIA GPU torchsde draws a node's normals from a fresh CUDA generator of its seed: the root's increment is
// the Philox draw at offset 0 of the first word of the entropy's seed sequence, times the span's root.
TEST(BrownianTree, NvDrawsEachNodeFromPhiloxAtItsSeed) {
  const std::vector<int64_t> shape = {4, 3, 5};
  txt2img::detail::BrownianTree tree(0.5, 2.5, shape, 31337, txt2img::NoiseRng::kNv);
  const auto seed = txt2img::detail::seed_sequence_state(txt2img::detail::uint32_words(31337), {}, 24, 3)[0];
  EXPECT_TRUE(torch::equal(tree(0.5, 2.5), txt2img::detail::philox_randn(seed, 0, shape) * std::sqrt(2.0)));
  txt2img::detail::BrownianTree cpu(0.5, 2.5, shape, 31337);
  EXPECT_FALSE(torch::allclose(tree(0.5, 1.0), cpu(0.5, 1.0)));
}
