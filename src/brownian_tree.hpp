// A Brownian motion sampled on a dyadic tree of intervals, as torchsde 0.2.6's BrownianTree (a BrownianInterval with
// halfway_tree, tol 1e-6, pool_size 24 and no Levy area) samples it, so that k-diffusion's BrownianTreeNoiseSampler
// (A1111's noise for DPM++ SDE) can be reproduced number for number: the same entropy, shape and interval give the
// same increments W(ta, tb), float32, on the CPU.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "txt2img/noise.hpp"

namespace txt2img::detail {

// NumPy's np.random.SeedSequence(entropy, spawn_key, pool_size).generate_state(n_words) as uint32 words. `entropy` and
// each spawn key entry are non-negative integers given as NumPy takes them apart: 32-bit words, least significant
// first.
std::vector<uint32_t> seed_sequence_state(const std::vector<uint32_t>& entropy, const std::vector<uint32_t>& spawn_key,
                                          size_t pool_size, size_t n_words);
// A non-negative integer as NumPy's _int_to_uint32_array splits it (0 is one word).
std::vector<uint32_t> uint32_words(uint64_t n);

// Python's round(x, ndigits) for a double: correctly rounded to that many decimals, ties (of the exact binary value)
// to even.
double python_round(double x, int ndigits);

class BrownianTree {
 public:
  // torchsde.BrownianTree(t0, w0=zeros(shape, float32), t1, entropy): t0 < t1 are the times as the caller's floats.
  // torchsde draws each node's normals from a fresh torch generator of the node's seed on the samples' device: `rng`
  // kCpu is the CPU's, kNv an NVIDIA GPU's (A1111's NV imitation of it): a fresh SeededGenerator's first draw.
  BrownianTree(double t0, double t1, std::vector<int64_t> shape, uint64_t entropy, NoiseRng rng = NoiseRng::kCpu);
  ~BrownianTree();
  BrownianTree(const BrownianTree&) = delete;
  BrownianTree& operator=(const BrownianTree&) = delete;

  // W(tb) - W(ta) for ta <= tb, clamped to [t0, t1] as torchsde clamps them (it warns).
  torch::Tensor operator()(double ta, double tb);

 private:
  struct Node;
  torch::Tensor increment(Node* node);
  void split(Node* node, double at);
  void locate(Node* node, double ta, double tb, std::vector<Node*>& out);
  torch::Tensor randn(uint32_t seed) const;
  double round(double x) const { return python_round(x, 6); }

  std::vector<int64_t> shape_;
  uint64_t entropy_;
  NoiseRng rng_;
  std::unique_ptr<Node> root_;
  // torchsde keeps the increments of the 45 intervals used last (and always the root's); an increment dropped is
  // recomputed from its parent's with the same seeds, so the cache only saves time and never changes a value.
  std::vector<Node*> recent_;
};

// k-diffusion's BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seeds) as A1111 makes it for DPM++ SDE (one seed
// per image of the batch): one BrownianTree per row over [sigma_min, sigma_max], each of the row's shape; a call for
// the step from sigma to sigma_next is the rows' increments over the two, signed by the direction of the step, divided
// by sqrt(|sigma_next - sigma|) in float32: unit normal noise, stacked into `shape`.
class BrownianTreeNoise {
 public:
  // `shape` is the batch's ([N, ...]), with one seed per row.
  BrownianTreeNoise(float sigma_min, float sigma_max, const std::vector<int64_t>& shape,
                    const std::vector<uint64_t>& seeds, NoiseRng rng = NoiseRng::kCpu);
  torch::Tensor operator()(float sigma, float sigma_next);

 private:
  std::vector<std::unique_ptr<BrownianTree>> trees_;
  int sign_;
};

}  // namespace txt2img::detail
