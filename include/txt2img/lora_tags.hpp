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

// The prompt's tags, where its negative prompt has none: A1111 applies a LoRA to the whole image, so it is named in
// the prompt only. Throws Error(Usage) for a tag in either that the one above refuses, or any in the negative prompt.
TaggedPrompt parse_lora_tags(const std::string& prompt, const std::string& negative_prompt);

}  // namespace txt2img
