// Generation settings that every image of one batch shares (kept free of torch headers so that command-line code
// can plan runs without them).
#pragma once

#include <string>
#include <vector>

namespace txt2img {

// A LoRA of the bundle (scripts/add_lora.py) added to the weights for a batch, as AUTOMATIC1111's prompt tag
// <lora:name:te_weight:unet_weight> does: W + weight * delta, with one weight for the text encoder's layers and one
// for the U-Net's.
struct LoraUse {
  std::string name;
  double te_weight = 1.0;
  double unet_weight = 1.0;

  bool operator==(const LoraUse& o) const {
    return name == o.name && te_weight == o.te_weight && unet_weight == o.unet_weight;
  }
};

struct GenerationParams {
  int width = 0;  // 0: the bundle's default size
  int height = 0;
  int steps = 50;
  double cfg_scale = 7.5;
  std::string sampler = "ddim";
  double eta = 0.0;
  // AUTOMATIC1111's "Clip skip": the prompt embeddings come from the text encoder's clip_skip-th layer from the
  // end (1: the last, as SD v1 was trained; 2: the penultimate, ...), through its final layer norm. Applies to the
  // prompt and the negative prompt alike.
  int clip_skip = 1;
  // AUTOMATIC1111's long prompts: a text longer than the text encoder reads (75 tokens) is encoded in chunks of
  // 75 (Tokenizer::encode_chunked) whose embeddings are concatenated, instead of being cut off as diffusers does.
  // A text that fits gives the same embeddings either way.
  bool long_prompts = false;
  // AUTOMATIC1111's emphasis syntax in prompts: "(word)", "[word]", "(word:1.5)", "\(", BREAK (parse_emphasis),
  // applied as A1111's "Original" emphasis. Without it brackets are text, as in diffusers.
  bool emphasis = false;
  // Added in this order (the sums are not associative in floating point, so the order is part of the image).
  std::vector<LoraUse> loras;

  bool operator==(const GenerationParams& o) const {
    return width == o.width && height == o.height && steps == o.steps && cfg_scale == o.cfg_scale &&
           sampler == o.sampler && eta == o.eta && clip_skip == o.clip_skip && long_prompts == o.long_prompts &&
           emphasis == o.emphasis && loras == o.loras;
  }
  bool operator!=(const GenerationParams& o) const { return !(*this == o); }
};

}  // namespace txt2img
