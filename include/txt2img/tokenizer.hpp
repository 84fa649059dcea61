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

// A textual-inversion embedding (A1111's embeddings/): `vectors` token ids from `first_id` on, rows that
// scripts/convert.py appended to the text encoder's token embedding, stand for the word(s) `name` in a prompt.
struct TextualInversion {
  std::string name;
  int first_id = 0;
  int vectors = 0;
};

class Tokenizer {
 public:
  static constexpr int kBos = 49406;
  static constexpr int kEos = 49407;

  // Throws Error(Bundle) when the model cannot be loaded.
  static Tokenizer load(const std::filesystem::path& sentencepiece_model);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Wherever a prompt's ids hold the ids of an embedding's name, starting at a word (case does not matter, as
  // CLIP lowercases), they are replaced by the embedding's ids; the longest name wins. Throws Error(Bundle) for a
  // name without tokens or two names with the same tokens.
  void add_embeddings(const std::vector<TextualInversion>& embeddings);

  // Token ids of the text, without start/end tokens and without truncation.
  std::vector<int> encode(std::string_view text) const;

  // The same ids, each with the index of the word (pre_tokenize(clean_text(text))) it stands for; the ids grouped
  // into units (one per CLIP token, one per embedding, which is never split); the embeddings that occur, by name,
  // in order of appearance.
  struct Traced {
    std::vector<int> ids;
    std::vector<size_t> words;
    std::vector<size_t> unit_lengths;
    std::vector<std::string> embeddings;
  };
  Traced encode_traced(std::string_view text) const;

  struct Padded {
    std::vector<int64_t> ids;  // bos + up to context-2 ids + eos, padded with pad_id to `context`
    size_t total_tokens;       // ids before truncation (without bos/eos)
    size_t kept_tokens;        // ids that fit
  };
  Padded encode_padded(std::string_view text, int context = 77, int pad_id = kEos) const;

  // AUTOMATIC1111's long prompts: the ids in chunks of context-2, each padded as encode_padded pads (so a text that
  // fits is one chunk, encode_padded's ids). A chunk that fills up ends after its last comma when that comma is
  // among its last 20 ids, the rest moving to the next chunk, and an embedding's ids stay in one chunk.
  std::vector<std::vector<int64_t>> encode_chunked(std::string_view text, int context = 77,
                                                   int pad_id = kEos) const;

 private:
  struct Impl;
  struct Embedding {
    TextualInversion embedding;
    std::vector<int> name_ids;
  };
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  Traced encode_words(std::string_view text) const;  // CLIP's ids, before embeddings are substituted
  std::unique_ptr<Impl> impl_;
  std::vector<Embedding> embeddings_;  // longest name first
};

}  // namespace txt2img
