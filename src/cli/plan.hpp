// The images of a run, in order: which prompt, which seed, which settings and which file each one gets. The same
// prompts and flags always give the same images, whichever shard runs them, so a sharded or resumed run makes
// byte-identical files.
//
// Seeds: image n of a prompt whose JSON line sets "seed" S gets S + n. Every other image gets base + index, where
// index is its position in the whole unsharded run (counting every image of every earlier prompt) and base is
// --seed (random when absent). With one prompt that is the familiar "image k uses seed + k". Sums wrap modulo
// 2^63, so every reported seed is itself a valid --seed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "cli/output_pattern.hpp"
#include "txt2img/params.hpp"
#include "cli/prompt_source.hpp"

namespace txt2img::cli {

// Fills defaults from the model and checks the settings; throws Error(Usage).
using ParamsResolver = std::function<GenerationParams(const GenerationParams&)>;

struct Shard {
  uint64_t index = 0;
  uint64_t count = 1;
};

// Throws Error(Usage) unless `text` is "I/N" with 0 <= I < N.
Shard parse_shard(const std::string& text);

struct PlanOptions {
  std::string negative_prompt;
  int images_per_prompt = 1;
  uint64_t base_seed = 0;
  bool seed_given = false;  // false: base_seed was drawn at random for this run
  // A1111's variation seeds (strength 0: none): the images keep their prompt's seed, image k of the run takes
  // variation seed variation_base_seed + k.
  double variation_strength = 0;
  uint64_t variation_base_seed = 0;
  bool variation_seed_given = false;
  GenerationParams params;
  // --lora's tags (" <lora:ink:0.8>"), appended to every prompt: the metadata then records them as A1111 would.
  std::string lora_tags;
  OutputPattern output;
  std::optional<Shard> shard;
  // Sharded and resumed runs must derive the same seeds as the other runs they complete.
  // The flags that need them, for the error without --seed: "--shard", "--skip-existing", both, or empty.
  std::string reproducible_seeds_for;
};

struct ImageJob {
  uint64_t index = 0;       // position in the whole unsharded run, from 0
  size_t prompt_index = 0;  // which prompt, from 0
  size_t line = 0;          // its line in the prompt file (0 for a prompt argument)
  int n = 0;                // position among its prompt's images, from 0
  uint64_t seed = 0;
  bool run_seed = true;  // whether the seed derives from --seed (or the run's random one), not its line's "seed"
  Variation variation;  // strength 0: none
  std::string prompt;        // as written, LoRA tags included (what the metadata records)
  std::string model_prompt;  // as the text encoder reads it: without the LoRA tags, which are in params.loras
  std::string negative_prompt;
  GenerationParams params;  // resolved: defaults filled in
  std::filesystem::path output;
  bool in_shard = true;  // whether this run makes it
};

class RunPlan {
 public:
  RunPlan(PromptSource source, PlanOptions options, ParamsResolver resolve);

  // The next image of the whole run (every shard's; see ImageJob::in_shard). Throws Error(Usage) naming the line
  // for a prompt whose settings or output pattern are wrong.
  bool next(ImageJob& job);
  void rewind();

  // The image at `index`, read by an independent pass over the prompts (for messages about earlier images).
  ImageJob find(uint64_t index) const;

  std::string where(const ImageJob& job) const;
  // The prompt file as the user named it; empty for a prompt argument.
  const std::string& source_name() const { return source_.name(); }

 private:
  bool load_prompt();

  PromptSource source_;
  PlanOptions options_;
  ParamsResolver resolve_;
  GenerationParams resolved_flags_;

  // The prompt being expanded into images.
  PromptEntry entry_;
  bool have_entry_ = false;
  int images_ = 0;
  int next_n_ = 0;
  uint64_t next_index_ = 0;
  GenerationParams params_;
  std::string prompt_;        // entry_.prompt with --lora's tags
  std::string model_prompt_;  // prompt_ without its LoRA tags
  std::optional<OutputPattern> line_output_;
};

// What the first pass over a run found.
struct Preflight {
  uint64_t to_make = 0;      // by this shard, after --skip-existing
  uint64_t to_skip = 0;      // files that exist (only with --skip-existing)
  uint64_t skipped_nsfw = 0;  // of those, the ones whose metadata records that the safety checker flagged them
  uint64_t image_steps = 0;  // sum of steps over to_make (for the ETA)
  bool uses_run_seed = false;  // whether an image to make takes its seed from --seed (or the random one)
  // Where the first prompt without words is ("p.txt:3", "the prompt"; empty: none), and how many there are.
  std::string first_empty_prompt;
  uint64_t empty_prompts = 0;
  bool no_prompts = false;  // the prompt file has none (only blank lines and comments)
  bool uses_ngms = false;   // whether an image sets GenerationParams::ngms
  bool uses_long_prompts = false;  // whether an image's prompts are encoded in chunks (GenerationParams::long_prompts)
  // Whether an image to make goes to the `preview` file's folder, which the run then creates if it is missing.
  bool preview_folder_made = false;
};

enum class Existing { Refuse, Overwrite, Skip };

// A symbolic link to nothing: no file exists there, yet writing there would replace the link, so a run treats it as
// a file that exists.
bool is_dangling_symlink(const std::filesystem::path& path);

// Walks the whole plan before anything loads or is written: every line parses and resolves, no two images share
// a file name, nor is one image's file a folder of another's (Error(Usage) naming both), none takes the `preview`
// file's (empty: none), no output exists unless `existing` allows it (and then as a whole PNG) and every output
// directory can be created and written (Error(Io)).
Preflight preflight(RunPlan& plan, Existing existing, const std::filesystem::path& preview = {});

}  // namespace txt2img::cli
