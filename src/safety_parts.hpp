// The safety checker's two exact steps around its vision tower (safety.cpp), apart for their golden tests.
#pragma once

#include <torch/torch.h>

#include "txt2img/safety.hpp"

namespace txt2img {

// uint8 NHWC images -> float32 NCHW CLIP input (resize shortest edge, centre crop, rescale, normalise).
torch::Tensor safety_preprocess(const torch::Tensor& nhwc_uint8, const SafetyConfig& config);

// diffusers' StableDiffusionSafetyChecker.forward rule over float32 cosine similarities and thresholds.
SafetyScores score_safety(const torch::Tensor& cos_dist, const torch::Tensor& concept_weights,
                          const torch::Tensor& special_cos_dist, const torch::Tensor& special_weights);

}  // namespace txt2img
