#include "txt2img/pipeline.hpp"

#include <ATen/Context.h>
#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/cuda.h>
#include <torch/nn/functional/upsampling.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "address_space.hpp"
#include "attention_kernel.hpp"
#include "circular_padding.hpp"
#include "forwarded_observer.hpp"
#include "join.hpp"
#include "lora_weights.hpp"
#include "pipeline_parts.hpp"
#include "text_conditioning.hpp"
#include "txt2img/device_memory.hpp"
#include "txt2img/error.hpp"
#include "unet_call.hpp"
#include "vae_tiling.hpp"

namespace txt2img {
namespace {

// --low-vram decodes latents larger than this many latents a side in tiles of this size (64 = 512 pixels, SD v1's
// native size), overlapping by a quarter tile so the cross-fades hide the seams.
constexpr int64_t kVaeTile = 64;
constexpr int64_t kVaeTileOverlap = 16;

// With low_vram on an accelerator the U-Net and the VAE decoder take turns on it (Pipeline::make_room_for).
bool takes_turns(const PipelineOptions& options) { return options.low_vram && !options.device.is_cpu(); }

std::string call_name(size_t call) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%03zu", call);
  return buf;
}

// The contexts of one step's U-Net calls as TextConditioning::at gives them, named after `where` ("unet/",
// "hires/unet/003/"): the prompt rows' (with guidance, the negative prompts' too where they go through the U-Net in one
// call) as "encoder_hidden_states", the negative prompts' as "uncond_encoder_hidden_states" where they go apart.
void observe_contexts(Observer* observer, const std::string& where, const std::vector<torch::Tensor>& contexts) {
  if (!observer) return;
  if (contexts.size() == 2) observe(observer, where + "uncond_encoder_hidden_states", contexts[0]);
  observe(observer, where + "encoder_hidden_states", contexts.back());
}

// Every step's timestep, on the device in one copy before the loop: a host-to-device copy of pageable memory waits
// for the device to finish its queue, so one made inside the loop would keep the host from queueing the next step
// while the device runs this one. float32 for every sampler: the U-Net's time embedding casts to float32 first (so
// DDIM's whole timesteps, which diffusers passes as int64, give the same embedding), and one dtype for every run
// keeps a captured CUDA graph valid from one run to the next.
torch::Tensor timestep_tensors(const std::vector<double>& timesteps, torch::Device device) {
  return torch::tensor(std::vector<float>(timesteps.begin(), timesteps.end())).to(device);
}

// A host tensor (a step's noise) on the device without that wait: CUDA copies from page-locked memory asynchronously.
torch::Tensor to_device_async(const torch::Tensor& host, torch::Device device) {
  return device.is_cuda() ? host.pin_memory().to(device, /*non_blocking=*/true) : host.to(device);
}

// [-1, 1] NCHW float -> NHWC uint8 as diffusers' numpy_to_pil: round(clamp(x/2 + 1/2, 0, 1) * 255).
torch::Tensor to_uint8(const torch::Tensor& decoded) {
  auto images = (decoded.to(torch::kFloat32) * 0.5 + 0.5).clamp(0, 1);
  return (images * 255).round().to(torch::kUInt8).permute({0, 2, 3, 1}).contiguous().cpu();
}

// fp16's range ends at 65504; SD v1's VAE decoder in particular is known to overflow there and hand back NaNs,
// which would otherwise become black or noise images without a word.
void throw_if_non_finite(const torch::Tensor& values, const std::string& what, torch::ScalarType dtype) {
  if (torch::isfinite(values).all().item<bool>()) return;
  throw Error(ErrorKind::Runtime,
              what + " became non-finite (NaN or infinity)" +
                  std::string(dtype == torch::kFloat16 ? "; fp16 overflowed: retry with --dtype bf16 or --dtype fp32"
                                                       : "; beyond fp16 only extreme values overflow: a very large CFG "
                                                         "scale, prompt weight or LoRA weight, or a broken model"));
}

// The hires pass's latents as A1111 sizes them (calculate_target_resolution, sample_hr_pass): the first pass's resized
// to the image size, int(side * scale) pixels or the resize's, divided by the VAE's factor and rounded down; where a
// resize gives both sides, to a size that covers them in the first pass's proportions, then cut to them in the
// middle, its odd latent on the bottom and right.
struct HiresGeometry {
  int64_t upscaled[2];  // latent height and width, resized
  int64_t cut[2];       // the latents cut off the top and the left
  int64_t size[2];      // the pass's latent height and width
};

HiresGeometry hires_geometry(const GenerationParams& params, int vae_scale_factor) {
  const HiresFix& h = params.hires;
  const int64_t width = params.width, height = params.height, rx = h.resize_width, ry = h.resize_height;
  int64_t to_x = 0, to_y = 0, cut_x = 0, cut_y = 0;  // pixels, then the latents to cut
  if (!h.resized()) {
    to_x = static_cast<int64_t>(width * h.scale);
    to_y = static_cast<int64_t>(height * h.scale);
  } else if (ry == 0) {
    to_x = rx;
    to_y = rx * height / width;
  } else if (rx == 0) {
    to_x = ry * width / height;
    to_y = ry;
  } else {
    // Python's float ratios, compared as A1111 compares them.
    if (static_cast<double>(width) / static_cast<double>(height) < static_cast<double>(rx) / static_cast<double>(ry)) {
      to_x = rx;
      to_y = rx * height / width;
    } else {
      to_x = ry * width / height;
      to_y = ry;
    }
    cut_x = (to_x - rx) / vae_scale_factor;
    cut_y = (to_y - ry) / vae_scale_factor;
  }
  HiresGeometry g{};
  g.upscaled[0] = to_y / vae_scale_factor;
  g.upscaled[1] = to_x / vae_scale_factor;
  g.cut[0] = cut_y / 2;
  g.cut[1] = cut_x / 2;
  g.size[0] = g.upscaled[0] - cut_y;
  g.size[1] = g.upscaled[1] - cut_x;
  return g;
}

torch::Tensor upscale_latents(const torch::Tensor& latents, const LatentUpscaler& upscaler,
                              std::vector<int64_t> size) {
  namespace F = torch::nn::functional;
  using Mode = LatentUpscaler::Mode;
  // The operator F::interpolate calls for this mode, without the warning about its default (changed in PyTorch 1.11)
  // that LibTorch 1.13's prints to stderr.
  if (upscaler.mode == Mode::kNearestExact)
    return at::_upsample_nearest_exact2d(latents, size, c10::nullopt, c10::nullopt);
  auto options = F::InterpolateFuncOptions().size(std::move(size));
  if (upscaler.mode == Mode::kNearest) return F::interpolate(latents, options.mode(torch::kNearest));
  options.align_corners(false).antialias(upscaler.antialias);
  if (upscaler.mode == Mode::kBicubic) return F::interpolate(latents, options.mode(torch::kBicubic));
  return F::interpolate(latents, options.mode(torch::kBilinear));
}

// A1111's hires pass (setup_img2img_steps with the steps given): a schedule of int(steps / min(denoise, 0.999))
// steps of which only the last `steps` run, so that the strength decides where the schedule is entered and the
// step count stays what was asked for. Throws Error(Usage) where the pass's sampler cannot enter it there.
std::unique_ptr<Scheduler> make_hires_sampler(const Manifest& manifest, const GenerationParams& params) {
  const int steps = params.hires_steps();
  const double schedule = std::floor(steps / std::min(params.hires.denoise, 0.999));
  if (schedule > manifest.scheduler.num_train_timesteps) {
    char numbers[96];
    std::snprintf(numbers, sizeof numbers, "%d hires steps at a denoising strength of %g take a schedule of %.15g",
                  steps, params.hires.denoise, schedule);
    throw Error(ErrorKind::Usage, "hires fix: " + std::string(numbers) + " steps, more than the model's " +
                                      std::to_string(manifest.scheduler.num_train_timesteps) +
                                      " timesteps; raise the strength or lower the steps");
  }
  const int total = static_cast<int>(schedule);
  try {
    auto sampler = make_sampler(manifest, hires_pass(params), total);
    // Whether its start is the first call or a later one depends on the step counts; the refusal should not.
    const std::string why = sampler->why_it_cannot_start_later();
    if (!why.empty()) throw Error(ErrorKind::Usage, why);
    sampler->start_at(static_cast<size_t>(total - steps));
    return sampler;
  } catch (const Error& e) {
    throw Error(e.kind(), "hires fix: " + std::string(e.what()) + " (" + std::to_string(steps) +
                              " hires steps at this denoising strength take a schedule of " + std::to_string(total) +
                              " steps)");
  }
}

// Throws Error(Usage) for a hires fix that cannot run: its size, strength, steps, upscaler, or a sampler that cannot
// enter its schedule in the middle; Error(Bundle) for a sampler that cannot run the model's prediction type.
void check_hires(const Manifest& manifest, const GenerationParams& params) {
  const HiresFix& h = params.hires;
  const std::string resize = std::to_string(h.resize_width) + "x" + std::to_string(h.resize_height);
  if (h.resized()) {
    if (h.scale != 0) throw Error(ErrorKind::Usage, "hires fix: a scale or a size to resize to, not both");
    if (h.resize_width < 0 || h.resize_height < 0 || h.resize_width > kMaxImageSide || h.resize_height > kMaxImageSide)
      throw Error(ErrorKind::Usage, "hires resize " + resize + ": each side must be from 0 to " +
                                        std::to_string(kMaxImageSide) + " (0: in the first pass's proportions)");
  } else if (!(h.scale >= 1 && h.scale <= 16)) {
    throw Error(ErrorKind::Usage, "hires scale must be from 1 to 16, as A1111's Upscale by (1 denoises again at the "
                                  "same size)");
  }
  const HiresGeometry g = hires_geometry(params, manifest.vae_scale_factor);
  for (int k : {0, 1}) {
    const char* name = k == 0 ? "height" : "width";
    const int side = k == 0 ? params.height : params.width;
    const std::string how = h.resized() ? "resized to " + resize : std::to_string(side) + " times the hires scale";
    // A resize to both sides first covers them: that size must fit too.
    for (int64_t latents : {g.size[k], g.upscaled[k]}) {
      const int64_t pixels = latents * manifest.vae_scale_factor;
      if (pixels < std::max(8, manifest.vae_scale_factor) || pixels > kMaxImageSide)
        throw Error(ErrorKind::Usage, "hires fix: the " + std::string(name) +
                                          (latents == g.size[k] ? "" : " before the cut to the resize") + " would be " +
                                          std::to_string(pixels) + " (" + how + "); it must be from 8 to " +
                                          std::to_string(kMaxImageSide));
    }
  }
  if (!std::isfinite(h.denoise) || h.denoise <= 0 || h.denoise > 1)
    throw Error(ErrorKind::Usage, "hires denoising strength must be above 0 and at most 1");
  if (h.steps < 0) throw Error(ErrorKind::Usage, "hires steps must be 0 (as many as the first pass) or more");
  if (!find_latent_upscaler(h.upscaler))
    throw Error(ErrorKind::Usage,
                "unknown hires upscaler \"" + h.upscaler + "\" (" + join(latent_upscaler_names()) + ")");
  make_hires_sampler(manifest, params);
}

// LibTorch's process-wide settings that Pipeline::load changes: a load that fails puts back what an earlier pipeline
// of the process runs with.
class ProcessSettingsGuard {
 public:
  ProcessSettingsGuard()
      : optimize_(torch::jit::getGraphExecutorOptimize()), cudnn_benchmark_(at::globalContext().benchmarkCuDNN()) {}
  ProcessSettingsGuard(const ProcessSettingsGuard&) = delete;
  ProcessSettingsGuard& operator=(const ProcessSettingsGuard&) = delete;
  ~ProcessSettingsGuard() {
    if (kept_) return;
    torch::jit::setGraphExecutorOptimize(optimize_);
    at::globalContext().setBenchmarkCuDNN(cudnn_benchmark_);
  }
  void keep() { kept_ = true; }

 private:
  bool optimize_, cudnn_benchmark_, kept_ = false;
};

}  // namespace

std::unique_ptr<Scheduler> make_sampler(const Manifest& manifest, const GenerationParams& params, int steps) {
  // The checkpoint's training schedule (betas, offset, prediction type) with each sampler's own default spacing, as
  // the reference runs use them: leading for DDIM/PNDM and linspace for the sigma samplers. A zero-terminal-SNR
  // model keeps its own spacing (trailing, as a rule), without which DDIM would never start from its pure-noise
  // timestep 999, as diffusers' `<Sampler>.from_config(pipe.scheduler.config)` keeps it.
  // StableDiffusionPipeline sets steps_offset to 1 on loading (configs of early diffusers releases said 0), so its
  // DDIM and PNDM never run another offset.
  SchedulerConfig config = manifest.scheduler;
  if (!config.rescale_betas_zero_snr) config.timestep_spacing.clear();
  config.steps_offset = 1;
  // The passes share both etas; each sampler takes the one it has (resolve_params refused those no pass takes).
  return make_scheduler(params.sampler, config, steps, sampler_takes_eta(params.sampler) ? params.eta : 0.0,
                        sampler_takes_eta_ancestral(params.sampler) ? params.eta_ancestral : 1.0);
}

GenerationParams hires_pass(const GenerationParams& params) {
  GenerationParams pass = params;
  if (!params.hires.sampler.empty()) pass.sampler = params.hires.sampler;
  return pass;
}

Pipeline::Pipeline(Manifest manifest, Tokenizer tokenizer, PipelineOptions options)
    : manifest_(std::move(manifest)), tokenizer_(std::move(tokenizer)), options_(options) {}
Pipeline::Pipeline(Pipeline&&) noexcept = default;
Pipeline& Pipeline::operator=(Pipeline&&) noexcept = default;
Pipeline::~Pipeline() = default;

void Pipeline::check_options(const Bundle& bundle, const PipelineOptions& options) {
  check_placement(options.device, options.dtype);
  // A file the bundle lists but that was deleted is named as such: the user removed it, the converter did not omit it.
  const auto lacks = [&](const std::string& file, const std::string& what) {
    return "model bundle " + bundle.dir().string() +
           (bundle.lists(file) ? ": " + file + " (its " + what + ") is missing, though model.json lists it"
                               : " has no " + what);
  };
  if (options.safety != SafetyMode::Off && bundle.has("safety_checker.pt") && !bundle.manifest().safety)
    throw Error(ErrorKind::Bundle, "model bundle " + bundle.dir().string() +
                                       ": model.json lists safety_checker.pt but gives no \"safety\" settings (its "
                                       "image size and normalisation); convert the model again with "
                                       "scripts/convert.py, or pass --no-safety-checker");
  if (options.safety != SafetyMode::Off && !bundle.has("safety_checker.pt"))
    throw Error(ErrorKind::Usage, lacks("safety_checker.pt", "safety checker") +
                                      "; convert one in (scripts/convert.py --safety-checker DIR) "
                                      "or pass --no-safety-checker to generate without it");
  if ((options.decoder == Decoder::Taesd || options.previews) && !bundle.has("taesd_decoder.pt"))
    throw Error(ErrorKind::Usage,
                lacks("taesd_decoder.pt", "TAESD decoder") + "; convert the model again with " +
                    "scripts/convert.py ... --taesd TAESD (madebyollin/taesd's diffusion_pytorch_model.safetensors " +
                    "or taesd_decoder.pth)" +
                    (options.decoder == Decoder::Taesd ? ", or decode with the model's VAE (--decoder full)"
                                                       : ", or go without previews"));
  if (options.attention_kernel != AttentionKernel::Default) {
    const std::string kernel = "attention kernel " + attention_kernel_name(options.attention_kernel);
    if (!attends_through_sdpa(bundle.manifest()))
      throw Error(ErrorKind::Usage, kernel + ": model bundle " + bundle.dir().string() + " was exported by PyTorch " +
                                        bundle.manifest().torch_version +
                                        ", whose modules attend through plain matrix products; export it with "
                                        "PyTorch >= 2.0 (TXT2IMG_PYTHON=<that python> scripts/convert.py ...)");
    check_attention_kernel(options.attention_kernel, options.device);
  }
  if (options.low_vram && options.graph != GraphOptimization::None)
    throw Error(ErrorKind::Usage, "--low-vram cannot be combined with --graph freeze or optimize: it moves the models "
                                  "between host and device, and frozen weights are part of the graph");
}

// Both entry points let LibTorch's exceptions out only as Error(Runtime) (backend_failure), by function-try-blocks.
Pipeline Pipeline::load(const Bundle& bundle, const PipelineOptions& options) try {
  check_options(bundle, options);
  uint64_t read_by_every_run = 0;
  for (const auto& file : bundle.manifest().files)
    if (file.name == "tokenizer.model" || file.name == "text_encoder.pt" || file.name == "unet.pt")
      read_by_every_run += file.bytes;
  reserve_address_space(read_by_every_run);
  Pipeline p(bundle.manifest(), bundle.load_tokenizer(), options);
  // Freezing needs the graph executor's optimisations on (with them off it leaves calls to methods it removed), so
  // they are switched to the options' setting only once the modules are prepared.
  ProcessSettingsGuard settings;
  torch::jit::setGraphExecutorOptimize(true);
  at::globalContext().setBenchmarkCuDNN(options.cudnn_benchmark);
  // Each module is read into host memory and cast there, and only then copied to the device: the device never holds
  // its float32 weights (a CUDA caching allocator would keep their blocks, twice the fp16 size, reserved after the
  // cast), and the modules arrive one after another.
  // Freezing keeps only `forward` unless told otherwise: `methods` names the other methods that must survive it.
  auto prepare = [&](const std::string& file, torch::Device device, torch::ScalarType dtype,
                     bool channels_last = false, std::vector<std::string> methods = {}) {
    auto module = bundle.load_module(file, torch::kCPU);
    module.eval();
    module.to(device, dtype);
    if (channels_last) to_channels_last(module);  // before freezing, which turns the weights into constants
    if (options.tiling && (file == "unet.pt" || file == "vae_decoder.pt" || file == "vae_encoder.pt") &&
        detail::pad_circularly(module) == 0)
      throw Error(ErrorKind::Bundle, "model bundle " + bundle.dir().string() + ": its " + file +
                                         " cannot pad circularly for --tiling (a converter before this release made "
                                         "it); convert the model again with scripts/convert.py");
    if (options.graph == GraphOptimization::None) return module;
    methods.erase(std::remove_if(methods.begin(), methods.end(),
                                 [&](const std::string& m) { return !module.find_method(m); }),
                  methods.end());
    auto frozen = torch::jit::freeze(module, methods);
    return options.graph == GraphOptimization::Freeze ? frozen : torch::jit::optimize_for_inference(frozen, methods);
  };
  p.bundle_dir_ = bundle.dir().string();
  p.loras_ = std::make_unique<LoraWeights>(bundle.dir());
  p.text_encoder_ = prepare("text_encoder.pt", side_device(options), side_dtype(options), false, {"encode"});
  p.clip_skip_supported_ = p.text_encoder_.find_method("encode").has_value();
  p.unet_ =
      std::make_unique<UNetCall>(prepare("unet.pt", options.device, options.dtype, options.channels_last),
                                 options.device, options.channels_last, options.cuda_graph, options.attention_kernel);
  p.vae_decoder_ = prepare(options.decoder == Decoder::Taesd ? "taesd_decoder.pt" : "vae_decoder.pt",
                           takes_turns(options) ? torch::kCPU : options.device, options.dtype);
  // A few MB: it stays on the device, whatever takes turns there (a TAESD that decodes the images is shared when it
  // stays put too; a torch::jit::Module copy is a handle to the same module).
  if (options.previews)
    p.preview_decoder_ = options.decoder == Decoder::Taesd && !takes_turns(options)
                             ? p.vae_decoder_
                             : prepare("taesd_decoder.pt", options.device, options.dtype);
  // It runs once per latent size, a small cost next to the denoising, so it sits with the text encoder (on the CPU
  // in float32 with low_vram).
  if (bundle.manifest().inpainting)
    p.vae_encoder_ = prepare("vae_encoder.pt", side_device(options), side_dtype(options));
  if (options.safety != SafetyMode::Off)
    p.safety_ = std::make_unique<SafetyChecker>(bundle.path("safety_checker.pt"), *bundle.manifest().safety,
                                                side_device(options), side_dtype(options));
  torch::jit::setGraphExecutorOptimize(options.profiling_executor);
  settings.keep();
  return p;
} catch (const Error&) {
  throw;
} catch (const std::exception& e) {
  throw backend_failure(e);
}

const std::vector<LatentUpscaler>& latent_upscalers() {
  using Mode = LatentUpscaler::Mode;
  static const std::vector<LatentUpscaler> upscalers = {
      {"latent", "Latent", Mode::kBilinear, false},
      {"latent-antialiased", "Latent (antialiased)", Mode::kBilinear, true},
      {"latent-bicubic", "Latent (bicubic)", Mode::kBicubic, false},
      {"latent-bicubic-antialiased", "Latent (bicubic antialiased)", Mode::kBicubic, true},
      {"latent-nearest", "Latent (nearest)", Mode::kNearest, false},
      {"latent-nearest-exact", "Latent (nearest-exact)", Mode::kNearestExact, false},
  };
  return upscalers;
}

std::vector<std::string> latent_upscaler_names() {
  std::vector<std::string> names;
  for (const auto& upscaler : latent_upscalers()) names.emplace_back(upscaler.name);
  return names;
}

const LatentUpscaler* find_latent_upscaler(const std::string& name) {
  for (const auto& upscaler : latent_upscalers())
    if (name == upscaler.name) return &upscaler;
  return nullptr;
}

bool classifier_free_guidance(const Manifest& manifest, const GenerationParams& params, const std::string& prompt) {
  return manifest.guidance_embedding_dim == 0 && (params.cfg_scale > 1.0 || (params.emphasis && is_composable(prompt)));
}

std::string resolve_sampler(const Manifest& manifest, const std::string& name, const std::string& setting) {
  std::string lower;
  for (char c : name) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower != "model") {
    const std::string canonical = canonical_scheduler_name(name);
    if (is_scheduler_name(canonical)) return canonical;
    throw Error(ErrorKind::Usage, "unknown " + setting + " \"" + name + "\" (known: " + sampler_names_text() +
                                      ", and model, the model's own; A1111's and diffusers' names for them work too)");
  }
  if (!manifest.source_sampler.empty()) return manifest.source_sampler;
  throw Error(ErrorKind::Usage,
              setting + " \"" + name + "\": the model has no scheduler of its own that txt2img can run (" +
                  (manifest.source_scheduler_class.empty()
                       ? std::string("it was converted without a diffusers scheduler config: a random model, or a "
                                     "single file without --config, or before this release's scripts/convert.py")
                       : "its diffusers scheduler is " + manifest.source_scheduler_class +
                             " in a configuration no txt2img sampler computes") +
                  "); choose a sampler by name");
}

GenerationParams resolve_params(const Manifest& manifest, GenerationParams params) {
  // Latent sizes are pixels / vae_scale_factor (a power of two); sizes are multiples of 8 like every SD tool's.
  const int multiple = std::max(8, manifest.vae_scale_factor);
  if (params.width == 0) params.width = manifest.default_size;
  if (params.height == 0) params.height = manifest.default_size;
  for (auto [name, value] : {std::pair<const char*, int>{"width", params.width}, {"height", params.height}}) {
    if (value < multiple || value > kMaxImageSide || value % multiple != 0)
      throw Error(ErrorKind::Usage, std::string(name) + " " + std::to_string(value) + " must be a multiple of " +
                                        std::to_string(multiple) + " from " + std::to_string(multiple) + " to " +
                                        std::to_string(kMaxImageSide));
  }
  if (params.steps < 1 || params.steps > manifest.scheduler.num_train_timesteps)
    throw Error(ErrorKind::Usage, "steps " + std::to_string(params.steps) + " must be from 1 to " +
                                      std::to_string(manifest.scheduler.num_train_timesteps));
  // The guidance is float32 arithmetic: a scale past it would only fail, as non-finite latents, once the model ran.
  if (!fits_float32(params.cfg_scale))
    throw Error(ErrorKind::Usage, "cfg scale must be a finite number that float32 holds (at most 3.4e38)");
  if (!(params.guidance_rescale >= 0 && params.guidance_rescale <= 1))
    throw Error(ErrorKind::Usage, "guidance rescale must be from 0 to 1");
  if (!(params.skip_early_cfg >= 0 && params.skip_early_cfg <= 1))
    throw Error(ErrorKind::Usage, "skip early CFG must be from 0 to 1");
  if (!(params.ngms >= 0 && std::isfinite(params.ngms)))
    throw Error(ErrorKind::Usage, "NGMS must be a finite number of 0 or more");
  if (params.clip_skip < 1 || params.clip_skip > manifest.text_num_layers) {
    const std::string layers = std::to_string(manifest.text_num_layers);
    throw Error(ErrorKind::Usage, "clip skip " + std::to_string(params.clip_skip) + " must be from 1 to " + layers +
                                      " (--clip-skip N takes the text encoder's Nth layer from the end: 1 the last, "
                                      "2 the one before it; this model's has " + layers + " layers)");
  }
  for (const auto& lora : params.loras) {
    if (!fits_float32(lora.te_weight) || !fits_float32(lora.unet_weight))
      throw Error(ErrorKind::Usage,
                  "LoRA " + lora.name + ": its weights must be finite numbers that float32 holds (at most 3.4e38)");
    if (manifest.find_lora(lora.name)) continue;
    std::vector<std::string> names;
    for (const auto& l : manifest.loras) names.push_back(l.name);
    throw Error(ErrorKind::Usage, "the model has no LoRA named \"" + lora.name + "\" (" +
                                      (names.empty() ? "it has none" : "it has " + join(names)) +
                                      "); add one with scripts/add_lora.py MODEL_DIR " + lora.name + ".safetensors");
  }
  params.sampler = resolve_sampler(manifest, params.sampler);  // records name what the run used, as --help does
  if (params.hires.enabled() && !params.hires.sampler.empty())
    params.hires.sampler = resolve_sampler(manifest, params.hires.sampler, "hires sampler");
  std::vector<std::string> samplers = {params.sampler};
  if (params.hires.enabled()) samplers.push_back(hires_pass(params).sampler);
  check_etas_taken(samplers, params.eta, params.eta_ancestral);
  // The sampler's own refusals: a zero-terminal-SNR model, steps its schedule cannot space.
  make_sampler(manifest, params, params.steps);
  if (params.hires.enabled()) check_hires(manifest, params);
  return params;
}

void check_loras_supported(const GenerationParams& params, const PipelineOptions& options) {
  if (!params.loras.empty() && options.graph != GraphOptimization::None)
    throw Error(ErrorKind::Usage, "LoRAs cannot be added to frozen weights (--graph freeze or optimize makes them "
                                  "constants of the graph); drop --graph for prompts with LoRA tags");
}

void check_lora_files(const Bundle& bundle, const GenerationParams& params) {
  std::error_code ec;
  // The file system asked again: a host may check long after the bundle was opened.
  for (const auto& lora : params.loras)
    if (const auto* listed = bundle.manifest().find_lora(lora.name);
        listed && !std::filesystem::is_regular_file(bundle.path(listed->file), ec))
      throw Error(ErrorKind::Bundle, "the model bundle's LoRA \"" + lora.name + "\" is missing its file " +
                                         bundle.path(listed->file).string() + "; add it again with " +
                                         add_lora_again(bundle.dir()));
}

// The U-Net's fp16 weights (1.6 GiB for SD v1) and the decoder's activations at 512² (some 0.6 GiB) are the two
// peaks; taking turns keeps the device's peak at the larger of them instead of their sum. The leaving module goes
// first, and the allocator's cache is emptied so that the memory shows as free to other processes too.
void Pipeline::make_room_for(Stage stage) {
  if (!takes_turns(options_) || resident_ == stage) return;
  resident_.reset();
  if (stage == Stage::Decode) {
    unet_->to(torch::kCPU, options_.parked_turns);
    release_cached_device_memory(options_.device);
    vae_decoder_.to(options_.device);
  } else {
    vae_decoder_.to(torch::kCPU);
    release_cached_device_memory(options_.device);
    unet_->to(options_.device, options_.parked_turns);
  }
  resident_ = stage;
}

torch::Tensor Pipeline::decode(const torch::Tensor& latents) {
  auto decode_whole = [&](const torch::Tensor& z) {
    return vae_decoder_.forward({z.to(options_.dtype)}).toTensor().to(torch::kFloat32);
  };
  if (decodes_in_tiles(latents))
    return decode_tiled(decode_whole, latents, manifest_.vae_scale_factor, kVaeTile, kVaeTileOverlap);
  return decode_whole(latents);
}

bool Pipeline::decodes_in_tiles(const torch::Tensor& latents) const {
  // TAESD has no attention (the VAE's grows with the square of the latent area) and half the VAE's widest
  // activations, so it decodes whole. With tiling each tile would wrap around inside itself.
  return options_.low_vram && options_.decoder == Decoder::Full && !options_.tiling && needs_tiling(latents, kVaeTile);
}

// txt2img runs an inpainting model with the whole image masked, as A1111 does and as diffusers' inpainting pipeline
// does with a white mask: a mask of ones, then the scaled latents of the masked image, which is all gray (0 in the
// VAE's [-1, 1]). The encoder's mean stands in for the sample of its distribution that A1111 and diffusers draw:
// deterministic, and close to any sample, as SD's VAE learnt small variances (its training weighed the KL term,
// which would pull them towards 1, very lightly against reconstruction).
torch::Tensor Pipeline::masked_image_conditioning(int64_t latent_height, int64_t latent_width, Observer* observer) {
  auto& conditioning = masked_image_conditionings_[{latent_height, latent_width}];
  if (conditioning.defined()) return conditioning;
  const auto f = manifest_.vae_scale_factor;
  const auto gray = torch::zeros({1, 3, latent_height * f, latent_width * f},
                                 torch::TensorOptions().dtype(side_dtype(options_)).device(side_device(options_)));
  const auto latents = vae_encoder_->forward({gray}).toTensor().to(options_.device, torch::kFloat32);
  observe(observer, "vae/encode_out", latents);
  throw_if_non_finite(latents, "the VAE encoder's encoding of the masked image", side_dtype(options_));
  conditioning = torch::cat(
      {torch::ones({1, 1, latent_height, latent_width}, latents.options()), latents * manifest_.scale_factor}, 1);
  return conditioning;
}

torch::Tensor Pipeline::predict_noise(const torch::Tensor& model_input, const torch::Tensor& t,
                                      const std::vector<torch::Tensor>& contexts, const torch::Tensor& guidance) {
  if (contexts.size() == 1) return (*unet_)(model_input, t, contexts[0], guidance);
  // Only guided batches take more than one call, and LCM's guidance input goes with unguided ones.
  TORCH_INTERNAL_ASSERT(!guidance.defined());
  std::vector<torch::Tensor> predictions;
  int64_t row = 0;
  for (const auto& context : contexts) {
    predictions.push_back((*unet_)(model_input.slice(0, row, row + context.size(0)), t, context));
    row += context.size(0);
  }
  return torch::cat(predictions);
}

// As A1111's CFGDenoiser.forward decides it, `call - first` being its count of the pass's calls: Skip Early CFG where
// that count over the pass's calls as A1111 counts them is at most the fraction; else NGMS at odd counts (or every
// one) whose noise level is below the threshold, compared in float32 as A1111 compares a tensor with a number.
Pipeline::UncondSkips::Reason Pipeline::UncondSkips::reason(const Scheduler& scheduler, size_t call) const {
  const size_t counted = call - scheduler.first_call();
  if (early_fraction > 0 && static_cast<double>(counted) / static_cast<double>(counted_calls) <= early_fraction)
    return Reason::EarlyCfg;
  if (ngms > 0 && (counted % 2 == 1 || ngms_all_steps) &&
      static_cast<float>(scheduler.a1111_sigma(call)) < static_cast<float>(ngms))
    return Reason::Ngms;
  return Reason::None;
}

Pipeline::Denoised Pipeline::denoise(Scheduler& scheduler, torch::Tensor latents, const Denoising& run,
                                     const std::string& prefix, size_t calls_before) {
  const auto& timesteps = scheduler.timesteps();
  const size_t first = scheduler.first_call();
  const auto t = timestep_tensors(timesteps, options_.device);
  const std::vector<int64_t> shape(latents.sizes().begin(), latents.sizes().end());
  const auto image_conditioning =
      manifest_.inpainting ? masked_image_conditioning(shape[2], shape[3], run.observer) : torch::Tensor();
  if (image_conditioning.defined()) observe(run.observer, prefix + "unet/image_conditioning", image_conditioning);
  bool ngms_skipped = false;
  bool drew_step_noise = false;
  for (size_t call = first; call < timesteps.size(); ++call) {
    const auto skip_reason = run.guided ? run.skips.reason(scheduler, call) : UncondSkips::Reason::None;
    const bool skip_uncond = skip_reason != UncondSkips::Reason::None;
    ngms_skipped |= skip_reason == UncondSkips::Reason::Ngms;
    const bool guided = run.guided && !skip_uncond;
    auto model_input = scheduler.scale_model_input(guided        ? run.text.guided_batch(latents)
                                                   : skip_uncond ? run.text.prompt_batch(latents)
                                                                 : latents,
                                                   call);
    if (image_conditioning.defined())
      model_input = torch::cat({model_input, image_conditioning.expand({model_input.size(0), -1, -1, -1})}, 1);
    const auto& contexts = skip_uncond ? run.text.prompt_contexts_at(call - first) : run.text.at(call - first);
    observe_contexts(run.observer, prefix + "unet/" + call_name(call - first) + "/", contexts);
    auto noise_pred =
        predict_noise(model_input.to(options_.dtype), t[static_cast<int64_t>(call)], contexts, run.guidance)
            .to(torch::kFloat32);
    observe(run.observer, prefix + "unet/" + call_name(call - first) + "/noise_pred", noise_pred);
    if (guided) noise_pred = run.text.guide(noise_pred, run.cfg_scale, run.guidance_rescale);
    if (skip_uncond) noise_pred = run.text.guide_without_uncond(noise_pred);
    observe(run.observer, prefix + "step/" + call_name(call - first) + "/model_output", noise_pred);
    torch::Tensor step_noise;
    if (scheduler.needs_noise(call)) {
      const auto brownian = scheduler.brownian_increment(call);
      // Only drawn noise counts: A1111's ENSD moves it, never a Brownian tree's.
      drew_step_noise |= !brownian;
      step_noise =
          to_device_async(brownian ? run.noise.brownian(shape, *brownian) : run.noise.draw(shape), options_.device);
    }
    latents = scheduler.step(noise_pred, call, latents, step_noise);
    if (scheduler.pred_original_sample().defined())
      observe(run.observer, prefix + "step/" + call_name(call - first) + "/pred_original_sample",
              scheduler.pred_original_sample());
    observe(run.observer, prefix + "latents/step_" + call_name(call - first), latents);
    const size_t done = calls_before + call - first + 1;
    if (run.observer) run.observer->step(done, run.calls);
    if (preview_decoder_ && run.observer && run.observer->wants_preview(done, run.calls)) {
      const auto& x0 = scheduler.pred_original_sample();
      const auto decoded = preview_decoder_->forward({(x0.defined() ? x0 : latents).to(options_.dtype)}).toTensor();
      run.observer->preview(done, run.calls, checked_images(to_uint8(decoded), nullptr));
    }
  }
  return {latents, run.text.padded_at(timesteps.size() - 1 - first), ngms_skipped, drew_step_noise};
}

std::vector<GeneratedImage> Pipeline::generate(const std::vector<std::string>& prompts,
                                               const std::vector<std::string>& negative_prompts,
                                               const GenerationParams& requested, NoiseSource& noise,
                                               Observer* caller_observer) try {
  if (prompts.size() != negative_prompts.size())
    throw Error(ErrorKind::Usage, "a batch of " + std::to_string(prompts.size()) +
                                      " prompts takes as many negative prompts, not " +
                                      std::to_string(negative_prompts.size()));
  if (prompts.empty()) return {};
  std::optional<ForwardedObserver> forwarded;
  Observer* const observer = caller_observer ? &forwarded.emplace(*caller_observer) : nullptr;
  noise.restart();
  const GenerationParams params = resolve_params(manifest_, requested);
  if (params.clip_skip > 1 && !clip_skip_supported_)
    throw Error(ErrorKind::Bundle, "model bundle " + bundle_dir_ + ": its text encoder was exported before clip skip "
                                   "existed and cannot do --clip-skip " + std::to_string(params.clip_skip) +
                                   "; re-convert the model with this release's scripts/convert.py (or use "
                                   "--clip-skip 1)");
  check_loras_supported(params, options_);
  const auto guided_count = std::count_if(prompts.begin(), prompts.end(), [&](const std::string& prompt) {
    return classifier_free_guidance(manifest_, params, prompt);
  });
  // Guiding an unguided prompt's row would change its image below a CFG scale of 1, and even at 1 read its negative
  // prompt, which it leaves unread alone.
  if (guided_count != 0 && guided_count != static_cast<std::ptrdiff_t>(prompts.size()))
    throw Error(ErrorKind::Usage,
                "a batch of prompts with classifier-free guidance and without (composable prompts "
                "and others at a CFG scale of 1 or less): generate them in separate batches");
  const bool guided = guided_count != 0;
  // A1111 encodes the empty prompt that pads conds (cond_stage_model([""])) when it loads the model, without LoRAs;
  // with emphasis its rescale leaves it as it is (every weight 1).
  if (guided && params.pad_conds == GenerationParams::PadConds::EmptyChunks &&
      !empty_prompts_.count(params.clip_skip)) {
    loras_->apply({}, manifest_, text_encoder_, unet_->module());
    c10::InferenceMode inference;
    empty_prompts_[params.clip_skip] = encode_texts({{}}, {1}, params).hidden.to(options_.device, options_.dtype);
  }
  loras_->apply(params.loras, manifest_, text_encoder_, unet_->module());
  c10::InferenceMode inference;
  const auto batch = static_cast<int64_t>(prompts.size());

  // 1. Encode the prompts; with classifier-free guidance the negative prompts too, for U-Net batches [uncond, cond].
  // With A1111's prompt editing, every text they read in the pass.
  auto text = encode_prompts(prompts, negative_prompts, params, guided, Pass::First, observer);
  observe_contexts(observer, "unet/", text.at(0));

  // 2. Initial noise.
  auto scheduler = make_sampler(manifest_, params, params.steps);
  std::vector<int64_t> latent_shape = {batch, manifest_.latent_channels, params.height / manifest_.vae_scale_factor,
                                       params.width / manifest_.vae_scale_factor};
  auto latents = (noise.draw(latent_shape) * scheduler->init_noise_sigma()).to(options_.device);
  observe(observer, "latents/init", latents);

  // 3. For each timestep: predict the noise (an inpainting model also sees the whole image masked), guide, step.
  make_room_for(Stage::Denoise);
  // LatentConsistencyModelPipeline's w: the scale minus 1 (in double, then float32), one per row.
  const auto guidance = manifest_.guidance_embedding_dim > 0
                            ? torch::full({batch}, params.cfg_scale - 1.0, torch::kFloat32).to(options_.device)
                            : torch::Tensor();
  // A hires pass enters a longer schedule part-way.
  const auto hires_sampler = params.hires.enabled() ? make_hires_sampler(manifest_, params) : nullptr;
  const size_t calls = scheduler->timesteps().size() +
                       (hires_sampler ? hires_sampler->timesteps().size() - hires_sampler->first_call() : 0);
  const auto pass_run = [&](TextConditioning& pass_text, const Scheduler& pass_sampler, int pass_steps) {
    const UncondSkips skips{params.skip_early_cfg, pass_sampler.calls_per_step() * static_cast<size_t>(pass_steps),
                            params.ngms, params.ngms_all_steps};
    return Denoising{pass_text, guidance, guided, params.cfg_scale, params.guidance_rescale,
                     skips,     calls,    noise,  observer};
  };
  auto denoised = denoise(*scheduler, latents, pass_run(text, *scheduler, params.steps), "", 0);
  latents = denoised.latents;
  bool padded_conds = denoised.padded_conds;
  bool ngms_skipped = denoised.ngms_skipped;
  bool drew_step_noise = denoised.drew_step_noise;

  // 4. Hires fix: the latents resized, noised to where the hires schedule is entered, denoised again; the noise
  // starts again from each row's seed, as A1111 draws it.
  if (hires_sampler) {
    const size_t first = hires_sampler->first_call();
    const HiresGeometry g = hires_geometry(params, manifest_.vae_scale_factor);
    latent_shape[2] = g.size[0];
    latent_shape[3] = g.size[1];
    const LatentUpscaler& upscaler = *find_latent_upscaler(params.hires.upscaler);  // resolve_params checked it
    latents = upscale_latents(latents, upscaler, {g.upscaled[0], g.upscaled[1]})
                  .narrow(2, g.cut[0], g.size[0])
                  .narrow(3, g.cut[1], g.size[1]);
    observe(observer, "hires/latents/upscaled", latents);
    noise.restart();
    latents = hires_sampler->add_noise(latents, noise.draw(latent_shape).to(options_.device), first);
    observe(observer, "hires/latents/init", latents);
    // Prompt editing starts the hires pass's schedule again, its steps counting on from the first pass's.
    std::optional<TextConditioning> hires_text;
    if (hires_reads_other_texts(prompts, negative_prompts, params, guided))
      hires_text.emplace(encode_prompts(prompts, negative_prompts, params, guided, Pass::Hires, observer));
    denoised = denoise(*hires_sampler, latents,
                       pass_run(hires_text ? *hires_text : text, *hires_sampler, params.hires_steps()), "hires/",
                       scheduler->timesteps().size());
    latents = denoised.latents;
    padded_conds |= denoised.padded_conds;
    ngms_skipped |= denoised.ngms_skipped;
    drew_step_noise |= denoised.drew_step_noise;
  }
  throw_if_non_finite(latents, "the latents", options_.dtype);

  // 5. Decode.
  make_room_for(Stage::Decode);
  // TAESD learnt to decode the latents as the U-Net makes them; the VAE takes them divided by its scaling factor.
  auto decode_in = options_.decoder == Decoder::Taesd ? latents : latents / manifest_.scale_factor;
  observe(observer, "vae/decode_in", decode_in);
  auto decoded = decode(decode_in);
  observe(observer, "vae/decode_out", decoded);
  throw_if_non_finite(decoded, "the decoded images", options_.dtype);

  // 6. Check.
  auto images = checked_images(to_uint8(decoded), observer);
  const bool tiled = decodes_in_tiles(decode_in);
  for (auto& image : images) {
    image.decoded_in_tiles = tiled;
    image.padded_conds = padded_conds;
    image.ngms_skipped = ngms_skipped;
    image.drew_step_noise = drew_step_noise;
  }
  return images;
} catch (const ObserverThrew& e) {
  std::rethrow_exception(e.thrown);
} catch (const Error&) {
  throw;
} catch (const std::exception& e) {
  throw backend_failure(e);
}

std::vector<GeneratedImage> Pipeline::checked_images(const torch::Tensor& pixels, Observer* observer) const {
  const auto batch = pixels.size(0);
  std::vector<bool> flagged(static_cast<size_t>(batch), false);
  if (safety_) {
    auto scores = safety_->check(pixels);
    flagged = scores.flagged;
    observe(observer, "safety/concept_scores", scores.concept_scores);
    observe(observer, "safety/special_scores", scores.special_scores);
  }
  std::vector<GeneratedImage> out;
  for (int64_t b = 0; b < batch; ++b) {
    GeneratedImage image;
    image.height = static_cast<int>(pixels.size(1));
    image.width = static_cast<int>(pixels.size(2));
    image.nsfw = flagged[static_cast<size_t>(b)];
    image.safety_checked = safety_ != nullptr;
    if (image.nsfw && options_.safety == SafetyMode::Replace) {
      image.rgb.assign(static_cast<size_t>(pixels[b].numel()), 0);
    } else {
      const auto* data = pixels[b].data_ptr<uint8_t>();
      image.rgb.assign(data, data + pixels[b].numel());
    }
    out.push_back(std::move(image));
  }
  return out;
}

}  // namespace txt2img
