#include "cli/plan.hpp"

#include <limits.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "cli/metadata.hpp"
#include "cli/signals.hpp"
#include "txt2img/error.hpp"
#include "txt2img/lora_tags.hpp"
#include "txt2img/png.hpp"

namespace txt2img::cli {
namespace {

std::string quoted(const std::filesystem::path& p) { return "\"" + p.string() + "\""; }

// The nearest directory that exists on the way up to `dir` must be writable for the outputs to be created there.
// A symbolic link counts as existing even where it leads nowhere: no directory can be created in its place.
void check_output_dir(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path existing = dir;
  while (!existing.empty() && !fs::exists(fs::symlink_status(existing, ec))) existing = existing.parent_path();
  if (existing.empty()) existing = ".";
  if (!fs::is_directory(existing, ec)) {
    const bool link = fs::is_symlink(fs::symlink_status(existing, ec));
    throw Error(ErrorKind::Io,
                "cannot create output directory " + quoted(dir) + ": " + quoted(existing) +
                    (!link ? " is not a directory"
                           : " is a symbolic link to " + quoted(fs::read_symlink(existing, ec)) +
                                 (fs::exists(existing, ec) ? ", which is not a directory" : ", which does not exist")));
  }
  const auto not_writable = [&existing] {
    throw Error(ErrorKind::Io, "output directory " + quoted(existing) + " is not writable (" + std::strerror(errno) +
                                   "); choose another with -o");
  };
  if (::access(existing.c_str(), W_OK | X_OK) != 0) not_writable();
  // access() answers by permission bits, which root passes whatever the file system allows (sysfs, /proc, a FUSE
  // mount): a file made there and removed again answers for certain, before any image is made.
  std::string probe = (existing / ".txt2img-probe-XXXXXX").string();
  const DeferSecondSignal removed_even_if_interrupted;
  const int fd = ::mkstemp(probe.data());
  if (fd < 0) not_writable();
  ::close(fd);
  if (::unlink(probe.c_str()) != 0)
    throw Error(ErrorKind::Io, "cannot remove " + quoted(std::filesystem::path(probe)) + " (" + std::strerror(errno) +
                                   "), made to try the output directory; remove it");
}

}  // namespace

Shard parse_shard(const std::string& text) {
  const auto slash = text.find('/');
  const auto digits = [](const std::string& s) {
    return !s.empty() && s.size() <= 9 && s.find_first_not_of("0123456789") == std::string::npos;
  };
  if (slash != std::string::npos && digits(text.substr(0, slash)) && digits(text.substr(slash + 1))) {
    Shard shard{std::stoull(text.substr(0, slash)), std::stoull(text.substr(slash + 1))};
    if (shard.count >= 1 && shard.index < shard.count) return shard;
  }
  throw Error(ErrorKind::Usage,
              "--shard \"" + text + "\" must be I/N with 0 <= I < N, e.g. --shard 0/4 for the first of 4");
}

RunPlan::RunPlan(PromptSource source, PlanOptions options, ParamsResolver resolve)
    : source_(std::move(source)), options_(std::move(options)), resolve_(std::move(resolve)) {
  resolved_flags_ = resolve_(options_.params);
}

void RunPlan::rewind() {
  source_.rewind();
  have_entry_ = false;
  next_index_ = 0;
}

std::string RunPlan::where(const ImageJob& job) const { return source_.where(job.line); }

bool RunPlan::load_prompt() {
  if (!source_.next(entry_)) return false;
  const std::string where = source_.where(entry_.line);
  images_ = entry_.images.value_or(options_.images_per_prompt);
  prompt_ = entry_.prompt + options_.lora_tags;
  TaggedPrompt tagged;
  try {
    tagged = parse_lora_tags(prompt_, entry_.negative_prompt.value_or(options_.negative_prompt));
  } catch (const Error& e) {
    throw Error(e.kind(), where + ": " + e.what());
  }
  model_prompt_ = tagged.text;
  params_ = resolved_flags_;
  if (entry_.overrides_params() || !tagged.loras.empty()) {
    GenerationParams p = options_.params;
    p.width = entry_.width.value_or(p.width);
    p.height = entry_.height.value_or(p.height);
    p.steps = entry_.steps.value_or(p.steps);
    p.cfg_scale = entry_.cfg_scale.value_or(p.cfg_scale);
    p.guidance_rescale = entry_.guidance_rescale.value_or(p.guidance_rescale);
    p.skip_early_cfg = entry_.skip_early_cfg.value_or(p.skip_early_cfg);
    p.ngms = entry_.ngms.value_or(p.ngms);
    p.sampler = entry_.sampler.value_or(p.sampler);
    p.clip_skip = entry_.clip_skip.value_or(p.clip_skip);
    p.long_prompts = entry_.long_prompts.value_or(p.long_prompts);
    p.emphasis = entry_.emphasis.value_or(p.emphasis);
    p.loras = tagged.loras;
    // A line's scale or size replaces the flags' either.
    if (entry_.hires_scale && entry_.hires_resize)
      throw Error(ErrorKind::Usage, where + ": a \"hires_scale\" or a \"hires_resize\", not both");
    if (entry_.hires_scale) {
      p.hires.scale = *entry_.hires_scale;
      p.hires.resize_width = p.hires.resize_height = 0;
    }
    if (entry_.hires_resize) {
      p.hires.scale = 0;
      std::tie(p.hires.resize_width, p.hires.resize_height) = *entry_.hires_resize;
    }
    p.hires.steps = entry_.hires_steps.value_or(p.hires.steps);
    p.hires.denoise = entry_.hires_denoise.value_or(p.hires.denoise);
    p.hires.upscaler = entry_.hires_upscaler.value_or(p.hires.upscaler);
    p.hires.sampler = entry_.hires_sampler.value_or(p.hires.sampler);
    const bool hires_settings =
        entry_.hires_steps || entry_.hires_denoise || entry_.hires_upscaler || entry_.hires_sampler;
    if (p.hires.scale < 0 || (!p.hires.enabled() && hires_settings))
      throw Error(ErrorKind::Usage,
                  where + (entry_.hires_scale == 0.0
                               ? ": \"hires_scale\": 0 turns the hires pass off, so the line's other hires settings "
                                 "have nothing to apply to"
                               : ": the hires settings need a \"hires_scale\" from 1 to 16 or a \"hires_resize\" (or "
                                 "--hires-scale or --hires-resize)"));
    try {
      params_ = resolve_(p);
    } catch (const Error& e) {
      throw Error(e.kind(), where + ": " + e.what());
    }
  }
  line_output_.reset();
  if (entry_.output) line_output_ = OutputPattern::parse(*entry_.output, where + ": \"output\"");
  const std::string& flags = options_.reproducible_seeds_for;
  const std::string need = flags.find(" and ") == std::string::npos ? " needs " : " need ";
  if (!flags.empty() && !options_.seed_given && !entry_.seed)
    throw Error(ErrorKind::Usage, flags + need + "a fixed --seed (" + where +
                                      " sets none): every shard and every resumed run must derive the same seeds");
  if (!flags.empty() && options_.variation_strength != 0 && !options_.variation_seed_given)
    throw Error(ErrorKind::Usage, flags + need +
                                      "a fixed --variation-seed with --variation-strength: every shard "
                                      "and every resumed run must derive the same variation seeds");
  next_n_ = 0;
  have_entry_ = true;
  return true;
}

bool RunPlan::next(ImageJob& job) {
  while (!have_entry_ || next_n_ >= images_)
    if (!load_prompt()) return false;
  job.index = next_index_++;
  job.prompt_index = entry_.index;
  job.line = entry_.line;
  job.n = next_n_++;
  job.run_seed = !entry_.seed;
  if (options_.variation_strength == 0) {
    job.seed = (entry_.seed ? *entry_.seed + static_cast<uint64_t>(job.n) : options_.base_seed + job.index) & kMaxSeed;
  } else {
    // As A1111 with a variation strength: the seed stays, the variation seed counts up over the whole run.
    job.seed = entry_.seed ? *entry_.seed : options_.base_seed;
    job.variation = {(options_.variation_base_seed + job.index) & kMaxSeed, options_.variation_strength};
  }
  job.prompt = prompt_;
  job.model_prompt = model_prompt_;
  job.negative_prompt = entry_.negative_prompt.value_or(options_.negative_prompt);
  job.params = params_;
  const OutputPattern& pattern = line_output_ ? *line_output_ : options_.output;
  job.output = pattern.render({job.index, job.seed, static_cast<uint64_t>(job.n), job.model_prompt});
  job.in_shard = !options_.shard || job.prompt_index % options_.shard->count == options_.shard->index;
  return true;
}

ImageJob RunPlan::find(uint64_t index) const {
  RunPlan other(source_.reopen(), options_, resolve_);
  ImageJob job;
  while (other.next(job))
    if (job.index == index) return job;
  throw Error(ErrorKind::Io, "the prompts changed while they were being read");
}

bool is_dangling_symlink(const std::filesystem::path& path) {
  std::error_code ec;
  return std::filesystem::is_symlink(std::filesystem::symlink_status(path, ec)) &&
         !std::filesystem::exists(std::filesystem::status(path, ec));
}

namespace {

// Throws Error(Usage) for an output name the file system cannot hold (found here rather than at its write, after
// the images before it).
void check_name_lengths(const std::filesystem::path& output) {
  if (output.native().size() >= PATH_MAX)
    throw Error(ErrorKind::Usage, "output " + quoted(output) + " is " + std::to_string(output.native().size()) +
                                      " bytes long, above the " + std::to_string(PATH_MAX - 1) +
                                      " a path may have; shorten the output pattern");
  for (const auto& part : output)
    if (part.native().size() > NAME_MAX)
      throw Error(ErrorKind::Usage, "output " + quoted(output) + " has a name of " +
                                        std::to_string(part.native().size()) + " bytes, above the " +
                                        std::to_string(NAME_MAX) +
                                        " a file name may have; shorten the output pattern (e.g. {prompt:60})");
}

}  // namespace

Preflight preflight(RunPlan& plan, Existing existing, const std::filesystem::path& preview) {
  // Symbolic links in the folders resolved, so that two spellings of one file compare equal.
  const auto resolved = [](const std::filesystem::path& path) {
    std::error_code ec;
    const auto out = std::filesystem::weakly_canonical(std::filesystem::absolute(path), ec);
    return ec ? std::filesystem::absolute(path).lexically_normal() : out;
  };
  const auto preview_file = preview.empty() ? preview : resolved(preview);
  Preflight result;
  // Hashes of the files seen so far (memory per image, not per prompt text); a hit is confirmed by re-reading.
  std::unordered_map<size_t, uint64_t> names;
  // Every folder an image goes into, and the folders above it, with the first image that needs it (memory per
  // folder): one image's file cannot be another's folder.
  std::unordered_map<std::string, uint64_t> folders;
  // The image of this run whose file is `path` (resolved), if one is.
  const auto image_at = [&](const std::filesystem::path& path) -> std::optional<ImageJob> {
    const auto file = names.find(std::hash<std::string>{}(path.string()));
    if (file == names.end()) return std::nullopt;
    ImageJob image = plan.find(file->second);
    return resolved(image.output) == path ? std::optional<ImageJob>(std::move(image)) : std::nullopt;
  };
  const auto refuse_file_as_folder = [&plan](const ImageJob& file_job, const ImageJob& folder_job) {
    throw Error(ErrorKind::Usage, plan.where(file_job) + " would write its image to " + quoted(file_job.output) +
                                      ", which " + plan.where(folder_job) + " needs as a folder for " +
                                      quoted(folder_job.output) + "; give one of them another name");
  };
  const auto refuse_one_file = [&plan](const ImageJob& earlier, const ImageJob& job) {
    const std::string who = earlier.prompt_index == job.prompt_index
                                ? plan.where(job) + ": images " + std::to_string(earlier.n) + " and " +
                                      std::to_string(job.n) + " would both be written to "
                                : plan.where(earlier) + " and " + plan.where(job) + " would both write ";
    // The fields that tell these two images apart besides {index}: {n} within a prompt, {seed} where the seeds
    // differ (with variations every image keeps the prompt's).
    std::vector<std::string> also;
    if (earlier.prompt_index == job.prompt_index) also.emplace_back("{n}");
    if (earlier.seed != job.seed) also.emplace_back("{seed}");
    std::string alternatives;
    for (const auto& field : also) alternatives += (alternatives.empty() ? " (or " : ", ") + field;
    throw Error(ErrorKind::Usage, who + quoted(job.output) + "; put {index} in the output pattern" +
                                      (alternatives.empty() ? "" : alternatives + ")") +
                                      " so that each image gets its own file");
  };
  // An image's file as the file system finds it (its folder resolved once per folder, as images share folders), so
  // that "out/a.png", "/abs/out/a.png" and "link/a.png" are one file.
  std::filesystem::path folder, resolved_folder;
  const auto file_of = [&](const ImageJob& job) {
    const auto& output = job.output;
    if (folder.empty() || output.parent_path() != folder) {
      folder = output.parent_path();
      resolved_folder = resolved(folder.empty() ? "." : folder);
      for (auto above = resolved_folder; folders.emplace(above.string(), job.index).second;
           above = above.parent_path()) {
        if (const auto earlier = image_at(above)) refuse_file_as_folder(*earlier, job);
        if (above == above.parent_path()) break;
      }
    }
    return resolved_folder / output.filename();
  };
  // Each folder once (a file is made and removed there), however the images alternate between folders.
  std::unordered_set<std::string> checked_dirs;
  ImageJob job;
  plan.rewind();
  result.no_prompts = true;
  while (plan.next(job)) {
    result.no_prompts = false;
    result.uses_ngms = result.uses_ngms || job.params.ngms > 0;
    result.uses_long_prompts = result.uses_long_prompts || job.params.long_prompts;
    // Counted once per prompt, at its first image.
    if (job.n == 0 && job.model_prompt.find_first_not_of(" \t\r\n") == std::string::npos &&
        result.empty_prompts++ == 0)
      result.first_empty_prompt = plan.where(job);
    check_name_lengths(job.output);
    const auto file = file_of(job);
    if (const auto needed = folders.find(file.string()); needed != folders.end())
      refuse_file_as_folder(job, plan.find(needed->second));
    if (const auto earlier = image_at(file)) refuse_one_file(*earlier, job);
    names.emplace(std::hash<std::string>{}(file.string()), job.index);
    if (!preview.empty() && file == preview_file)
      throw Error(ErrorKind::Usage, plan.where(job) + " would write its image to " + quoted(job.output) +
                                        ", the --preview file; give the preview a file of its own");
    if (!job.in_shard) continue;

    std::error_code ec;
    const auto status = std::filesystem::status(job.output, ec);
    if (std::filesystem::is_directory(status))
      throw Error(ErrorKind::Io, "output " + quoted(job.output) + " is a directory; give a file name ending in .png");
    // Skipping a dangling symbolic link would keep no image.
    const bool dangling = is_dangling_symlink(job.output);
    if (dangling && existing == Existing::Skip)
      throw Error(ErrorKind::Io, "output " + quoted(job.output) +
                                     " is a dangling symbolic link, not an image --skip-existing could keep; remove it");
    if (std::filesystem::exists(status) || dangling) {
      if (existing == Existing::Refuse)
        throw Error(ErrorKind::Io, (plan.source_name().empty() ? "" : plan.where(job) + ": ") + "output " +
                                       quoted(job.output) +
                                       " exists; pass --overwrite to replace it, or --skip-existing to keep it and "
                                       "make only the missing images");
      if (existing == Existing::Skip) {
        // An empty, cut-off or foreign file there (another tool's crash or copy; txt2img's own writes are whole or
        // absent) would be counted as made and keep no image.
        PngInfo kept;
        try {
          kept = read_png_info(job.output);
        } catch (const Error& e) {
          throw Error(ErrorKind::Io, "output " + quoted(job.output) +
                                         " exists but does not read as a whole PNG image (" + e.what() +
                                         "), which --skip-existing would keep as if made; remove it if it is "
                                         "not one");
        }
        ++result.to_skip;
        // --fail-on-nsfw of a resumed run: an image kept was flagged as much as one made.
        if (recorded_as_nsfw(kept.text)) ++result.skipped_nsfw;
        continue;
      }
    }
    if (const auto dir = job.output.parent_path(); checked_dirs.insert(dir.string()).second) check_output_dir(dir);
    ++result.to_make;
    result.preview_folder_made |= !preview.empty() && file.parent_path() == preview_file.parent_path();
    result.uses_run_seed |= job.run_seed;
    result.image_steps += static_cast<uint64_t>(job.params.steps + job.params.hires_steps());
  }
  // The preview is rewritten while images are made: it can be no image's folder, nor lie in an image's file.
  if (!preview.empty()) {
    if (const auto needed = folders.find(preview_file.string()); needed != folders.end()) {
      const ImageJob job = plan.find(needed->second);
      throw Error(ErrorKind::Usage, "--preview " + quoted(preview) + " is a folder that " + plan.where(job) +
                                        " needs for " + quoted(job.output) + "; give the preview another name");
    }
    for (auto above = preview_file.parent_path(); !above.empty(); above = above.parent_path()) {
      if (const auto image = image_at(above))
        throw Error(ErrorKind::Usage, "--preview " + quoted(preview) + " would be inside " + quoted(image->output) +
                                          ", which " + plan.where(*image) +
                                          " writes as its image; give the preview another name");
      if (above == above.parent_path()) break;
    }
  }
  plan.rewind();
  return result;
}

}  // namespace txt2img::cli
