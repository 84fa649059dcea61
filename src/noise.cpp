#include "txt2img/noise.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include "txt2img/error.hpp"

namespace txt2img {

SeededNoise::SeededNoise(std::vector<uint64_t> seeds, std::vector<Variation> variations,
                         uint64_t eta_noise_seed_delta)
    : seeds_(std::move(seeds)), variations_(std::move(variations)), eta_noise_seed_delta_(eta_noise_seed_delta) {
  if (!variations_.empty() && variations_.size() != seeds_.size())
    throw Error(ErrorKind::Usage, std::to_string(seeds_.size()) + " seeds take one variation each or none, not " +
                                      std::to_string(variations_.size()));
  restart();
}

void SeededNoise::restart() {
  seed_generators(0);
  first_draw_ = true;
}

void SeededNoise::seed_generators(uint64_t delta) {
  generators_.clear();
  for (uint64_t seed : seeds_) generators_.push_back(at::detail::createCPUGenerator(seed + delta));
}

torch::Tensor SeededNoise::draw(const std::vector<int64_t>& shape) {
  if (shape.empty() || shape[0] != static_cast<int64_t>(generators_.size()))
    throw Error(ErrorKind::Usage, "a batch of " + std::to_string(shape.empty() ? 0 : shape[0]) +
                                      " images takes as many seeds, not " + std::to_string(generators_.size()));
  // One draw per row, each of batch 1, is what torch.randn((1, ...), generator=manual_seed(seed)) gives.
  std::vector<int64_t> row_shape = shape;
  row_shape[0] = 1;
  std::vector<torch::Tensor> rows;
  for (size_t k = 0; k < generators_.size(); ++k) {
    auto row = torch::randn(row_shape, generators_[k], torch::kFloat32);
    if (first_draw_ && !variations_.empty() && variations_[k].strength != 0) {
      auto variation = at::detail::createCPUGenerator(variations_[k].seed);
      const auto other = torch::randn(row_shape, variation, torch::kFloat32);
      row = slerp_noise(variations_[k].strength, row[0], other[0]).unsqueeze(0);
    }
    rows.push_back(row);
  }
  if (first_draw_ && eta_noise_seed_delta_ != 0) seed_generators(eta_noise_seed_delta_);
  first_draw_ = false;
  return torch::cat(rows);
}

torch::Tensor slerp_noise(double t, const torch::Tensor& low, const torch::Tensor& high) {
  if (!low.defined() || !high.defined() || low.dim() != 3 || low.sizes() != high.sizes() ||
      low.scalar_type() != torch::kFloat32 || high.scalar_type() != torch::kFloat32)
    throw Error(ErrorKind::Runtime, "slerp_noise takes two float32 noises of one image's shape ([C, H, W])");
  // torch.norm(x, dim=1, keepdim=True) is linalg.vector_norm(x, 2, 1, True).
  const auto low_norm = low / at::linalg_vector_norm(low, 2, {1}, true);
  const auto high_norm = high / at::linalg_vector_norm(high, 2, {1}, true);
  const auto dot = (low_norm * high_norm).sum(1);
  // A1111 weighs the nearly parallel case the other way round; kept, as its images are made so.
  if (dot.mean().item<float>() > 0.9995f) return low * t + high * (1 - t);
  const auto omega = torch::acos(dot);
  const auto so = torch::sin(omega);
  return (torch::sin((1.0 - t) * omega) / so).unsqueeze(1) * low + (torch::sin(t * omega) / so).unsqueeze(1) * high;
}

}  // namespace txt2img
