// The Gaussian noise of a batch, drawn from CPU generators seeded per image so that a seed gives the same image on
// any device and in any batch.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "txt2img/params.hpp"

namespace txt2img {
namespace detail {
class BrownianTreeNoise;
}

// A step's noise where a sampler takes it from a Brownian motion (A1111's DPM++ SDE and DPM++ 2M SDE): its increment
// from `sigma` to `sigma_next`, divided by the root of their distance (a standard-normal tensor), on a tree spanning
// [sigma_min, sigma_max], the smallest positive and the largest sigma of the pass's schedule.
struct BrownianIncrement {
  float sigma_min, sigma_max;
  float sigma, sigma_next;
};

// Where the Gaussian noise of one batch comes from: one standard-normal draw of the latent shape at the start,
// then one per step for samplers that need it.
class NoiseSource {
 public:
  virtual ~NoiseSource() = default;
  virtual torch::Tensor draw(const std::vector<int64_t>& shape) = 0;
  // A Brownian increment of the latent shape, for samplers whose step noise is one (Scheduler::brownian_increment);
  // increments must be asked for in the sampler's order, as the trees' float32 sums depend on the queries before.
  // This default throws Error(Runtime): a source without Brownian motions.
  virtual torch::Tensor brownian(const std::vector<int64_t>& shape, const BrownianIncrement& increment);
  // The next draws are those from the start again. A hires pass does this before drawing its noise, as A1111 makes
  // a new generator from each seed for it.
  virtual void restart() = 0;
};

// Where an image's noise comes from: torch's CPU generator seeded with its seed (A1111's "RNG: CPU"), or A1111's NV
// generator (its "RNG: NV"), Philox on the CPU as torch.randn draws it on an NVIDIA GPU, which is also what A1111
// draws by default ("RNG: GPU", or no RNG field) on an NVIDIA card, up to the GPU's float rounding.
enum class NoiseRng { kCpu, kNv };

// AUTOMATIC1111's "Seed resize from" (its Resize seed from width and height): the first noise after a (re)start is
// the seed's noise at this latent size (variations mixed in there), pasted centred into the seed's noise at the
// drawn size, cropped where it is larger, so that an image keeps much of its seed's composition at another size.
// Sizes in latents (A1111's pixels // 8); 0 or the drawn size itself: no resize.
struct SeedResize {
  int64_t height = 0;
  int64_t width = 0;
};

namespace detail {
// One image's generator of `seed`: torch's CPU one, or A1111's NV one with the count of its draws (a fresh one's
// first draw is what torchsde's Brownian-tree nodes draw).
class SeededGenerator {
 public:
  SeededGenerator(NoiseRng rng, uint64_t seed);
  torch::Tensor randn(const std::vector<int64_t>& shape);

 private:
  NoiseRng rng_;
  uint64_t seed_;
  uint64_t draws_ = 0;
  at::Generator cpu_;
};
}  // namespace detail

// Row k draws from its own generator seeded with seeds[k] (as torch.Generator().manual_seed does, or with `rng` kNv
// as A1111's rng_philox.Generator(seed) does, each draw one step on its counter), so an image depends on its seed
// only, never on the batch it was made in. With variations (one per row, or none), each
// row's first draw after a (re)start is mixed with the same draw from a fresh generator of its variation seed.
// With a seed resize, that first draw is made as A1111 makes it: the resized noise (from a fresh generator of the
// row's seed, mixed with its variation's) pasted into the row generator's own draw.
// With A1111's eta noise seed delta ("ENSD") d != 0, the draws after the first come from generators seeded with
// seeds[k] + d instead, as A1111 draws a sampler's step noise.
// Brownian increments come from one Brownian tree per row whose entropy is the row's seed (neither variations nor the
// ENSD change them), its nodes' normals drawn by the generator kind: torchsde draws them on the samples' device
// whatever A1111's RNG setting, so kNv is what A1111 draws on an NVIDIA GPU, kCpu what it draws on the CPU; over the
// span the first increment asks for, as k-diffusion's BrownianTreeNoiseSampler makes them where A1111 seeds it; a
// restart, or another span or shape, makes new trees. Throws Error(Usage) for variations that are neither one per seed
// nor none, a negative resize, and a draw of another batch than one row per seed.
class SeededNoise : public NoiseSource {
 public:
  explicit SeededNoise(std::vector<uint64_t> seeds, std::vector<Variation> variations = {},
                       uint64_t eta_noise_seed_delta = 0, SeedResize resize = {}, NoiseRng rng = NoiseRng::kCpu);
  ~SeededNoise() override;
  torch::Tensor draw(const std::vector<int64_t>& shape) override;
  torch::Tensor brownian(const std::vector<int64_t>& shape, const BrownianIncrement& increment) override;
  void restart() override;

 private:
  // One generator per row, seeded with the row's seed + delta.
  void seed_generators(uint64_t delta);
  // Throws Error(Usage) unless `shape` has one row per seed.
  void check_batch(const std::vector<int64_t>& shape) const;

  std::vector<uint64_t> seeds_;
  std::vector<Variation> variations_;
  uint64_t eta_noise_seed_delta_;
  SeedResize resize_;
  NoiseRng rng_;
  std::vector<detail::SeededGenerator> generators_;
  bool first_draw_ = true;
  std::unique_ptr<detail::BrownianTreeNoise> trees_;
  std::vector<int64_t> trees_shape_;
  float trees_span_[2] = {0, 0};
};

// A1111's slerp of two noises of one image ([C, H, W]): along dim 1 (its rows), the spherical interpolation at
// `t` (0: low, 1: high), or A1111's linear fallback low * t + high * (1 - t) where the two are nearly parallel.
// Throws Error(Runtime) unless `low` and `high` are float32 tensors of one image's shape ([C, H, W]).
torch::Tensor slerp_noise(double t, const torch::Tensor& low, const torch::Tensor& high);

}  // namespace txt2img
