#include "cli/options.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <regex>
#include <set>

#include "cli/exit_codes.hpp"
#include "cli/metadata.hpp"
#include "cli/output_pattern.hpp"
#include "cli/prompt_source.hpp"
#include "cli/shell_text.hpp"
#include "join.hpp"
#include "txt2img/error.hpp"
#include "txt2img/scheduler.hpp"

namespace txt2img::cli {
namespace {

// An empty value (`--seed "$SEED"` with SEED unset) would otherwise read as a default or as 0: a random seed, CFG 0,
// every shard. Only texts may be empty: a prompt (warned about) and a negative prompt.
void refuse_empty_values(const CLI::App& app) {
  static const std::set<std::string> texts = {"prompt", "--prompt", "--negative-prompt"};
  for (const CLI::Option* option : app.get_options()) {
    if (option->get_type_size_max() == 0 || texts.count(option->get_name())) continue;
    const auto& values = option->results();
    if (std::find(values.begin(), values.end(), "") != values.end())
      throw Error(ErrorKind::Usage, option->get_name() + " is empty (an unset variable?): give it a value" +
                                        (option->get_required() ? "" : ", or leave it out for its default"));
  }
}

// A flag given twice takes its last value (so that scripts can append overrides), but a second prompt or prompt file
// would silently drop the first one's images.
void refuse_second_prompt_source(const CLI::App& app, const std::string& command) {
  for (const char* name : {"--prompt", "--from-file"}) {
    const CLI::Option* option = app.get_option_no_throw(name);
    if (!option || option->count() < 2) continue;
    throw Error(ErrorKind::Usage,
                std::string(name) + " is given " +
                    (option->count() == 2 ? std::string("twice") : std::to_string(option->count()) + " times") +
                    ", and a run reads one " +
                    (std::string(name) == "--prompt"
                         ? "prompt: for several, write them to a file, one a line, and pass --from-file FILE"
                         : "prompt file: for several, join them (cat a.txt b.txt | " + command + " -f -)"));
  }
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// What to write instead of an option `app` does not know (its name, without "=VALUE"): txt2img's for another tool's
// (stable-diffusion.cpp's, CompVis' and diffusers' scripts'), or the option whose name is a typo or two away; "" for
// none.
std::string instead_of(const std::string& name, const CLI::App& app) {
  static const std::map<std::string, std::string> other_tools = {
      {"--sampling-method", "--sampler"},
      {"--schedule", "--sampler with the schedule in its name (euler_karras, dpmpp_2m_exponential, euler_a_uniform)"},
      {"--batch-count", "--images-per-prompt"},
      {"-b", "--images-per-prompt"},
      {"--n_iter", "--images-per-prompt"},
      {"--n_samples", "--images-per-prompt (and --batch-size)"},
      {"--num-images-per-prompt", "--images-per-prompt"},
      {"--guidance-scale", "--cfg-scale"},
      {"--scale", "--cfg-scale"},
      {"--num-inference-steps", "--steps"},
      {"--ddim_steps", "--steps"},
      {"--plms", "--sampler pndm"},
      {"--H", "-H or --height"},
      {"--W", "-W or --width"},
      {"--negative", "--negative-prompt"},
      {"--vae-tiling", "--low-vram (which tiles the decode of large images)"},
      {"--ckpt", "--model with a converted bundle (scripts/convert.py CHECKPOINT)"},
      {"-t", "--threads"},
      {"--outdir", "--output DIR/"},
  };
  // Python scripts' flags are spelt with underscores as often as with hyphens (--guidance_scale).
  std::string hyphens = name;
  std::replace(hyphens.begin() + std::min<size_t>(2, hyphens.size()), hyphens.end(), '_', '-');
  for (const auto& spelling : {name, hyphens})
    if (const auto found = other_tools.find(spelling); found != other_tools.end())
      return app.get_option_no_throw(found->second.substr(0, found->second.find(' '))) ? found->second : "";
  if (name.rfind("--", 0) != 0) return "";
  std::string best;
  size_t best_distance = 3;  // a typo or two, not another word
  for (const CLI::Option* option : app.get_options())
    for (const auto& long_name : option->get_lnames())
      if (const size_t d = edit_distance(name.substr(2), long_name); d < best_distance) {
        best_distance = d;
        best = "--" + long_name;
      }
  return best;
}

// The command line's words that are no option nor an option's value, in order (all of them after "--"): the words
// of a prompt the shell split, wherever CLI11 put them (the prompt, extras, a subcommand's name and arguments).
std::vector<std::string> loose_words(const std::vector<std::string>& args,
                                     const std::function<const CLI::Option*(const std::string&)>& option_named) {
  std::vector<std::string> words;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--") {
      words.insert(words.end(), args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
      break;
    }
    if (args[i].size() < 2 || args[i][0] != '-') {
      words.push_back(args[i]);
      continue;
    }
    const CLI::Option* option = option_named(args[i].substr(0, args[i].find('=')));
    if (option && option->get_items_expected_max() > 0 && args[i].find('=') == std::string::npos) ++i;  // its value
  }
  return words;
}

// `txt2img 'the words as one prompt'`, for a hint.
std::string quoted_prompt_command(const std::vector<std::string>& words) {
  const std::string prompt = join(words, " ");
  std::vector<std::string> line = {"txt2img", prompt};
  if (!prompt.empty() && prompt[0] == '-') line.insert(line.begin() + 1, "--");
  return shell_line(line, /*in_one_line=*/true);
}

// A prompt or flag of generating given before a subcommand, which would go unread: "txt2img an info graphic" is the
// prompt "an" and info of the file "graphic". An option taken from the environment (TXT2IMG_MODEL) is no mistake.
// `words`: the command line's loose words, which the hint quotes as the prompt they most likely are.
void refuse_generate_arguments(const CLI::App& app, const CLI::App& subcommand, const std::vector<std::string>& words) {
  const std::string name = subcommand.get_name();
  for (const CLI::Option* option : app.get_options()) {
    if (option->count() == 0) continue;
    const char* from_environment = option->get_envname().empty() ? nullptr : std::getenv(option->get_envname().c_str());
    if (from_environment && option->results() == std::vector<std::string>{from_environment}) continue;
    if (option->get_name() == "prompt")
      throw Error(ErrorKind::Usage, "\"" + option->results().front() + "\" before " + name + " reads as a prompt, " +
                                        "which the " + name + " subcommand does not take; quote a whole prompt that " +
                                        "has the word " + name +
                                        " in it, so that it is one argument: " + quoted_prompt_command(words));
    throw Error(ErrorKind::Usage, option->get_name() + " comes before the " + name +
                                      " subcommand, which does not read it (an option of generating images); give " +
                                      name + "'s options after it (txt2img " + name + " --help)");
  }
}

std::string generate_footer() {
  return std::string(
             "Prompt files: one prompt a line (blank lines and lines starting with # are skipped), or JSON Lines\n"
             "(a .jsonl name, or a first line starting with {\"key\") where a line may set: ") +
         join(jsonl_keys()) +
         std::string(
             ".\nThe whole file is checked before the model loads.\n\n"
             "Seeds: image n of a prompt whose line sets \"seed\" S uses S + n; every other image uses\n"
             "--seed + its index in the whole run (so image k of a single prompt uses seed + k). Shards and resumed\n"
             "runs therefore make the same images (up to float rounding with --batch-size above 1). With\n"
             "--variation-strength every image keeps the seed and image k takes variation seed --variation-seed + k\n"
             "instead.\n\n"
             "Output names: -o takes a file name or a pattern with {index} (position in the whole run, from 0),\n"
             "{seed}, {n} (position among the prompt's images, from 0) and {prompt} (a slug); numbers take widths\n"
             "as in {index:05}, {prompt:40} limits the slug. Default: ") +
         kDefaultOutputPattern + "\n\nSamplers: " + sampler_names_text() +
         "\n(and model: the sampler of the model's own diffusers scheduler, as txt2img info MODEL_DIR names it)\n\n" +
         exit_code_table();
}

void add_model_option(CLI::App& app, std::string& model) {
  app.add_option("-m,--model", model,
                 std::string("model bundle directory (scripts/convert.py writes one); default $TXT2IMG_MODEL, "
                             "else ") +
                     kDefaultModel)
      ->type_name("DIR")
      ->envname("TXT2IMG_MODEL")
      ->capture_default_str();
}

void configure_generate(CLI::App& app, GenerateOptions& o) {
  auto* prompt = app.add_option("prompt", o.prompt, "the prompt (quote it)");
  app.add_option("-p,--prompt", o.prompt, "the prompt, as a flag")->excludes(prompt);
  app.add_option("-f,--from-file", o.from_file, "read prompts from FILE, one a line or JSON Lines (- reads stdin)")
      ->type_name("FILE")
      ->excludes(prompt)
      ->excludes(app.get_option("--prompt"));
  app.add_option("-n,--negative-prompt", o.negative_prompt, "what the image should not show");
  app.add_option("--images-per-prompt", o.images_per_prompt, "images made from each prompt")
      ->capture_default_str()
      ->check(CLI::Range(1, kMaxImagesPerPrompt));
  app.add_option("--batch-size", o.batch_size,
                 "images denoised together in each U-Net call (more is faster on a GPU and needs more memory; "
                 "images do not depend on it)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app.add_option("-s,--seed", o.seed, "base seed, 0 to 2^63-1 (default or -1: random, printed); see Seeds below")
      ->type_name("N");
  app.add_option("--variation-seed", o.variation_seed,
                 "A1111's variation seed, 0 to 2^63-1 (default or -1: random, printed; needs --variation-strength)")
      ->type_name("N");
  app.add_option("--variation-strength", o.variation_strength,
                 "A1111's variation seed strength, 0 to 1: how far each image's initial noise moves from its seed's "
                 "towards its variation seed's (every image then keeps --seed; image k takes variation seed + k)")
      ->type_name("X");
  app.add_option("--seed-resize-from", o.seed_resize_from,
                 "A1111's Resize seed from width/height, WxH in pixels (8 to 4096 a side): each image's initial noise "
                 "is its seed's at that size, centred in the image's (cropped where larger), so that a seed keeps much "
                 "of its image at another size")
      ->type_name("WxH");
  app.add_option("--ensd", o.ensd,
                 "A1111's eta noise seed delta (ENSD, e.g. 31337): the noise samplers draw at each step (euler_a*, "
                 "dpm2_a*, dpmpp_2s_a*, dpmpp_2m_sde, dpmpp_2m_sde_karras, restart* from 20 steps, dpm_fast, ddpm, "
                 "lcm, lcm_a1111, ddim, ddim_a1111 and tcd with --eta) comes from seed + N")
      ->type_name("N")
      ->check(CLI::Range(uint64_t{0}, kMaxSeed));
  app.add_option("--rng", o.rng,
                 "where the noise comes from: cpu (PyTorch's CPU generator, A1111's RNG: CPU) or nv (A1111's RNG: NV, "
                 "PyTorch's NVIDIA GPU generator imitated on the CPU: what A1111 draws by default on an NVIDIA card, "
                 "so that its images' seeds give their images here)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "nv"}));
  app.add_option("--sampler", o.sampler, "sampler (see Samplers below)")->capture_default_str();
  app.add_option("--steps", o.steps,
                 "denoising steps, 1 to 1000 (1 to 50 with lcm; at least 2 with ddim_a1111 and plms_a1111, 3 with "
                 "unipc_a1111; at "
                 "most 999 with ddim, ddpm, pndm, dpmpp_2m, dpmpp_2m_sde, unipc and deis)")
      ->capture_default_str();
  app.add_option("--cfg-scale", o.cfg_scale, "classifier-free guidance scale (1 or less turns guidance off)")
      ->capture_default_str();
  app.add_option("--guidance-rescale", o.guidance_rescale,
                 "diffusers' guidance_rescale, 0 to 1: how far to bring the guided prediction's spread back to the "
                 "text prediction's (0.7 against overexposure with zero-terminal-SNR models; 0 is off)")
      ->type_name("PHI")
      ->capture_default_str();
  app.add_option("--skip-early-cfg", o.skip_early_cfg,
                 "A1111's Skip Early CFG (Ignore negative prompt during early sampling), 0 to 1: this fraction of "
                 "each pass's first steps runs without the negative prompt, unguided (0 is off)")
      ->type_name("F")
      ->capture_default_str();
  app.add_option(
         "--ngms", o.ngms,
         "A1111's NGMS (Negative Guidance minimum sigma): every other U-Net call whose noise level (sigma; "
         "the timestep for ddim, ddim_a1111, pndm, plms_a1111, unipc and unipc_a1111, as A1111 compares them, and for "
         "ddpm and deis*, which A1111 lacks) is below this runs without the negative prompt, unguided (0 is "
         "off)")
      ->type_name("SIGMA")
      ->capture_default_str();
  app.add_flag("--ngms-all-steps", o.ngms_all_steps,
               "A1111's NGMS all steps: --ngms skips every U-Net call below its sigma, not every other one");
  app.add_option("--eta", o.eta,
                 "DDIM eta, 0 to 1: 0 is deterministic DDIM, 1 is DDPM-like; for tcd its gamma (0.3 is TCD's usual)")
      ->capture_default_str();
  app.add_option("--eta-ancestral", o.eta_ancestral,
                 "A1111's Eta for k-diffusion samplers, 0 to 1: the scale of the noise euler_a*, dpm2_a*, "
                 "dpmpp_2s_a*, dpmpp_sde*, dpmpp_2m_sde_a1111*, dpmpp_2m_sde_heun*, dpmpp_3m_sde* and dpm_fast add as "
                 "they step (0: none, a deterministic solver)")
      ->capture_default_str();
  app.add_option("--clip-skip", o.clip_skip,
                 "A1111's Clip skip: condition on the text encoder's Nth layer from the end (1 the last, 2 the "
                 "penultimate, as many anime models expect), for prompt and negative prompt")
      ->type_name("N")
      ->capture_default_str();
  app.add_flag("--long-prompts", o.long_prompts,
               "encode prompts longer than the 75 tokens the text encoder reads in chunks of 75, as A1111 does, "
               "instead of cutting them off as diffusers does");
  auto* pad_conds =
      app.add_flag("--pad-conds", o.pad_conds,
                   "A1111's Pad prompt/negative prompt (Pad conds): with long prompts, pad the shorter of "
                   "a prompt and its negative prompt with empty chunks, so that both go through the U-Net "
                   "in one call instead of two (a slightly different image)");
  app.add_flag("--pad-conds-v0", o.pad_conds_v0,
               "A1111's Pad prompt/negative prompt (v0) (Pad conds v0): with long prompts, pad the negative prompt by "
               "repeating its last token's vector, or cut it to the prompt's length, so that both go through the "
               "U-Net in one call")
      ->excludes(pad_conds);
  app.add_flag("--emphasis", o.emphasis,
               "read A1111's emphasis syntax in prompts: (word) weighs it 1.1 times, [word] 1/1.1 times, "
               "(word:1.5) 1.5 times, \\( is a bracket, BREAK starts a new chunk with --long-prompts; and its "
               "prompt editing: [from:to:when] changes the text after step when (0.25: a quarter of the steps), "
               "[a|b] alternates every step; and its composable diffusion (with a CFG scale above 1): a AND b:0.5 "
               "guides by each prompt, weighted, and a trailing :2 doubles a prompt's guidance");
  app.add_option("--emphasis-mode", o.emphasis_mode,
                 "A1111's Emphasis mode (implies --emphasis): original scales each token's embedding by its weight, "
                 "then each chunk back to its mean; no-norm only scales; ignore reads the brackets but not the "
                 "weights; none reads brackets as text (prompt editing and AND still work)")
      ->check(CLI::IsMember(emphasis_mode_names()))
      ->type_name("MODE")
      ->default_str("original");
  app.add_option("--lora", o.loras,
                 "add a LoRA of the model (scripts/add_lora.py) to every prompt, as the prompt tag "
                 "<lora:NAME:WEIGHT> would: NAME, NAME:WEIGHT or NAME:TEXT_ENCODER_WEIGHT:UNET_WEIGHT (repeatable)")
      ->type_name("NAME[:W]");
  auto* hires = app.add_option("--hires-scale", o.hires.scale,
                               "A1111's hires fix: denoise again at this many times the size, 1 to 16 (e.g. 2 makes "
                               "1024x1024 of 512x512), from the first pass's latents resized")
                    ->type_name("X")
                    // 0 would read as no hires fix (as a prompt-file line's "hires_scale": 0 turns one off).
                    ->check(CLI::Validator(
                        [](std::string& value) {
                          char* end = nullptr;
                          const double scale = std::strtod(value.c_str(), &end);
                          return *end == '\0' && scale >= 1 && scale <= 16 ? std::string()
                                                                            : "it must be from 1 to 16, not " + value;
                        },
                        "1 to 16"));
  app.add_option("--hires-resize", o.hires_resize,
                 "A1111's hires fix to a size (Resize width to / height to), in place of --hires-scale: WxH in "
                 "pixels, a side 0 keeping the first pass's proportions; with both, the latents are resized to cover "
                 "WxH and cut to it in the middle")
      ->type_name("WxH")
      ->excludes(hires);
  app.add_option("--hires-steps", o.hires.steps, "steps of the hires pass (default: as many as --steps)")
      ->type_name("N");
  app.add_option("--hires-denoise", o.hires.denoise,
                 "denoising strength of the hires pass, above 0 to 1 (A1111's Denoising strength)")
      ->type_name("D")
      ->capture_default_str();
  app.add_option("--hires-upscaler", o.hires.upscaler,
                 "how the latents are resized, as A1111's Latent upscalers: " + join(latent_upscaler_names()) +
                     " (latent is bilinear)")
      ->capture_default_str();
  app.add_option("--hires-sampler", o.hires.sampler,
                 "A1111's Hires sampler: the hires pass's sampler (default: the first pass's; not pndm, plms_a1111, "
                 "lcm or tcd)")
      ->type_name("NAME");
  app.add_option("-W,--width", o.width, "image width, a multiple of 8 (default: the model's size, e.g. 512)");
  app.add_option("-H,--height", o.height, "image height, a multiple of 8 (default: the model's size)");
  app.add_flag("--tiling", o.tiling,
               "A1111's Tiling: an image whose opposite edges meet, for textures and patterns that tile without seams "
               "(the U-Net's and VAE's convolutions pad circularly)");
  add_model_option(app, o.model);
  app.add_option("--device", o.device, "cpu, cuda or cuda:K (default: cuda when available, else cpu)");
  app.add_option("--dtype", o.dtype, "fp16, bf16 or fp32 (default: fp16 on CUDA, fp32 on CPU)")
      ->check(CLI::IsMember({"fp16", "bf16", "fp32"}));
  app.add_option("--graph", o.graph,
                 "TorchScript graph passes after loading: none, freeze, or optimize (freeze + "
                 "optimize_for_inference; faster on the CPU, slower to load; see docs/PERFORMANCE.md)")
      ->check(CLI::IsMember({"none", "freeze", "optimize"}))
      ->capture_default_str();
  app.add_option("--decoder", o.decoder,
                 "full (the model's VAE) or taesd (TAESD, a tiny approximate decoder: about 15 times faster on the "
                 "CPU, softer detail; the bundle needs one, see convert.py --taesd)")
      ->check(CLI::IsMember({"full", "taesd"}))
      ->capture_default_str();
  auto* preview = app.add_option("--preview", o.preview,
                                  "while denoising, rewrite FILE (a PNG) with the image as it forms, decoded by "
                                  "TAESD and safety-checked (the bundle needs a TAESD)")
                      ->type_name("FILE");
  app.add_option("--preview-every", o.preview_every,
                 "with --preview, update it after every N U-Net calls (steps; heun, dpm2, dpmpp_2s_a, dpmpp_sde make "
                 "two a step)")
      ->type_name("N")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str()
      ->needs(preview);
  app.add_flag("--low-vram", o.low_vram,
               "less GPU memory: text encoder and safety checker on the CPU, U-Net and VAE take turns on the GPU, "
               "VAE decoding in tiles for sides above 512");
  app.add_flag("--no-cuda-graph", o.no_cuda_graph,
               "on CUDA, run the U-Net as plain TorchScript calls instead of a replayed CUDA graph (slower; no "
               "effect on the CPU)");
  app.add_option("--threads", o.threads, "CPU threads LibTorch may use (default: all cores)")
      ->check(CLI::Range(1, 4096));
  auto* no_checker = app.add_flag("--no-safety-checker", o.no_safety_checker,
                                  "generate without the safety checker (needed for bundles without one)");
  app.add_option("--safety", o.safety,
                 "what to do with a flagged image: replace (with black) or report (keep it, mark it)")
      ->capture_default_str()
      ->check(CLI::IsMember({"replace", "report"}))
      ->excludes(no_checker);
  app.add_flag("--fail-on-nsfw", o.fail_on_nsfw, "exit with code 6 when any image was flagged (after writing all)")
      ->excludes(no_checker);
  app.add_option("-o,--output", o.output,
                 std::string("output file, directory or name pattern (default ") + kDefaultOutputPattern + ")")
      ->type_name("PATTERN");
  auto* overwrite = app.add_flag("--overwrite", o.overwrite, "replace output files that exist");
  app.add_flag("--skip-existing", o.skip_existing,
               "skip images whose output file exists (resumes an interrupted batch; needs a fixed --seed)")
      ->excludes(overwrite);
  app.add_flag("--no-metadata", o.no_metadata, "write no parameters or txt2img text into the PNG files");
  app.add_option("--shard", o.shard,
                 "make only prompts whose index (from 0) is I modulo N, e.g. --shard $SLURM_ARRAY_TASK_ID/8; needs "
                 "--seed")
      ->type_name("I/N");
  auto* json = app.add_flag("--json", o.json, "print one JSON object per image and a summary on stdout");
  app.add_flag("--json-progress", o.json_progress,
               "with --json, also print one JSON object per denoising step (for progress bars of other programs)")
      ->needs(json);
  app.add_flag("-q,--quiet", o.quiet, "print nothing but errors");
  app.footer(generate_footer);
}

void configure_info(CLI::App& app, InfoOptions& o) {
  app.add_option("path", o.path,
                 "a PNG made by txt2img or AUTOMATIC1111 (- reads it from stdin), or a model bundle directory")
      ->required();
  auto* json = app.add_flag("--json", o.json, "print JSON");
  app.add_flag("--verify", o.verify, "recompute every bundle file's sha256 and compare it with model.json");
  app.add_flag("--command", o.command,
               "for a PNG made by txt2img or AUTOMATIC1111: print the txt2img command that makes it again")
      ->excludes(json);
  app.footer(exit_code_table());
}

void configure_tokenize(CLI::App& app, TokenizeOptions& o) {
  auto* prompt = app.add_option("prompt", o.prompt, "the text to tokenize");
  app.add_option("-f,--from-file", o.from_file, "tokenize every prompt of FILE, one JSON line each (- reads stdin)")
      ->type_name("FILE")
      ->excludes(prompt);
  app.add_option("-n,--negative-prompt", o.negative_prompt,
                 "also tokenize this negative prompt (for a prompt file: where a line has none of its own)");
  add_model_option(app, o.model);
  app.add_flag("--long-prompts", o.long_prompts,
               "count as txt2img --long-prompts reads a prompt: whole, in chunks of 75 tokens");
  app.add_flag("--emphasis", o.emphasis, "read the prompt as txt2img --emphasis does: brackets and weights are no tokens");
  app.add_option("--emphasis-mode", o.emphasis_mode,
                 "read the prompt as txt2img --emphasis-mode MODE does (implies --emphasis): with none, brackets are "
                 "tokens")
      ->check(CLI::IsMember(emphasis_mode_names()))
      ->type_name("MODE")
      ->default_str("original");
  app.add_flag("--json", o.json, "print one JSON object per prompt");
  app.footer(exit_code_table());
}

}  // namespace

std::variant<Command, int> parse_command_line(int argc, char** argv, bool& json_failure) {
  Command command;
  CLI::App app(
      "Stable Diffusion v1 text to image.\n"
      "  txt2img \"a photo of an astronaut riding a horse on mars\" -o astronaut.png\n"
      "  txt2img --from-file prompts.txt --seed 42 -o 'outputs/{index:05}-{prompt}.png'\n"
      "  txt2img info image.png\n"
      "  txt2img info models/sd15 --verify\n"
      "  txt2img tokenize \"a prompt\"",
      "txt2img");
  // A flag given twice takes its last value, as in most Unix tools, so that scripts can append overrides.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  // A callback: counting CUDA devices starts the CUDA runtime, which only --version should pay for.
  app.set_version_flag("--version", std::function<std::string()>(version_string), "print the version and exit");
  app.set_help_flag("-h,--help", "print this help and exit");
  CLI::App* info = app.add_subcommand("info", "show a PNG's generation parameters or a model bundle's manifest");
  CLI::App* tokenize = app.add_subcommand("tokenize", "show the token ids of a prompt and where it is truncated");
  configure_info(*info, command.info);
  configure_tokenize(*tokenize, command.tokenize);
  configure_generate(app, command.generate);
  app.require_subcommand(0, 1);

  // CLI11 reads "--name=" as "--name" without a value and takes the next argument for it ("--negative-prompt=$NEG"
  // with NEG empty would swallow the flag after it); as "--name" "" it is the empty value it says.
  std::vector<std::string> args(argv, argv + argc);
  const auto option_named = [&](const std::string& name) -> const CLI::Option* {
    for (const CLI::App* owner : {&app, info, tokenize})
      if (const CLI::Option* option = owner->get_option_no_throw(name)) return option;
    return nullptr;
  };
  for (size_t i = 1; i < args.size() && args[i] != "--"; ++i) {
    if (args[i].rfind("--", 0) != 0 || args[i].size() <= 3 || args[i].find('=') != args[i].size() - 1) continue;
    const std::string name = args[i].substr(0, args[i].size() - 1);
    const CLI::Option* option = option_named(name);
    if (option && option->get_items_expected_max() == 0)
      throw Error(ErrorKind::Usage, name + " takes no value: give it as " + name);
    if (option) {
      args[i].pop_back();
      args.insert(args.begin() + static_cast<std::ptrdiff_t>(++i), std::string());
    }
  }
  std::vector<char*> split_argv;
  for (auto& arg : args) split_argv.push_back(arg.data());
  try {
    app.parse(static_cast<int>(split_argv.size()), split_argv.data());
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    std::cout << e.what() << std::endl;
    return kExitSuccess;
  } catch (const CLI::ParseError& e) {
    json_failure = !info->parsed() && !tokenize->parsed() && app.get_option("--json")->count() > 0;
    // `txt2img a photo info`: the subcommand then misses its own arguments, which is not what went wrong (unless an
    // unknown flag is, which the hint below names).
    const auto before_subcommand = app.remaining(false);
    const bool unknown_flag = std::any_of(before_subcommand.begin(), before_subcommand.end(),
                                          [](const std::string& extra) { return extra.size() > 1 && extra[0] == '-'; });
    for (const CLI::App* subcommand : {info, tokenize})
      if (subcommand->parsed() && app.get_option("prompt")->count() > 0 && !unknown_flag)
        refuse_generate_arguments(app, *subcommand, loose_words(args, option_named));
    // An empty value fails an option's range check or requirement first; it is named as what it most likely is.
    for (const CLI::App* parsed : {&app, info, tokenize}) refuse_empty_values(*parsed);
    std::string what = e.what();
    // "Could not convert: --steps = abc", in CLI11's words: a number or a switch given what it cannot read.
    static const std::regex conversion("Could not convert: (\\S+) = (.*)");
    if (std::smatch m; dynamic_cast<const CLI::ConversionError*>(&e) && std::regex_match(what, m, conversion)) {
      const CLI::Option* option = option_named(m[1].str());
      const std::string type = option ? option->get_type_name() : "";
      if (option && option->get_items_expected_max() == 0)
        what = m[1].str() + " is a switch: give it without a value (not \"" + m[2].str() + "\")";
      else if (type == "INT" || type == "UINT")
        what =
            m[1].str() + " takes a whole number (written without a fraction or exponent), not \"" + m[2].str() + "\"";
      else if (type == "FLOAT")
        what = m[1].str() + " takes a number, not \"" + m[2].str() + "\"";
    }
    // An argument before the subcommand's name is the main command's, whose help lists what it takes.
    const bool main_extras = !app.remaining(false).empty();
    const CLI::App& reader = info->parsed() && !main_extras       ? *info
                             : tokenize->parsed() && !main_extras ? *tokenize
                                                                  : app;
    if (auto extras = app.remaining(true); dynamic_cast<const CLI::ExtrasError*>(&e) && !extras.empty()) {
      // CLI11 lists arguments it did not expect last first; here in the order given.
      what = std::string(extras.size() > 1 ? "The following arguments were not expected: "
                                           : "The following argument was not expected: ") +
             join(extras, " ");
      // After "--" every argument is a word, not an option.
      const auto words_from = std::find(extras.begin(), extras.end(), "--");
      const auto flag = std::find_if(extras.begin(), words_from,
                                     [](const std::string& extra) { return extra.size() > 1 && extra[0] == '-'; });
      const std::optional<std::string> unknown =
          flag != words_from ? std::optional<std::string>(flag->substr(0, flag->find('='))) : std::nullopt;
      if (words_from != extras.end()) extras.erase(words_from);
      if (unknown) {
        if (const std::string instead = instead_of(*unknown, reader); !instead.empty())
          what += "; for " + *unknown + " use " + instead;
      } else if (&reader == &app && command.generate.prompt && !extras.empty()) {
        // `txt2img a red fox`: the shell gave the prompt's words apart.
        what += "; a prompt of several words goes in quotes: " + quoted_prompt_command(loose_words(args, option_named));
      }
    }
    const std::string help = &reader == &app ? "txt2img --help lists the options"
                                             : "txt2img " + reader.get_name() + " --help lists its options";
    throw Error(ErrorKind::Usage, what + " (" + help + ")");
  }
  json_failure = !info->parsed() && !tokenize->parsed() && command.generate.json;
  for (const CLI::App* parsed : {&app, info, tokenize}) refuse_empty_values(*parsed);
  refuse_second_prompt_source(app, "txt2img");
  refuse_second_prompt_source(*tokenize, "txt2img tokenize");

  for (const CLI::App* subcommand : {info, tokenize})
    if (subcommand->parsed()) refuse_generate_arguments(app, *subcommand, loose_words(args, option_named));
  if (info->parsed()) {
    command.which = Command::Info;
  } else if (tokenize->parsed()) {
    command.which = Command::Tokenize;
    if (!command.tokenize.prompt && command.tokenize.from_file.empty())
      throw Error(ErrorKind::Usage, "no prompt: give one (txt2img tokenize \"a red fox\") or --from-file FILE");
  } else {
    command.which = Command::Generate;
    // What only a hires pass takes needs one asked for (by a scale or a size: CLI11's needs() takes one option).
    for (const char* flag : {"--hires-steps", "--hires-denoise", "--hires-upscaler", "--hires-sampler"})
      if (app.count(flag) > 0 && app.count("--hires-scale") == 0 && app.count("--hires-resize") == 0)
        throw Error(ErrorKind::Usage, std::string(flag) +
                                          " requires --hires-scale or --hires-resize (txt2img --help "
                                          "lists the options)");
    if (!command.generate.prompt && command.generate.from_file.empty())
      throw Error(ErrorKind::Usage,
                  "no prompt: give one as an argument (txt2img \"a red fox in the snow\") or read prompts from a "
                  "file with --from-file FILE");
  }
  return command;
}

}  // namespace txt2img::cli
