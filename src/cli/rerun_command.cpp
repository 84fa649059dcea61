#include "cli/rerun_command.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

#include "cli/metadata.hpp"
#include "cli/shell_text.hpp"
#include "join.hpp"
#include "txt2img/error.hpp"
#include "txt2img/lora_tags.hpp"
#include "txt2img/scheduler.hpp"

namespace txt2img::cli {
namespace {

// Whether an A1111 "Version" field ("v1.10.1", Forge's "f2.0.1v1.10.1-previous-…", other tools' "1.10.1") is
// 1.`minor` or later.
bool version_at_least(const std::string& version, int minor) {
  const auto v1 = version.find("v1.");
  size_t start;
  if (v1 != std::string::npos)
    start = v1 + 3;
  else if (version.rfind("1.", 0) == 0)
    start = 2;
  else
    return false;
  size_t digits = start;
  while (digits < version.size() && std::isdigit(static_cast<unsigned char>(version[digits]))) ++digits;
  return digits > start && digits - start <= 4 && std::stoi(version.substr(start, digits - start)) >= minor;
}

// The start of a command for `prompt`: as the positional prompt, unless it starts with '-', which would read as a
// flag there, or is a subcommand's name.
std::vector<std::string> command_for(const std::string& prompt) {
  if ((!prompt.empty() && prompt[0] == '-') || prompt == "info" || prompt == "tokenize")
    return {"txt2img", "--prompt=" + prompt};
  return {"txt2img", prompt};
}

}  // namespace

std::string model_hint(const std::string& name, const std::string& hash) {
  if (name.empty() && hash.empty())
    return "with a model it does not name: add --model DIR for the one it was made with\n";
  return "with the model " + (name.empty() ? "?" : name) + (hash.empty() ? "" : " [" + hash + "]") +
         ": add --model DIR where that is not your default\n";
}

std::string rerun_command(const nlohmann::ordered_json& r, const std::string& path) {
  try {
    auto args = command_for(r.at("prompt").get<std::string>());
    const auto add = [&](const std::string& flag, const nlohmann::ordered_json& value) {
      args.push_back(flag);
      args.push_back(value.is_string() ? value.get<std::string>() : value.dump());
    };
    if (!r.at("negative_prompt").get<std::string>().empty()) add("-n", r.at("negative_prompt"));
    add("--seed", r.at("seed"));
    if (r.contains("variation") && !r.at("variation").is_null()) {
      add("--variation-seed", r.at("variation").at("seed"));
      add("--variation-strength", r.at("variation").at("strength"));
    }
    if (r.contains("seed_resize_from") && !r.at("seed_resize_from").is_null()) {
      const auto& size = r.at("seed_resize_from");
      add("--seed-resize-from",
          std::to_string(size.at("width").get<int>()) + "x" + std::to_string(size.at("height").get<int>()));
    }
    if (r.value("ensd", uint64_t{0}) != 0) add("--ensd", r.at("ensd"));
    if (r.value("rng", std::string("cpu")) != "cpu") add("--rng", r.at("rng"));
    add("--steps", r.at("steps"));
    add("--sampler", r.at("sampler"));
    add("--cfg-scale", r.at("cfg_scale"));
    if (r.value("guidance_rescale", 0.0) != 0) add("--guidance-rescale", r.at("guidance_rescale"));
    if (r.value("skip_early_cfg", 0.0) != 0) add("--skip-early-cfg", r.at("skip_early_cfg"));
    if (r.value("ngms", 0.0) != 0) add("--ngms", r.at("ngms"));
    if (r.value("ngms_all_steps", false)) args.push_back("--ngms-all-steps");
    if (r.at("eta").get<double>() != 0) add("--eta", r.at("eta"));
    if (r.value("eta_ancestral", 1.0) != 1) add("--eta-ancestral", r.at("eta_ancestral"));  // older images: 1
    if (r.value("clip_skip", 1) != 1) add("--clip-skip", r.at("clip_skip"));
    if (r.value("long_prompts", false)) args.push_back("--long-prompts");
    const std::string pad_conds = r.value("pad_conds", std::string("off"));
    if (const std::string flag = pad_conds_flag(pad_conds); !flag.empty())
      args.push_back(flag);
    else if (pad_conds != "off")
      throw Error(ErrorKind::Io, path + ": its txt2img metadata has a pad_conds of \"" + pad_conds +
                                     "\", which this txt2img does not know (made by a newer one?)");
    if (r.value("emphasis", false)) args.push_back("--emphasis");
    const std::string emphasis_mode = r.value("emphasis_mode", std::string("original"));
    const auto& modes = emphasis_mode_names();
    if (std::find(modes.begin(), modes.end(), emphasis_mode) == modes.end())
      throw Error(ErrorKind::Io, path + ": its txt2img metadata has an emphasis_mode of \"" + emphasis_mode +
                                     "\", which this txt2img does not know (made by a newer one?)");
    if (emphasis_mode != "original") add("--emphasis-mode", emphasis_mode);
    add("-W", r.at("width"));
    add("-H", r.at("height"));
    if (r.contains("hires") && !r.at("hires").is_null()) {
      const auto& h = r.at("hires");
      if (h.contains("resize") && !h.at("resize").is_null())
        add("--hires-resize", std::to_string(h.at("resize").at("width").get<int>()) + "x" +
                                  std::to_string(h.at("resize").at("height").get<int>()));
      else
        add("--hires-scale", h.at("scale"));
      if (h.at("steps").get<int>() > 0) add("--hires-steps", h.at("steps"));  // 0: older images, "as --steps"
      add("--hires-denoise", h.at("denoise"));
      if (h.at("upscaler").get<std::string>() != "latent") add("--hires-upscaler", h.at("upscaler"));
      if (h.contains("sampler") && h.at("sampler") != r.at("sampler")) add("--hires-sampler", h.at("sampler"));
    }
    add("--device", r.at("device"));
    add("--dtype", r.at("dtype"));
    const std::string safety = r.at("safety").at("mode").get<std::string>();
    if (safety == "off") args.push_back("--no-safety-checker");
    if (safety == "report") add("--safety", "report");
    if (r.value("decoder", std::string("full")) != "full") add("--decoder", r.at("decoder"));
    if (r.value("vae_tiling", false)) args.push_back("--low-vram");  // its tiled decode is part of the image
    if (r.value("tiling", false)) args.push_back("--tiling");
    if (r.value("graph", std::string("none")) != "none") add("--graph", r.at("graph"));
    // Older images say nothing: they ran as the default does.
    if (r.at("device").get<std::string>().rfind("cuda", 0) == 0 && !r.value("cuda_graph", true))
      args.push_back("--no-cuda-graph");
    return shell_line(args);
  } catch (const nlohmann::json::exception& e) {
    std::string what = e.what();  // "[json.exception.type_error.302] type must be ...": the library's tag dropped
    if (!what.empty() && what[0] == '[' && what.find("] ") != std::string::npos)
      what = what.substr(what.find("] ") + 2);
    throw Error(ErrorKind::Io, path + ": its txt2img metadata lacks what a command needs (" + what + ")");
  }
}

std::string a1111_command(const std::string& text) {
  const auto p = parse_a1111_parameters(text);
  std::map<std::string, std::string> fields(p.fields.begin(), p.fields.end());
  const auto field = [&](const char* key) { return fields.count(key) ? fields[key] : std::string(); };
  auto args = command_for(p.prompt);
  if (!p.negative_prompt.empty()) args.insert(args.end(), {"-n", p.negative_prompt});
  std::vector<std::string> left_out;
  std::vector<std::string> notes;  // where the command reads a field otherwise than it is written
  if (p.fields.empty())
    notes.push_back(
        "its text holds a prompt but no settings line (Steps, Sampler, Seed, ...): the command makes that "
        "prompt with txt2img's defaults and a random seed, not this image");
  // A whole-number field as the flag takes it ("3.0" as 3), or left out, saying why, where it is none the flag takes
  // (other tools write seeds of -1 or 2^64 - 1).
  const auto take_whole = [&](const char* key, const char* flag, uint64_t low, uint64_t high) {
    const std::string value = field(key);
    if (value.empty()) return;
    std::optional<uint64_t> number;
    errno = 0;
    char* end = nullptr;
    if (value.find_first_not_of("0123456789") == std::string::npos) {
      const auto parsed = std::strtoull(value.c_str(), &end, 10);
      if (errno == 0) number = parsed;
    } else {
      const double parsed = std::strtod(value.c_str(), &end);
      if (*end == '\0' && std::isfinite(parsed) && parsed == std::floor(parsed) && parsed >= 0 && parsed < 1e18)
        number = static_cast<uint64_t>(parsed);
    }
    if (number && *number >= low && *number <= high) {
      args.insert(args.end(), {flag, std::to_string(*number)});
      return;
    }
    left_out.push_back(std::string(key) + ": " + value + " (" + flag + " takes a whole number from " +
                       std::to_string(low) + " to " + std::to_string(high) + ")");
  };
  constexpr uint64_t kLargest = std::numeric_limits<int64_t>::max();
  const auto take = [&](const char* key, const char* flag) {
    if (field(key).empty()) return;
    args.insert(args.end(), {flag, field(key)});
  };
  take_whole("Seed", "--seed", 0, kLargest);
  if (!field("Variation seed strength").empty() && field("Variation seed strength") != "0") {
    take_whole("Variation seed", "--variation-seed", 0, kLargest);
    take("Variation seed strength", "--variation-strength");
  }
  take("Seed resize from", "--seed-resize-from");
  take_whole("Steps", "--steps", 1, 1000);
  take_whole("ENSD", "--ensd", 0, kLargest);
  // stable-diffusion.cpp writes A1111's fields, with "Version: stable-diffusion.cpp" and its own generators' names.
  const bool made_by_sdcpp = field("Version").find("stable-diffusion.cpp") != std::string::npos;
  // A1111's GPU noise (its default, which it leaves unwritten) is what NV imitates on an NVIDIA card, and
  // stable-diffusion.cpp's "cuda" generator is A1111's NV in float32.
  const bool sdcpp_nv = made_by_sdcpp && field("RNG") == "cuda";
  if (sdcpp_nv || (!made_by_sdcpp && (field("RNG") == "NV" || field("RNG") == "GPU" || field("RNG").empty())))
    args.insert(args.end(), {"--rng", "nv"});
  // A1111's sampler and schedule type fields as one of our samplers (empty where txt2img has none). Before 1.9 a
  // sampler's name held its schedule ("DPM++ 2M Karras"); 1.9 and later name it apart ("Sampler: DPM++ 2M, Schedule
  // type: Karras") and leave it out where it is the sampler's default ("Automatic"), which is not uniform for every
  // sampler. Uniform is A1111's, the samplers' _uniform, where txt2img has it (not for DDIM, PLMS, UniPC and LCM,
  // which A1111 runs on their own timesteps). A schedule txt2img has no sampler for is left out. A field A1111 leaves
  // out because it is the first pass's ("Hires schedule type") takes `inherited`.
  const bool schedule_apart = version_at_least(field("Version"), 9);
  // txt2img's own text (its txt2img record damaged or removed): its DDIM is diffusers'.
  const bool made_by_txt2img = field("Version").rfind("txt2img ", 0) == 0;
  const auto sampler_of = [&](const char* sampler_key, const char* schedule_key, const std::string& inherited) {
    if (field(sampler_key).empty()) return std::string();
    std::string sampler = canonical_scheduler_name(field(sampler_key));
    // A1111 1.6 replaced the original Stable Diffusion code's DDIM, which diffusers' is where the steps divide 1000,
    // and PLMS, which neither txt2img's is, with its own, and moved its UniPC (never diffusers') among them.
    const bool ddim = sampler == "ddim", unipc = sampler == "unipc";
    const std::string a1111s = ddim ? "ddim_a1111" : unipc ? "unipc_a1111" : "plms_a1111";
    const bool on_timesteps = ddim || unipc || sampler == "pndm";
    if (on_timesteps && version_at_least(field("Version"), 6)) {
      sampler = a1111s;
    } else if (sampler == "lcm") {
      // A1111's LCM came with its own denoiser (1.8), which txt2img's lcm_a1111 is; diffusers' is txt2img's lcm.
      if (made_by_txt2img)
        notes.push_back("txt2img writes Sampler: LCM for lcm and lcm_a1111 alike: read as lcm");
      else
        sampler = "lcm_a1111";
    } else if (on_timesteps && made_by_txt2img) {
      notes.push_back(std::string("txt2img writes Sampler: ") +
                      (ddim    ? "DDIM"
                       : unipc ? "UniPC"
                               : "PLMS") +
                      " for " + sampler + " and " + a1111s + " alike: read as " + sampler);
    } else if (unipc) {
      sampler = a1111s;
      notes.push_back(
          (field("Version").empty() ? "it names no A1111 version: before 1.6 " : "before 1.6 ") +
          std::string("A1111's UniPC ran the steps asked for, guiding inside the sampler; unipc_a1111 (1.6 and "
                      "later) takes as many as A1111's DDIM timesteps, more where the steps do not divide 1000 (31 for "
                      "30), and the image is the same up to rounding only where they do"));
    } else if (sampler == "pndm") {
      notes.push_back(
          (field("Version").empty() ? "it names no A1111 version: PLMS is read as before 1.6, when " : "before 1.6 ") +
          std::string("A1111 ran the original Stable Diffusion code's PLMS, which is neither txt2img's "
                      "pndm (diffusers') nor plms_a1111 (A1111's since 1.6): the image will differ"));
    } else if (const auto [base, schedule] = split_sampler_name(sampler); base == "dpmpp_2m_sde") {
      // A1111's DPM++ 2M SDE draws its noise from Brownian trees, diffusers' (txt2img's dpmpp_2m_sde) from the seed.
      if (made_by_txt2img)
        notes.push_back(
            "txt2img writes Sampler: DPM++ 2M SDE for dpmpp_2m_sde and dpmpp_2m_sde_a1111 alike: read as "
            "dpmpp_2m_sde");
      else
        sampler = "dpmpp_2m_sde_a1111" + (schedule.empty() ? "" : "_" + schedule);
    } else if (sampler == "ddim") {
      const std::string ldm_ddim =
          "A1111 before 1.6 ran the original Stable Diffusion code's DDIM, which is "
          "diffusers' (ddim) where the steps divide 1000; 1.6 and later run their own "
          "(ddim_a1111)";
      notes.push_back(field("Version").empty()
                          ? "it names no A1111 version: DDIM is read as before 1.6 (" + ldm_ddim + ")"
                          : ldm_ddim);
    }
    const bool own_schedule = !field(schedule_key).empty();
    std::string schedule = own_schedule ? field(schedule_key) : inherited;
    std::string label = schedule_key + (": " + schedule) + (own_schedule ? "" : " (the first pass's)");
    // Restart came (A1111 1.6) with Karras sigmas as its "Automatic", before schedule types were written apart.
    const bool karras_since_1_6 = sampler == "restart";
    // txt2img writes no schedule type (or, for a hires pass after a first pass on another, "Automatic") for a
    // sampler on its own timesteps' sigmas where A1111's default is uniform too (its _uniform writes "Uniform"), and
    // "Uniform" where A1111's default is another, for that sampler and its _uniform alike; for Restart only the
    // latter (restart_karras writes none).
    const bool automatic = schedule.empty() || schedule == "Automatic";
    const bool txt2img_spaced = made_by_txt2img && (schedule == "Uniform" ? !a1111_default_schedule(sampler).empty()
                                                                          : automatic && !karras_since_1_6);
    if (txt2img_spaced && schedule == "Uniform" && is_scheduler_name(sampler + "_uniform"))
      notes.push_back("txt2img writes " + label + " for " + sampler + " and " + sampler + "_uniform alike: read as " +
                      sampler);
    if (split_sampler_name(sampler).schedule.empty() && !txt2img_spaced) {  // else the name holds it
      if (automatic && !a1111_default_schedule(sampler).empty()) {
        if (schedule_apart || karras_since_1_6) {
          schedule = a1111_default_schedule(sampler);
          label = schedule_key + (": Automatic, " + schedule + " for " + field(sampler_key));
        } else if (field("Version").empty()) {
          notes.push_back("it names no A1111 version: " + field(sampler_key) +
                          " without a schedule type is read as "
                          "before A1111 1.9, on uniform sigmas (1.9 and later ran it on " +
                          a1111_default_schedule(sampler) + " sigmas)");
        }
      }
      if (schedule.empty() || schedule == "Automatic") schedule = "Uniform";
      const std::string suffix = "_" + schedule_from_a1111_label(schedule);
      if (is_scheduler_name(sampler + suffix))
        sampler += suffix;
      else if (schedule != "Uniform")
        left_out.push_back(label);
    }
    if (is_scheduler_name(sampler)) return sampler;
    left_out.push_back(sampler_key + (": " + field(sampler_key)));
    return std::string();
  };
  const std::string sampler = sampler_of("Sampler", "Schedule type", "");
  if (!sampler.empty()) args.insert(args.end(), {"--sampler", sampler});
  take("CFG scale", "--cfg-scale");
  take("Guidance rescale", "--guidance-rescale");  // txt2img's own field
  take("Skip Early CFG", "--skip-early-cfg");
  take("NGMS", "--ngms");
  if (field("NGMS all steps") == "True") args.push_back("--ngms-all-steps");
  const std::string size = field("Size");
  const auto x = size.find('x');
  std::string sides[2] = {x == std::string::npos ? "" : size.substr(0, x),
                          x == std::string::npos ? "" : size.substr(x + 1)};
  const auto whole = [](const std::string& s) {
    return !s.empty() && s.size() <= 5 && s.find_first_not_of("0123456789") == std::string::npos;
  };
  bool rounded = false;
  if (whole(sides[0]) && whole(sides[1])) {
    // A1111 makes latents of size / 8, rounded down, so its image is that multiple of 8 whatever Size says.
    for (auto& side : sides) {
      const int value = std::stoi(side);
      if (value % 8 != 0 && value > 8) {
        side = std::to_string(value / 8 * 8);
        rounded = true;
      }
    }
    args.insert(args.end(), {"-W", sides[0], "-H", sides[1]});
    if (rounded)
      notes.push_back("its Size " + size + " is not a multiple of 8; A1111 made latents of " + sides[0] + "x" +
                      sides[1] + " pixels' worth (it rounds down), as the command does");
  } else if (!size.empty()) {
    left_out.push_back("Size: " + size);
  }
  take_whole("Clip skip", "--clip-skip", 1, kLargest);
  // A hires fix carries over when its upscaler is a latent one and it was given as a scale.
  const std::string upscaler = upscaler_from_a1111(field("Hires upscaler"));
  const bool hires = (!field("Hires upscale").empty() || !field("Hires resize").empty()) && !upscaler.empty();
  std::string hires_sampler;
  if (hires) {
    // A1111 writes one: the resize where one was given.
    if (!field("Hires resize").empty())
      take("Hires resize", "--hires-resize");
    else
      take("Hires upscale", "--hires-scale");
    take_whole("Hires steps", "--hires-steps", 1, 1000);
    take("Denoising strength", "--hires-denoise");
    if (upscaler != "latent") args.insert(args.end(), {"--hires-upscaler", upscaler});
    // A hires pass on the first pass's sampler with another schedule type has no "Hires sampler".
    const bool schedule_alone = field("Hires sampler").empty() && !field("Hires schedule type").empty();
    hires_sampler =
        sampler_of(schedule_alone ? "Sampler" : "Hires sampler", "Hires schedule type", field("Schedule type"));
    if (!hires_sampler.empty()) args.insert(args.end(), {"--hires-sampler", hires_sampler});
    if (rounded)
      notes.push_back(
          "A1111 sized its hires pass from the Size as written, so the hires image may be a few pixels "
          "larger than the command's");
  }
  // A1111's two etas are settings that each pass's sampler takes or not; TCD's gamma is txt2img's own "Eta".
  const auto a_pass_takes = [&](bool (*takes)(const std::string&)) {
    return (!sampler.empty() && takes(sampler)) || (!hires_sampler.empty() && takes(hires_sampler));
  };
  if (a_pass_takes(sampler_takes_eta)) take(sampler == "tcd" ? "Eta" : "Eta DDIM", "--eta");
  const bool eta_ancestral = sampler != "tcd" && a_pass_takes(sampler_takes_eta_ancestral);
  if (eta_ancestral) take("Eta", "--eta-ancestral");
  args.insert(args.end(), {"--emphasis", "--long-prompts"});
  const std::string emphasis_mode = emphasis_mode_from_a1111(field("Emphasis"));
  if (!emphasis_mode.empty() && emphasis_mode != "original")
    args.insert(args.end(), {"--emphasis-mode", emphasis_mode});
  if (made_by_txt2img) {
    notes.push_back(
        "txt2img's A1111 text does not say whether the image was made with --emphasis and --long-prompts (its "
        "txt2img record does): the command reads the prompt as A1111 does, with both, which makes another image "
        "where the prompt has brackets, a backslash, BREAK, AND, a trailing :number or more than 75 tokens and was "
        "made without them");
    // The image's larger side: the hires pass's where there is one (its scale or size was taken, or refused).
    int resize[2] = {0, 0};
    if (hires) std::sscanf(field("Hires resize").c_str(), "%dx%d", &resize[0], &resize[1]);
    const double scale = !hires                             ? 1.0
                         : resize[0] == 0 && resize[1] == 0 ? std::strtod(field("Hires upscale").c_str(), nullptr)
                                                            : 0.0;
    const auto largest_side = [&](int width, int height) {
      if (scale != 0) return std::max(width, height) * scale;
      if (resize[0] > 0 && resize[1] > 0) return static_cast<double>(std::max(resize[0], resize[1]));
      return std::max(width, height) * std::max(resize[0] / double(width), resize[1] / double(height));
    };
    if (whole(sides[0]) && whole(sides[1]) && largest_side(std::stoi(sides[0]), std::stoi(sides[1])) > 512)
      notes.push_back(
          "nor whether --low-vram decoded it in tiles (sides above 512), which changes its pixels a little: add "
          "--low-vram where it was made with it");
  }
  // A1111 pads with the v0 option where both are on.
  if (field("Pad conds v0") == "True")
    args.push_back("--pad-conds-v0");
  else if (field("Pad conds") == "True")
    args.push_back("--pad-conds");
  if (field("Tiling") == "True") args.push_back("--tiling");
  const std::string decoder = field("VAE Decoder");
  if (decoder == "TAESD")
    args.insert(args.end(), {"--decoder", "taesd"});
  else if (!decoder.empty() && decoder != "Full")
    left_out.push_back("VAE Decoder: " + decoder);

  static const std::set<std::string> read = {"Seed",
                                             "Variation seed",
                                             "Variation seed strength",
                                             "Seed resize from",
                                             "ENSD",
                                             "Steps",
                                             "Sampler",
                                             "Schedule type",
                                             "Eta DDIM",
                                             "CFG scale",
                                             "Size",
                                             "Clip skip",
                                             "Model",
                                             "Model hash",
                                             "RNG",
                                             "Version",
                                             "VAE Decoder",
                                             "Guidance rescale",
                                             "Skip Early CFG",
                                             "NGMS"};
  // The prompt keeps A1111's LoRA tags, which txt2img reads too: the bundle needs LoRAs of those names.
  std::vector<std::string> loras;
  try {
    for (const auto& use : parse_lora_tags(p.prompt).loras) loras.push_back(use.name);
  } catch (const Error&) {
    // a tag txt2img refuses: running the command says why
  }
  static const std::set<std::string> hires_fields = {"Hires upscale",      "Hires resize",       "Hires steps",
                                                     "Hires upscaler",     "Denoising strength", "Hires sampler",
                                                     "Hires schedule type"};
  // An inpainting model's mask weight, which A1111's txt2img reads only for its hires pass: below 1 it conditions
  // that pass on the first pass's image, where txt2img (and A1111 at 1) masks the whole image again.
  const std::string mask_weight = field("Conditional mask weight");
  const bool mask_weight_differs = hires && !mask_weight.empty() && !(std::strtod(mask_weight.c_str(), nullptr) >= 1.0);
  for (const auto& [key, value] : p.fields)
    if (!read.count(key) && !(key == "Lora hashes" && !loras.empty()) && !(hires && hires_fields.count(key)) &&
        !(key == "Conditional mask weight" && !mask_weight_differs) &&
        !((key == "Pad conds" || key == "Pad conds v0" || key == "NGMS all steps" || key == "Tiling") &&
          value == "True") &&
        !(key == "Emphasis" && !emphasis_mode_from_a1111(value).empty()) &&
        !(key == "Eta" && (sampler == "tcd" || eta_ancestral)) &&
        !((key == "Beta schedule alpha" || key == "Beta schedule beta") &&
          std::strtod(value.c_str(), nullptr) == kBetaScheduleShape))
      left_out.push_back(key + ": " + value);
  // What the command leaves out, for stderr; the image's own text in it is made printable.
  const auto uses = [&](const char* prefix) {
    return sampler.rfind(prefix, 0) == 0 || hires_sampler.rfind(prefix, 0) == 0;
  };
  const bool uses_brownian_trees =
      uses("dpmpp_sde") || uses("dpmpp_2m_sde_a1111") || uses("dpmpp_2m_sde_heun") || uses("dpmpp_3m_sde");
  std::ostringstream said;
  said << "made by " << (made_by_txt2img || made_by_sdcpp ? "" : "AUTOMATIC1111 ")
       << (field("Version").empty() ? "" : field("Version") + " ") << model_hint(field("Model"), field("Model hash"));
  for (const auto& note : notes) said << note << "\n";
  if (sdcpp_nv)
    said << "stable-diffusion.cpp's cuda generator is A1111's NV noise with its Box-Muller step in float32: --rng nv "
            "draws the same noise up to float rounding, though its samplers are its own\n";
  else if (made_by_sdcpp)
    said << "its noise came from stable-diffusion.cpp's own generator (RNG: " << field("RNG")
         << "), not PyTorch's CPU generator, so the same seed draws other noise here and the image will differ\n";
  else if (field("RNG") == "GPU" || field("RNG").empty())
    said << "A1111 drew its noise on the GPU (its default: no \"RNG: CPU\"): --rng nv draws what PyTorch draws on "
            "an NVIDIA GPU, so the image is one made on an NVIDIA card, up to the card's float rounding (an AMD, "
            "Intel or Apple GPU draws other noise)\n";
  else if (field("RNG") == "CPU" && !made_by_txt2img && uses_brownian_trees)
    said << "A1111 draws the Brownian trees of DPM++ SDE, 2M SDE and 3M SDE on the device it runs on whatever its "
            "RNG setting: made on a GPU, the image took the GPU's tree noise, which txt2img draws only with --rng "
            "nv (and then the initial noise too), so it will differ\n";
  // On A1111's own schedules txt2img's DPM2 takes A1111's sigmas.
  const auto dpm2_on_diffusers_sigmas = [](const std::string& s) {
    return s.rfind("dpm2", 0) == 0 && !on_a1111_schedule(s);
  };
  if (dpm2_on_diffusers_sigmas(sampler) || dpm2_on_diffusers_sigmas(hires_sampler))
    said << "A1111's DPM2 and DPM2 a step through a schedule one step longer without its next-to-last sigma; "
            "txt2img's are diffusers' (KDPM2) but on A1111's own schedule types (dpm2_uniform, ...), so the "
            "image will differ\n";
  if (!loras.empty())
    said << "its prompt adds the LoRAs " << join(loras)
         << (field("Lora hashes").empty() ? "" : " (Lora hashes: " + field("Lora hashes") + ")")
         << ": the model bundle needs them under those names (scripts/add_lora.py MODEL_DIR FILE)\n";
  if (!left_out.empty()) said << "not carried over (no txt2img equivalent): " << join(left_out, "; ") << "\n";
  std::cerr << printable(said.str());
  return shell_line(args);
}

}  // namespace txt2img::cli
