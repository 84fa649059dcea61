#include "python_text.hpp"

#include <unicode/uchar.h>
#include <unicode/utf8.h>

namespace txt2img::python_text {
namespace {

// \w: letters, numbers of every kind, and "_".
bool is_word_character(UChar32 c) {
  const auto type = u_charType(c);
  return c == '_' || u_isalpha(c) || type == U_DECIMAL_DIGIT_NUMBER || type == U_LETTER_NUMBER ||
         type == U_OTHER_NUMBER;
}

// \s (str.isspace): Unicode's white space and the separators U+001C to U+001F.
bool is_space(UChar32 c) { return (c >= 0x1c && c <= 0x1f) || u_isUWhiteSpace(c); }

const uint8_t* bytes(std::string_view text) { return reinterpret_cast<const uint8_t*>(text.data()); }

}  // namespace

size_t blanks_before(std::string_view text, size_t end) {
  auto i = static_cast<int32_t>(end);
  while (i > 0) {
    int32_t previous = i;
    UChar32 c;
    U8_PREV(bytes(text), 0, previous, c);
    if (!is_space(c)) break;
    i = previous;
  }
  return static_cast<size_t>(i);
}

size_t blanks_after(std::string_view text, size_t begin) {
  const auto length = static_cast<int32_t>(text.size());
  auto i = static_cast<int32_t>(begin);
  while (i < length) {
    int32_t next = i;
    UChar32 c;
    U8_NEXT(bytes(text), next, length, c);
    if (!is_space(c)) break;
    i = next;
  }
  return static_cast<size_t>(i);
}

size_t dots_and_digits(std::string_view text, size_t begin, std::string* ascii) {
  const auto length = static_cast<int32_t>(text.size());
  auto i = static_cast<int32_t>(begin);
  ascii->clear();
  while (i < length) {
    int32_t next = i;
    UChar32 c;
    U8_NEXT(bytes(text), next, length, c);
    if (c == '.')
      ascii->push_back('.');
    else if (u_charType(c) == U_DECIMAL_DIGIT_NUMBER)
      ascii->push_back(static_cast<char>('0' + u_charDigitValue(c)));
    else
      break;
    i = next;
  }
  return static_cast<size_t>(i);
}

bool whole_word_at(std::string_view text, size_t at, size_t length) {
  const auto size = static_cast<int32_t>(text.size());
  if (at > 0) {
    auto i = static_cast<int32_t>(at);
    UChar32 before;
    U8_PREV(bytes(text), 0, i, before);
    if (is_word_character(before)) return false;
  }
  if (at + length < text.size()) {
    auto j = static_cast<int32_t>(at + length);
    UChar32 after;
    U8_NEXT(bytes(text), j, size, after);
    if (is_word_character(after)) return false;
  }
  return true;
}

}  // namespace txt2img::python_text
