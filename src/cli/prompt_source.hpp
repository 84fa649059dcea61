// Where the prompts of a run come from: one prompt argument, or a prompt file read as a stream (plain text, one
// prompt a line, or JSON Lines with per-line overrides). A run reads the file twice (validate, then generate), so
// memory never grows with the number of prompts; standard input is spooled to an unlinked temporary file for that.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace txt2img::cli {

// Largest seed accepted anywhere (flags, JSON Lines): every seed fits a signed 64-bit integer, so it survives
// JSON tools, databases and torch.manual_seed alike.
constexpr uint64_t kMaxSeed = (uint64_t{1} << 63) - 1;

// Throws Error(Usage) naming `what` unless `text` is a whole number in [0, kMaxSeed].
uint64_t parse_seed(const std::string& text, const std::string& what);

// Empty when `text` is valid UTF-8, else a description of the first bad byte ("byte 0xff at column 7").
std::string utf8_problem(std::string_view text);
// Throws Error(Usage) "WHAT is not valid UTF-8 (...)" unless `text` is valid UTF-8; `what`: "the prompt", ...
void require_utf8(std::string_view text, const std::string& what);

// --images-per-prompt's and a JSON line's "images" bound.
constexpr int kMaxImagesPerPrompt = 1000000;

// One prompt of the run, with whatever its JSON line overrides.
struct PromptEntry {
  size_t line = 0;   // 1-based line in the prompt file; 0 for a prompt given as an argument
  size_t index = 0;  // 0-based position among the prompts (blank lines and comments not counted)
  std::string prompt;
  std::optional<std::string> negative_prompt;
  std::optional<uint64_t> seed;
  std::optional<int> steps, width, height, images, clip_skip;
  std::optional<double> cfg_scale, guidance_rescale, skip_early_cfg, ngms;
  std::optional<std::string> sampler;
  std::optional<std::string> output;
  std::optional<bool> long_prompts, emphasis;
  std::optional<double> hires_scale, hires_denoise;  // hires_scale 0 turns a --hires-scale off for the line
  std::optional<std::pair<int, int>> hires_resize;   // HiresFix's resize_width and resize_height
  std::optional<int> hires_steps;
  std::optional<std::string> hires_upscaler;
  std::optional<std::string> hires_sampler;

  bool overrides_params() const {
    return steps || width || height || cfg_scale || guidance_rescale || skip_early_cfg || ngms || sampler ||
           clip_skip || long_prompts || emphasis || hires_scale || hires_resize || hires_denoise || hires_steps ||
           hires_upscaler || hires_sampler;
  }
};

// Keys a JSON line may set, in the order the documentation lists them.
const std::vector<std::string>& jsonl_keys();

class PromptSource {
 public:
  static PromptSource argument(std::string prompt);
  // `path` "-" reads standard input. Throws Error(Io) when the file cannot be read.
  static PromptSource file(const std::string& path);

  // An independent reader of the same prompts, positioned at the start.
  PromptSource reopen() const;

  // The next prompt; false at the end. Throws Error(Usage) "FILE:LINE: what is wrong" for a malformed line,
  // Error(Io) for a read error.
  bool next(PromptEntry& entry);
  void rewind();

  // "prompts.txt:12" for a line of the file, "the prompt" for an argument.
  std::string where(size_t line) const;
  bool is_file() const { return !path_.empty(); }
  // The file as the user named it ("<stdin>" for "-"); empty for a prompt argument.
  const std::string& name() const { return name_; }

 private:
  PromptSource() = default;
  void open();
  bool parse_line(std::string& line, PromptEntry& entry);

  std::optional<std::string> argument_;
  bool argument_done_ = false;
  std::string name_;                  // as the user gave it, for messages
  std::string path_;                  // what to open: the /proc/self/fd path of the spooled copy
  std::shared_ptr<std::FILE> spool_;  // the copy of the prompts, alive while any reader needs it
  std::unique_ptr<std::ifstream> in_;
  bool jsonl_ = false;
  size_t line_ = 0;
  size_t index_ = 0;
};

}  // namespace txt2img::cli
