#include "txt2img/noise.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "brownian_tree.hpp"
#include "philox.hpp"
#include "txt2img/error.hpp"

namespace txt2img {

torch::Tensor NoiseSource::brownian(const std::vector<int64_t>& /*shape*/, const BrownianIncrement& /*increment*/) {
  throw Error(ErrorKind::Runtime, "this noise source has no Brownian motions for the sampler's step noise");
}

namespace {

// Python's a // 2, which rounds a negative odd a down.
int64_t floor_half(int64_t a) { return a >= 0 ? a / 2 : -((1 - a) / 2); }

// A1111's paste of the seed-resized noise `from` into `into` ([1, C, H, W] each): centred, each side cropped to the
// smaller of the two with the same floor-divided offsets as A1111's.
void paste_centred(const torch::Tensor& from, torch::Tensor& into) {
  int64_t offset[2], source[2], extent[2];
  for (int d = 0; d < 2; ++d) {
    const int64_t dim = 2 + d;
    const int64_t half = floor_half(into.size(dim) - from.size(dim));
    extent[d] = half >= 0 ? from.size(dim) : from.size(dim) + 2 * half;
    offset[d] = std::max<int64_t>(half, 0);
    source[d] = std::max<int64_t>(-half, 0);
  }
  into.narrow(2, offset[0], extent[0])
      .narrow(3, offset[1], extent[1])
      .copy_(from.narrow(2, source[0], extent[0]).narrow(3, source[1], extent[1]));
}

}  // namespace

SeededNoise::SeededNoise(std::vector<uint64_t> seeds, std::vector<Variation> variations, uint64_t eta_noise_seed_delta,
                         SeedResize resize, NoiseRng rng)
    : seeds_(std::move(seeds)),
      variations_(std::move(variations)),
      eta_noise_seed_delta_(eta_noise_seed_delta),
      resize_(resize),
      rng_(rng) {
  if (!variations_.empty() && variations_.size() != seeds_.size())
    throw Error(ErrorKind::Usage, std::to_string(seeds_.size()) + " seeds take one variation each or none, not " +
                                      std::to_string(variations_.size()));
  if (resize_.height < 0 || resize_.width < 0)
    throw Error(ErrorKind::Usage, "a seed resize takes sizes of 0 or more latents, not " +
                                      std::to_string(resize_.width) + "x" + std::to_string(resize_.height));
  restart();
}

SeededNoise::~SeededNoise() = default;

void SeededNoise::restart() {
  seed_generators(0);
  first_draw_ = true;
  trees_.reset();
}

torch::Tensor SeededNoise::brownian(const std::vector<int64_t>& shape, const BrownianIncrement& increment) {
  check_batch(shape);
  if (!(increment.sigma_min > 0 && increment.sigma_min < increment.sigma_max))
    throw Error(ErrorKind::Runtime, "a Brownian tree spans sigmas from a positive one to a larger one, not " +
                                        std::to_string(increment.sigma_min) + " to " +
                                        std::to_string(increment.sigma_max));
  if (!trees_ || trees_shape_ != shape || trees_span_[0] != increment.sigma_min ||
      trees_span_[1] != increment.sigma_max) {
    trees_ = std::make_unique<detail::BrownianTreeNoise>(increment.sigma_min, increment.sigma_max, shape, seeds_, rng_);
    trees_shape_ = shape;
    trees_span_[0] = increment.sigma_min;
    trees_span_[1] = increment.sigma_max;
  }
  return (*trees_)(increment.sigma, increment.sigma_next);
}

void SeededNoise::check_batch(const std::vector<int64_t>& shape) const {
  if (shape.empty() || shape[0] != static_cast<int64_t>(seeds_.size()))
    throw Error(ErrorKind::Usage, "a batch of " + std::to_string(shape.empty() ? 0 : shape[0]) +
                                      " images takes as many seeds, not " + std::to_string(seeds_.size()));
}

detail::SeededGenerator::SeededGenerator(NoiseRng rng, uint64_t seed) : rng_(rng), seed_(seed) {
  if (rng_ == NoiseRng::kCpu) cpu_ = at::detail::createCPUGenerator(seed);
}

torch::Tensor detail::SeededGenerator::randn(const std::vector<int64_t>& shape) {
  if (rng_ == NoiseRng::kNv) return detail::philox_randn(seed_, draws_++, shape);
  return torch::randn(shape, cpu_, torch::kFloat32);
}

void SeededNoise::seed_generators(uint64_t delta) {
  generators_.clear();
  for (uint64_t seed : seeds_) generators_.emplace_back(rng_, seed + delta);
}

torch::Tensor SeededNoise::draw(const std::vector<int64_t>& shape) {
  check_batch(shape);
  // One draw per row, each of batch 1, is what torch.randn((1, ...), generator=manual_seed(seed)) gives.
  std::vector<int64_t> row_shape = shape;
  row_shape[0] = 1;
  // A1111 resizes where both sides are set and the shapes then differ.
  std::vector<int64_t> seed_shape = row_shape;
  if (first_draw_ && resize_.height > 0 && resize_.width > 0 && row_shape.size() == 4) {
    seed_shape[2] = resize_.height;
    seed_shape[3] = resize_.width;
  }
  const bool resized = seed_shape != row_shape;
  std::vector<torch::Tensor> rows;
  for (size_t k = 0; k < generators_.size(); ++k) {
    auto row = generators_[k].randn(row_shape);
    auto seed_noise = row;
    if (resized) seed_noise = detail::SeededGenerator(rng_, seeds_[k]).randn(seed_shape);
    if (first_draw_ && !variations_.empty() && variations_[k].strength != 0) {
      const auto other = detail::SeededGenerator(rng_, variations_[k].seed).randn(seed_shape);
      seed_noise = slerp_noise(variations_[k].strength, seed_noise[0], other[0]).unsqueeze(0);
    }
    if (resized)
      paste_centred(seed_noise, row);
    else
      row = seed_noise;
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
