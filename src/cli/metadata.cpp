#include "cli/metadata.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>

#include "txt2img/error.hpp"
#include "txt2img/scheduler.hpp"

namespace txt2img::cli {

std::string a1111_default_schedule(const std::string& sampler) {
  if (sampler == "dpmpp_2m" || sampler == "dpm2" || sampler == "dpm2_a" || sampler == "dpmpp_2s_a" ||
      sampler == "dpmpp_sde" || sampler == "restart")
    return "Karras";
  if (sampler == "dpmpp_2m_sde" || sampler == "dpmpp_2m_sde_a1111" || sampler == "dpmpp_2m_sde_heun" ||
      sampler == "dpmpp_3m_sde")
    return "Exponential";
  return "";
}

std::string python_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  // The fewest significant digits that read back as the same double, as Python's repr chooses.
  char buf[64];
  int digits = 1;
  for (; digits < 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*e", digits - 1, value);
    if (std::strtod(buf, nullptr) == value) break;
  }
  std::snprintf(buf, sizeof buf, "%.*e", digits - 1, value);
  const int exponent = std::atoi(std::strchr(buf, 'e') + 1);
  if (exponent < -4 || exponent >= 16) return buf;  // Python switches to scientific notation there too
  std::snprintf(buf, sizeof buf, "%.*f", std::max(0, digits - 1 - exponent), value);
  std::string fixed = buf;
  if (fixed.find('.') == std::string::npos) fixed += ".0";
  return fixed;
}

namespace {

// GenerationParams::emphasis_mode by name (emphasis_mode_names) and A1111 label.
struct EmphasisModeName {
  GenerationParams::EmphasisMode mode;
  const char* name;
  const char* a1111_label;
};
constexpr EmphasisModeName kEmphasisModes[] = {{GenerationParams::EmphasisMode::Original, "original", "Original"},
                                               {GenerationParams::EmphasisMode::NoNorm, "no-norm", "No norm"},
                                               {GenerationParams::EmphasisMode::Ignore, "ignore", "Ignore"},
                                               {GenerationParams::EmphasisMode::None, "none", "None"}};

const EmphasisModeName& emphasis_mode_entry(GenerationParams::EmphasisMode mode) {
  for (const auto& entry : kEmphasisModes)
    if (entry.mode == mode) return entry;
  throw Error(ErrorKind::Runtime, "an emphasis mode without a name");
}

// A1111 writes a value as is unless it holds a comma, colon or newline; then as a JSON string.
std::string a1111_quote(const std::string& value) {
  if (value.find_first_of(",:\n") == std::string::npos) return value;
  return nlohmann::json(value).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// A sampler as A1111 records it, for any name canonical_scheduler_name knows (unknown names are kept as they are):
// its sampler name ("DDIM", "PLMS", "Euler a", ...) and schedule type. Karras samplers keep the names A1111 gave them
// before its "Schedule type" field ("Euler Karras"), which A1111 1.9 and later still read; there is no such name for
// the exponential ones ("Euler" with schedule type "Exponential").
struct A1111Sampler {
  std::string name;
  // "Karras" (then also in the name), "Exponential", one of A1111's own ("SGM Uniform", ...), "Uniform" (the spaced
  // timesteps' sigmas, said where A1111's default is another), or "" (A1111's "Automatic", the sampler's default)
  std::string schedule;
};

A1111Sampler a1111_sampler(const std::string& sampler) {
  // diffusers' PNDM with skip_prk_steps (the SD v1 configuration) is the PLMS sampler A1111 offers. A1111 has no DDPM
  // or DEIS: their names are in its style, which canonical_scheduler_name reads back.
  static const std::map<std::string, std::string> names = {
      {"ddim", "DDIM"},
      {"ddim_a1111", "DDIM"},
      {"pndm", "PLMS"},
      {"plms_a1111", "PLMS"},
      {"euler", "Euler"},
      {"euler_a", "Euler a"},
      {"heun", "Heun"},
      {"dpm2", "DPM2"},
      {"dpm2_a", "DPM2 a"},
      {"lms", "LMS"},
      {"dpmpp_2m", "DPM++ 2M"},
      {"dpmpp_2m_sde", "DPM++ 2M SDE"},
      {"unipc", "UniPC"},
      {"unipc_a1111", "UniPC"},
      {"lcm", "LCM"},
      {"lcm_a1111", "LCM"},
      {"tcd", "TCD"},
      {"dpmpp_2s_a", "DPM++ 2S a"},
      {"ddpm", "DDPM"},
      {"deis", "DEIS"},
      {"dpmpp_sde", "DPM++ SDE"},
      {"dpmpp_2m_sde_a1111", "DPM++ 2M SDE"},
      {"dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun"},
      {"dpmpp_3m_sde", "DPM++ 3M SDE"},
      {"restart", "Restart"},
      {"dpm_fast", "DPM fast"},
  };
  const auto [base, schedule] = split_sampler_name(canonical_scheduler_name(sampler));
  const auto it = names.find(base);
  if (it == names.end()) return {sampler, ""};
  // Restart came with Karras sigmas as its own schedule and no "Restart Karras" name, which A1111 before 1.9 would
  // not read.
  if (schedule == "karras")
    return base == "restart" ? A1111Sampler{it->second, ""} : A1111Sampler{it->second + " Karras", "Karras"};
  if (!schedule.empty()) return {it->second, a1111_schedule_label(schedule)};
  // A1111 1.9 and later run these on other sigmas by default (its "Automatic"); theirs here are the spaced
  // timesteps' own, interpolated as diffusers does, closest to A1111's Uniform (which _uniform is).
  return {it->second, a1111_default_schedule(base).empty() ? "" : "Uniform"};
}

// A1111 writes the hires scale and the denoising strength as its sliders give them: 2, 1.5, 0.7.
std::string slider_number(double value) {
  std::string text = python_float(value);
  if (text.size() > 2 && text.compare(text.size() - 2, 2, ".0") == 0) text.resize(text.size() - 2);
  return text;
}

// A1111's name of a hires upscaler ("Latent (bicubic antialiased)" for latent-bicubic-antialiased).
std::string a1111_upscaler_name(const std::string& upscaler) {
  const LatentUpscaler* found = find_latent_upscaler(upscaler);
  return found ? found->a1111_name : upscaler;
}

// GenerationParams::pad_conds as the txt2img JSON names it: "off", "empty_chunks", "last_vector".
std::string pad_conds_name(GenerationParams::PadConds pad) {
  switch (pad) {
    case GenerationParams::PadConds::EmptyChunks:
      return "empty_chunks";
    case GenerationParams::PadConds::LastVector:
      return "last_vector";
    case GenerationParams::PadConds::Off:
      break;
  }
  return "off";
}

// A1111's infotext; "Clip skip: N" only for N != 1, as A1111 writes it.
std::string a1111_parameters(const ImageRecord& r) {
  const A1111Sampler sampler = a1111_sampler(r.sampler);
  std::vector<std::pair<std::string, std::string>> params = {
      {"Steps", std::to_string(r.steps)},
      {"Sampler", sampler.name},
  };
  if (!sampler.schedule.empty() && sampler.schedule != "Karras") params.emplace_back("Schedule type", sampler.schedule);
  params.emplace_back("CFG scale", python_float(r.cfg_scale));
  // No A1111 field computes it (extensions' CFG rescales work in another space), so it keeps diffusers' name.
  if (r.guidance_rescale != 0) params.emplace_back("Guidance rescale", python_float(r.guidance_rescale));
  params.emplace_back("Seed", std::to_string(r.seed));
  params.emplace_back("Size", std::to_string(r.width) + "x" + std::to_string(r.height));
  if (!r.model_hash.empty()) params.emplace_back("Model hash", r.model_hash);
  if (!r.model_name.empty()) params.emplace_back("Model", r.model_name);
  if (!r.vae_hash.empty()) params.emplace_back("VAE hash", r.vae_hash);
  if (!r.vae_name.empty()) params.emplace_back("VAE", r.vae_name);
  if (r.variation.strength != 0) {
    params.emplace_back("Variation seed", std::to_string(r.variation.seed));
    params.emplace_back("Variation seed strength", slider_number(r.variation.strength));
  }
  if (r.seed_resize_width > 0)
    params.emplace_back("Seed resize from",
                        std::to_string(r.seed_resize_width) + "x" + std::to_string(r.seed_resize_height));
  // A1111's setting "VAE type for decode", written only when it is not the default.
  if (r.decoder == "taesd") params.emplace_back("VAE Decoder", "TAESD");
  if (r.hires.enabled()) params.emplace_back("Denoising strength", slider_number(r.hires.denoise));
  // A1111 records its inpainting mask weight setting for an inpainting model; 1.0, its default, is what txt2img does.
  if (r.inpainting) params.emplace_back("Conditional mask weight", "1.0");
  if (r.clip_skip != 1) params.emplace_back("Clip skip", std::to_string(r.clip_skip));  // A1111 omits the default
  if (r.ensd != 0) params.emplace_back("ENSD", std::to_string(r.ensd));
  // The noise comes from a generator per image: PyTorch's CPU one, A1111's "RNG: CPU", or A1111's NV one.
  params.emplace_back("RNG", r.rng == "nv" ? "NV" : "CPU");
  if (r.tiling) params.emplace_back("Tiling", "True");
  if (r.hires.enabled()) {
    if (r.hires.resized())
      params.emplace_back("Hires resize",
                          std::to_string(r.hires.resize_width) + "x" + std::to_string(r.hires.resize_height));
    else
      params.emplace_back("Hires upscale", slider_number(r.hires.scale));
    // The steps that ran, given or not (A1111 reads a missing or 0 "Hires steps" as the first pass's), so that
    // info --command gives back the flag and the image made again has these very parameters.
    params.emplace_back("Hires steps", std::to_string(r.hires.steps));
    params.emplace_back("Hires upscaler", a1111_upscaler_name(r.hires.upscaler));
    // A1111 names the hires sampler where it differs from the first pass's, and its schedule type apart.
    if (!r.hires.sampler.empty() && r.hires.sampler != r.sampler) {
      const A1111Sampler hires = a1111_sampler(r.hires.sampler);
      if (hires.name != sampler.name) params.emplace_back("Hires sampler", hires.name);
      // A1111 gives a hires sampler without a schedule type in its name or its own field the first pass's (and
      // reads "Euler Karras" as Euler with schedule type Karras), so another schedule is written out, as A1111
      // writes it.
      if (hires.schedule != "Karras" && hires.schedule != sampler.schedule)
        params.emplace_back("Hires schedule type", hires.schedule.empty() ? "Automatic" : hires.schedule);
    }
  }
  // DDIM's eta where it is not 0, and TCD's gamma, which A1111 would call a sampler's Eta; k-diffusion's eta where it
  // is not 1, A1111's defaults. A run of TCD with a hires pass on an ancestral sampler has one field for both: TCD's
  // (its txt2img record keeps both).
  if (r.eta != 0) params.emplace_back(r.sampler == "tcd" ? "Eta" : "Eta DDIM", python_float(r.eta));
  if (r.eta_ancestral != 1 && !(r.sampler == "tcd" && r.eta != 0))
    params.emplace_back("Eta", python_float(r.eta_ancestral));
  if (r.skip_early_cfg != 0) params.emplace_back("Skip Early CFG", python_float(r.skip_early_cfg));
  // A1111 records NGMS where it skipped a call.
  if (r.ngms_skipped) params.emplace_back("NGMS", python_float(r.ngms));
  if (r.ngms_skipped && r.ngms_all_steps) params.emplace_back("NGMS all steps", "True");
  // "name: hash, name: hash", which the quoting below turns into a JSON string, as A1111 writes them: each name
  // once, without the list's separators.
  for (const auto& [key, hashes] : {std::pair{"Lora hashes", &r.lora_hashes}, {"TI hashes", &r.ti_hashes}}) {
    std::string list;
    std::set<std::string> listed;
    for (const auto& [name, hash] : *hashes) {
      std::string clean;
      for (char c : name)
        if (c != ':' && c != ',') clean += c;
      if (listed.insert(clean).second) list += (list.empty() ? "" : ", ") + clean + ": " + hash;
    }
    if (!list.empty()) params.emplace_back(key, list);
  }
  // A1111 records an emphasis mode other than its default where a text it encoded has a bracket, as it encodes them.
  if (r.emphasis && r.emphasis_mode != GenerationParams::EmphasisMode::Original && r.bracketed_texts)
    params.emplace_back("Emphasis", emphasis_mode_entry(r.emphasis_mode).a1111_label);
  // A1111 records the Beta schedule's shape as it computes a pass's sigmas on it.
  const auto on_beta = [](const std::string& sampler) {
    return !sampler.empty() && split_sampler_name(canonical_scheduler_name(sampler)).schedule == "beta";
  };
  if (on_beta(r.sampler) || (r.hires.enabled() && on_beta(r.hires.sampler))) {
    params.emplace_back("Beta schedule alpha", python_float(kBetaScheduleShape));
    params.emplace_back("Beta schedule beta", python_float(kBetaScheduleShape));
  }
  // A1111 records its padding setting after sampling, and only where a pass's last U-Net call padded.
  if (r.padded_conds && r.pad_conds == GenerationParams::PadConds::EmptyChunks)
    params.emplace_back("Pad conds", "True");
  if (r.padded_conds && r.pad_conds == GenerationParams::PadConds::LastVector)
    params.emplace_back("Pad conds v0", "True");
  params.emplace_back("Version", std::string("txt2img ") + TXT2IMG_VERSION);

  std::string text = r.prompt;
  if (!r.negative_prompt.empty()) text += "\nNegative prompt: " + r.negative_prompt;
  text += "\n";
  for (size_t i = 0; i < params.size(); ++i)
    text += (i ? ", " : "") + params[i].first + ": " + a1111_quote(params[i].second);
  // A1111 strips the whole text, so a prompt with leading or trailing blanks reads back the same.
  const auto begin = text.find_first_not_of(" \t\r\n");
  return begin == std::string::npos ? "" : text.substr(begin, text.find_last_not_of(" \t\r\n") - begin + 1);
}

// {"seed": N, "strength": S}, or null without a variation seed.
nlohmann::ordered_json variation_json(const Variation& variation) {
  if (variation.strength == 0) return nullptr;
  return {{"seed", variation.seed}, {"strength", variation.strength}};
}

// [{"name", "te_weight", "unet_weight", "hash"}], as the "txt2img" chunk and --json's image events list them.
nlohmann::ordered_json loras_json(const std::vector<LoraRecord>& loras) {
  auto list = nlohmann::ordered_json::array();
  for (const auto& l : loras)
    list.push_back({{"name", l.name},
                    {"te_weight", l.te_weight},
                    {"unet_weight", l.unet_weight},
                    {"hash", l.hash.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(l.hash)}});
  return list;
}

// null without a hires pass, else {"scale" (0 with a resize), "resize" (null, or its "width" and "height"), "steps"
// (those run), "denoise", "upscaler", "sampler" (the pass's), "width", "height" (the image's)}, as the "txt2img" chunk
// and --json's image events give it.
nlohmann::ordered_json hires_json(const ImageRecord& r) {
  if (!r.hires.enabled()) return nullptr;
  return {{"scale", r.hires.scale},
          {"resize", r.hires.resized()
                         ? nlohmann::ordered_json{{"width", r.hires.resize_width}, {"height", r.hires.resize_height}}
                         : nlohmann::ordered_json(nullptr)},
          {"steps", r.hires.steps},
          {"denoise", r.hires.denoise},
          {"upscaler", r.hires.upscaler},
          {"sampler", r.hires.sampler.empty() ? r.sampler : r.hires.sampler},
          {"width", r.image_width},
          {"height", r.image_height}};
}

// Characters of A1111's pattern below, as std::regex's ECMAScript grammar reads them in a byte string.
bool is_word_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}
bool is_key_char(char c) { return is_word_char(c) || c == ' ' || c == '-' || c == '/'; }
bool is_blank_char(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

// One past the closing quote of a JSON-quoted value (`"(?:\\.|[^\\"])+"`) opening at `open`, or npos.
size_t quoted_value_end(const std::string& line, size_t open) {
  size_t at = open + 1;
  while (at < line.size()) {
    if (line[at] == '\\' && at + 1 < line.size() && line[at + 1] != '\n' && line[at + 1] != '\r')
      at += 2;
    else if (line[at] != '"' && line[at] != '\\')
      ++at;
    else
      break;
  }
  return at > open + 1 && at < line.size() && line[at] == '"' ? at + 1 : std::string::npos;
}

// The (key, value) pairs of A1111's pattern for one pair of its infotext (modules/infotext_utils.py,
// `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)`: a value is a JSON string or runs to the next comma),
// found one after another as a regex search finds them, in linear time: std::regex recurses once per character and
// overflowed the stack on a long line.
std::vector<std::pair<std::string, std::string>> infotext_pairs(const std::string& line) {
  std::vector<std::pair<std::string, std::string>> pairs;
  const size_t n = line.size();
  size_t at = 0;
  while (at < n) {
    if (!is_word_char(line[at])) {
      ++at;
      continue;
    }
    // The key runs as far as key characters go; only a colon there (and two characters at least) makes a pair, so
    // that a key starting later in the same run cannot either.
    size_t colon = at + 1;
    while (colon < n && is_key_char(line[colon])) ++colon;
    if (colon == n || line[colon] != ':' || colon - at < 2) {
      at = colon;
      continue;
    }
    size_t value = colon + 1;
    while (value < n && is_blank_char(line[value])) ++value;
    size_t end = value < n && line[value] == '"' ? quoted_value_end(line, value) : std::string::npos;
    if (end != std::string::npos && end < n && line[end] != ',') end = std::string::npos;  // not a whole value
    if (end == std::string::npos) end = std::min(line.find(',', value), n);
    pairs.emplace_back(line.substr(at, colon - at), line.substr(value, end - value));
    at = end + 1;
  }
  return pairs;
}

// The "txt2img" chunk; its "version" is this program's.
nlohmann::ordered_json reproduction_json(const ImageRecord& r) {
  nlohmann::ordered_json model = {{"name", r.model_name}, {"hash", r.model_hash}};
  if (r.inpainting) model["inpainting"] = true;
  if (!r.vae_name.empty()) model["vae"] = {{"name", r.vae_name}, {"hash", r.vae_hash}};
  if (!r.taesd_name.empty()) model["taesd"] = {{"name", r.taesd_name}, {"hash", r.taesd_hash}};
  nlohmann::ordered_json j = {{"prompt", r.prompt}, {"negative_prompt", r.negative_prompt}};
  j.update(settings_json(r));
  j.update(nlohmann::ordered_json{
      {"model", model},
      {"dtype", r.dtype},
      {"device", r.device},
      {"safety", {{"mode", r.safety}, {"nsfw", r.nsfw}}},
      {"program", "txt2img"},
      {"version", TXT2IMG_VERSION},
  });
  return j;
}

}  // namespace

std::string upscaler_from_a1111(const std::string& name) {
  for (const auto& upscaler : latent_upscalers())
    if (name == upscaler.a1111_name) return upscaler.name;
  return "";
}

std::string pad_conds_flag(const std::string& name) {
  return name == "empty_chunks" ? "--pad-conds" : name == "last_vector" ? "--pad-conds-v0" : "";
}

const std::vector<std::string>& emphasis_mode_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& entry : kEmphasisModes) out.emplace_back(entry.name);
    return out;
  }();
  return names;
}

std::string emphasis_mode_name(GenerationParams::EmphasisMode mode) { return emphasis_mode_entry(mode).name; }

GenerationParams::EmphasisMode emphasis_mode_named(const std::string& name) {
  for (const auto& entry : kEmphasisModes)
    if (name == entry.name) return entry.mode;
  throw Error(ErrorKind::Usage, "no emphasis mode is named \"" + name + "\" (original, no-norm, ignore or none)");
}

std::string emphasis_mode_from_a1111(const std::string& label) {
  for (const auto& entry : kEmphasisModes)
    if (label == entry.a1111_label) return entry.name;
  return "";
}

nlohmann::ordered_json settings_json(const ImageRecord& r) {
  return {
      {"loras", loras_json(r.loras)},
      {"seed", r.seed},
      {"variation", variation_json(r.variation)},
      {"seed_resize_from", r.seed_resize_width > 0 ? nlohmann::ordered_json{{"width", r.seed_resize_width},
                                                                            {"height", r.seed_resize_height}}
                                                   : nlohmann::ordered_json(nullptr)},
      {"ensd", r.ensd},
      {"rng", r.rng},
      {"steps", r.steps},
      {"sampler", r.sampler},
      {"cfg_scale", r.cfg_scale},
      {"guidance_rescale", r.guidance_rescale},
      {"skip_early_cfg", r.skip_early_cfg},
      {"ngms", r.ngms},
      {"ngms_all_steps", r.ngms_all_steps},
      {"eta", r.eta},
      {"eta_ancestral", r.eta_ancestral},
      {"clip_skip", r.clip_skip},
      {"long_prompts", r.long_prompts},
      {"pad_conds", pad_conds_name(r.pad_conds)},
      {"emphasis", r.emphasis},
      {"emphasis_mode", emphasis_mode_name(r.emphasis_mode)},
      {"width", r.width},
      {"height", r.height},
      {"hires", hires_json(r)},
      {"decoder", r.decoder},
      {"vae_tiling", r.vae_tiling},
      {"tiling", r.tiling},
      {"graph", r.graph},
      {"cuda_graph", r.cuda_graph},
  };
}

PngText png_metadata(const ImageRecord& record) {
  return {{"parameters", a1111_parameters(record)}, {"txt2img", reproduction_json(record).dump()}};
}

A1111Parameters parse_a1111_parameters(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);

  A1111Parameters out;
  // As A1111 decides: the last line holds the settings when at least three pairs match in it.
  if (!lines.empty()) {
    const std::string& last = lines.back();
    std::vector<std::pair<std::string, std::string>> fields;
    for (auto [key, value] : infotext_pairs(last)) {
      if (value.size() >= 2 && value.front() == '"') {
        const auto parsed = nlohmann::json::parse(value, nullptr, false);
        if (parsed.is_string()) value = parsed.get<std::string>();
      }
      key.erase(key.find_last_not_of(' ') + 1);
      fields.emplace_back(key, value);
    }
    if (fields.size() >= 3) {
      out.fields = std::move(fields);
      lines.pop_back();
    }
  }
  // Each line stripped, as A1111 reads them; from a line starting "Negative prompt:" on, the negative prompt.
  bool negative = false;
  for (auto line : lines) {
    const auto first = line.find_first_not_of(" \t\r");
    line = first == std::string::npos ? "" : line.substr(first, line.find_last_not_of(" \t\r") - first + 1);
    if (line.rfind("Negative prompt:", 0) == 0) {
      negative = true;
      line = line.substr(16);
      line.erase(0, line.find_first_not_of(' '));
    }
    std::string& part = negative ? out.negative_prompt : out.prompt;
    part += (part.empty() ? "" : "\n") + line;
  }
  return out;
}

bool recorded_as_nsfw(const PngText& text) {
  for (const auto& [key, value] : text) {
    if (key != "txt2img") continue;
    const auto record = nlohmann::json::parse(value, nullptr, false);
    if (!record.is_object() || !record.contains("safety")) return false;
    const auto& safety = record["safety"];
    return safety.is_object() && safety.contains("nsfw") && safety["nsfw"] == true;
  }
  return false;
}

}  // namespace txt2img::cli
