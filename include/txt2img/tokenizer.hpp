// CLIP's tokenizer: CLIP's text cleaning and pre-token regex, then SentencePiece doing the BPE merges with a model
// whose piece ids coincide with CLIP's token ids (built by scripts/txt2img_convert/tokenizer.py).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace txt2img {

// CLIP's cleaning (ftfy.fix_text's fixes for valid UTF-8 input, including its repair of UTF-8 that was read as
// Windows-1252 or Latin-1; html.unescape twice, strip, whitespace collapse, Unicode lowercase). Throws Error(Usage)
// on invalid UTF-8.
std::string clean_text(std::string_view utf8);

// CLIP's pre-token regex over cleaned text.
std::vector<std::string> pre_tokenize(const std::string& cleaned);

class Tokenizer {
 public:
  static constexpr int kBos = 49406;
  static constexpr int kEos = 49407;

  // Throws Error(Bundle) when the model cannot be loaded.
  static Tokenizer load(const std::filesystem::path& sentencepiece_model);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Token ids of the text, without start/end tokens and without truncation.
  std::vector<int> encode(std::string_view text) const;

  struct Padded {
    std::vector<int64_t> ids;  // bos + up to context-2 ids + eos, padded with pad_id to `context`
    size_t total_tokens;       // ids before truncation (without bos/eos)
    size_t kept_tokens;        // ids that fit
  };
  Padded encode_padded(std::string_view text, int context = 77, int pad_id = kEos) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace txt2img
