// CLIP's tokenizer: CLIP's text cleaning and pre-token regex, then SentencePiece doing the BPE merges with a model
// whose piece ids coincide with CLIP's token ids (built by scripts/txt2img_convert/tokenizer.py).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "txt2img/error.hpp"
#include "txt2img/utf8.hpp"  // invalid_utf8_at: what clean_text refuses, for callers that name the place

namespace txt2img {

// One span of a prompt in AUTOMATIC1111's emphasis syntax: "(text)" multiplies the attention weight of its text by
// 1.1, "[text]" divides it by 1.1, "(text:1.5)" multiplies it by 1.5 (they nest); "\(" "\)" "\[" "\]" "\\" are
// the characters themselves; an unclosed bracket runs to the end. A span "BREAK" (is_break, weight -1) ends a chunk
// of a long prompt.
struct EmphasisSpan {
  std::string text;
  double weight = 1.0;
  bool is_break = false;
};

// The spans of `text`, neighbours of equal weight merged, as A1111's parse_prompt_attention returns them (one span
// "" of weight 1 for an empty text).
std::vector<EmphasisSpan> parse_emphasis(std::string_view text);

// Whether float32 holds a prompt's weight (an emphasis weight, or a guidance weight times the CFG scale). A1111
// takes any weight; one past float32 (1e39 written out, thousands of nested brackets) makes the text embeddings or
// the guided noise, and so the image, infinite, so txt2img refuses it, naming the weight as format_weight writes it.
bool fits_float32(double weight);
std::string format_weight(double weight);
// The refusal of `span`, a span of `what` ("the prompt") whose weight is past float32.
Error emphasis_weight_error(const EmphasisSpan& span, std::string_view what);
// Throws emphasis_weight_error for the first span of `text` with words in it whose weight is past float32: the check
// the tokenizer makes of the spans it tokenizes (Tokenizer::encode_traced), for a text checked before a model loads.
void check_emphasis_weights(std::string_view text, std::string_view what);

// A textual-inversion embedding (A1111's embeddings/): `vectors` token ids from `first_id` on, rows that
// scripts/convert.py appended to the text encoder's token embedding, stand for the word(s) `name` in a prompt.
struct TextualInversion {
  std::string name;
  int first_id = 0;
  int vectors = 0;
  // A token a diffusers model's own tokenizer adds (a textual inversion saved with the pipeline): transformers
  // splits it out of the text first, wherever it stands and in its exact case. An embedding file's name is found as
  // A1111 finds it, by its CLIP tokens where a word starts.
  bool added_token = false;
};

class Tokenizer {
 public:
  static constexpr int kBos = 49406;
  static constexpr int kEos = 49407;
  static constexpr int kComma = 267;  // ",</w>", where long prompts prefer to end a chunk

  // Throws Error(Bundle) when the model cannot be loaded, and Error(Runtime) when libtxt2img_sentencepiece.so (the
  // build's, or one beside the program or in ../lib/txt2img from it: README, "Using the library") cannot.
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

  // The same ids, each with its attention weight and the index of the word (in word_texts, the pre-tokens of the
  // cleaned text) it stands for; the ids grouped into units (one per CLIP token, one per embedding, which is never
  // split; 0 ids for a BREAK); the embeddings that occur, by name, in order of appearance. With `emphasis` the text
  // is read in A1111's emphasis syntax (parse_emphasis), each span tokenized on its own as A1111 does; otherwise
  // every weight is 1.
  struct Traced {
    std::vector<int> ids;
    std::vector<double> weights;
    std::vector<size_t> words;
    std::vector<std::string> word_texts;
    std::vector<bool> word_spaced;  // per word: whether blanks came before it in the text (to quote the words)
    std::vector<size_t> unit_lengths;
    std::vector<std::string> embeddings;
  };
  // `what` names the text in a refusal ("the prompt", "the negative prompt").
  Traced encode_traced(std::string_view text, bool emphasis = false, std::string_view what = "the prompt") const;

  // diffusers' encoding: bos + the text's first context - 2 ids + eos, padded with pad_id to `context`.
  std::vector<int64_t> encode_padded(std::string_view text, int context = 77, int pad_id = kEos) const;

  // What the text encoder reads of a traced text: chunks of `context` ids, each bos + up to context-2 ids + eos
  // padded with pad_id as encode_padded pads, with a weight per id (1 for bos, eos and padding).
  struct Chunk {
    std::vector<int64_t> ids;
    std::vector<double> weights;
  };
  // Without long_prompts one chunk, cut off after context-2 ids (diffusers). With long_prompts AUTOMATIC1111's long
  // prompts: as many chunks as the ids need (so a text that fits is one chunk either way); a chunk that fills up
  // ends after its last comma when that comma is among its last 20 ids, the rest moving to the next chunk; an
  // embedding's ids stay in one chunk; a BREAK ends the chunk. Throws Error(Usage) for an embedding longer than a
  // chunk.
  static std::vector<Chunk> chunks(const Traced& traced, bool long_prompts, int context = 77, int pad_id = kEos);

 private:
  struct Impl;
  struct Embedding {
    TextualInversion embedding;
    std::vector<int> name_ids;
  };
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  Traced encode_words(std::string_view text) const;  // CLIP's ids, before embeddings are substituted
  Traced substitute_embeddings(Traced clip) const;
  // The added tokens split out of `text`, the text between them encoded with embeddings substituted.
  Traced encode_with_embeddings(std::string_view text) const;
  std::unique_ptr<Impl> impl_;
  std::vector<Embedding> embeddings_;           // longest name first
  std::vector<TextualInversion> added_tokens_;  // longest name first
};

}  // namespace txt2img
