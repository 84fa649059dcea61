// What a PNG records about how it was made: AUTOMATIC1111's "parameters" text (read by A1111's PNG Info, ComfyUI,
// Civitai and most image viewers) and a "txt2img" JSON chunk with everything needed to reproduce the image.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "txt2img/params.hpp"
#include "txt2img/png.hpp"

namespace txt2img::cli {

// A LoRA of the prompt's tags, with the 12-digit hash A1111 knows its file by (empty when unknown).
struct LoraRecord {
  std::string name;
  double te_weight = 1.0;
  double unet_weight = 1.0;
  std::string hash;
};

struct ImageRecord {
  std::string prompt;
  std::string negative_prompt;
  uint64_t seed = 0;
  Variation variation;  // strength 0: none
  int seed_resize_width = 0;  // A1111's Seed resize from, in pixels (0: none)
  int seed_resize_height = 0;
  uint64_t ensd = 0;     // A1111's eta noise seed delta
  std::string rng = "cpu";  // the noise's generator: cpu or nv (GenerateOptions::rng)
  int steps = 0;
  std::string sampler;
  double cfg_scale = 0;
  double guidance_rescale = 0;
  double skip_early_cfg = 0;  // 0 where it was off or unguided
  double ngms = 0;            // 0 where it was off or unguided
  bool ngms_all_steps = false;
  bool ngms_skipped = false;  // whether it skipped a call (GeneratedImage::ngms_skipped)
  double eta = 0;
  double eta_ancestral = 1;
  int clip_skip = 1;
  bool long_prompts = false;
  GenerationParams::PadConds pad_conds = GenerationParams::PadConds::Off;  // the setting
  bool padded_conds = false;  // whether it padded (GeneratedImage::padded_conds)
  bool emphasis = false;
  GenerationParams::EmphasisMode emphasis_mode = GenerationParams::EmphasisMode::Original;
  bool bracketed_texts = false;  // with emphasis, whether a text it read holds "(" or "[" (A1111's Emphasis field)
  int width = 0;   // the first pass's size (-W, -H), which A1111's "Size" records
  int height = 0;
  HiresFix hires;  // scale 0: none; steps: those that ran (GenerationParams::hires_steps)
  int image_width = 0;  // the image's size: width and height, or the hires pass's
  int image_height = 0;
  std::string model_name;
  std::string model_hash;
  bool inpainting = false;  // an inpainting model, run with the whole image masked
  std::string vae_name;  // empty: the model's own VAE
  std::string vae_hash;
  std::string decoder = "full";  // "full" (the VAE) or "taesd"
  bool vae_tiling = false;       // decoded in tiles (--low-vram above 512 pixels a side)
  bool tiling = false;           // A1111's Tiling (--tiling): circular padding, an image that tiles
  std::string taesd_name;        // with decoder "taesd": the bundle's TAESD (empty when unnamed)
  std::string taesd_hash;
  std::vector<LoraRecord> loras;  // the LoRAs the prompt's tags add, in order
  // As A1111's "Lora hashes" and "TI hashes": the bundle's merged LoRAs and those of the prompt's tags, and the
  // embeddings the prompt or negative prompt use; (name, 12 hex digits) each.
  std::vector<std::pair<std::string, std::string>> lora_hashes;
  std::vector<std::pair<std::string, std::string>> ti_hashes;
  std::string device;
  std::string dtype;
  std::string safety;  // "replace", "report" or "off"
  // How the modules ran, where that changes the pixels: the graph passes ("none", "freeze", "optimize": its fused
  // kernels round differently) and, on CUDA, whether the U-Net ran as a replayed CUDA graph (in channels_last).
  std::string graph = "none";
  bool cuda_graph = false;
  bool nsfw = false;
};

// The schedule A1111 1.9 and later give a sampler of ours ("dpmpp_2m", no suffix) by default, its "Automatic":
// "Karras" for DPM++ 2M, DPM2, DPM2 a and DPM++ 2S a, "Exponential" for DPM++ 2M SDE, "" (uniform) for the others.
std::string a1111_default_schedule(const std::string& sampler);

// A number as Python's repr prints a float (7.5, 7.0, 0.1), which is how A1111 writes "CFG scale".
std::string python_float(double value);

// The hires upscaler A1111 names so ("Latent (bicubic antialiased)": latent-bicubic-antialiased; empty for one
// txt2img does not have).
std::string upscaler_from_a1111(const std::string& name);

// The flag that asks for GenerationParams::pad_conds as the txt2img JSON names it ("empty_chunks": --pad-conds;
// empty for "off").
std::string pad_conds_flag(const std::string& name);

// GenerationParams::emphasis_mode by the name --emphasis-mode and the txt2img JSON give it ("original", "no-norm",
// "ignore", "none"), and by the label of A1111's "Emphasis" field ("Original", "No norm", "Ignore", "None").
// emphasis_mode_named throws Error(Usage) for another name; emphasis_mode_from_a1111 gives the name, or "" for another
// label.
const std::vector<std::string>& emphasis_mode_names();
std::string emphasis_mode_name(GenerationParams::EmphasisMode mode);
GenerationParams::EmphasisMode emphasis_mode_named(const std::string& name);
std::string emphasis_mode_from_a1111(const std::string& label);

// AUTOMATIC1111's infotext read back: the prompt, the text after "Negative prompt: " (empty without one) and the
// "Key: value" pairs of its last line, in order, JSON-quoted values unquoted. Text without such a line is all prompt.
struct A1111Parameters {
  std::string prompt;
  std::string negative_prompt;
  std::vector<std::pair<std::string, std::string>> fields;
};
A1111Parameters parse_a1111_parameters(const std::string& text);

// The settings that make an image (its LoRA tags, seed, sampler, scales, sizes, hires pass, decoding), in the order
// both its records list them: the txt2img metadata and the --json "image" event.
nlohmann::ordered_json settings_json(const ImageRecord& record);

// A1111's infotext ("parameters": the prompt, "Negative prompt: ..." when there is one, then "Steps: 50, Sampler:
// DDIM, ..."), and the "txt2img" chunk with everything needed to make the image again, as PNG text chunks.
PngText png_metadata(const ImageRecord& record);

// Whether a PNG's text records that the safety checker flagged it (the "txt2img" chunk's safety.nsfw); false for an
// image without that record (another tool's, or written with --no-metadata).
bool recorded_as_nsfw(const PngText& text);

}  // namespace txt2img::cli
