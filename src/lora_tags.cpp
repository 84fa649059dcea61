#include "txt2img/lora_tags.hpp"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <optional>

#include "txt2img/error.hpp"

namespace txt2img {
namespace {

std::string trimmed(const std::string& s) {
  const auto begin = s.find_first_not_of(" \t\n\r");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t\n\r") - begin + 1);
}

std::vector<std::string> split(const std::string& s, char separator) {
  std::vector<std::string> parts;
  size_t begin = 0;
  for (size_t end; (end = s.find(separator, begin)) != std::string::npos; begin = end + 1)
    parts.push_back(s.substr(begin, end - begin));
  parts.push_back(s.substr(begin));
  return parts;
}

double weight(const std::string& text, const std::string& tag) {
  const std::string t = trimmed(text);
  char* end = nullptr;
  const double value = t.empty() ? NAN : std::strtod(t.c_str(), &end);
  if (t.empty() || end != t.c_str() + t.size() || !std::isfinite(value))
    throw Error(ErrorKind::Usage, "LoRA tag " + tag + ": weight \"" + text + "\" is not a finite number");
  return value;
}

// A1111's extra-network tag: "<" type ":" arguments ">", the type a word, the arguments anything but ">".
struct Tag {
  size_t begin, end;  // [begin, end) in the prompt
  std::string type, arguments;
};

std::optional<Tag> next_tag(const std::string& prompt, size_t from) {
  for (size_t open = prompt.find('<', from); open != std::string::npos; open = prompt.find('<', open + 1)) {
    size_t colon = open + 1;
    while (colon < prompt.size() && (std::isalnum(static_cast<unsigned char>(prompt[colon])) || prompt[colon] == '_'))
      ++colon;
    if (colon == open + 1 || colon >= prompt.size() || prompt[colon] != ':') continue;
    const size_t close = prompt.find('>', colon + 1);
    if (close == std::string::npos) return std::nullopt;
    if (close == colon + 1) continue;
    return Tag{open, close + 1, prompt.substr(open + 1, colon - open - 1), prompt.substr(colon + 1, close - colon - 1)};
  }
  return std::nullopt;
}

LoraUse lora_use(const std::string& arguments, const std::string& tag) {
  std::vector<std::string> positional;
  std::optional<std::string> te, unet;
  for (const auto& item : split(arguments, ':')) {
    const auto parts = split(item, '=');
    if (parts.size() != 2) {
      positional.push_back(item);
      continue;
    }
    const std::string key = trimmed(parts[0]);
    if (key == "te")
      te = parts[1];
    else if (key == "unet")
      unet = parts[1];
    else if (key == "dyn")
      throw Error(ErrorKind::Usage, "LoRA tag " + tag + ": dyn= (A1111's dynamic rank) is not supported");
    else
      throw Error(ErrorKind::Usage, "LoRA tag " + tag + ": unknown argument \"" + key + "=\" (te= and unet= are known)");
  }
  LoraUse use;
  if (!positional.empty()) use.name = trimmed(positional[0]);  // <lora:te=1> holds named arguments alone
  if (use.name.empty()) throw Error(ErrorKind::Usage, "LoRA tag " + tag + " has no name (<lora:NAME:WEIGHT>)");
  if (positional.size() > 3)
    throw Error(ErrorKind::Usage, "LoRA tag " + tag +
                                      ": at most two weights (<lora:NAME:WEIGHT> or <lora:NAME:TE_WEIGHT:UNET_WEIGHT>)");
  // As A1111: the text-encoder weight defaults to 1, the U-Net's to the text encoder's.
  use.te_weight = te ? weight(*te, tag) : positional.size() > 1 ? weight(positional[1], tag) : 1.0;
  use.unet_weight = unet ? weight(*unet, tag) : positional.size() > 2 ? weight(positional[2], tag) : use.te_weight;
  return use;
}

}  // namespace

TaggedPrompt parse_lora_tags(const std::string& prompt) {
  TaggedPrompt result;
  size_t copied = 0;
  for (auto tag = next_tag(prompt, 0); tag; tag = next_tag(prompt, tag->end)) {
    const std::string text = prompt.substr(tag->begin, tag->end - tag->begin);
    if (tag->type == "hypernet")
      throw Error(ErrorKind::Usage, "prompt tag " + text + ": hypernetworks are not supported (LoRA tags are)");
    if (tag->type != "lora" && tag->type != "lyco") continue;
    result.loras.push_back(lora_use(tag->arguments, text));
    result.text += prompt.substr(copied, tag->begin - copied);
    copied = tag->end;
  }
  result.text += prompt.substr(copied);
  return result;
}

TaggedPrompt parse_lora_tags(const std::string& prompt, const std::string& negative_prompt) {
  if (!parse_lora_tags(negative_prompt).loras.empty())
    throw Error(ErrorKind::Usage, "a LoRA tag in the negative prompt; LoRAs are named in the prompt");
  return parse_lora_tags(prompt);
}

}  // namespace txt2img
