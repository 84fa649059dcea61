// CLIP's pre-tokenizer and byte alphabet, with SentencePiece doing the BPE merges. The SentencePiece model
// (scripts/txt2img_convert/tokenizer.py) has one piece per CLIP token, in CLIP's id order, and scores that make its
// merge order CLIP's merge-rank order; '▁' after a word stands for CLIP's "</w>".
#include "txt2img/tokenizer.hpp"

#include <dlfcn.h>
#include <unicode/uchar.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "clip_text.hpp"
#include "txt2img/error.hpp"

namespace txt2img {
namespace {

constexpr std::string_view kStartOfText = "<|startoftext|>";
constexpr std::string_view kEndOfText = "<|endoftext|>";

// CLIP pre-tokenizes with the `regex` module and IGNORECASE, under which a character matches a literal when their
// simple case foldings agree ('ſ' matches 's').
bool folds_to(UChar32 c, char ascii) { return u_foldCase(c, U_FOLD_CASE_DEFAULT) == static_cast<UChar32>(ascii); }

// Byte length of the code point at `pos` (the text is valid UTF-8: clean_text produced it or it was checked).
int32_t next_length(std::string_view text, size_t pos, UChar32* c) {
  int32_t i = static_cast<int32_t>(pos);
  U8_NEXT(reinterpret_cast<const uint8_t*>(text.data()), i, static_cast<int32_t>(text.size()), *c);
  if (*c < 0) {
    throw Error(ErrorKind::Usage, "text is not valid UTF-8 (at byte offset " + std::to_string(pos) + ")");
  }
  return i - static_cast<int32_t>(pos);
}

// Bytes matched case-insensitively by an ASCII literal at `pos`, or 0.
size_t match_literal(std::string_view text, size_t pos, std::string_view literal) {
  size_t p = pos;
  for (char expected : literal) {
    if (p >= text.size()) return 0;
    UChar32 c;
    const int32_t len = next_length(text, p, &c);
    if (!folds_to(c, expected)) return 0;
    p += static_cast<size_t>(len);
  }
  return p - pos;
}

enum class CharClass { Letter, Number, Space, Other, Unmatched };

// The classes of `[\p{L}]+`, `[\p{N}]` and `[^\s\p{L}\p{N}]+` under IGNORECASE. The negated class rejects a
// character when any of its case variants is a letter, number or space, so a non-letter with a letter as case
// variant (U+0345, whose uppercase is Ι) is matched by no alternative and skipped like whitespace.
CharClass classify(UChar32 c) {
  const auto in_positive = [](UChar32 x) {
    return (U_GET_GC_MASK(x) & (U_GC_L_MASK | U_GC_N_MASK)) != 0 || u_isUWhiteSpace(x);
  };
  const uint32_t mask = U_GET_GC_MASK(c);
  if (mask & U_GC_L_MASK) return CharClass::Letter;
  if (mask & U_GC_N_MASK) return CharClass::Number;
  if (u_isUWhiteSpace(c)) return CharClass::Space;
  if (in_positive(u_toupper(c)) || in_positive(u_tolower(c)) || in_positive(u_totitle(c)) ||
      in_positive(u_foldCase(c, U_FOLD_CASE_DEFAULT))) {
    return CharClass::Unmatched;
  }
  return CharClass::Other;
}

// Bytes of the run of code points of class `cls` starting at `pos`.
size_t run_length(std::string_view text, size_t pos, CharClass cls) {
  size_t p = pos;
  while (p < text.size()) {
    UChar32 c;
    const int32_t len = next_length(text, p, &c);
    if (classify(c) != cls) break;
    p += static_cast<size_t>(len);
  }
  return p - pos;
}

// CLIP's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other bytes in increasing order take
// U+0100 onwards. Piece i of the model is the character of the i-th byte in this order of listing.
const std::array<std::string, 256>& byte_alphabet() {
  static const std::array<std::string, 256> alphabet = [] {
    std::array<std::string, 256> a;
    UChar32 next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      const UChar32 c = printable ? b : next++;
      uint8_t buffer[4];
      int32_t n = 0;
      U8_APPEND_UNSAFE(buffer, n, c);
      a[static_cast<size_t>(b)].assign(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
    }
    return a;
  }();
  return alphabet;
}

}  // namespace

std::vector<std::string> pre_tokenize(const std::string& cleaned, std::vector<bool>* spaced) {
  static constexpr std::string_view kContractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  const std::string_view text = cleaned;
  std::vector<std::string> tokens;
  size_t pos = 0;
  bool gap = false;
  while (pos < text.size()) {
    size_t len = match_literal(text, pos, kStartOfText);
    if (len == 0) len = match_literal(text, pos, kEndOfText);
    for (auto it = std::begin(kContractions); len == 0 && it != std::end(kContractions); ++it) {
      len = match_literal(text, pos, *it);
    }
    UChar32 c;
    const auto char_len = static_cast<size_t>(next_length(text, pos, &c));
    if (len == 0) {
      switch (classify(c)) {
        case CharClass::Letter: len = run_length(text, pos, CharClass::Letter); break;
        case CharClass::Number: len = char_len; break;
        case CharClass::Other: len = run_length(text, pos, CharClass::Other); break;
        case CharClass::Space:
        case CharClass::Unmatched:
          pos += char_len;
          gap = true;
          continue;
      }
    }
    if (spaced) spaced->push_back(gap && !tokens.empty());
    gap = false;
    tokens.emplace_back(text.substr(pos, len));
    pos += len;
  }
  return tokens;
}

namespace {

constexpr const char* kModuleName = "libtxt2img_sentencepiece.so";

// libsentencepiece lives in its own module (src/sentencepiece_module.cpp says why), loaded once, from beside the
// running program, from ../lib/txt2img there, or from where this build put it (tests run from other folders).
class SentencePieceModule {
 public:
  static const SentencePieceModule& get() {
    static const SentencePieceModule module;
    return module;
  }

  void* (*load)(const char*, char*, size_t) = nullptr;
  void (*free)(void*) = nullptr;
  int (*control_id)(void*, const char*) = nullptr;
  long (*encode)(void*, const char*, size_t, int*, size_t, char*, size_t) = nullptr;

 private:
  SentencePieceModule() {
    std::vector<std::filesystem::path> candidates;
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) {
      candidates.push_back(exe.parent_path() / kModuleName);
      candidates.push_back(exe.parent_path() / "../lib/txt2img" / kModuleName);
    }
    candidates.emplace_back(TXT2IMG_SENTENCEPIECE_MODULE_BUILT);
    std::string tried;
    void* handle = nullptr;
    for (const auto& candidate : candidates) {
      if (!std::filesystem::exists(candidate)) continue;
      handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (handle) break;
      tried += std::string(" (") + dlerror() + ")";
    }
    if (!handle)
      throw Error(ErrorKind::Runtime, std::string("cannot load ") + kModuleName + ", which txt2img installs beside "
                                          "its binary" + tried + "; reinstall or rebuild txt2img");
    load = reinterpret_cast<decltype(load)>(dlsym(handle, "txt2img_spm_load"));
    free = reinterpret_cast<decltype(free)>(dlsym(handle, "txt2img_spm_free"));
    control_id = reinterpret_cast<decltype(control_id)>(dlsym(handle, "txt2img_spm_control_id"));
    encode = reinterpret_cast<decltype(encode)>(dlsym(handle, "txt2img_spm_encode"));
    if (!load || !free || !control_id || !encode)
      throw Error(ErrorKind::Runtime, std::string(kModuleName) + " lacks the txt2img_spm_* functions; rebuild txt2img");
  }
};

}  // namespace

struct Tokenizer::Impl {
  explicit Impl(void* p) : processor(p) {}
  ~Impl() { SentencePieceModule::get().free(processor); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  // One byte-mapped pre-token (SentencePiece would split words joined by ' ' the same way: BPE never merges
  // across pre-tokens).
  std::vector<int> encode_words(const std::string& words) const {
    std::vector<int> ids(words.size() + 1);
    char error[256];
    const long n = SentencePieceModule::get().encode(processor, words.data(), words.size(), ids.data(), ids.size(),
                                                     error, sizeof error);
    if (n < 0) throw Error(ErrorKind::Runtime, std::string("tokenizer: ") + error);
    ids.resize(static_cast<size_t>(n));  // a word never yields more ids than bytes
    return ids;
  }

  void* processor;
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::filesystem::path& sentencepiece_model) {
  const auto& module = SentencePieceModule::get();
  const std::string where = "tokenizer model " + sentencepiece_model.string();
  if (!std::filesystem::is_regular_file(sentencepiece_model)) throw Error(ErrorKind::Bundle, "cannot read " + where);
  char error[256];
  void* processor = module.load(sentencepiece_model.c_str(), error, sizeof error);
  if (!processor) throw Error(ErrorKind::Bundle, "cannot load " + where + ": " + error);
  auto impl = std::make_unique<Impl>(processor);
  if (module.control_id(processor, std::string(kStartOfText).c_str()) != kBos ||
      module.control_id(processor, std::string(kEndOfText).c_str()) != kEos) {
    throw Error(ErrorKind::Bundle, where + " is not a CLIP tokenizer (no start/end control pieces at " +
                                       std::to_string(kBos) + "/" + std::to_string(kEos) + ")");
  }
  return Tokenizer(std::move(impl));
}

Tokenizer::Traced Tokenizer::encode_words(std::string_view text) const {
  const auto& alphabet = byte_alphabet();
  Traced out;
  out.word_texts = pre_tokenize(clean_text(text), &out.word_spaced);
  // Blanks before the text (a span after "a ", a part after an added token) count, though cleaning strips them.
  if (!out.word_spaced.empty()) out.word_spaced[0] = !text.empty() && std::isspace(static_cast<unsigned char>(text[0]));
  const auto add = [&](int id, size_t word) {
    out.ids.push_back(id);
    out.weights.push_back(1.0);
    out.words.push_back(word);
    out.unit_lengths.push_back(1);
  };
  std::string mapped;
  for (size_t w = 0; w < out.word_texts.size(); ++w) {
    const std::string& word = out.word_texts[w];
    // Only the exact special strings are CLIP's special tokens; a case variant the regex split off is BPE'd.
    if (word == kStartOfText || word == kEndOfText) {
      add(word == kStartOfText ? kBos : kEos, w);
      continue;
    }
    mapped.clear();
    for (unsigned char byte : word) mapped += alphabet[byte];
    for (int id : impl_->encode_words(mapped)) add(id, w);
  }
  return out;
}

void Tokenizer::add_embeddings(const std::vector<TextualInversion>& embeddings) {
  for (const auto& embedding : embeddings) {
    if (embedding.added_token) {
      if (embedding.name.empty()) throw Error(ErrorKind::Bundle, "an added token without a name");
      added_tokens_.push_back(embedding);
      continue;
    }
    auto name_ids = encode_words(embedding.name).ids;
    if (name_ids.empty())
      throw Error(ErrorKind::Bundle, "embedding \"" + embedding.name + "\": its name has no tokens to match in a prompt");
    for (const auto& other : embeddings_)
      if (other.name_ids == name_ids)
        throw Error(ErrorKind::Bundle, "embeddings \"" + other.embedding.name + "\" and \"" + embedding.name +
                                           "\" have the same tokens: a prompt could not tell them apart");
    embeddings_.push_back({embedding, std::move(name_ids)});
  }
  std::stable_sort(embeddings_.begin(), embeddings_.end(),
                   [](const Embedding& a, const Embedding& b) { return a.name_ids.size() > b.name_ids.size(); });
  std::stable_sort(added_tokens_.begin(), added_tokens_.end(),
                   [](const TextualInversion& a, const TextualInversion& b) { return a.name.size() > b.name.size(); });
}

namespace {

// `part`, a text's trace, appended to `out`, a trace of the text before it: its words counted on from out's.
void append_traced(Tokenizer::Traced& out, Tokenizer::Traced part) {
  const auto append = [](auto& to, const auto& from) { to.insert(to.end(), from.begin(), from.end()); };
  for (size_t& word : part.words) word += out.word_texts.size();
  append(out.ids, part.ids);
  append(out.weights, part.weights);
  append(out.words, part.words);
  append(out.word_texts, part.word_texts);
  append(out.word_spaced, part.word_spaced);
  append(out.unit_lengths, part.unit_lengths);
  append(out.embeddings, part.embeddings);
}

}  // namespace

Tokenizer::Traced Tokenizer::substitute_embeddings(Traced clip) const {
  if (embeddings_.empty()) return clip;
  Traced out;
  out.word_texts = std::move(clip.word_texts);
  out.word_spaced = std::move(clip.word_spaced);
  for (size_t i = 0; i < clip.ids.size();) {
    // CLIP ends every word with a "</w>" token, so a name's ids end where a word ends; they must start there too.
    const bool word_start = i == 0 || clip.words[i] != clip.words[i - 1];
    const auto found = std::find_if(embeddings_.begin(), embeddings_.end(), [&](const Embedding& e) {
      return word_start && e.name_ids.size() <= clip.ids.size() - i &&
             std::equal(e.name_ids.begin(), e.name_ids.end(), clip.ids.begin() + static_cast<std::ptrdiff_t>(i));
    });
    const size_t vectors = found == embeddings_.end() ? 1 : static_cast<size_t>(found->embedding.vectors);
    for (size_t k = 0; k < vectors; ++k) {
      out.ids.push_back(found == embeddings_.end() ? clip.ids[i] : found->embedding.first_id + static_cast<int>(k));
      out.weights.push_back(clip.weights[i]);
      out.words.push_back(clip.words[i]);
    }
    out.unit_lengths.push_back(vectors);
    if (found != embeddings_.end()) out.embeddings.push_back(found->embedding.name);
    i += found == embeddings_.end() ? 1 : found->name_ids.size();
  }
  return out;
}

Tokenizer::Traced Tokenizer::encode_with_embeddings(std::string_view text) const {
  if (added_tokens_.empty()) return substitute_embeddings(encode_words(text));
  Traced out;
  const auto append_words = [&](std::string_view words) {
    append_traced(out, substitute_embeddings(encode_words(words)));
  };
  size_t from = 0;
  while (from < text.size()) {
    // The earliest token in the text, the longest of those that start there.
    size_t at = std::string_view::npos;
    const TextualInversion* token = nullptr;
    for (const auto& added : added_tokens_) {
      const size_t found = text.find(added.name, from);
      if (found < at) {
        at = found;
        token = &added;
      }
    }
    append_words(text.substr(from, at == std::string_view::npos ? std::string_view::npos : at - from));
    if (!token) break;
    for (int k = 0; k < token->vectors; ++k) {
      out.ids.push_back(token->first_id + k);
      out.weights.push_back(1.0);
      out.words.push_back(out.word_texts.size());
    }
    out.word_texts.push_back(token->name);
    out.word_spaced.push_back(at > 0 && std::isspace(static_cast<unsigned char>(text[at - 1])));
    out.unit_lengths.push_back(static_cast<size_t>(token->vectors));
    out.embeddings.push_back(token->name);
    from = at + token->name.size();
  }
  return out;
}

Tokenizer::Traced Tokenizer::encode_traced(std::string_view text, bool emphasis, std::string_view what) const {
  if (!emphasis) return encode_with_embeddings(text);
  Traced out;
  bool after_blank = false;  // the span before ended in blanks
  for (const auto& span : parse_emphasis(text)) {
    if (span.is_break) {
      out.unit_lengths.push_back(0);
      after_blank = true;
      continue;
    }
    Traced part = encode_with_embeddings(span.text);
    if (after_blank && !part.word_spaced.empty()) part.word_spaced[0] = true;
    after_blank = !span.text.empty() && std::isspace(static_cast<unsigned char>(span.text.back()));
    if (!part.ids.empty() && !fits_float32(span.weight)) throw emphasis_weight_error(span, what);
    for (double& weight : part.weights) weight = span.weight;
    append_traced(out, std::move(part));
  }
  return out;
}

std::vector<int> Tokenizer::encode(std::string_view text) const { return encode_traced(text).ids; }

std::vector<int64_t> Tokenizer::encode_padded(std::string_view text, int context, int pad_id) const {
  return chunks(encode_traced(text), false, context, pad_id).front().ids;
}

std::vector<Tokenizer::Chunk> Tokenizer::chunks(const Traced& traced, bool long_prompts, int context, int pad_id) {
  if (context < 2) throw Error(ErrorKind::Usage, "context length must be at least 2, got " + std::to_string(context));
  const size_t length = static_cast<size_t>(context - 2);
  std::vector<Chunk> out;
  Chunk chunk;  // the ids and weights of the chunk being filled, without bos and eos
  const auto next_chunk = [&] {
    Chunk padded{{kBos}, {1.0}};
    padded.ids.insert(padded.ids.end(), chunk.ids.begin(), chunk.ids.end());
    padded.weights.insert(padded.weights.end(), chunk.weights.begin(), chunk.weights.end());
    padded.ids.push_back(kEos);
    padded.ids.resize(static_cast<size_t>(context), pad_id);
    padded.weights.resize(static_cast<size_t>(context), 1.0);
    out.push_back(std::move(padded));
    chunk = Chunk{};
  };
  if (!long_prompts) {  // diffusers: what fits
    const size_t kept = std::min(traced.ids.size(), length);
    chunk.ids.assign(traced.ids.begin(), traced.ids.begin() + static_cast<std::ptrdiff_t>(kept));
    chunk.weights.assign(traced.weights.begin(), traced.weights.begin() + static_cast<std::ptrdiff_t>(kept));
    next_chunk();
    return out;
  }
  // A1111's sd_hijack_clip.tokenize_line, with its default "comma padding backtrack" of 20 tokens.
  constexpr size_t kCommaBacktrack = 20;
  // Where in `chunk` (a sentinel rather than std::optional, which GCC 12 wrongly warns may be used uninitialised).
  constexpr size_t kNoComma = std::numeric_limits<size_t>::max();
  size_t last_comma = kNoComma;
  size_t at = 0;
  for (const size_t unit : traced.unit_lengths) {
    if (unit == 0) {  // BREAK
      next_chunk();
      last_comma = kNoComma;
      continue;
    }
    if (unit > length)
      throw Error(ErrorKind::Usage, "an embedding of " + std::to_string(unit) + " vectors does not fit in a chunk of " +
                                        std::to_string(length) + " tokens");
    if (unit == 1 && traced.ids[at] == kComma) {
      last_comma = chunk.ids.size();
    } else if (chunk.ids.size() == length && last_comma != kNoComma &&
               chunk.ids.size() - last_comma <= kCommaBacktrack) {
      const auto split = static_cast<std::ptrdiff_t>(last_comma + 1);
      Chunk moved{{chunk.ids.begin() + split, chunk.ids.end()}, {chunk.weights.begin() + split, chunk.weights.end()}};
      chunk.ids.resize(last_comma + 1);
      chunk.weights.resize(last_comma + 1);
      next_chunk();
      last_comma = kNoComma;
      chunk = std::move(moved);
    }
    if (chunk.ids.size() == length || chunk.ids.size() + unit > length) {
      next_chunk();
      last_comma = kNoComma;
    }
    const auto from = static_cast<std::ptrdiff_t>(at), to = static_cast<std::ptrdiff_t>(at + unit);
    chunk.ids.insert(chunk.ids.end(), traced.ids.begin() + from, traced.ids.begin() + to);
    chunk.weights.insert(chunk.weights.end(), traced.weights.begin() + from, traced.weights.begin() + to);
    at += unit;
  }
  if (!chunk.ids.empty() || out.empty()) next_chunk();
  return out;
}

}  // namespace txt2img
