// CLIP's text handling before the BPE (text_clean.cpp, tokenizer.cpp), apart for its golden tests.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace txt2img {

// CLIP's cleaning (ftfy.fix_text's fixes for valid UTF-8 input, including its repair of UTF-8 that was read as
// Windows-1252 or Latin-1; html.unescape twice, strip, whitespace collapse, Unicode lowercase). Throws Error(Usage)
// on invalid UTF-8.
std::string clean_text(std::string_view utf8);

// CLIP's pre-token regex over cleaned text; with `spaced`, whether blanks came before each (false for the first).
std::vector<std::string> pre_tokenize(const std::string& cleaned, std::vector<bool>* spaced = nullptr);

}  // namespace txt2img
