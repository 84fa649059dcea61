// The default command: check everything, load the model once, make the images in U-Net batches, write each one.
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <tuple>

#include "cli/commands.hpp"
#include "cli/metadata.hpp"
#include "cli/output_pattern.hpp"
#include "cli/pixel_size.hpp"
#include "cli/plan.hpp"
#include "cli/reporter.hpp"
#include "cli/signals.hpp"
#include "cli/truncation.hpp"
#include "txt2img/bundle.hpp"
#include "txt2img/device_memory.hpp"
#include "txt2img/error.hpp"
#include "txt2img/lora_tags.hpp"
#include "txt2img/pipeline.hpp"
#include "txt2img/png.hpp"
#include "txt2img/prompt_schedule.hpp"
#include "txt2img/scheduler.hpp"

namespace txt2img::cli {
namespace {

// --seed-resize-from's "WxH" as {width, height} in pixels; {0, 0} where it is not given.
std::pair<int, int> seed_resize_size(const std::string& text) { return pixel_size("--seed-resize-from", text, 8); }

// The text chunk that marks a preview PNG, so that only an earlier preview is ever replaced by one.
constexpr const char* kPreviewKey = "txt2img-preview";

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string format_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", s);
  return buf;
}

std::string format_mib(double mib) {
  char buf[32];
  if (mib >= 1024)
    std::snprintf(buf, sizeof buf, "%.2f GiB", mib / 1024);
  else
    std::snprintf(buf, sizeof buf, "%.0f MiB", mib);
  return buf;
}

nlohmann::ordered_json optional_number(const std::optional<double>& value) {
  return value ? nlohmann::ordered_json(*value) : nlohmann::ordered_json(nullptr);
}

struct Placement {
  PipelineOptions options;
  std::string device;  // "cpu", "cuda:0"
  std::string dtype;   // "fp16", "bf16", "fp32"
};

Placement choose_placement(const GenerateOptions& o) {
  Placement p;
  p.options.device = parse_device(o.device.empty() ? (torch::cuda::is_available() ? "cuda" : "cpu") : o.device);
  p.device = p.options.device.str();
  const bool cuda_wanted = p.options.device.is_cuda();
  p.dtype = o.dtype.empty() ? (cuda_wanted ? "fp16" : "fp32") : o.dtype;
  // CLI11 checked every name against its list.
  p.options.dtype = *dtype_named(p.dtype);
  check_placement(p.options.device, p.options.dtype);
  p.options.graph = *graph_optimization_named(o.graph);
  p.options.low_vram = o.low_vram;
  p.options.tiling = o.tiling;
  p.options.decoder = *decoder_named(o.decoder);
  p.options.previews = !o.preview.empty();
  // On CUDA the U-Net call is captured as a CUDA graph with NHWC convolutions, and TorchScript runs unprofiled:
  // measured on an H200 (docs/PERFORMANCE.md), 100 instead of 78 U-Net it/s and a first image after 1.5 s instead
  // of 6, with pixels within one level. Unprofiled execution alone would lose speed, NHWC alone too. On the CPU
  // the profiling executor has nothing to compile (LibTorch's CPU fusers are off) and its profiling costs 7 % of
  // the U-Net's time over 8 steps at 512x512 (docs/PERFORMANCE.md, CPU (v)), so the CPU runs unprofiled too.
  const bool replay = cuda_wanted && !o.no_cuda_graph;
  p.options.cuda_graph = replay;
  p.options.channels_last = replay;
  p.options.profiling_executor = cuda_wanted && !replay;
  p.options.safety = o.no_safety_checker    ? SafetyMode::Off
                     : o.safety == "report" ? SafetyMode::Report
                                            : SafetyMode::Replace;
  return p;
}

// Reads a job's prompt with `read`; what it refuses (a weight past float32) names the prompt file's line.
template <typename Read>
auto of_line(const RunPlan& plan, const ImageJob& job, Read&& read) -> decltype(read()) {
  try {
    return read();
  } catch (const Error& e) {
    if (!job.line) throw;
    throw Error(e.kind(), plan.where(job) + ": " + e.what());
  }
}

// What outlives a batch of the run's previews: once one could not be written, the run makes no more; an
// --preview-every above an image's U-Net calls, which leaves it without one, is said once.
struct PreviewState {
  bool failed = false;
  bool said_too_sparse = false;
};

// Progress of each U-Net call, and the place where a pending SIGINT/SIGTERM stops the run.
class StepObserver : public Observer {
 public:
  StepObserver(Reporter& reporter, const GenerateOptions& o, PreviewState& previews)
      : reporter_(reporter), o_(o), previews_(previews) {}
  void step(size_t call, size_t calls) override {
    reporter_.step(call, calls);
    throw_if_stop_requested();
  }
  bool wants_preview(size_t call, size_t calls) override {
    if (o_.preview.empty() || previews_.failed) return false;
    const auto every = static_cast<size_t>(o_.preview_every);
    if (call == calls && calls < every && !previews_.said_too_sparse) {
      previews_.said_too_sparse = true;
      reporter_.warn("--preview-every " + std::to_string(every) + " is more than the " + std::to_string(calls) +
                     " U-Net calls of an image here, which gets no preview");
    }
    return call % every == 0;
  }
  // The batch's first image, replaced whole so that an image viewer never reads half a file. A preview that cannot
  // be written (a full disk, say) stops the previews, not the images.
  void preview(size_t call, size_t calls, const std::vector<GeneratedImage>& images) override {
    const auto& image = images.front();
    try {
      const auto png = encode_png(image.rgb.data(), image.width, image.height,
                                  {{kPreviewKey, "an image as it forms, rewritten while txt2img works"}});
      // Its folder may be an output folder that the run's first image has not made yet (check_preview_file).
      const auto folder = std::filesystem::path(o_.preview).parent_path();
      std::error_code ec;
      if (!folder.empty()) std::filesystem::create_directories(folder, ec);
      {
        // Only around the file: a report blocked on a full pipe must not hold off the second Ctrl-C.
        const DeferSecondSignal writing;
        write_file_atomic(o_.preview, png);
      }
      reporter_.preview(o_.preview, call, calls);
    } catch (const Error& e) {
      previews_.failed = true;
      reporter_.warn(std::string(e.what()) + "; no more previews in this run");
    }
  }

 private:
  Reporter& reporter_;
  const GenerateOptions& o_;
  PreviewState& previews_;
};

struct Totals {
  uint64_t written = 0;
  uint64_t skipped = 0;
  uint64_t failed = 0;
  uint64_t nsfw = 0;
};

class Generator {
 public:
  Generator(const GenerateOptions& o, const Placement& placement, const Manifest& manifest, RunPlan& plan,
            Reporter& reporter)
      : o_(o),
        placement_(placement),
        manifest_(manifest),
        plan_(plan),
        reporter_(reporter),
        seed_resize_(seed_resize_size(o.seed_resize_from)) {}

  void run(Pipeline& pipeline, Totals& totals, uint64_t to_make) {
    pipeline_ = &pipeline;
    totals_ = &totals;
    to_make_ = to_make;
    std::vector<ImageJob> batch;
    std::vector<Pipeline::TextChunks> batch_chunks;
    ImageJob job;
    plan_.rewind();
    while (plan_.next(job)) {
      if (!job.in_shard) continue;
      std::error_code ec;
      if (o_.skip_existing && std::filesystem::exists(job.output, ec)) {
        ++totals.skipped;
        continue;
      }
      // A batch's rows are padded to its largest numbers of text chunks (in each pass): only rows that agree share
      // a batch, so that an image never depends on its batch.
      const auto chunks =
          of_line(plan_, job, [&] { return pipeline.text_chunks(job.model_prompt, job.negative_prompt, job.params); });
      if (!batch.empty() && (batch.size() == static_cast<size_t>(o_.batch_size) || !(batch[0].params == job.params) ||
                             batch_chunks != chunks))
        make(batch);
      of_line(plan_, job, [&] { warn_about_prompt(job); });
      batch.push_back(job);
      batch_chunks = chunks;
    }
    if (!batch.empty()) make(batch);
  }

  uint64_t in_flight() const { return in_flight_; }

 private:
  // Once per prompt (its images follow each other): what of it the model will not read as written.
  void warn_about_prompt(const ImageJob& job) {
    if (warned_any_ && job.prompt_index == warned_prompt_) return;
    warned_any_ = true;
    warned_prompt_ = job.prompt_index;
    const std::string where = job.line ? plan_.where(job) + ": the " : "the ";
    // A1111's composable diffusion: the prompt split at AND, each part guiding by its weight (a trailing ":2").
    const auto composable = composable_prompts(job.model_prompt);
    if (job.params.emphasis && is_composable(job.model_prompt)) {
      if (!classifier_free_guidance(manifest_, job.params, job.model_prompt))
        reporter_.warn(where + "prompt has " + (composable.size() > 1 ? "AND" : "a trailing weight") +
                       ", which A1111 reads as composable diffusion; this LCM-distilled model takes no classifier-free "
                       "guidance, so txt2img reads it as text");
      else if (composable.size() == 1)
        reporter_.warn(where +
                       "prompt ends in a weight, which A1111 (and --emphasis) reads as the strength of its "
                       "guidance: " +
                       python_float(composable[0].weight) + " times the CFG scale");
    }
    for (const auto& cut : cuts(job))
      reporter_.warn(where + cut.what +
                     (cut.read == *cut.text ? "" : " (as prompt editing or AND makes it: \"" + cut.read + "\")") +
                     " " + describe(cut.truncation) + " (--long-prompts reads all of it)");
  }

  struct Cut {
    const char* what;          // "prompt", "negative prompt"
    const std::string* text;   // the job's
    std::string read;          // the text cut off: the job's, or one that prompt editing or AND makes of it
    Truncation truncation;
  };
  // Of the job's prompt and negative prompt, each one's first text (with prompt editing or AND, of those it makes)
  // that the text encoder cuts off; none with long prompts.
  std::vector<Cut> cuts(const ImageJob& job) const {
    std::vector<Cut> found;
    if (job.params.long_prompts) return found;
    const auto texts_read = Pipeline::texts_read(manifest_, job.model_prompt, job.negative_prompt, job.params);
    for (auto [what, text, reads] : {std::tuple<const char*, const std::string*, const std::vector<std::string>*>{
                                         "prompt", &job.model_prompt, &texts_read.prompt},
                                     {"negative prompt", &job.negative_prompt, &texts_read.negative_prompt}})
      for (const auto& read : *reads) {
        auto t = find_truncation(
            pipeline_->tokenizer().encode_traced(read, job.params.parses_emphasis(), std::string("the ") + what),
            manifest_.context_length);
        if (!t.truncated()) continue;
        found.push_back({what, text, read, std::move(t)});
        break;
      }
    return found;
  }

  // Whether a text the job's prompt or negative prompt makes the text encoder read holds "(" or "[", where A1111
  // records an emphasis mode other than its default.
  bool bracketed_texts(const ImageJob& job) const {
    const auto texts = Pipeline::texts_read(manifest_, job.model_prompt, job.negative_prompt, job.params);
    for (const auto* read : {&texts.prompt, &texts.negative_prompt})
      for (const auto& text : *read)
        if (text.find_first_of("([") != std::string::npos) return true;
    return false;
  }

  // The embeddings the job's prompt and negative prompt name, each once, with the hash A1111 knows it by.
  std::vector<std::pair<std::string, std::string>> embeddings_used(const ImageJob& job) const {
    std::vector<std::pair<std::string, std::string>> used;
    for (const auto* text : {&job.model_prompt, &job.negative_prompt}) {
      const char* what = text == &job.negative_prompt ? "the negative prompt" : "the prompt";
      for (const auto& name :
           pipeline_->tokenizer().encode_traced(*text, job.params.parses_emphasis(), what).embeddings) {
        const auto hash = manifest_.embedding_hashes.find(name);
        const bool listed = std::any_of(used.begin(), used.end(), [&](const auto& u) { return u.first == name; });
        if (hash != manifest_.embedding_hashes.end() && !listed) used.emplace_back(name, hash->second);
      }
    }
    return used;
  }

  void make(std::vector<ImageJob>& batch) {
    throw_if_stop_requested();
    in_flight_ = batch.size();
    reporter_.begin_batch(made_ + 1, batch.size(), batch[0].params.steps + batch[0].params.hires_steps());
    std::vector<std::string> prompts, negatives;
    std::vector<uint64_t> seeds;
    std::vector<Variation> variations;
    for (const auto& job : batch) {
      prompts.push_back(job.model_prompt);
      negatives.push_back(job.negative_prompt);
      seeds.push_back(job.seed);
      variations.push_back(job.variation);
    }
    // A1111 takes the noise's size as pixels // 8, its latents' scale.
    const int scale = manifest_.vae_scale_factor;
    SeededNoise noise(seeds, variations, o_.ensd, {seed_resize_.second / scale, seed_resize_.first / scale},
                      o_.rng == "nv" ? NoiseRng::kNv : NoiseRng::kCpu);
    StepObserver observer(reporter_, o_, previews_);
    const auto start = Clock::now();
    const auto images = pipeline_->generate(prompts, negatives, batch[0].params, noise, &observer);
    const double generate_s = seconds_since(start) / static_cast<double>(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      write(batch[i], images[i], generate_s);
      --in_flight_;
    }
    batch.clear();
  }

  // What an image records of how it was made (its PNG's metadata and its --json event).
  ImageRecord record_of(const ImageJob& job, const GeneratedImage& image) const {
    ImageRecord record;
    record.prompt = job.prompt;
    record.negative_prompt = job.negative_prompt;
    record.seed = job.seed;
    record.variation = job.variation;
    std::tie(record.seed_resize_width, record.seed_resize_height) = seed_resize_;
    // As A1111 records it: where it moved noise the sampler drew.
    record.ensd = image.drew_step_noise ? o_.ensd : 0;
    record.rng = o_.rng;
    record.steps = job.params.steps;
    record.sampler = job.params.sampler;
    record.cfg_scale = job.params.cfg_scale;
    record.guidance_rescale = job.params.guidance_rescale;
    // A1111 records it where it skipped a call, which with guidance its first call always is.
    const bool guided = classifier_free_guidance(manifest_, job.params, job.model_prompt);
    record.skip_early_cfg = guided ? job.params.skip_early_cfg : 0.0;
    record.ngms = guided ? job.params.ngms : 0.0;
    record.ngms_all_steps = record.ngms > 0 && job.params.ngms_all_steps;
    record.ngms_skipped = image.ngms_skipped;
    record.eta = job.params.eta;
    record.eta_ancestral = job.params.eta_ancestral;
    record.clip_skip = job.params.clip_skip;
    record.long_prompts = job.params.long_prompts;
    record.pad_conds = job.params.pad_conds;
    record.padded_conds = image.padded_conds;
    record.emphasis = job.params.emphasis;
    record.emphasis_mode = job.params.emphasis_mode;
    record.bracketed_texts = job.params.emphasis && bracketed_texts(job);
    record.width = job.params.width;
    record.height = job.params.height;
    record.hires = job.params.hires;
    record.hires.steps = job.params.hires_steps();  // the steps that ran, --hires-steps given or not
    record.image_width = image.width;
    record.image_height = image.height;
    record.model_name = manifest_.model_name;
    record.model_hash = manifest_.model_hash;
    record.inpainting = manifest_.inpainting;
    record.vae_name = manifest_.vae_name;
    record.vae_hash = manifest_.vae_hash;
    record.decoder = o_.decoder;
    record.vae_tiling = image.decoded_in_tiles;
    record.tiling = o_.tiling;
    if (placement_.options.decoder == Decoder::Taesd) {
      record.taesd_name = manifest_.taesd_name;
      record.taesd_hash = manifest_.taesd_hash;
    }
    record.lora_hashes = manifest_.lora_hashes;
    for (const auto& use : job.params.loras) {
      const LoraFile* lora = manifest_.find_lora(use.name);
      const std::string hash = lora ? lora->a1111_hash : "";
      record.loras.push_back({use.name, use.te_weight, use.unet_weight, hash});
      if (!hash.empty()) record.lora_hashes.emplace_back(use.name, hash);
    }
    record.ti_hashes = embeddings_used(job);
    record.device = placement_.device;
    record.dtype = placement_.dtype;
    record.safety = safety_mode_name(placement_.options.safety);
    record.graph = o_.graph;
    record.cuda_graph = placement_.options.cuda_graph;
    record.nsfw = image.nsfw;
    return record;
  }

  void write(const ImageJob& job, const GeneratedImage& image, double generate_s) {
    const auto start = Clock::now();
    const ImageRecord record = record_of(job, image);
    if (o_.ensd != 0 && !image.drew_step_noise && !said_ensd_unused_) {
      said_ensd_unused_ = true;
      const std::string& sampler = job.params.sampler;
      reporter_.warn("--ensd has no effect on " + plan_.where(job) + "'s images: " + sampler +
                     (sampler == "ddim" || sampler == "ddim_a1111"    ? " with --eta 0"
                      : split_sampler_name(sampler).base == "restart" ? " below 20 steps"
                                                                      : "") +
                     " draws no noise as it steps; their metadata leaves ENSD out, as A1111's does");
    }

    const auto png =
        encode_png(image.rgb.data(), image.width, image.height, o_.no_metadata ? PngText{} : png_metadata(record));
    std::error_code ec;
    if (job.output.has_parent_path()) std::filesystem::create_directories(job.output.parent_path(), ec);
    if (ec)
      throw Error(ErrorKind::Io,
                  "cannot create output directory " + job.output.parent_path().string() + ": " + ec.message());
    {
      const DeferSecondSignal writing;
      write_file_atomic(job.output, png, o_.overwrite);
    }
    ++made_;
    ++totals_->written;

    if (image.nsfw) {
      ++totals_->nsfw;
      reporter_.warn(
          job.output.string() + " (seed " + std::to_string(job.seed) + ") was flagged as NSFW: " +
          (placement_.options.safety == SafetyMode::Report ? "kept as made (--safety report)" : "written black"));
    }
    nlohmann::ordered_json j = {
        {"event", "image"},
        {"index", job.index},
        {"path", job.output.string()},
        {"prompt_index", job.prompt_index},
        {"n", job.n},
        {"prompt", job.prompt},
        {"negative_prompt", job.negative_prompt},
    };
    // What the text encoder did not read ("prompt", "negative_prompt"), of which stderr warned once per prompt.
    nlohmann::ordered_json truncated = nlohmann::ordered_json::array();
    for (const auto& cut : cuts(job))
      truncated.push_back(std::string(cut.what) == "prompt" ? "prompt" : "negative_prompt");
    j["truncated"] = truncated;
    j.update(settings_json(record));
    j.update(nlohmann::ordered_json{
        {"model_name", record.model_name},
        {"model_hash", record.model_hash},
        // null with the model's own VAE
        {"vae_name", record.vae_name.empty() ? nlohmann::json() : nlohmann::json(record.vae_name)},
        {"vae_hash", record.vae_hash.empty() ? nlohmann::json() : nlohmann::json(record.vae_hash)},
        {"device", record.device},
        {"dtype", record.dtype},
        {"nsfw", image.nsfw},
        {"safety", record.safety},
        {"timings", {{"generate_s", generate_s}, {"write_s", seconds_since(start)}}},
    });
    reporter_.image("[" + std::to_string(made_) + "/" + std::to_string(to_make_) + "] " + job.output.string() +
                        "  seed " + std::to_string(job.seed) + "  " + format_seconds(generate_s) +
                        (image.nsfw ? "  NSFW" : ""),
                    j);
  }

  const GenerateOptions& o_;
  const Placement& placement_;
  const Manifest& manifest_;
  RunPlan& plan_;
  Reporter& reporter_;
  const std::pair<int, int> seed_resize_;  // --seed-resize-from's {width, height} in pixels, {0, 0} without it
  Pipeline* pipeline_ = nullptr;
  Totals* totals_ = nullptr;
  uint64_t to_make_ = 0;
  uint64_t made_ = 0;
  uint64_t in_flight_ = 0;
  bool warned_any_ = false;
  bool said_ensd_unused_ = false;
  PreviewState previews_;
  size_t warned_prompt_ = 0;
};

// " <lora:A:0.8> <lora:B>" for --lora A:0.8 --lora B. Throws Error(Usage) for a value that is not one tag's
// arguments.
std::string lora_flag_tags(const std::vector<std::string>& values) {
  std::string tags;
  for (const auto& value : values) {
    const std::string tag = "<lora:" + value + ">";
    try {
      const auto parsed = parse_lora_tags(tag);
      if (parsed.loras.size() != 1 || !parsed.text.empty()) throw Error(ErrorKind::Usage, "not one LoRA");
    } catch (const Error& e) {
      throw Error(ErrorKind::Usage, "--lora \"" + value + "\": " + e.what() +
                                        " (give NAME, NAME:WEIGHT or NAME:TEXT_ENCODER_WEIGHT:UNET_WEIGHT)");
    }
    tags += " " + tag;
  }
  return tags;
}

void check_preview_name(const std::string& preview) {
  if (!ends_with_png(preview))
    throw Error(ErrorKind::Usage, "--preview " + preview + ": the file name must end in .png (the only format "
                                                            "written)");
}

// Each update replaces the preview file whole, so a file already there must be an earlier preview (a PNG with this
// text chunk): anything else, such as the prompt file or a finished image given by mistake, is refused, not lost.
// `folder_made`: an image of the run goes to the preview's folder, which the run creates (a missing folder is
// otherwise a mistyped path).
void check_preview_file(const std::string& preview, bool folder_made) {
  const auto folder = std::filesystem::absolute(preview).parent_path();
  std::error_code ec;
  if (!std::filesystem::is_directory(folder, ec)) {
    if (folder_made && !std::filesystem::exists(folder, ec)) return;
    throw Error(ErrorKind::Io, "--preview " + preview + ": no directory " + folder.string() + " to write it in");
  }
  const auto status = std::filesystem::status(preview, ec);
  const bool dangling = is_dangling_symlink(preview);
  if (!std::filesystem::exists(status) && !dangling) return;
  const std::string refusal = "--preview " + preview + " exists and is not an earlier preview";
  const std::string advice = "; each update replaces the file, so give the preview a new name or remove the file";
  if (!std::filesystem::is_regular_file(status))
    throw Error(ErrorKind::Io, refusal + (dangling ? " (a dangling symbolic link)" : " (not a file)") + advice);
  PngText text;
  try {
    text = read_png_info(preview).text;
  } catch (const Error&) {
    throw Error(ErrorKind::Io, refusal + " (not a PNG)" + advice);
  }
  if (std::none_of(text.begin(), text.end(), [](const auto& chunk) { return chunk.first == kPreviewKey; }))
    throw Error(ErrorKind::Io, refusal + " (a PNG txt2img did not write as a preview: an image)" + advice);
}

// Prompt weights past float32 (in A1111's syntax, with --emphasis), which a run refuses only when it reaches the
// prompt: in the texts as written (which the embeddings' hashes are read from) and in every text they make the text
// encoder read (their composable prompts' guidance weights on the way), before the model loads.
void check_prompt_weights(RunPlan& plan, const Manifest& manifest) {
  ImageJob job;
  plan.rewind();
  while (plan.next(job)) {
    if (job.n != 0 || !job.params.parses_emphasis()) continue;
    of_line(plan, job, [&] {
      check_emphasis_weights(job.model_prompt, "the prompt");
      check_emphasis_weights(job.negative_prompt, "the negative prompt");
      const auto texts = Pipeline::texts_read(manifest, job.model_prompt, job.negative_prompt, job.params);
      for (const auto& text : texts.prompt) check_emphasis_weights(text, "the prompt");
      for (const auto& text : texts.negative_prompt) check_emphasis_weights(text, "the negative prompt");
    });
  }
}

// Whether the run makes images none of which takes classifier-free guidance, which the flags alone do not tell: a
// prompt file's lines set CFG scales, and composable prompts are guided at any scale.
bool all_unguided(RunPlan& plan, const Manifest& manifest) {
  ImageJob job;
  bool images = false;
  plan.rewind();
  while (plan.next(job)) {
    if (!job.in_shard) continue;
    if (classifier_free_guidance(manifest, job.params, job.model_prompt)) return false;
    images = true;
  }
  return images;
}

}  // namespace

int run_generate(const GenerateOptions& o) {
  stop_on_signals();
  const auto run_start = Clock::now();
  Reporter reporter(o.quiet, o.json, o.json_progress);

  // 1. Everything that needs no model: flags, the prompts, every output name, the files already there.
  PlanOptions plan_options;
  require_utf8(o.negative_prompt, "the negative prompt");
  plan_options.negative_prompt = o.negative_prompt;
  plan_options.images_per_prompt = o.images_per_prompt;
  // A1111 and stable-diffusion.cpp take a seed of -1 for a random one.
  const auto random_asked = [](const std::string& seed) { return seed.empty() || seed == "-1"; };
  plan_options.seed_given = !random_asked(o.seed);
  plan_options.base_seed = plan_options.seed_given ? parse_seed(o.seed, "--seed") : std::random_device{}();
  if (!(o.variation_strength >= 0 && o.variation_strength <= 1))
    throw Error(ErrorKind::Usage, "--variation-strength must be from 0 to 1");
  if (!random_asked(o.variation_seed) && o.variation_strength == 0)
    throw Error(ErrorKind::Usage, "--variation-seed needs --variation-strength above 0");
  plan_options.variation_strength = o.variation_strength;
  seed_resize_size(o.seed_resize_from);
  plan_options.variation_seed_given = !random_asked(o.variation_seed);
  plan_options.variation_base_seed =
      plan_options.variation_seed_given ? parse_seed(o.variation_seed, "--variation-seed") : std::random_device{}();
  // GenerationParams reads a side of 0 as the model's size, which only leaving the flag out asks for.
  for (const auto& [flag, side] : {std::pair{"--width", o.width}, {"--height", o.height}})
    if (side == 0) throw Error(ErrorKind::Usage, std::string(flag) + " 0 is no image size (leave " + flag +
                                                   " out for the model's size)");
  HiresFix hires = o.hires;
  std::tie(hires.resize_width, hires.resize_height) = pixel_size("--hires-resize", o.hires_resize, 0);
  plan_options.params = {o.width.value_or(0),
                         o.height.value_or(0),
                         o.steps,
                         o.cfg_scale,
                         o.guidance_rescale,
                         o.sampler,
                         o.eta,
                         o.eta_ancestral,
                         o.clip_skip,
                         o.long_prompts,
                         o.pad_conds_v0 ? GenerationParams::PadConds::LastVector
                         : o.pad_conds  ? GenerationParams::PadConds::EmptyChunks
                                        : GenerationParams::PadConds::Off,
                         o.emphasis || !o.emphasis_mode.empty(),
                         emphasis_mode_named(o.emphasis_mode.empty() ? "original" : o.emphasis_mode),
                         {},
                         hires,
                         o.skip_early_cfg,
                         o.ngms,
                         o.ngms_all_steps};
  plan_options.lora_tags = lora_flag_tags(o.loras);
  plan_options.output = OutputPattern::parse(o.output.value_or(kDefaultOutputPattern), "-o");
  if (!o.shard.empty()) plan_options.shard = parse_shard(o.shard);
  plan_options.reproducible_seeds_for = plan_options.shard && o.skip_existing ? "--shard and --skip-existing"
                                        : plan_options.shard                ? "--shard"
                                        : o.skip_existing                   ? "--skip-existing"
                                                                            : "";
  const Placement placement = choose_placement(o);
  if (!o.preview.empty()) check_preview_name(o.preview);
  // Read to its end before anything else: at a terminal that waits for the user, who may not expect it.
  if (!o.prompt && o.from_file == "-" && isatty(STDIN_FILENO))
    reporter.info("reading prompts from standard input, one a line: end them with Ctrl-D");
  PromptSource source = o.prompt ? PromptSource::argument(*o.prompt) : PromptSource::file(o.from_file);

  const Bundle bundle = Bundle::open(o.model);
  Pipeline::check_options(bundle, placement.options);
  const Manifest& manifest = bundle.manifest();
  RunPlan plan(std::move(source), plan_options, [&bundle, &manifest, &placement](const GenerationParams& p) {
    auto resolved = resolve_params(manifest, p);
    check_loras_supported(resolved, placement.options);
    check_lora_files(bundle, resolved);
    return resolved;
  });
  // The flags' own settings resolved above; --lora's are checked before the prompts add theirs, so that a LoRA the
  // bundle lacks is reported as the flag's rather than as a prompt's.
  if (!o.loras.empty()) {
    GenerationParams with_loras = plan_options.params;
    with_loras.loras = parse_lora_tags(plan_options.lora_tags).loras;
    try {
      check_lora_files(bundle, resolve_params(manifest, with_loras));
    } catch (const Error& e) {
      throw Error(e.kind(), "--lora: " + std::string(e.what()));
    }
  }
  check_prompt_weights(plan, manifest);
  const Preflight pf = preflight(plan,
                                 o.overwrite       ? Existing::Overwrite
                                 : o.skip_existing ? Existing::Skip
                                                   : Existing::Refuse,
                                 o.preview);
  if (!o.preview.empty()) check_preview_file(o.preview, pf.preview_folder_made);

  if (!plan_options.seed_given && pf.uses_run_seed)
    reporter.info("seed " + std::to_string(plan_options.base_seed) + " (random; --seed " +
                  std::to_string(plan_options.base_seed) + " repeats this run)");
  if (o.variation_strength != 0 && !plan_options.variation_seed_given)
    reporter.info("variation seed " + std::to_string(plan_options.variation_base_seed) +
                  " (random; --variation-seed " + std::to_string(plan_options.variation_base_seed) +
                  " repeats this run)");
  // An empty list can be a normal day's work for a pipeline (exit 0), but never goes unmentioned.
  if (pf.no_prompts) reporter.warn(plan.source_name() + " has no prompts (every line is blank or a comment)");
  if (pf.empty_prompts)
    reporter.warn((pf.empty_prompts == 1 ? pf.first_empty_prompt + " has no words: its images are"
                                          : std::to_string(pf.empty_prompts) + " prompts have no words (the first: " +
                                                pf.first_empty_prompt + "): their images are") +
                  " unconditional, what the model makes of an empty prompt");
  if (o.no_safety_checker)
    reporter.warn("the safety checker is off (--no-safety-checker): images are not checked for NSFW content");
  const bool unguided = all_unguided(plan, manifest);
  // Where the flag guides, the prompt file's lines turned guidance off.
  const std::string scale_off = o.cfg_scale <= 1 ? "--cfg-scale 1 or less" : "the prompt file's cfg_scale of 1 or less";
  if (!o.negative_prompt.empty() && unguided)
    reporter.warn(std::string("the negative prompt is unused: ") +
                  (manifest.guidance_embedding_dim > 0
                       ? "this LCM-distilled model takes the guidance scale as an input, without an unconditional pass"
                       : scale_off + " turns classifier-free guidance off"));
  const auto warn_unguided = [&](const char* flag, const char* what) {
    reporter.warn(
        std::string(flag) + " has no effect: it " + what + " classifier-free guidance, which " +
        (manifest.guidance_embedding_dim > 0 ? "this LCM-distilled model does not take" : scale_off + " turns off"));
  };
  if (o.skip_early_cfg > 0 && unguided) warn_unguided("--skip-early-cfg", "skips the negative prompt of");
  if (o.ngms > 0 && unguided) warn_unguided("--ngms", "skips the negative prompt of");
  if (o.guidance_rescale > 0 && unguided) warn_unguided("--guidance-rescale", "rescales");
  if (o.ngms_all_steps && !pf.uses_ngms)
    reporter.warn("--ngms-all-steps has no effect without --ngms (or a prompt file's \"ngms\")");
  if ((o.pad_conds || o.pad_conds_v0) && !pf.uses_long_prompts)
    reporter.warn(std::string(o.pad_conds ? "--pad-conds" : "--pad-conds-v0") +
                  " has no effect without --long-prompts (or a prompt file's \"long_prompts\"): prompts are cut to "
                  "one chunk, which needs no padding");
  if (manifest.guidance_embedding_dim > 0 && resolve_sampler(manifest, o.sampler).rfind("lcm", 0) != 0)
    reporter.warn(
        "this model is LCM-distilled (it takes the guidance scale as an input): it is made for --sampler "
        "lcm (or lcm_a1111) with 2 to 8 steps");

  Totals totals;
  // Kept by --skip-existing, flagged when an earlier run made them: counted as this run's, for --fail-on-nsfw.
  totals.nsfw = pf.skipped_nsfw;
  if (pf.skipped_nsfw)
    reporter.warn(std::to_string(pf.skipped_nsfw) + " of the images --skip-existing keeps " +
                  (pf.skipped_nsfw == 1 ? "was" : "were") + " flagged as NSFW when made (their metadata says so)");
  double load_s = 0;
  bool interrupted = false;
  std::string failure;
  auto summarise = [&] {
    const double total_s = seconds_since(run_start);
    nlohmann::ordered_json j = {
        {"event", "summary"},
        {"written", totals.written},
        {"skipped", totals.skipped},
        {"failed", totals.failed},
        {"nsfw", totals.nsfw},
        {"interrupted", interrupted},
        // null where every JSON line sets its seed: the drawn one seeded nothing
        {"seed", plan_options.seed_given || pf.uses_run_seed ? nlohmann::ordered_json(plan_options.base_seed)
                                                             : nlohmann::ordered_json(nullptr)},
        {"load_s", load_s},
        {"total_s", total_s}};
    const MemoryPeaks peaks = memory_peaks(placement.options.device);
    j["peak_memory_mib"] = {{"host_rss", peaks.host_rss_mib},
                            {"vram_allocated", optional_number(peaks.device_allocated_mib)},
                            {"vram_reserved", optional_number(peaks.device_reserved_mib)}};
    if (!failure.empty()) j["error"] = failure;
    std::string line = pf.to_make == 0 && totals.skipped
                           ? "nothing to make: " +
                                 (totals.skipped == 1 ? std::string("the image is")
                                                      : "all " + std::to_string(totals.skipped) + " images are") +
                                 " there already"
                           : (interrupted ? "interrupted: wrote " : "wrote ") + std::to_string(totals.written) +
                                 " of " + std::to_string(pf.to_make) + " images";
    if (totals.skipped && pf.to_make > 0) line += " (" + std::to_string(totals.skipped) + " skipped, already there)";
    line += " in " + format_seconds(total_s);
    line += peaks.device_allocated_mib ? "; peak VRAM " + format_mib(*peaks.device_allocated_mib) + " (" +
                                             format_mib(*peaks.device_reserved_mib) + " reserved)"
                                       : "; peak memory " + format_mib(peaks.host_rss_mib);
    if (interrupted) {
      // A resumed run must draw the same seeds, so the random ones this run drew become flags.
      std::string flags;
      if (!plan_options.seed_given && pf.uses_run_seed) flags += " --seed " + std::to_string(plan_options.base_seed);
      if (o.variation_strength != 0 && !plan_options.variation_seed_given)
        flags += " --variation-seed " + std::to_string(plan_options.variation_base_seed);
      line += std::string("; run the same command") + (o.overwrite ? " without --overwrite" : "") + " with" + flags +
              " --skip-existing to finish";
    }
    reporter.summary(line, j);
  };

  // 2. The model, once; then the images.
  Generator generator(o, placement, manifest, plan, reporter);
  try {
    throw_if_stop_requested();  // a Ctrl-C during the checks should not wait for the model to load
    if (pf.to_make > 0) {
      if (o.threads > 0) at::set_num_threads(o.threads);
      reporter.info("loading " + (manifest.model_name.empty() ? bundle.dir().string() : manifest.model_name) + " on " +
                    placement.device + " (" + placement.dtype + ") for " + std::to_string(pf.to_make) + " image" +
                    (pf.to_make == 1 ? "" : "s"));
      const auto load_start = Clock::now();
      Pipeline pipeline = Pipeline::load(bundle, placement.options);
      load_s = seconds_since(load_start);
      reporter.begin(pf.to_make, pf.image_steps);
      generator.run(pipeline, totals, pf.to_make);
    } else {
      totals.skipped = pf.to_skip;
    }
  } catch (...) {
    // Whatever stopped the run, --json readers still get the summary; the edge in main() reports the error.
    try {
      throw;
    } catch (const Error& e) {
      interrupted = e.kind() == ErrorKind::Interrupted;
      if (!interrupted) failure = e.what();
    } catch (const std::exception& e) {
      failure = e.what();
    }
    if (!interrupted) totals.failed = generator.in_flight();
    summarise();
    throw;
  }
  summarise();
  if (o.fail_on_nsfw && totals.nsfw > 0)
    throw Error(
        ErrorKind::Nsfw,
        std::to_string(totals.nsfw) + " image" + (totals.nsfw == 1 ? " was" : "s were") +
            " flagged as NSFW (--fail-on-nsfw" +
            (pf.skipped_nsfw ? "; " + std::to_string(pf.skipped_nsfw) + " of them kept by --skip-existing" : "") +
            "); every image is in place");
  return 0;
}

}  // namespace txt2img::cli
