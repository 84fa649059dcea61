// Generation settings that every image of one batch shares (kept free of torch headers so that command-line code
// can plan runs without them).
#pragma once

#include <string>

namespace txt2img {

struct GenerationParams {
  int width = 0;  // 0: the bundle's default size
  int height = 0;
  int steps = 50;
  double cfg_scale = 7.5;
  std::string sampler = "ddim";
  double eta = 0.0;

  bool operator==(const GenerationParams& o) const {
    return width == o.width && height == o.height && steps == o.steps && cfg_scale == o.cfg_scale &&
           sampler == o.sampler && eta == o.eta;
  }
  bool operator!=(const GenerationParams& o) const { return !(*this == o); }
};

}  // namespace txt2img
