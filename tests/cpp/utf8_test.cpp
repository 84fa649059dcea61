#include "txt2img/utf8.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

TEST(Utf8, InvalidUtf8At) {
  // Valid: ASCII, 2- to 4-byte sequences, the last code point.
  for (const std::string good : {"", "a cat", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x90\x88", "\xf4\x8f\xbf\xbf"})
    EXPECT_EQ(txt2img::invalid_utf8_at(good), std::nullopt) << good;
  // A stray continuation byte, an overlong form, a surrogate, past U+10FFFF, a truncated sequence, a bad lead byte.
  for (const auto& [bad, at] : std::vector<std::pair<std::string, size_t>>{{"ab\x80", 2},
                                                                           {"\xc0\xaf", 0},
                                                                           {"a\xed\xa0\x80", 1},
                                                                           {"\xf4\x90\x80\x80", 0},
                                                                           {"caf\xc3\xa9 \xe2\x82", 6},
                                                                           {"x\xffy", 1}})
    EXPECT_EQ(txt2img::invalid_utf8_at(bad), std::optional<size_t>(at)) << at;
}

// ICU indexes with int32_t: a text past 2 GiB (a prompt file read whole) is still checked to its end.
TEST(Utf8, TextsPast2GiB) {
  std::string text(size_t{1} << 31, 'a');
  text += "caf\xc3\xa9";
  EXPECT_EQ(txt2img::invalid_utf8_at(text), std::nullopt);
  text += "\xff";
  EXPECT_EQ(txt2img::invalid_utf8_at(text), std::optional<size_t>((size_t{1} << 31) + 5));
}
