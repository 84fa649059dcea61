// AUTOMATIC1111's LoRA tags in prompts: "<lora:name>", "<lora:name:weight>", "<lora:name:te_weight:unet_weight>"
// and the named forms "te=" and "unet=" ("<lyco:...>" is the same, as in A1111). The tags are taken out of the
// text, which the text encoder then reads without them.
#pragma once

#include <string>
#include <vector>

#include "txt2img/params.hpp"

namespace txt2img {

struct TaggedPrompt {
  std::string text;  // the prompt with every LoRA tag removed (the spaces around a tag stay, as in A1111)
  std::vector<LoraUse> loras;  // in the order of the tags
};

// Throws Error(Usage) for a tag without a name, a weight that is not a finite number, more than two weights, an
// argument A1111 has and txt2img does not (dyn=), an unknown named argument, and a hypernetwork tag.
TaggedPrompt parse_lora_tags(const std::string& prompt);

}  // namespace txt2img
