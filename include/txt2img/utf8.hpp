// UTF-8 validity as Python's strict decoder judges it, for every layer that takes text from outside: prompts,
// prompt files, PNG text chunks.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace txt2img {

// The byte offset where `text` stops being UTF-8 (a stray or truncated sequence, an overlong form, a UTF-16
// surrogate, past U+10FFFF), if it does.
std::optional<size_t> invalid_utf8_at(std::string_view text);

}  // namespace txt2img
