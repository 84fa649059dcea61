// What the pipeline's two sources share (pipeline.cpp: loading, denoising, decoding; text_conditioning.cpp: the
// prompts' encodings): where the side modules run, the observer, and each pass's sampler.
#pragma once

#include <memory>
#include <string>

#include "txt2img/pipeline.hpp"

namespace txt2img {

// Where the text encoder and the safety checker run: with low_vram the CPU in float32, leaving the device's memory to
// the U-Net and the decoder (both run once per batch, a small cost next to the denoising loop).
inline torch::Device side_device(const PipelineOptions& options) {
  return options.low_vram ? torch::kCPU : options.device;
}
inline torch::ScalarType side_dtype(const PipelineOptions& options) {
  return options.low_vram ? torch::kFloat32 : options.dtype;
}

inline void observe(Observer* observer, const std::string& name, const torch::Tensor& value) {
  if (observer) observer->tensor(name, value);
}

// The pass's sampler for `steps` steps, on the bundle's training schedule with the sampler's own default spacing and
// a steps offset of 1, as the reference pipelines run them, with the etas it takes. Throws Error(Usage) for settings
// the sampler refuses, Error(Bundle) for a schedule it cannot run.
std::unique_ptr<Scheduler> make_sampler(const Manifest& manifest, const GenerationParams& params, int steps);

// The hires pass's settings for make_sampler: its own sampler where it has one.
GenerationParams hires_pass(const GenerationParams& params);

}  // namespace txt2img
