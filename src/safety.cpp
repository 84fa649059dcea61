// The safety checker as diffusers v0.31.0 runs it: transformers' CLIPImageProcessor on the uint8 images, the CLIP
// vision tower with projection and cosine similarities (the exported TorchScript module), then
// StableDiffusionSafetyChecker.forward's scoring loop.
//
// Preprocessing is exact: on every reference fixture (tiny 16x16 and 16x24, sd1 128x128 and 96x128 images, all
// runs and safety cases) safety_preprocess reproduces `safety/clip_input` bit for bit (max |difference| 0), because
// the resize reproduces Pillow's fixed-point resampler exactly (image_resize.cpp) and the float steps are done in
// the reference's precision and order.
#include "txt2img/safety.hpp"

#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "image_resize.hpp"
#include "safety_parts.hpp"
#include "txt2img/error.hpp"

namespace txt2img {
namespace {

// transformers' get_resize_output_image_size(default_to_square=False): the short edge becomes `shortest_edge`,
// the long one int(shortest_edge * long / short) with Python's true division (correctly rounded double) and
// truncation.
std::pair<int, int> shortest_edge_size(int height, int width, int shortest_edge) {
  const bool portrait = width <= height;
  const int short_side = portrait ? width : height;
  const int long_side = portrait ? height : width;
  const int new_long = static_cast<int>(static_cast<double>(static_cast<int64_t>(shortest_edge) * long_side) /
                                        static_cast<double>(short_side));
  return portrait ? std::make_pair(new_long, shortest_edge) : std::make_pair(shortest_edge, new_long);
}

// Python's floor division, which transformers' center_crop uses for the offsets (negative when padding).
int floor_div2(int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

// diffusers computes `round(concept_cos - concept_threshold + adjustment, 3)` where concept_cos is a numpy.float32
// element, so the expression is a numpy.float64 and round() is numpy's: multiply by 10^3, round half to even,
// divide by 10^3, each step in double. That differs from Python's correctly rounded round(float, 3) near decimal
// ties: the double 0.32250000000000000888 (just above the tie) times 1000 rounds to exactly 322.5, so numpy gives
// 0.322 where Python gives 0.323.
double round3_like_numpy(double x) { return std::nearbyint(x * 1000.0) / 1000.0; }

void check_scores_shape(const torch::Tensor& dist, const torch::Tensor& weights, const char* what) {
  if (dist.dim() != 2 || weights.dim() != 1 || dist.size(1) != weights.size(0))
    throw Error(ErrorKind::Runtime, std::string("score_safety: ") + what + " similarities " +
                                        c10::str(dist.sizes()) + " do not match thresholds " +
                                        c10::str(weights.sizes()));
}

std::string convert_hint(const std::filesystem::path& file) {
  return "safety checker " + file.string() +
         ": re-run scripts/convert.py to regenerate the model bundle (or generate with --no-safety-checker)";
}

}  // namespace

torch::Tensor safety_preprocess(const torch::Tensor& nhwc_uint8, const SafetyConfig& config) {
  if (nhwc_uint8.dim() != 4 || nhwc_uint8.scalar_type() != torch::kUInt8 || nhwc_uint8.size(3) != 3)
    throw Error(ErrorKind::Runtime, "safety_preprocess expects uint8 NHWC RGB images, got " +
                                        std::string(c10::toString(nhwc_uint8.scalar_type())) + " " +
                                        c10::str(nhwc_uint8.sizes()));
  if (config.shortest_edge < 1 || config.crop_height < 1 || config.crop_width < 1)
    throw Error(ErrorKind::Runtime, "safety_preprocess: resize and crop sizes must be positive");
  const torch::Tensor images = nhwc_uint8.to(torch::kCPU);
  const int64_t batch = images.size(0);
  const int crop_h = config.crop_height;
  const int crop_w = config.crop_width;

  // Per channel, in the reference's float32: transformers' rescale multiplies the uint8 value by the factor in
  // double and stores float32; normalize then computes (x - mean) / std with mean and std cast to float32.
  float lut[3][256];
  for (int c = 0; c < 3; ++c) {
    const float mean = static_cast<float>(config.mean[c]);
    const float std = static_cast<float>(config.std[c]);
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v * config.rescale_factor) - mean) / std;
  }

  torch::Tensor out = torch::empty({batch, 3, crop_h, crop_w}, torch::kFloat32);
  auto o = out.accessor<float, 4>();
  const auto [new_h, new_w] =
      shortest_edge_size(static_cast<int>(images.size(1)), static_cast<int>(images.size(2)), config.shortest_edge);
  // transformers' center_crop: offsets floor((size - crop) / 2); where the crop is larger than the image, the image
  // is centred on zeros (uint8 0, normalised like any other pixel).
  const int top = floor_div2(new_h - crop_h);
  const int left = floor_div2(new_w - crop_w);
  for (int64_t b = 0; b < batch; ++b) {
    const torch::Tensor resized = resize_bicubic_like_pillow(images[b], new_h, new_w);
    auto r = resized.accessor<uint8_t, 3>();
    for (int y = 0; y < crop_h; ++y) {
      for (int x = 0; x < crop_w; ++x) {
        const int sy = y + top;
        const int sx = x + left;
        const bool inside = sy >= 0 && sy < new_h && sx >= 0 && sx < new_w;
        for (int c = 0; c < 3; ++c) o[b][c][y][x] = lut[c][inside ? r[sy][sx][c] : 0];
      }
    }
  }
  return out;
}

SafetyScores score_safety(const torch::Tensor& cos_dist, const torch::Tensor& concept_weights,
                          const torch::Tensor& special_cos_dist, const torch::Tensor& special_weights) {
  check_scores_shape(cos_dist, concept_weights, "concept");
  check_scores_shape(special_cos_dist, special_weights, "special-care");
  if (cos_dist.size(0) != special_cos_dist.size(0))
    throw Error(ErrorKind::Runtime, "score_safety: concept and special-care similarities differ in batch size");
  // diffusers reads float32 similarities and thresholds and does the arithmetic on Python/numpy doubles; widening
  // float32 to double is exact, so these copies lose nothing.
  const torch::Tensor cos = cos_dist.to(torch::kCPU).to(torch::kFloat32).to(torch::kFloat64).contiguous();
  const torch::Tensor thr = concept_weights.to(torch::kCPU).to(torch::kFloat32).to(torch::kFloat64).contiguous();
  const torch::Tensor scos = special_cos_dist.to(torch::kCPU).to(torch::kFloat32).to(torch::kFloat64).contiguous();
  const torch::Tensor sthr = special_weights.to(torch::kCPU).to(torch::kFloat32).to(torch::kFloat64).contiguous();
  const int64_t batch = cos.size(0);
  const int64_t n_concepts = cos.size(1);
  const int64_t n_special = scos.size(1);

  SafetyScores scores;
  scores.concept_scores = torch::empty({batch, n_concepts}, torch::kFloat64);
  scores.special_scores = torch::empty({batch, n_special}, torch::kFloat64);
  scores.flagged.assign(static_cast<size_t>(batch), false);
  auto c = cos.accessor<double, 2>();
  auto t = thr.accessor<double, 1>();
  auto sc = scos.accessor<double, 2>();
  auto st = sthr.accessor<double, 1>();
  auto cs = scores.concept_scores.accessor<double, 2>();
  auto ss = scores.special_scores.accessor<double, 2>();
  for (int64_t i = 0; i < batch; ++i) {
    // A special-care concept that fires makes every later special concept and all concepts 0.01 stricter.
    double adjustment = 0.0;
    for (int64_t j = 0; j < n_special; ++j) {
      ss[i][j] = round3_like_numpy(sc[i][j] - st[j] + adjustment);
      if (ss[i][j] > 0) adjustment = 0.01;
    }
    for (int64_t j = 0; j < n_concepts; ++j) {
      cs[i][j] = round3_like_numpy(c[i][j] - t[j] + adjustment);
      if (cs[i][j] > 0) scores.flagged[static_cast<size_t>(i)] = true;
    }
  }
  return scores;
}

SafetyChecker::SafetyChecker(const std::filesystem::path& module_file, const SafetyConfig& config,
                             torch::Device device, torch::ScalarType dtype)
    : config_(config), device_(device), dtype_(dtype), module_file_(module_file) {
  if (!std::filesystem::is_regular_file(module_file))
    throw Error(ErrorKind::Bundle, convert_hint(module_file) + " (file missing)");
  try {
    // Read into host memory and placed from there, like the pipeline's other modules, so that the device never
    // holds the float32 copy of a half-precision checker.
    module_ = torch::jit::load(module_file.string(), torch::kCPU);
  } catch (const c10::Error& e) {
    throw Error(ErrorKind::Bundle, convert_hint(module_file) + " (cannot load TorchScript: " +
                                       e.what_without_backtrace() + ")");
  }
  module_.eval();
  if (!module_.find_method("forward"))
    throw Error(ErrorKind::Bundle, convert_hint(module_file) + " (module has no forward method)");
  static const char* const kScoring[] = {"concept_embeds", "special_care_embeds", "concept_embeds_weights",
                                         "special_care_embeds_weights"};
  std::vector<std::pair<std::string, torch::Tensor>> kept;
  for (const char* name : kScoring)
    if (module_.hasattr(name)) {
      const auto value = module_.attr(name);
      if (!value.isTensor())
        throw Error(ErrorKind::Bundle, convert_hint(module_file) + " (its " + name + " is no tensor)");
      kept.emplace_back(name, value.toTensor().clone());
    }
  try {
    module_.to(device, dtype);
    for (const auto& [name, value] : kept) module_.setattr(name, value.to(device));
  } catch (const std::exception& e) {  // the device's failure (out of memory), not the file's
    throw backend_failure(e);
  }
}

SafetyScores SafetyChecker::check(const torch::Tensor& nhwc_uint8) {
  torch::NoGradGuard no_grad;
  // Preprocessing is integer and float32 work on a few small images; the CPU does it exactly like the reference.
  const torch::Tensor clip_input = safety_preprocess(nhwc_uint8, config_).to(device_, dtype_);
  torch::IValue result;
  try {
    result = module_.forward({clip_input});
  } catch (const std::exception& e) {  // LibTorch's, or the TorchScript interpreter's own
    throw Error(ErrorKind::Runtime, "safety checker failed: " + std::string(backend_failure(e).what()));
  }
  // Contract of the exported module: (image_embeds [B,P], cos_dist [B,concepts], special_cos_dist [B,special],
  // concept_embeds_weights [concepts], special_care_embeds_weights [special]).
  const int64_t batch = clip_input.size(0);
  std::vector<torch::Tensor> out;
  if (result.isTuple())
    for (const auto& v : result.toTupleRef().elements())
      if (v.isTensor()) out.push_back(v.toTensor());
  bool valid = result.isTuple() && result.toTupleRef().elements().size() == 5 && out.size() == 5;
  if (valid) {
    const torch::Tensor &cos = out[1], &special = out[2], &weights = out[3], &special_weights = out[4];
    valid = cos.dim() == 2 && special.dim() == 2 && cos.size(0) == batch && special.size(0) == batch &&
            weights.dim() == 1 && special_weights.dim() == 1 && weights.size(0) == cos.size(1) &&
            special_weights.size(0) == special.size(1);
  }
  if (!valid)
    throw Error(ErrorKind::Bundle, convert_hint(module_file_) +
                                       " (forward does not return (image_embeds, cos_dist, special_cos_dist, "
                                       "concept_embeds_weights, special_care_embeds_weights) for a batch of " +
                                       std::to_string(batch) + ")");
  return score_safety(out[1], out[3], out[2], out[4]);
}

}  // namespace txt2img
