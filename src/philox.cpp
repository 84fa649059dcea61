#include "philox.hpp"

#include <cmath>

#include "txt2img/error.hpp"

namespace txt2img::detail {
namespace {

constexpr uint32_t kMultiplier[2] = {0xD2511F53u, 0xCD9E8D57u};
constexpr uint32_t kKeyBump[2] = {0x9E3779B9u, 0xBB67AE85u};

// One Philox round: both 64-bit products' halves, crossed with the other words and the key.
void philox_round(uint32_t counter[4], const uint32_t key[2]) {
  const uint64_t first = static_cast<uint64_t>(counter[0]) * kMultiplier[0];
  const uint64_t second = static_cast<uint64_t>(counter[2]) * kMultiplier[1];
  const uint32_t c1 = counter[1], c3 = counter[3];
  counter[0] = static_cast<uint32_t>(second >> 32) ^ c1 ^ key[0];
  counter[1] = static_cast<uint32_t>(second);
  counter[2] = static_cast<uint32_t>(first >> 32) ^ c3 ^ key[1];
  counter[3] = static_cast<uint32_t>(first);
}

}  // namespace

torch::Tensor philox_randn(uint64_t seed, uint64_t offset, const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t side : shape) count *= side;
  if (count > (int64_t{1} << 32) || offset >= (uint64_t{1} << 32))
    throw Error(ErrorKind::Runtime, "A1111's NV noise draws at most 2^32 numbers at once and 2^32 times");
  // A1111's float32 constants (2^-32 and 2^-32 * 2 pi, as it rounds them), in NumPy's float64 arithmetic.
  const float scale = static_cast<float>(2.3283064e-10);
  const float angle_scale = static_cast<float>(2.3283064e-10 * 6.2831855);
  auto out = torch::empty(shape, torch::kFloat32);
  float* values = out.data_ptr<float>();
  for (int64_t i = 0; i < count; ++i) {
    uint32_t counter[4] = {static_cast<uint32_t>(offset), 0, static_cast<uint32_t>(i), 0};
    uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
    for (int round = 0; round < 9; ++round) {
      philox_round(counter, key);
      key[0] += kKeyBump[0];
      key[1] += kKeyBump[1];
    }
    philox_round(counter, key);
    const double u = static_cast<double>(counter[0]) * scale + static_cast<double>(scale / 2);
    const double v = static_cast<double>(counter[1]) * angle_scale + static_cast<double>(angle_scale / 2);
    values[i] = static_cast<float>(std::sqrt(-2.0 * std::log(u)) * std::sin(v));
  }
  return out;
}

}  // namespace txt2img::detail
