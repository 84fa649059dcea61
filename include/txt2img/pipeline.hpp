// Text to image with Stable Diffusion v1: encode the prompt, make noise, denoise with classifier-free guidance,
// decode, check, hand back 8-bit images.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "txt2img/bundle.hpp"
#include "txt2img/noise.hpp"
#include "txt2img/params.hpp"
#include "txt2img/pipeline_options.hpp"
#include "txt2img/prompt_schedule.hpp"
#include "txt2img/safety.hpp"
#include "txt2img/scheduler.hpp"
#include "txt2img/tokenizer.hpp"

namespace txt2img {

class LoraWeights;
class UNetCall;

struct GeneratedImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // height * width * 3
  bool nsfw = false;
  bool safety_checked = false;
  // Decoded by the VAE in cross-faded tiles (--low-vram above 512 pixels a side): slightly unlike a whole decode,
  // so a record of the image must say so for it to be made again.
  bool decoded_in_tiles = false;
  // Whether the last U-Net call of a pass read a prompt and a negative prompt padded to one length
  // (GenerationParams::pad_conds), which is when A1111 records "Pad conds" or "Pad conds v0".
  bool padded_conds = false;
  // Whether NGMS ran a guided U-Net call on the prompt rows alone (GenerationParams::ngms), which is when A1111
  // records "NGMS".
  bool ngms_skipped = false;
  // Whether a sampler drew noise as it stepped (ancestral and SDE samplers, DDIM with eta): the draws that A1111's
  // eta noise seed delta (ENSD) moves, which is when A1111 records "ENSD".
  bool drew_step_noise = false;
};

// Named intermediate tensors (the reference fixtures' names: "text/last_hidden_state", "unet/003/noise_pred",
// "latents/step_003", "vae/decode_out", ...) and progress, for tools that compare or report. The U-Net's context is
// "unet/NNN/encoder_hidden_states" at each call (the first call's also "unet/encoder_hidden_states"; a hires pass's
// names start with "hires/"); where the negative prompts' rows go through the U-Net apart (see text_chunks), that name
// has the prompt rows' and ".../uncond_encoder_hidden_states" the negative prompts'.
class Observer {
 public:
  virtual ~Observer() = default;
  virtual void tensor(const std::string& /*name*/, const torch::Tensor& /*value*/) {}
  virtual void step(size_t /*call*/, size_t /*calls*/) {}
  // Previews (with PipelineOptions::previews): after each U-Net call for which wants_preview is true, preview gets
  // the batch as TAESD decodes the sampler's current estimate of the finished images (its predicted x0, or the
  // latents for a sampler without one), checked by the safety checker as the final images are.
  virtual bool wants_preview(size_t /*call*/, size_t /*calls*/) { return false; }
  virtual void preview(size_t /*call*/, size_t /*calls*/, const std::vector<GeneratedImage>& /*images*/) {}
};

// The sampler that `name` (GenerationParams::sampler) runs on this bundle: the model's own for "model" (any case),
// else the canonical name. Throws Error(Usage), naming the `setting` rather than a flag (prompt-file lines set
// samplers too), for a name no sampler has (its message lists them with "model") and for "model" when the bundle
// records no sampler of its source.
std::string resolve_sampler(const Manifest& manifest, const std::string& name, const std::string& setting = "sampler");

// Whether an image of `prompt` takes classifier-free guidance: U-Net predictions for [uncond, cond] rows mixed by the
// scale. As in diffusers, a scale of 1 or less skips the unconditional rows, and an LCM model with a guidance
// embedding takes the scale as an input instead (LatentConsistencyModelPipeline); the negative prompt is then unused.
// With params.emphasis, a prompt A1111 reads as composable diffusion (is_composable: AND, a trailing weight) is
// guided at any scale, as A1111 guides every prompt, so that its prompts add up as they do there.
bool classifier_free_guidance(const Manifest& manifest, const GenerationParams& params, const std::string& prompt);

// Checks params against the bundle (size a multiple of the VAE factor, steps, sampler, eta, finite cfg, guidance
// rescale, Skip Early CFG and NGMS, clip skip from 1 to the text encoder's layers, LoRAs the bundle has, the hires
// pass) and fills in defaults (the sampler's canonical name),
// before any model is loaded. Throws Error(Usage).
GenerationParams resolve_params(const Manifest& manifest, GenerationParams params);

// Throws Error(Usage) when params.loras cannot be added under these options (a graph optimisation turns the weights
// into constants); Pipeline::generate checks it too, this is for checking before anything loads.
void check_loras_supported(const GenerationParams& params, const PipelineOptions& options);

// Throws Error(Bundle) when a LoRA of params.loras (resolved: each one the bundle lists) has lost its file, which a
// user may delete to save space, so that a run finds it before its first image.
void check_lora_files(const Bundle& bundle, const GenerationParams& params);

class Pipeline {
 public:
  // Throws Error(Usage) when the options need a module the bundle lacks (the safety checker unless it is off, TAESD
  // for its decoder or previews), exclude each other, or name a device this LibTorch does not see or a dtype it
  // cannot run there: what load checks first, for checking before it.
  static void check_options(const Bundle& bundle, const PipelineOptions& options);
  // Loads every module of the bundle onto the device. Throws Error(Bundle), check_options' Error(Usage), or
  // Error(Runtime) for what fails in LibTorch (out of memory). The graph executor's optimisation and cuDNN's
  // benchmark mode are LibTorch's process-wide settings: the last Pipeline loaded sets them for every one.
  static Pipeline load(const Bundle& bundle, const PipelineOptions& options);
  Pipeline(Pipeline&&) noexcept;
  Pipeline& operator=(Pipeline&&) noexcept;
  ~Pipeline();

  const Manifest& manifest() const { return manifest_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  // Whether the bundle's text encoder has the `encode(input_ids, clip_skip)` method that clip_skip > 1 needs
  // (bundles converted before --clip-skip existed have only `forward`).
  bool supports_clip_skip() const { return clip_skip_supported_; }

  // The prompts an image's prompt guides it with, a U-Net row each: with params.emphasis and classifier-free
  // guidance, A1111's composable prompts (split at AND, weighted); else the prompt itself, of weight 1.
  // Throws Error(Usage) for a guidance weight that times the CFG scale is past float32. A model's manifest suffices.
  static std::vector<WeightedPrompt> row_prompts(const Manifest& manifest, const std::string& prompt,
                                                 const GenerationParams& params);

  // The texts an image's prompt and negative prompt make the text encoder read in a run with these params: each
  // itself, or with params.emphasis the distinct texts of its A1111 prompt-editing schedules in both passes, in
  // order, of each of the prompt's composable prompts (split at AND, with classifier-free guidance). None for the
  // negative prompt without classifier-free guidance, which leaves it unread. A model's manifest suffices: the CLI
  // asks before loading. Here and in text_chunks, params as resolve_params gives them (its sampler's canonical name).
  struct TextsRead {
    std::vector<std::string> prompt;
    std::vector<std::string> negative_prompt;
  };
  static TextsRead texts_read(const Manifest& manifest, const std::string& prompt, const std::string& negative_prompt,
                              const GenerationParams& params);

  // How many text-encoder chunks (of context_length tokens) the U-Net reads for a row's prompt and for its negative
  // prompt in a pass: the most among the pass's texts of each (every composable prompt of the prompt, every text of
  // their prompt editing). 1 and 1 unless params.long_prompts; no negative prompt chunks without classifier-free
  // guidance. As in A1111, the prompt's composable prompts are padded to their largest count, and the negative
  // prompt's and the prompt's rows go through the U-Net apart when their counts differ (unless params.pad_conds
  // pads them to one); batch rows whose counts differ would pad each other, so a row depends on its batch unless
  // they agree (and an unguided row, of no negative prompt chunks, never meets a guided one).
  struct TextChunks {
    size_t prompt = 1;
    size_t negative_prompt = 1;
    bool operator==(const TextChunks& o) const { return prompt == o.prompt && negative_prompt == o.negative_prompt; }
  };
  // One count for the first pass, and one for the hires pass where params has one.
  std::vector<TextChunks> text_chunks(const std::string& prompt, const std::string& negative_prompt,
                                      const GenerationParams& params) const;

  // One batch: row k uses prompts[k] / negative_prompts[k], as text (LoRA tags too: parse_lora_tags takes them out
  // into params.loras). Returns one image per row, none for no prompts. Noise is drawn from the start of `noise`
  // (restart()), so one NoiseSource made again gives the same images. The batch's LoRAs (params.loras) stay added to
  // the weights until a batch asks for others. Throws Error(Usage) for another count of negative prompts than prompts,
  // for resolve_params' refusals, LoRAs with a graph optimisation and a batch of prompts guided and not
  // (classifier_free_guidance), which must be made apart; Error(Bundle) for params.clip_skip > 1 when
  // !supports_clip_skip(); Error(Runtime) for what fails in LibTorch (out of memory: with a hint). An exception the
  // observer throws comes out as it was thrown: the way to cancel a run (the CLI throws Error(Interrupted)).
  std::vector<GeneratedImage> generate(const std::vector<std::string>& prompts,
                                       const std::vector<std::string>& negative_prompts, const GenerationParams& params,
                                       NoiseSource& noise, Observer* observer = nullptr);

 private:
  Pipeline(Manifest manifest, Tokenizer tokenizer, PipelineOptions options);

  // `negative`: the text is a negative prompt (refusals name it so).
  std::vector<Tokenizer::Chunk> token_chunks(const std::string& text, const GenerationParams& params,
                                             bool negative) const;
  struct EncodedTexts {
    torch::Tensor input_ids;  // [texts, tokens]
    torch::Tensor hidden;     // [texts, tokens, hidden] on the text encoder's device (float32 where emphasis weighs it)
  };
  EncodedTexts encode_texts(std::vector<std::vector<Tokenizer::Chunk>> texts, const std::vector<int64_t>& uses,
                            const GenerationParams& params);
  enum class Pass { First, Hires };
  static void add_pass_texts(const Manifest& manifest, const std::string& text, bool negative,
                             const GenerationParams& params, Pass pass, std::vector<std::string>& texts);
  static std::vector<ScheduledText> schedule_of(const Manifest& manifest, const std::string& prompt,
                                                const GenerationParams& params, Pass pass);
  // Whether prompt editing makes a prompt (or, `guided`, a negative prompt) read another text in the hires pass than
  // in the first.
  bool hires_reads_other_texts(const std::vector<std::string>& prompts,
                               const std::vector<std::string>& negative_prompts, const GenerationParams& params,
                               bool guided) const;
  // A pass's text conditioning: every U-Net row's texts over the pass, encoded (see pipeline.cpp).
  class TextConditioning;
  TextConditioning encode_prompts(const std::vector<std::string>& prompts,
                                  const std::vector<std::string>& negative_prompts, const GenerationParams& params,
                                  bool guided, Pass pass, Observer* observer);
  // A1111's two settings that run guided U-Net calls of a pass on the prompt rows alone (its CFGDenoiser's
  // skip_uncond): Skip Early CFG, then NGMS for the calls it leaves guided.
  struct UncondSkips {
    double early_fraction;  // GenerationParams::skip_early_cfg
    size_t counted_calls;   // the pass's calls as A1111 counts them: its steps, twice that for second-order samplers
    double ngms;            // GenerationParams::ngms
    bool ngms_all_steps;
    enum class Reason { None, EarlyCfg, Ngms };
    // Why the guided call `call` of the scheduler's run skips the negative prompt, if it does.
    Reason reason(const Scheduler& scheduler, size_t call) const;
  };
  // What the U-Net calls of one pass share, for denoise.
  struct Denoising {
    TextConditioning& text;         // the rows' contexts at each step: [uncond rows, cond rows] with guidance
    const torch::Tensor& guidance;  // LCM's guidance input, undefined for other models
    bool guided;
    double cfg_scale;
    double guidance_rescale;
    UncondSkips skips;
    size_t calls;  // the batch's U-Net calls in all passes, for the observer's progress
    NoiseSource& noise;
    Observer* observer;
  };
  // The U-Net's prediction for the batch `model_input`, in one call per context (see TextConditioning::at).
  torch::Tensor predict_noise(const torch::Tensor& model_input, const torch::Tensor& t,
                              const std::vector<torch::Tensor>& contexts, const torch::Tensor& guidance);
  // A pass's latents, and what its images record of it.
  struct Denoised {
    torch::Tensor latents;
    bool padded_conds;  // the last call's contexts were padded to one call (A1111's "Pad conds")
    bool ngms_skipped;  // NGMS skipped the negative prompt in a call
    bool drew_step_noise;  // the sampler drew noise in a step
  };
  // Steps `latents` through the scheduler's calls from its first_call() to the end. Observed tensors are named from
  // call 000 on with `prefix` before them; progress counts on from `calls_before`.
  Denoised denoise(Scheduler& scheduler, torch::Tensor latents, const Denoising& run, const std::string& prefix,
                   size_t calls_before);
  torch::Tensor decode(const torch::Tensor& latents);
  bool decodes_in_tiles(const torch::Tensor& latents) const;
  // An inpainting model's extra U-Net input at this latent size: [1, 1 + latent_channels, h, w], made once per size
  // (the encoder's output observed as "vae/encode_out" when it is made).
  torch::Tensor masked_image_conditioning(int64_t latent_height, int64_t latent_width, Observer* observer);
  // 8-bit NHWC pixels as the images the caller gets: checked (observed as "safety/..." when `observer` is given),
  // and black where flagged in SafetyMode::Replace.
  std::vector<GeneratedImage> checked_images(const torch::Tensor& pixels, Observer* observer) const;
  enum class Stage { Denoise, Decode };
  void make_room_for(Stage stage);

  Manifest manifest_;
  Tokenizer tokenizer_;
  PipelineOptions options_;
  std::string bundle_dir_;
  torch::jit::Module text_encoder_;
  bool clip_skip_supported_ = false;
  // The empty prompt's encoding ([1, tokens, hidden], on the device) that pads conds, for each clip skip.
  std::map<int, torch::Tensor> empty_prompts_;
  std::unique_ptr<UNetCall> unet_;
  std::unique_ptr<LoraWeights> loras_;
  torch::jit::Module vae_decoder_;  // the options' decoder, whichever it is
  std::optional<torch::jit::Module> preview_decoder_;  // TAESD, with PipelineOptions::previews
  std::optional<torch::jit::Module> vae_encoder_;      // for inpainting models only
  std::map<std::pair<int64_t, int64_t>, torch::Tensor> masked_image_conditionings_;
  // Whose module is on the device when low_vram moves them; none while a move is under way (a move that failed, out
  // of memory say, leaves both to be placed again by the next batch).
  std::optional<Stage> resident_ = Stage::Denoise;
  std::unique_ptr<SafetyChecker> safety_;
};

}  // namespace txt2img
