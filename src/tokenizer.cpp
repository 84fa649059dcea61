// CLIP's pre-tokenizer and byte alphabet, then the BPE merges of a SentencePiece BPE model. The model
// (scripts/txt2img_convert/tokenizer.py) has one piece per CLIP token, in CLIP's id order, and scores that make its
// merge order CLIP's merge-rank order; '▁' after a word stands for CLIP's "</w>".
//
// The merges are SentencePiece's BPE algorithm done here rather than by libsentencepiece: Debian's libsentencepiece
// exports its own copy of protobuf 3.14, which clashes with the protobuf 3.21 that libtorch loads (the process
// crashes before main in whichever order the two are loaded).
#include <unicode/uchar.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <unordered_map>
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

namespace {

constexpr std::string_view kWordEnd = "\u2581";

// The protobuf wire format, as far as reading SentencePiece's ModelProto needs: the fields of one message.
struct Field {
  uint32_t number = 0;
  uint32_t wire_type = 0;
  uint64_t value = 0;      // varint and fixed-width fields
  std::string_view bytes;  // length-delimited fields
};

class MessageReader {
 public:
  explicit MessageReader(std::string_view data) : data_(data) {}

  // False at the end of the message; throws on malformed input.
  bool next(Field* field) {
    if (data_.empty()) return false;
    const uint64_t key = varint();
    field->number = static_cast<uint32_t>(key >> 3);
    field->wire_type = static_cast<uint32_t>(key & 7);
    switch (field->wire_type) {
      case 0: field->value = varint(); break;
      case 1: field->value = fixed(8); break;
      case 2: {
        const uint64_t length = varint();
        if (length > data_.size()) throw std::runtime_error("truncated field");
        field->bytes = data_.substr(0, length);
        data_.remove_prefix(length);
        break;
      }
      case 5: field->value = fixed(4); break;
      default: throw std::runtime_error("unsupported wire type " + std::to_string(field->wire_type));
    }
    return true;
  }

 private:
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (data_.empty()) break;
      const auto byte = static_cast<uint8_t>(data_.front());
      data_.remove_prefix(1);
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    throw std::runtime_error("bad varint");
  }

  uint64_t fixed(size_t size) {
    if (data_.size() < size) throw std::runtime_error("truncated field");
    uint64_t value = 0;
    for (size_t i = 0; i < size; ++i) value |= static_cast<uint64_t>(static_cast<uint8_t>(data_[i])) << (8 * i);
    data_.remove_prefix(size);
    return value;
  }

  std::string_view data_;
};

// sentencepiece_model.proto: ModelProto.pieces = 1; SentencePiece.piece = 1, .score = 2, .type = 3.
enum PieceType : uint64_t { kNormal = 1, kUnknown = 2, kControl = 3 };

struct Piece {
  std::string text;
  float score = 0;
  uint64_t type = kNormal;
};

std::vector<Piece> read_pieces(const std::string& model) {
  std::vector<Piece> pieces;
  MessageReader reader(model);
  Field field;
  while (reader.next(&field)) {
    if (field.number != 1 || field.wire_type != 2) continue;
    Piece piece;
    MessageReader piece_reader(field.bytes);
    Field f;
    while (piece_reader.next(&f)) {
      if (f.number == 1 && f.wire_type == 2) piece.text = std::string(f.bytes);
      if (f.number == 2 && f.wire_type == 5) {
        const auto bits = static_cast<uint32_t>(f.value);
        std::memcpy(&piece.score, &bits, sizeof bits);
      }
      if (f.number == 3 && f.wire_type == 0) piece.type = f.value;
    }
    pieces.push_back(std::move(piece));
  }
  return pieces;
}

}  // namespace

struct Tokenizer::Impl {
  struct Normal {
    int id;
    float score;
  };
  std::unordered_map<std::string, Normal> normal;  // the pieces merges can produce

  // SentencePiece's BPE on one word: start from its characters, and keep merging the adjacent pair whose
  // concatenation is the highest-scoring piece (the leftmost such pair on ties).
  void merge_word(const std::string& word, std::vector<int>* ids) const {
    std::vector<std::string> symbols;
    for (size_t pos = 0; pos < word.size();) {
      UChar32 c;
      const auto len = static_cast<size_t>(next_length(word, pos, &c));
      symbols.push_back(word.substr(pos, len));
      pos += len;
    }
    while (symbols.size() > 1) {
      size_t best = symbols.size();
      float best_score = 0;
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        const auto it = normal.find(symbols[i] + symbols[i + 1]);
        if (it != normal.end() && (best == symbols.size() || it->second.score > best_score)) {
          best = i;
          best_score = it->second.score;
        }
      }
      if (best == symbols.size()) break;
      symbols[best] += symbols[best + 1];
      symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    }
    for (const auto& symbol : symbols) ids->push_back(normal.at(symbol).id);
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::filesystem::path& sentencepiece_model) {
  const std::string where = "tokenizer model " + sentencepiece_model.string();
  std::ifstream in(sentencepiece_model, std::ios::binary);
  if (!in) throw Error(ErrorKind::Bundle, "cannot read " + where);
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<Piece> pieces;
  try {
    pieces = read_pieces(data);
  } catch (const std::runtime_error& e) {
    throw Error(ErrorKind::Bundle, where + " is not a SentencePiece model: " + e.what());
  }
  const auto is_control = [&](int id, std::string_view text) {
    return static_cast<size_t>(id) < pieces.size() && pieces[id].type == kControl && pieces[id].text == text;
  };
  if (!is_control(kBos, kStartOfText) || !is_control(kEos, kEndOfText)) {
    throw Error(ErrorKind::Bundle, where + " is not a CLIP tokenizer (no start/end control pieces at " +
                                       std::to_string(kBos) + "/" + std::to_string(kEos) + ")");
  }
  auto impl = std::make_unique<Impl>();
  for (size_t id = 0; id < pieces.size(); ++id) {
    if (pieces[id].type != kNormal) continue;
    if (!impl->normal.emplace(pieces[id].text, Impl::Normal{static_cast<int>(id), pieces[id].score}).second) {
      throw Error(ErrorKind::Bundle, where + " defines the piece " + pieces[id].text + " twice");
    }
  }
  // Every character and character-plus-word-end needs a piece so that merging can never leave an unknown symbol.
  for (const auto& c : byte_alphabet()) {
    if (impl->normal.count(c) == 0 || impl->normal.count(c + std::string(kWordEnd)) == 0) {
      throw Error(ErrorKind::Bundle, where + " lacks the byte-alphabet piece " + c);
    }
  }
  return Tokenizer(std::move(impl));
}

std::vector<int> Tokenizer::encode(std::string_view text) const {
  const auto& alphabet = byte_alphabet();
  std::vector<int> ids;
  // Only the exact special strings are CLIP's special tokens; a case variant the regex split off is BPE'd.
  for (const auto& token : pre_tokenize(clean_text(text))) {
    if (token == kStartOfText || token == kEndOfText) {
      ids.push_back(token == kStartOfText ? kBos : kEos);
      continue;
    }
    std::string word;
    for (unsigned char byte : token) word += alphabet[byte];
    impl_->merge_word(word + std::string(kWordEnd), &ids);
  }
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
