// Names listed in a message: "a, b, c", or as a sentence lists them, "a, b and c".
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace txt2img {

// `last` (default: `separator`) goes before the final name.
inline std::string join(const std::vector<std::string>& names, std::string_view separator = ", ",
                        std::string_view last = {}) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() && !last.empty() ? last : separator;
    out += names[i];
  }
  return out;
}

}  // namespace txt2img
