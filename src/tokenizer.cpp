// CLIP's pre-tokenizer and byte alphabet, with SentencePiece doing the BPE merges. The SentencePiece model
// (scripts/txt2img_convert/tokenizer.py) has one piece per CLIP token, in CLIP's id order, and scores that make its
// merge order CLIP's merge-rank order; '▁' after a word stands for CLIP's "</w>".
#include <sentencepiece_processor.h>
#include <unicode/uchar.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "txt2img/error.hpp"
#include "txt2img/tokenizer.hpp"

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

std::vector<std::string> pre_tokenize(const std::string& cleaned) {
  static constexpr std::string_view kContractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  const std::string_view text = cleaned;
  std::vector<std::string> tokens;
  size_t pos = 0;
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
        case CharClass::Unmatched: pos += char_len; continue;
      }
    }
    tokens.emplace_back(text.substr(pos, len));
    pos += len;
  }
  return tokens;
}

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor processor;
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::filesystem::path& sentencepiece_model) {
  auto impl = std::make_unique<Impl>();
  const auto status = impl->processor.Load(sentencepiece_model.string());
  if (!status.ok()) {
    throw Error(ErrorKind::Bundle,
                "cannot load tokenizer model " + sentencepiece_model.string() + ": " + status.ToString());
  }
  const auto& sp = impl->processor;
  if (sp.PieceToId(std::string(kStartOfText)) != kBos || sp.PieceToId(std::string(kEndOfText)) != kEos ||
      !sp.IsControl(kBos) || !sp.IsControl(kEos)) {
    throw Error(ErrorKind::Bundle, "tokenizer model " + sentencepiece_model.string() +
                                       " is not a CLIP tokenizer (start/end tokens are not control pieces " +
                                       std::to_string(kBos) + "/" + std::to_string(kEos) + ")");
  }
  return Tokenizer(std::move(impl));
}

std::vector<int> Tokenizer::encode(std::string_view text) const {
  const auto& alphabet = byte_alphabet();
  std::vector<int> ids;
  std::string words;  // byte-mapped pre-tokens joined by ' ', which SentencePiece splits on
  const auto flush = [&] {
    if (words.empty()) return;
    std::vector<int> piece_ids;
    const auto status = impl_->processor.Encode(words, &piece_ids);
    if (!status.ok()) throw Error(ErrorKind::Runtime, "tokenizer: " + status.ToString());
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    words.clear();
  };
  // Only the exact special strings are CLIP's special tokens; a case variant the regex split off is BPE'd.
  for (const auto& token : pre_tokenize(clean_text(text))) {
    if (token == kStartOfText || token == kEndOfText) {
      flush();
      ids.push_back(token == kStartOfText ? kBos : kEos);
      continue;
    }
    if (!words.empty()) words.push_back(' ');
    for (unsigned char byte : token) words += alphabet[byte];
  }
  flush();
  return ids;
}

Tokenizer::Padded Tokenizer::encode_padded(std::string_view text, int context, int pad_id) const {
  if (context < 2) throw Error(ErrorKind::Usage, "context length must be at least 2, got " + std::to_string(context));
  const std::vector<int> ids = encode(text);
  Padded out;
  out.total_tokens = ids.size();
  out.kept_tokens = std::min(ids.size(), static_cast<size_t>(context - 2));
  out.ids.reserve(static_cast<size_t>(context));
  out.ids.push_back(kBos);
  out.ids.insert(out.ids.end(), ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(out.kept_tokens));
  out.ids.push_back(kEos);
  out.ids.resize(static_cast<size_t>(context), pad_id);
  return out;
}

}  // namespace txt2img
