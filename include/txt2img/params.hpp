// Generation settings that every image of one batch shares (kept free of torch headers so that command-line code
// can plan runs without them).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace txt2img {

// The largest width or height an image may have, in pixels.
constexpr int kMaxImageSide = 4096;

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

// AUTOMATIC1111's variation seed of a row ("Variation seed", "Variation seed strength"): its first noise after a
// (re)start is slerp(strength, the seed's noise, the variation seed's noise) as A1111 computes it; strength 0 is
// the seed's noise, 1 the variation seed's.
struct Variation {
  uint64_t seed = 0;
  double strength = 0;
};

// AUTOMATIC1111's latent upscalers for the hires fix: how each resizes (torch's interpolate, align_corners false).
struct LatentUpscaler {
  enum class Mode { kBilinear, kBicubic, kNearest, kNearestExact };
  const char* name;        // txt2img's: "latent-bicubic-antialiased"
  const char* a1111_name;  // A1111's, as its metadata writes it: "Latent (bicubic antialiased)"
  Mode mode;
  bool antialias;
};
// Every one, in the order help texts list them.
const std::vector<LatentUpscaler>& latent_upscalers();
// Their names, in that order.
std::vector<std::string> latent_upscaler_names();
// The entry of that name, else nullptr.
const LatentUpscaler* find_latent_upscaler(const std::string& name);

// AUTOMATIC1111's hires fix with a latent upscaler: the first pass's latents are resized by `scale` (or to a size)
// and denoised again, as an img2img pass of strength `denoise` whose schedule is stretched so that exactly `steps`
// U-Net steps run (A1111: int(steps / min(denoise, 0.999)) steps, of which the last `steps`).
struct HiresFix {
  double scale = 0;  // 0: no hires pass (or one to resize_width x resize_height); else the image becomes
                     // int(width * scale) x int(height * scale), rounded down to the VAE's multiple
  // A1111's "Resize width to" and "Resize height to" (infotext "Hires resize: WxH"), in place of a scale: with one
  // side 0 the image becomes that side and the other in the first pass's proportions, rounded down; with both, the
  // latents are resized to cover WxH in those proportions and cut to it in the middle. Rounded down to the VAE's
  // multiple as a scale's size is.
  int resize_width = 0;
  int resize_height = 0;
  int steps = 0;     // 0: as many as the first pass
  double denoise = 0.7;
  // How the latents are resized: a latent_upscalers() name ("latent": bilinear, as A1111's "Latent").
  std::string upscaler = "latent";
  // A1111's "Hires sampler": the hires pass's sampler (a GenerationParams::sampler name); empty: the first pass's.
  std::string sampler;

  // Any other scale than 0 asks for the pass, which resolve_params refuses outside 1 to 16 (NaN too), as does a
  // resize side other than 0.
  bool enabled() const { return scale != 0 || resized(); }
  bool resized() const { return resize_width != 0 || resize_height != 0; }
  bool operator==(const HiresFix& o) const {
    return scale == o.scale && resize_width == o.resize_width && resize_height == o.resize_height && steps == o.steps &&
           denoise == o.denoise && upscaler == o.upscaler && sampler == o.sampler;
  }
};

struct GenerationParams {
  int width = 0;  // 0: the bundle's default size
  int height = 0;
  int steps = 50;
  double cfg_scale = 7.5;
  // diffusers' guidance_rescale (Lin et al. 2023, section 3.4), for zero-terminal-SNR models that overexpose at
  // high scales: the guided prediction is scaled to the standard deviation of the text prediction, and this fraction
  // of that is mixed in (0: off; diffusers suggests 0.7). Only with classifier-free guidance.
  double guidance_rescale = 0.0;
  // A scheduler_names() entry or another tool's name for one, or "model": the sampler of the model's own diffusers
  // scheduler (Manifest::source_sampler); resolve_params puts the name of the one that runs.
  std::string sampler = "ddim";
  // DDIM's eta (TCD's gamma), 0 to 1: A1111's "Eta for DDIM", infotext "Eta DDIM". Both passes' where they take it.
  double eta = 0.0;
  // k-diffusion's eta, 0 to 1, the scale of the ancestral and SDE samplers' noise (sampler_takes_eta_ancestral):
  // A1111's "Eta for k-diffusion samplers", infotext "Eta". Both passes' where they take it.
  double eta_ancestral = 1.0;
  // AUTOMATIC1111's "Clip skip": the prompt embeddings come from the text encoder's clip_skip-th layer from the
  // end (1: the last, as SD v1 was trained; 2: the penultimate, ...), through its final layer norm. Applies to the
  // prompt and the negative prompt alike.
  int clip_skip = 1;
  // AUTOMATIC1111's long prompts: a text longer than the text encoder reads (75 tokens) is encoded in chunks of
  // 75 (Tokenizer::chunks) whose embeddings are concatenated, instead of being cut off as diffusers does.
  // A text that fits gives the same embeddings either way.
  bool long_prompts = false;
  // What becomes of a step's prompt and negative prompt contexts of different lengths (with long_prompts): by
  // default they go through the U-Net in separate calls, as A1111 runs them. A1111's option "Pad prompt/negative
  // prompt" (infotext "Pad conds") pads the shorter with the empty prompt's encoding, one 77-token chunk at a time
  // (EmptyChunks); its "(v0)" variant (infotext "Pad conds v0") pads the negative prompt's by repeating its last
  // vector or cuts it to the prompt's length (LastVector). Padded, they go through the U-Net in one call.
  enum class PadConds { Off, EmptyChunks, LastVector };
  PadConds pad_conds = PadConds::Off;
  // AUTOMATIC1111's prompt syntax: its emphasis "(word)", "[word]", "(word:1.5)", "\(", BREAK (parse_emphasis),
  // applied as emphasis_mode says, its prompt editing and its composable prompts (AND). Without it brackets are
  // text, as in diffusers.
  bool emphasis = false;
  // What the emphasis syntax does, as A1111's option "Emphasis mode" (infotext "Emphasis", written where it is not
  // Original): scale each token's embedding by its weight, then each chunk back to its former mean (Original); scale
  // only (No norm); nothing: the brackets are read and the weights left out (Ignore); or brackets, escapes and BREAK
  // are text, while prompt editing and AND still work (None).
  enum class EmphasisMode { Original, NoNorm, Ignore, None };
  EmphasisMode emphasis_mode = EmphasisMode::Original;
  // Whether prompts are read in the emphasis syntax: brackets, escapes and BREAK (emphasis, in any mode but None).
  bool parses_emphasis() const { return emphasis && emphasis_mode != EmphasisMode::None; }
  // Added in this order (the sums are not associative in floating point, so the order is part of the image).
  std::vector<LoraUse> loras;
  HiresFix hires;
  // AUTOMATIC1111's "Skip Early CFG" (its option "Ignore negative prompt during early sampling"), 0 to 1: the U-Net
  // calls of each pass whose index, over the pass's calls as A1111 counts them, is at most this fraction run the
  // prompt rows alone, guided at scale 1 (0: off). Only with classifier-free guidance.
  double skip_early_cfg = 0.0;
  // AUTOMATIC1111's NGMS ("Negative Guidance minimum sigma", 0: off): a call of a pass, counted from 0, that Skip
  // Early CFG leaves guided runs the prompt rows alone, as Skip Early CFG's do, where its noise level as A1111's
  // sampler hands it over (Scheduler::a1111_sigma) is below this and the call is odd, or any call with
  // ngms_all_steps (A1111's "NGMS all steps"). Only with classifier-free guidance.
  double ngms = 0.0;
  bool ngms_all_steps = false;

  // The hires pass's steps (0 without one).
  int hires_steps() const { return hires.enabled() ? (hires.steps > 0 ? hires.steps : steps) : 0; }

  bool operator==(const GenerationParams& o) const {
    return width == o.width && height == o.height && steps == o.steps && cfg_scale == o.cfg_scale &&
           guidance_rescale == o.guidance_rescale && sampler == o.sampler && eta == o.eta &&
           eta_ancestral == o.eta_ancestral && clip_skip == o.clip_skip && long_prompts == o.long_prompts &&
           pad_conds == o.pad_conds && emphasis == o.emphasis && emphasis_mode == o.emphasis_mode && loras == o.loras &&
           hires == o.hires && skip_early_cfg == o.skip_early_cfg && ngms == o.ngms &&
           ngms_all_steps == o.ngms_all_steps;
  }
};

}  // namespace txt2img
