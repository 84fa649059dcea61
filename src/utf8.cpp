#include "txt2img/utf8.hpp"

#include <unicode/utf8.h>

#include <algorithm>
#include <cstdint>

namespace txt2img {

std::optional<size_t> invalid_utf8_at(std::string_view text) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  // ICU indexes with int32_t: each sequence is read from a window of its 4 bytes at most, so that any length works.
  for (size_t at = 0; at < text.size();) {
    const auto window = static_cast<int32_t>(std::min<size_t>(text.size() - at, 4));
    int32_t length = 0;
    UChar32 c;
    U8_NEXT(bytes + at, length, window, c);  // rejects what Python's strict decoder rejects
    if (c < 0) return at;
    at += static_cast<size_t>(length);
  }
  return std::nullopt;
}

}  // namespace txt2img
