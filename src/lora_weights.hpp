// The bundle's LoRAs (scripts/add_lora.py) added to the text encoder's and the U-Net's weights for the batches that
// ask for them, and taken out again for the batches that ask for others or none.
#pragma once

#include <torch/script.h>

#include <filesystem>
#include <map>
#include <vector>

#include "txt2img/bundle.hpp"
#include "txt2img/params.hpp"

namespace txt2img {

class LoraWeights {
 public:
  explicit LoraWeights(std::filesystem::path bundle_dir) : bundle_dir_(std::move(bundle_dir)) {}

  // Makes every weight a LoRA of `uses` changes W + te_weight (or unet_weight) * delta, the LoRAs added in order in
  // float32 from the original weights and cast to the weight's dtype once, as scripts/convert.py --lora merges them
  // (the same numbers on the CPU in float32). The weights change in place, so a captured CUDA graph stays valid.
  // Nothing changes when `uses` is what is applied already. Throws Error(Bundle) for a LoRA file that does not fit
  // the modules; the original weights are back in place then.
  void apply(const std::vector<LoraUse>& uses, const Manifest& manifest, torch::jit::Module& text_encoder,
             torch::jit::Module& unet);

 private:
  void restore(torch::jit::Module& text_encoder, torch::jit::Module& unet);

  std::filesystem::path bundle_dir_;
  std::vector<LoraUse> applied_;
  // "unet.<parameter>" / "text_encoder.<parameter>" -> its value before any LoRA, in host memory.
  std::map<std::string, torch::Tensor> originals_;
};

}  // namespace txt2img
