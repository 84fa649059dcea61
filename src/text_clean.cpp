// CLIP's text cleaning, reproducing the Python it was trained with: ftfy.fix_text (ftfy 6.x defaults), then
// html.unescape twice, strip, `\s+` -> ' ', str.lower. Work happens on code points because every Python step
// (regex counts, str.isspace, translate tables) is defined on code points.
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "clip_text.hpp"
#include "txt2img/error.hpp"
#include "txt2img/tokenizer.hpp"

namespace txt2img {
namespace {

struct HtmlEntity {
  std::string_view name;
  std::string_view value;
};
struct HtmlCharRef {
  char32_t code;
  std::string_view value;
};
#include "html_entities.inc"

using U32 = std::u32string;

// Of valid UTF-8 (checked by clean_text, or a table's).
U32 decode_utf8(std::string_view utf8) {
  U32 out;
  out.reserve(utf8.size());
  const auto* bytes = reinterpret_cast<const uint8_t*>(utf8.data());
  const size_t length = utf8.size();
  size_t i = 0;
  while (i < length) {
    UChar32 c;
    U8_NEXT_UNSAFE(bytes, i, c);
    out.push_back(static_cast<char32_t>(c));
  }
  return out;
}

icu::UnicodeString to_icu(const U32& text) {
  return icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(text.data()),
                                       static_cast<int32_t>(text.size()));
}

U32 from_icu(const icu::UnicodeString& text) {
  U32 out;
  for (int32_t i = 0; i < text.length(); i = text.moveIndex32(i, 1)) out.push_back(text.char32At(i));
  return out;
}

const icu::Normalizer2& normalizer(bool compatibility) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n =
      compatibility ? icu::Normalizer2::getNFKCInstance(status) : icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) throw Error(ErrorKind::Runtime, std::string("ICU normalizer: ") + u_errorName(status));
  return *n;
}

// Python's str.isspace, which is also what `\s` and str.strip() use: category Zs or bidi class WS, B or S. It is
// wider than Unicode's White_Space (it includes U+001C..U+001F).
bool py_isspace(char32_t c) {
  const auto dir = u_charDirection(static_cast<UChar32>(c));
  return u_charType(static_cast<UChar32>(c)) == U_SPACE_SEPARATOR || dir == U_WHITE_SPACE_NEUTRAL ||
         dir == U_BLOCK_SEPARATOR || dir == U_SEGMENT_SEPARATOR;
}

bool is_ascii_digit(char32_t c) { return c >= '0' && c <= '9'; }
bool is_ascii_hex(char32_t c) { return is_ascii_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
bool is_ascii_alnum(char32_t c) { return is_ascii_hex(c) || (c >= 'g' && c <= 'z') || (c >= 'G' && c <= 'Z'); }

template <size_t N>
const HtmlEntity* find_entity(const HtmlEntity (&table)[N], std::string_view name) {
  const auto* it = std::lower_bound(std::begin(table), std::end(table), name,
                                    [](const HtmlEntity& e, std::string_view n) { return e.name < n; });
  return it != std::end(table) && it->name == name ? it : nullptr;
}

const HtmlEntity* find_html5(const U32& name) {
  // Entity names are ASCII; anything else cannot match.
  if (std::any_of(name.begin(), name.end(), [](char32_t c) { return c > 0x7f; })) return nullptr;
  return find_entity(kHtml5Entities, std::string(name.begin(), name.end()));
}

U32 numeric_reference(uint32_t code) {
  for (const auto& ref : kInvalidCharRefs) {
    if (ref.code == code) return decode_utf8(ref.value);
  }
  if ((code >= 0xd800 && code <= 0xdfff) || code > 0x10ffff) return U"\ufffd";
  if (std::binary_search(std::begin(kInvalidCodePoints), std::end(kInvalidCodePoints), code)) return U"";
  return U32(1, static_cast<char32_t>(code));
}

// Python's html.unescape: `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)`, numeric references per
// HTML5, named ones by the longest entity name that prefixes the match.
U32 html_unescape(const U32& s) {
  if (s.find(U'&') == U32::npos) return s;
  U32 out;
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (s[i] != U'&') {
      out.push_back(s[i++]);
      continue;
    }
    size_t j = i + 1;
    if (j < n && s[j] == U'#') {
      const bool hex = j + 1 < n && (s[j + 1] == U'x' || s[j + 1] == U'X');
      size_t k = hex ? j + 2 : j + 1;
      const size_t digits_start = k;
      uint32_t code = 0;
      while (k < n && (hex ? is_ascii_hex(s[k]) : is_ascii_digit(s[k]))) {
        const uint32_t digit = is_ascii_digit(s[k]) ? s[k] - U'0' : (s[k] | 0x20) - U'a' + 10;
        code = std::min<uint32_t>(code * (hex ? 16 : 10) + digit, 0x7fffffff / 16);  // saturate past U+10FFFF
        ++k;
      }
      if (k == digits_start) {  // "&#" or "&#x" without digits: no alternative of the regex matches
        out.push_back(s[i++]);
        continue;
      }
      if (k < n && s[k] == U';') ++k;
      out += numeric_reference(code);
      i = k;
      continue;
    }
    size_t k = j;
    static constexpr std::u32string_view kNameStop = U"\t\n\f <&#;";
    while (k < n && k - j < 32 && kNameStop.find(s[k]) == std::u32string_view::npos) ++k;
    if (k == j) {
      out.push_back(s[i++]);
      continue;
    }
    if (k < n && s[k] == U';') ++k;
    const U32 name = s.substr(j, k - j);
    if (const auto* e = find_html5(name)) {
      out += decode_utf8(e->value);
    } else {
      bool found = false;
      for (size_t x = name.size() - 1; x >= 2 && !found; --x) {
        if (const auto* p = find_html5(name.substr(0, x))) {
          out += decode_utf8(p->value) + name.substr(x);
          found = true;
        }
      }
      if (!found) out += U"&" + name;
    }
    i = k;
  }
  return out;
}

// ftfy's unescape_html: only `&#?[0-9A-Za-z]{1,24};`, HTML5 names ending in ';' plus ftfy's all-caps spellings,
// and numeric references only when html.unescape consumes the whole match.
U32 ftfy_unescape(const U32& s) {
  U32 out;
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (s[i] != U'&') {
      out.push_back(s[i++]);
      continue;
    }
    const size_t j = i + 1 < n && s[i + 1] == U'#' ? i + 2 : i + 1;
    size_t k = j;
    while (k < n && is_ascii_alnum(s[k])) ++k;
    if (k == j || k - j > 24 || k >= n || s[k] != U';') {
      out.push_back(s[i++]);
      continue;
    }
    const U32 match = s.substr(i, k + 1 - i);
    const std::string name(match.begin() + 1, match.end());
    if (const auto* e = find_entity(kHtml5Entities, name)) {
      out += decode_utf8(e->value);
    } else if (const auto* u = find_entity(kUppercaseEntities, name)) {
      out += decode_utf8(u->value);
    } else if (match[1] == U'#') {
      const U32 decoded = html_unescape(match);
      out += decoded.find(U';') == U32::npos ? decoded : match;
    } else {
      out += match;
    }
    i = k + 1;
  }
  return out;
}

U32 translate(const U32& s, const std::unordered_map<char32_t, U32>& table) {
  U32 out;
  out.reserve(s.size());
  for (char32_t c : s) {
    const auto it = table.find(c);
    if (it == table.end()) {
      out.push_back(c);
    } else {
      out += it->second;
    }
  }
  return out;
}

// ftfy's fix_latin_ligatures (its own choice of characters: Latin typographic ligatures and the legacy digraphs,
// not æ/œ) and fix_character_width (U+3000 and every halfwidth/fullwidth form that NFKC changes). A ligature
// becomes its one-level compatibility decomposition, which is what ftfy's table holds (ﬅ -> ſt, not st).
const std::unordered_map<char32_t, U32>& ligature_and_width_table() {
  static const std::unordered_map<char32_t, U32> table = [] {
    std::unordered_map<char32_t, U32> t;
    const auto& nfkc = normalizer(true);
    const std::pair<char32_t, char32_t> ligatures[] = {
        {0x0132, 0x0133}, {0x0149, 0x0149}, {0x01c4, 0x01cc}, {0x01f1, 0x01f3}, {0xfb00, 0xfb06}};
    for (const auto& [first, last] : ligatures) {
      for (char32_t c = first; c <= last; ++c) {
        icu::UnicodeString raw;
        if (nfkc.getRawDecomposition(static_cast<UChar32>(c), raw)) t[c] = from_icu(raw);
      }
    }
    t[0x3000] = U" ";
    for (char32_t c = 0xff01; c < 0xfff0; ++c) {
      UErrorCode status = U_ZERO_ERROR;
      const icu::UnicodeString single(static_cast<UChar32>(c));
      const icu::UnicodeString normalized = nfkc.normalize(single, status);
      if (U_SUCCESS(status) && normalized != single) t[c] = from_icu(normalized);
    }
    return t;
  }();
  return table;
}

bool is_removed_control(char32_t c) {
  return c <= 0x08 || c == 0x0b || (c >= 0x0e && c <= 0x1f) || c == 0x7f || (c >= 0x206a && c <= 0x206f) ||
         c == 0xfeff || (c >= 0xfff9 && c <= 0xfffc);
}

// ftfy's per-character fixes, in its order: C1 controls read as Windows-1252, ligatures and widths, curly quotes,
// line breaks, ANSI terminal escapes, control characters, NFC.
U32 fix_characters(const U32& s) {
  U32 text;
  text.reserve(s.size());
  for (char32_t c : s) text.push_back(c >= 0x80 && c <= 0x9f ? kSloppyWindows1252C1[c - 0x80] : c);
  text = translate(text, ligature_and_width_table());
  for (char32_t& c : text) {
    if (c == 0x02bc || (c >= 0x2018 && c <= 0x201b)) {
      c = U'\'';
    } else if (c >= 0x201c && c <= 0x201f) {
      c = U'"';
    }
  }
  U32 lines;
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == U'\r' && i + 1 < text.size() && text[i + 1] == U'\n') continue;
    lines.push_back(c == U'\r' || c == 0x2028 || c == 0x2029 || c == 0x85 ? U'\n' : c);
  }
  // `\x1b\[((?:\d|;)*)([a-zA-Z])`, where Python's \d is any decimal digit (Nd).
  U32 plain;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i] == 0x1b && i + 1 < lines.size() && lines[i + 1] == U'[') {
      size_t k = i + 2;
      while (k < lines.size() &&
             (lines[k] == U';' || u_charType(static_cast<UChar32>(lines[k])) == U_DECIMAL_DIGIT_NUMBER)) {
        ++k;
      }
      if (k < lines.size() && (lines[k] | 0x20) >= U'a' && (lines[k] | 0x20) <= U'z') {
        i = k;
        continue;
      }
    }
    if (!is_removed_control(lines[i])) plain.push_back(lines[i]);
  }
  UErrorCode status = U_ZERO_ERROR;
  const icu::UnicodeString nfc = normalizer(false).normalize(to_icu(plain), status);
  if (U_FAILURE(status)) throw Error(ErrorKind::Runtime, std::string("ICU NFC: ") + u_errorName(status));
  return from_icu(nfc);
}

// The byte that `c` was decoded from if it came from "sloppy" Windows-1252: Windows-1252 for 0x80..0x9F, with its
// five undefined bytes (and any other C1 control, as Latin-1 reads them) standing for themselves, and Latin-1
// elsewhere. -1 when no single byte decodes to `c`.
int sloppy_1252_byte(char32_t c) {
  if (c <= 0xff) return static_cast<int>(c);
  for (int i = 0; i < 32; ++i) {
    if (kSloppyWindows1252C1[i] == c) return 0x80 + i;
  }
  return -1;
}

// How many bytes a UTF-8 sequence starting with `lead` has; 0 for anything that cannot start a multi-byte one.
size_t utf8_sequence_length(int lead) {
  if (lead >= 0xc2 && lead <= 0xdf) return 2;
  if (lead >= 0xe0 && lead <= 0xef) return 3;
  if (lead >= 0xf0 && lead <= 0xf4) return 4;
  return 0;
}

// Marks that end a word or quotation. An accented capital or ß directly before one of them ("CAFÉ»", "Fuß…") is
// ordinary Latin-1 text far more often than it is the mojibake of one code point from U+0100..U+07FF.
bool is_word_closing_byte(int b) {
  switch (b) {
    case 0x85: case 0x91: case 0x92: case 0x93: case 0x94: case 0x96: case 0x97:  // … ‘ ’ “ ” – —
    case 0x8b: case 0x9b: case 0xab: case 0xbb: case 0xa0: case 0xb7:             // ‹ › « » NBSP ·
      return true;
    default:
      return false;
  }
}

// Text that was UTF-8 but got decoded as Windows-1252 or Latin-1 somewhere upstream ("cafÃ©", "â€œquotedâ€\x9d",
// "ðŸ¦‹") is still common in scraped prompts, and CLIP was trained on what ftfy.fix_text made of it; reproducing
// ftfy's repair keeps those prompts' ids (and images) the same as the Python pipeline's. The repair is local on
// purpose: real emoji, CJK and correct accented words often share a line with the mojibake, so instead of
// re-decoding whole lines we re-decode only runs of characters that map back to bytes forming one complete,
// well-formed multi-byte UTF-8 sequence (no overlongs or surrogates, as ICU's U8_NEXT checks) of an assigned
// code point. Correct Latin-1 text almost never does that: its accented letters are followed by ASCII. The one
// common exception, an accented capital or ß before closing punctuation, is left alone unless a neighbouring
// sequence is mojibake too. Repeats until stable, which undoes mojibake of mojibake ("Ã¢â‚¬â„¢" -> "’").
U32 repair_mojibake(U32 text) {
  struct Sequence {
    size_t begin;
    size_t length;
    char32_t decoded;
    bool needs_neighbour;
  };
  while (true) {
    std::vector<Sequence> found;
    for (size_t i = 0; i < text.size(); ++i) {
      const int lead = sloppy_1252_byte(text[i]);
      const size_t length = utf8_sequence_length(lead);
      if (length == 0 || i + length > text.size()) continue;
      uint8_t bytes[4];
      bool encodable = true;
      for (size_t k = 0; k < length && encodable; ++k) {
        const int b = sloppy_1252_byte(text[i + k]);
        encodable = b >= 0;
        bytes[k] = static_cast<uint8_t>(b);
      }
      if (!encodable) continue;
      int32_t consumed = 0;
      UChar32 c;
      U8_NEXT(bytes, consumed, static_cast<int32_t>(length), c);
      if (c < 0 || consumed != static_cast<int32_t>(length) || u_charType(c) == U_UNASSIGNED) continue;
      const bool needs_neighbour = length == 2 && lead >= 0xc4 && is_word_closing_byte(bytes[1]);
      found.push_back({i, length, static_cast<char32_t>(c), needs_neighbour});
      i += length - 1;
    }
    U32 out;
    size_t pos = 0;
    bool repaired = false;
    for (size_t s = 0; s < found.size(); ++s) {
      const Sequence& seq = found[s];
      const bool after_one = s > 0 && found[s - 1].begin + found[s - 1].length == seq.begin;
      const bool before_one = s + 1 < found.size() && found[s + 1].begin == seq.begin + seq.length;
      if (seq.needs_neighbour && !after_one && !before_one) continue;
      out.append(text, pos, seq.begin - pos);
      out.push_back(seq.decoded);
      pos = seq.begin + seq.length;
      repaired = true;
    }
    if (!repaired) return text;
    out.append(text, pos, U32::npos);
    text = std::move(out);
  }
}

// ftfy.fix_and_explain on one segment: repeat the fixes until the text stops changing. Mojibake is repaired
// before the character fixes, which would otherwise turn its C1 controls and curly quotes into other characters.
U32 fix_segment(U32 text, bool unescape_html) {
  while (true) {
    const U32 before = text;
    if (unescape_html) text = ftfy_unescape(text);
    text = repair_mojibake(std::move(text));
    text = fix_characters(text);
    if (text == before) return text;
  }
}

// ftfy.fix_text: line by line (lines keep their '\n'; ftfy also cuts lines longer than a million code points),
// and HTML unescaping switches off for good at the first line that contains '<', as it is probably HTML.
U32 ftfy_fix_text(const U32& text) {
  constexpr size_t kMaxSegment = 1'000'000;
  U32 out;
  bool unescape_html = true;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t newline = text.find(U'\n', pos);
    size_t end = newline == U32::npos ? text.size() : newline + 1;
    end = std::min(end, pos + kMaxSegment);
    const U32 segment = text.substr(pos, end - pos);
    if (segment.find(U'<') != U32::npos) unescape_html = false;
    out += fix_segment(segment, unescape_html);
    pos = end;
  }
  return out;
}

U32 collapse_whitespace(const U32& text) {
  U32 out;
  bool in_space = false;
  for (char32_t c : text) {
    if (py_isspace(c)) {
      in_space = true;
      continue;
    }
    if (in_space && !out.empty()) out.push_back(U' ');
    in_space = false;
    out.push_back(c);
  }
  return out;
}

}  // namespace

std::string clean_text(std::string_view utf8) {
  if (const auto bad = invalid_utf8_at(utf8)) {
    const auto byte = static_cast<unsigned char>(utf8[*bad]);
    throw Error(ErrorKind::Usage,
                "prompt is not valid UTF-8 (bad byte 0x" + std::string(1, "0123456789abcdef"[byte >> 4]) +
                    std::string(1, "0123456789abcdef"[byte & 15]) + " at byte offset " + std::to_string(*bad) + ")");
  }
  U32 text = ftfy_fix_text(decode_utf8(utf8));
  text = html_unescape(html_unescape(text));
  text = collapse_whitespace(text);  // also does both of CLIP's strips
  // Root locale: Python's str.lower applies the unconditional full mappings and Final_Sigma, nothing
  // language-specific.
  icu::UnicodeString lower = to_icu(text);
  lower.toLower(icu::Locale::getRoot());
  std::string out;
  lower.toUTF8String(out);
  return out;
}

}  // namespace txt2img
