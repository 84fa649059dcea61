// torchsde's Brownian tree, written from its algorithm (see brownian_tree.hpp). The interval [t0, t1] is the root of a
// binary tree; a node split in two gets its own seeds from NumPy's SeedSequence of (entropy, (path, depth)), and its
// children's increments are drawn from the Brownian bridge between its ends with torch.randn from those seeds. With
// halfway_tree every split is at the (rounded) midpoint, so the tree, and every node's increment, depends only on the
// entropy; a query is answered by the sum of the increments of the fewest existing nodes that tile it, which does
// depend on which nodes earlier queries made, so queries must come in the caller's order for float32 sums to agree.
#include "brownian_tree.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "txt2img/error.hpp"

namespace txt2img::detail {

namespace {

// The constants of NumPy's SeedSequence (O'Neill's seed_seq_fe design): two multiplicative hashes, one to mix the
// entropy into the pool and one to draw words from it, and the mixing function that folds hashed words together.
constexpr uint32_t kInitA = 0x43b0d7e5, kMultA = 0x931e8875;
constexpr uint32_t kInitB = 0x8b51f9dd, kMultB = 0x58f38ded;
constexpr uint32_t kMixMultL = 0xca01f9dd, kMixMultR = 0x4973f715;
constexpr int kXShift = 16;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> kXShift;
  return value;
}

uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t result = kMixMultL * x - kMixMultR * y;
  result ^= result >> kXShift;
  return result;
}

}  // namespace

std::vector<uint32_t> uint32_words(uint64_t n) {
  std::vector<uint32_t> out;
  do {
    out.push_back(static_cast<uint32_t>(n & 0xffffffffu));
    n >>= 32;
  } while (n > 0);
  return out;
}

std::vector<uint32_t> seed_sequence_state(const std::vector<uint32_t>& entropy, const std::vector<uint32_t>& spawn_key,
                                          size_t pool_size, size_t n_words) {
  // The assembled entropy: with a spawn key, the run entropy is padded with zeros to the pool size first, so that a
  // spawned child never hashes the same words as some plain entropy.
  std::vector<uint32_t> words = entropy;
  if (!spawn_key.empty() && words.size() < pool_size) words.resize(pool_size, 0);
  words.insert(words.end(), spawn_key.begin(), spawn_key.end());

  std::vector<uint32_t> pool(pool_size);
  uint32_t hash_const = kInitA;
  for (size_t i = 0; i < pool_size; ++i) pool[i] = hashmix(i < words.size() ? words[i] : 0, hash_const);
  for (size_t src = 0; src < pool_size; ++src)
    for (size_t dst = 0; dst < pool_size; ++dst)
      if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], hash_const));
  for (size_t src = pool_size; src < words.size(); ++src)
    for (size_t dst = 0; dst < pool_size; ++dst) pool[dst] = mix(pool[dst], hashmix(words[src], hash_const));

  std::vector<uint32_t> state(n_words);
  uint32_t out_const = kInitB;
  for (size_t i = 0; i < n_words; ++i) {
    uint32_t value = pool[i % pool_size];
    value ^= out_const;
    out_const *= kMultB;
    value *= out_const;
    value ^= value >> kXShift;
    state[i] = value;
  }
  return state;
}

double python_round(double x, int ndigits) {
  if (!std::isfinite(x)) return x;
  // glibc prints the exact binary value correctly rounded (ties to even in the default rounding mode), as CPython's
  // dtoa does for round(); reading the digits back is correctly rounded too.
  char buffer[512];
  std::snprintf(buffer, sizeof buffer, "%.*f", ndigits, x);
  return std::strtod(buffer, nullptr);
}

struct BrownianTree::Node {
  Node(double start, double end, Node* parent, bool is_left)
      : start(start), end(end), parent(parent), is_left(is_left) {}
  double start, end;
  Node* parent;
  bool is_left;
  // Set by a split: the rounded midpoint, the node's path (1 bit per level below the root) and depth, and its seeds
  // (torchsde draws four: W, H and two for Levy areas; only W's is used without Levy area).
  bool has_children = false;
  double midway = 0;
  uint64_t spawn_key = 0;
  int depth = 0;
  uint32_t w_seed = 0;
  std::unique_ptr<Node> left, right;
  torch::Tensor w;  // the cached increment, if any
};

BrownianTree::BrownianTree(double t0, double t1, std::vector<int64_t> shape, uint64_t entropy, NoiseRng rng)
    : shape_(std::move(shape)), entropy_(entropy), rng_(rng) {
  if (!(t0 < t1)) throw Error(ErrorKind::Runtime, "BrownianTree needs t0 < t1");
  root_ = std::make_unique<Node>(round(t0), round(t1), nullptr, false);
  // The root's increment from the first of three words of the plain entropy (pool 24), scaled by the unrounded
  // length's square root.
  const auto seeds = seed_sequence_state(uint32_words(entropy_), {}, 24, 3);
  root_->w = randn(seeds[0]) * std::sqrt(t1 - t0);
}

BrownianTree::~BrownianTree() = default;

torch::Tensor BrownianTree::randn(uint32_t seed) const { return SeededGenerator(rng_, seed).randn(shape_); }

void BrownianTree::split(Node* node, double at) {
  // Halfway tree: always split at the rounded midpoint, then split the child holding `at` until a midpoint is `at`.
  for (;;) {
    const double midway = 0.5 * (node->end + node->start);
    node->has_children = true;
    node->midway = round(midway);
    if (node->parent) {
      node->spawn_key = 2 * node->parent->spawn_key + (node->is_left ? 0 : 1);
      node->depth = node->parent->depth + 1;
    }
    if (node->depth >= 63) throw Error(ErrorKind::Runtime, "BrownianTree: interval split too deep");
    std::vector<uint32_t> key = uint32_words(node->spawn_key);
    const auto depth_words = uint32_words(static_cast<uint64_t>(node->depth));
    key.insert(key.end(), depth_words.begin(), depth_words.end());
    node->w_seed = seed_sequence_state(uint32_words(entropy_), key, 24, 4)[0];
    node->left = std::make_unique<Node>(node->start, round(midway), node, true);
    node->right = std::make_unique<Node>(round(midway), node->end, node, false);
    if (at > node->midway)
      node = node->right.get();
    else if (at < node->midway)
      node = node->left.get();
    else
      return;
  }
}

// torchsde searches from the interval it returned last, climbing to the first ancestor that holds [ta, tb]; descending
// from the root reaches that same ancestor (every node above it holds the query inside one child), so the nodes made
// and the tiling returned are the same.
void BrownianTree::locate(Node* node, double ta, double tb, std::vector<Node*>& out) {
  for (;;) {
    if (ta == node->start && tb == node->end) {
      out.push_back(node);
      return;
    }
    if (!node->has_children) split(node, ta == node->start ? tb : ta);
    if (tb <= node->midway) {
      node = node->left.get();
    } else if (ta >= node->midway) {
      node = node->right.get();
    } else {
      locate(node->left.get(), ta, node->midway, out);
      ta = node->midway;
      node = node->right.get();
    }
  }
}

torch::Tensor BrownianTree::increment(Node* node) {
  if (node->w.defined()) return node->w;
  const Node* parent = node->parent;
  const torch::Tensor w = increment(node->parent);
  // The Brownian bridge: given the parent's increment W over [s, e] split at m, the left part is normal with mean
  // (m - s) / (e - s) * W and variance (m - s)(e - s)^-1 (e - m); the right part is the rest. float32 tensor ops with
  // double scalars in torchsde's order.
  const double h_reciprocal = 1 / (parent->end - parent->start);
  const double left_diff = parent->midway - parent->start;
  const double right_diff = parent->end - parent->midway;
  const auto mean = w * left_diff * h_reciprocal;
  const double var = left_diff * right_diff * h_reciprocal;
  const auto left_w = mean + randn(parent->w_seed) * std::sqrt(var);
  torch::Tensor out = node->is_left ? left_w : w - left_w;
  node->w = out;
  recent_.erase(std::remove(recent_.begin(), recent_.end(), node), recent_.end());
  if (recent_.size() >= 45) {
    recent_.front()->w = torch::Tensor();
    recent_.erase(recent_.begin());
  }
  recent_.push_back(node);
  return out;
}

torch::Tensor BrownianTree::operator()(double ta, double tb) {
  ta = std::clamp(ta, root_->start, root_->end);
  tb = std::clamp(tb, root_->start, root_->end);
  if (ta > tb) throw Error(ErrorKind::Runtime, "BrownianTree needs ta <= tb");
  if (ta == tb) return torch::zeros(shape_, torch::kFloat32);
  ta = round(ta);
  tb = round(tb);
  if (ta == tb) throw Error(ErrorKind::Runtime, "BrownianTree: ta and tb round to the same time");
  std::vector<Node*> nodes;
  locate(root_.get(), ta, tb, nodes);
  torch::Tensor w = increment(nodes[0]);
  for (size_t i = 1; i < nodes.size(); ++i) w = w + increment(nodes[i]);
  return w;
}

BrownianTreeNoise::BrownianTreeNoise(float sigma_min, float sigma_max, const std::vector<int64_t>& shape,
                                     const std::vector<uint64_t>& seeds, NoiseRng rng) {
  if (shape.empty() || shape[0] != static_cast<int64_t>(seeds.size()))
    throw Error(ErrorKind::Runtime, "BrownianTreeNoise takes one seed per row");
  // BatchedBrownianTree orders the ends (float32 compare) and remembers which way round they came.
  sign_ = sigma_min < sigma_max ? 1 : -1;
  const double t0 = std::min(sigma_min, sigma_max), t1 = std::max(sigma_min, sigma_max);
  const std::vector<int64_t> row(shape.begin() + 1, shape.end());
  for (uint64_t seed : seeds) trees_.push_back(std::make_unique<BrownianTree>(t0, t1, row, seed, rng));
}

torch::Tensor BrownianTreeNoise::operator()(float sigma, float sigma_next) {
  const int sign = sigma < sigma_next ? sign_ : -sign_;
  const double ta = std::min(sigma, sigma_next), tb = std::max(sigma, sigma_next);
  std::vector<torch::Tensor> rows;
  for (auto& tree : trees_) rows.push_back((*tree)(ta, tb));
  // The same float32 ops in k-diffusion's order: (stack * sign) / (sigma_next - sigma).abs().sqrt().
  const auto from = torch::scalar_tensor(sigma, torch::kFloat32),
             to = torch::scalar_tensor(sigma_next, torch::kFloat32);
  return torch::stack(rows) * sign / (to - from).abs().sqrt();
}

}  // namespace txt2img::detail
