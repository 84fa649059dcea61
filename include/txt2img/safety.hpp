// The Stable Diffusion safety checker: CLIP image preprocessing as the reference does it (Pillow bicubic resize of
// 8-bit images, centre crop, normalise), the exported vision tower, and diffusers' scoring rule.
#pragma once

#include <torch/script.h>

#include <array>
#include <filesystem>
#include <vector>

namespace txt2img {

struct SafetyConfig {
  int shortest_edge = 224;
  int crop_height = 224;
  int crop_width = 224;
  double rescale_factor = 1.0 / 255.0;
  std::array<double, 3> mean{0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> std{0.26862954, 0.26130258, 0.27577711};
};

struct SafetyScores {
  torch::Tensor concept_scores;  // float64 [B, concepts]
  torch::Tensor special_scores;  // float64 [B, special concepts]
  std::vector<bool> flagged;
};

class SafetyChecker {
 public:
  // Loads safety_checker.pt (exported by scripts/convert.py) onto the device. Throws Error(Bundle) for the file,
  // Error(Runtime) for the device (out of memory).
  // The vision tower runs in `dtype`; the concept embeddings and thresholds stay float32 so that a half-precision
  // run scores against the checkpoint's exact thresholds.
  SafetyChecker(const std::filesystem::path& module_file, const SafetyConfig& config, torch::Device device,
                torch::ScalarType dtype = torch::kFloat32);

  // Scores a batch of uint8 NHWC images.
  SafetyScores check(const torch::Tensor& nhwc_uint8);

 private:
  torch::jit::Module module_;
  SafetyConfig config_;
  torch::Device device_;
  torch::ScalarType dtype_;
  std::filesystem::path module_file_;  // named in errors about the module's output
};

}  // namespace txt2img
