// Pillow's bicubic resampler, which the safety checker's preprocessing reproduces (image_resize.cpp says how).
#pragma once

#include <torch/torch.h>

namespace txt2img {

// Resizes one 8-bit HWC RGB image exactly as Pillow's Image.resize(..., BICUBIC) does (antialiased, fixed point).
torch::Tensor resize_bicubic_like_pillow(const torch::Tensor& hwc_uint8, int out_height, int out_width);

}  // namespace txt2img
