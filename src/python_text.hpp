// Python's character classes for a str (Unicode-aware \w and \s), for reading A1111's regular expressions over
// UTF-8 text as Python applies them.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace txt2img::python_text {

// Where the blanks (\s) that end text[0, end) begin, and where those that start text[begin, ...) end (byte offsets).
size_t blanks_before(std::string_view text, size_t end);
size_t blanks_after(std::string_view text, size_t begin);

// Where the run of '.' and decimal digits (\d: any script's, as "１.５") that starts at text[begin] ends; `ascii` gets
// the run as float() reads it, each digit by its value in ASCII ("1.5").
size_t dots_and_digits(std::string_view text, size_t begin, std::string* ascii);

// Whether text[at, at + length), which starts and ends with word characters, is a whole word as `\b...\b` sees it:
// no word character (\w) just before or just after.
bool whole_word_at(std::string_view text, size_t at, size_t length);

}  // namespace txt2img::python_text
