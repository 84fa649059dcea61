#include "cli/pixel_size.hpp"

#include <charconv>

#include "txt2img/error.hpp"
#include "txt2img/params.hpp"

namespace txt2img::cli {

std::pair<int, int> pixel_size(const std::string& what, const std::string& text, int smallest) {
  if (text.empty()) return {0, 0};
  int sides[2] = {0, 0};
  const char* at = text.data();
  const char* end = text.data() + text.size();
  for (int k = 0; k < 2; ++k) {
    const auto [next, error] = std::from_chars(at, end, sides[k]);
    const bool fits = error == std::errc() && sides[k] >= smallest && sides[k] <= kMaxImageSide &&
                      (k == 0 || sides[0] != 0 || sides[1] != 0);
    if (!fits || (k == 0 && (next == end || *next != 'x')) || (k == 1 && next != end))
      throw Error(ErrorKind::Usage, what + " \"" + text + "\" must be WxH in pixels, each side from " +
                                        std::to_string(smallest) + " to " + std::to_string(kMaxImageSide) +
                                        (smallest == 0 ? " (0: in the first pass's proportions; not both)" : "") +
                                        " (e.g. 512x768)");
    at = next + 1;
  }
  return {sides[0], sides[1]};
}

}  // namespace txt2img::cli
