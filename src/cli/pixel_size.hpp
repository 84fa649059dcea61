// Image sizes as the command line and prompt files give them: "WxH" in pixels.
#pragma once

#include <string>
#include <utility>

namespace txt2img::cli {

// `text` ("512x768") as {width, height}, each side from `smallest` to kMaxImageSide (with `smallest` 0, a side 0 but
// not both: a hires resize's side in the first pass's proportions); {0, 0} for an empty text. Throws Error(Usage)
// naming `what` (a flag, or a prompt file's line and key) otherwise.
std::pair<int, int> pixel_size(const std::string& what, const std::string& text, int smallest);

}  // namespace txt2img::cli
