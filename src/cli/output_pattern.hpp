// Output file names from a pattern: "outputs/{index:05}-{seed}.png" and the like.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace txt2img::cli {

// Used when -o is absent, and appended to an -o that names a directory.
constexpr const char* kDefaultOutputPattern = "outputs/{index:05}-{seed}.png";
constexpr const char* kDefaultFileName = "{index:05}-{seed}.png";

// What a placeholder can refer to.
struct OutputFields {
  uint64_t index = 0;  // the image's position in the whole (unsharded) run, from 0
  uint64_t seed = 0;
  uint64_t n = 0;  // the image's position among its prompt's images, from 0
  std::string prompt;
};

// Lower-case ASCII letters and digits, every other run of characters one '-', at most `max_chars` long, "untitled"
// when nothing is left: safe on every file system and in every shell.
std::string slug(const std::string& text, size_t max_chars);

// Whether a file name ends in .png, in any case: the only format txt2img writes.
bool ends_with_png(const std::string& name);

class OutputPattern {
 public:
  // Placeholders: {index} {seed} {n} {prompt}, numbers with a printf-like width ({index:05} zero-pads to 5 digits,
  // {index:5} pads with spaces), {prompt:N} a slug of at most N characters (default 60); "{{" and "}}" are braces.
  // A pattern ending in "/" or naming an existing directory gets kDefaultFileName appended. The file name must end
  // in .png. Throws Error(Usage) naming `what` (e.g. "-o") for anything else.
  static OutputPattern parse(const std::string& pattern, const std::string& what);

  std::filesystem::path render(const OutputFields& fields) const;
  const std::string& text() const { return text_; }

 private:
  struct Part {
    enum Kind { Literal, Index, Seed, N, Prompt } kind = Literal;
    std::string literal;
    int width = 0;
    bool zero_pad = false;
  };
  std::string text_;
  std::vector<Part> parts_;
};

}  // namespace txt2img::cli
