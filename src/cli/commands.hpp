// The subcommands, each with the options its flags fill in. Each returns the process's exit code and throws
// txt2img::Error for the exit code of its kind.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "txt2img/params.hpp"

namespace txt2img::cli {

// Where a model bundle is looked for when --model is absent: $TXT2IMG_MODEL, then this.
constexpr const char* kDefaultModel = "models/sd15";

struct GenerateOptions {
  std::optional<std::string> prompt;
  std::string from_file;
  std::string negative_prompt;
  int images_per_prompt = 1;
  int batch_size = 1;
  std::string seed;  // empty: random
  // A1111's variation seed: with a strength above 0 every image of the run keeps the seed and image k's noise is
  // mixed with that of variation seed + k (empty: random).
  std::string variation_seed;
  double variation_strength = 0;
  // A1111's Seed resize from: "WxH", the size in pixels of each image's seed noise (empty: none).
  std::string seed_resize_from;
  uint64_t ensd = 0;  // A1111's eta noise seed delta, SeededNoise's eta_noise_seed_delta
  std::string rng = "cpu";  // cpu or nv: SeededNoise's NoiseRng
  std::string sampler = "ddim";
  int steps = 50;
  double cfg_scale = 7.5;
  double guidance_rescale = 0.0;  // GenerationParams::guidance_rescale
  double skip_early_cfg = 0.0;    // GenerationParams::skip_early_cfg
  double ngms = 0.0;              // GenerationParams::ngms
  bool ngms_all_steps = false;    // GenerationParams::ngms_all_steps
  double eta = 0.0;
  double eta_ancestral = 1.0;  // GenerationParams::eta_ancestral
  int clip_skip = 1;  // GenerationParams::clip_skip
  bool long_prompts = false;  // GenerationParams::long_prompts
  bool pad_conds = false;     // GenerationParams::pad_conds EmptyChunks
  bool pad_conds_v0 = false;  // GenerationParams::pad_conds LastVector
  bool emphasis = false;      // GenerationParams::emphasis
  std::string emphasis_mode;  // GenerationParams::emphasis_mode by its flag name (empty: original); implies emphasis
  HiresFix hires;             // GenerationParams::hires (scale 0: off), but for its resize
  std::string hires_resize;   // --hires-resize's WxH: HiresFix::resize_width and resize_height
  std::vector<std::string> loras;  // --lora NAME[:WEIGHT[:UNET_WEIGHT]]: a <lora:...> tag added to every prompt
  std::optional<int> width;  // none: the model's default size
  std::optional<int> height;
  std::string model = kDefaultModel;
  std::string device;  // empty: cuda when available, else cpu
  std::string dtype;   // empty: fp16 on CUDA, fp32 on CPU
  std::string graph = "none";  // none, freeze, optimize (PipelineOptions::graph)
  bool low_vram = false;       // PipelineOptions::low_vram
  bool tiling = false;         // PipelineOptions::tiling
  std::string decoder = "full";  // full or taesd (PipelineOptions::decoder)
  std::string preview;           // a PNG rewritten with TAESD's view of the batch's first image (empty: none)
  int preview_every = 1;         // ... after every this many U-Net calls
  bool no_cuda_graph = false;  // on CUDA: PipelineOptions::cuda_graph etc. off
  int threads = 0;     // 0: LibTorch's default
  bool no_safety_checker = false;
  std::string safety = "replace";
  bool fail_on_nsfw = false;
  std::optional<std::string> output;  // absent: kDefaultOutputPattern
  bool overwrite = false;
  bool skip_existing = false;
  bool no_metadata = false;
  std::string shard;  // "I/N"
  bool json = false;
  bool json_progress = false;  // with json: a "step" object per denoising step too
  bool quiet = false;
};

struct InfoOptions {
  std::string path;
  bool json = false;
  bool verify = false;
  bool command = false;  // a PNG: the txt2img command line that makes it again
};

struct TokenizeOptions {
  std::optional<std::string> prompt;
  std::optional<std::string> negative_prompt;  // a prompt file line's own takes its place
  std::string from_file;
  std::string model = kDefaultModel;
  bool json = false;
  bool long_prompts = false;  // as generating with --long-prompts: chunks instead of a cut-off
  bool emphasis = false;      // as generating with --emphasis
  std::string emphasis_mode;  // as generating with --emphasis-mode (empty: original); implies emphasis
};

int run_generate(const GenerateOptions& options);
int run_info(const InfoOptions& options);
int run_tokenize(const TokenizeOptions& options);

// "txt2img 0.1.0 (LibTorch 1.13.1)".
std::string version_string();

}  // namespace txt2img::cli
