#include <ATen/CPUGeneratorImpl.h>

#include "txt2img/pipeline.hpp"

namespace txt2img {

SeededNoise::SeededNoise(std::vector<uint64_t> seeds) : seeds_(std::move(seeds)) { restart(); }

void SeededNoise::restart() {
  generators_.clear();
  for (uint64_t seed : seeds_) generators_.push_back(at::detail::createCPUGenerator(seed));
}

torch::Tensor SeededNoise::draw(const std::vector<int64_t>& shape) {
  TORCH_CHECK(!shape.empty() && shape[0] == static_cast<int64_t>(generators_.size()),
              "noise shape's batch does not match the number of seeds");
  // One draw per row, each of batch 1, is what torch.randn((1, ...), generator=manual_seed(seed)) gives.
  std::vector<int64_t> row_shape = shape;
  row_shape[0] = 1;
  std::vector<torch::Tensor> rows;
  for (auto& gen : generators_) rows.push_back(torch::randn(row_shape, gen, torch::kFloat32));
  return torch::cat(rows);
}

}  // namespace txt2img
