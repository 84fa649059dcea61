// A1111's NV noise against tests/fixtures/philox_goldens.safetensors: A1111's own rng_philox.py run by
// tests/fixtures/make_philox_goldens.py, bit for bit; and against the values its docstring gives for torch.randn on
// an NVIDIA GPU.
#include "philox.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "txt2img/error.hpp"
#include "txt2img/safetensors.hpp"

namespace {

std::vector<int64_t> shape_of(const std::string& text) {
  std::vector<int64_t> shape;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = text.find('x', start);
    shape.push_back(std::stoll(text.substr(start, end - start)));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return shape;
}

TEST(Philox, DrawsWhatA1111sNvGeneratorDraws) {
  const auto g = txt2img::SafeTensors::open(TXT2IMG_PHILOX_GOLDENS);
  size_t compared = 0;
  for (const auto& key : g.keys()) {
    // SEED/OFFSET/SHAPE
    const auto slash = key.find('/'), second = key.find('/', slash + 1);
    const uint64_t seed = std::stoull(key.substr(0, slash));
    const uint64_t offset = std::stoull(key.substr(slash + 1, second - slash - 1));
    const auto drawn = txt2img::detail::philox_randn(seed, offset, shape_of(key.substr(second + 1)));
    const auto expected = g.get(key);
    ASSERT_EQ(drawn.sizes(), expected.sizes()) << key;
    EXPECT_TRUE(torch::equal(drawn, expected)) << key << ": off by " << (drawn - expected).abs().max().item<float>();
    ++compared;
  }
  EXPECT_EQ(compared, 9u);
}

// What torch.manual_seed(0); torch.randn(3, 4, device="cuda") gives, as rng_philox.py's docstring prints it.
TEST(Philox, IsTorchRandnOnAnNvidiaGpu) {
  const double cuda[] = {-0.92466259, -0.42534415, -2.6438457,  0.14518388,  -0.12086647, -0.57972564,
                         -0.62285122, -0.32838709, -1.07454231, -0.36314407, -1.67105067, 2.26550497};
  const auto drawn = txt2img::detail::philox_randn(0, 0, {3, 4}).flatten();
  for (int64_t i = 0; i < 12; ++i) EXPECT_NEAR(drawn[i].item<double>(), cuda[i], 1e-6) << i;
}

TEST(Philox, RefusesWhatItsCounterCannotHold) {
  EXPECT_THROW(txt2img::detail::philox_randn(1, uint64_t{1} << 32, {2}), txt2img::Error);
  EXPECT_NO_THROW(txt2img::detail::philox_randn(1, (uint64_t{1} << 32) - 1, {2}));
}

}  // namespace
