// Pillow's antialiasing bicubic resampler for 8-bit images, reimplemented so that the safety checker sees exactly
// the pixels the reference (Pillow 9.4 Image.resize(size, Image.BICUBIC), used by transformers'
// CLIPImageProcessor) gives it. Bit-exact with Pillow 9.4 on the sizes tested in tests/cpp/safety_test.cpp.
//
// Pillow's algorithm, as implemented here:
//  * separable: a horizontal pass (only if the width changes) into an intermediate 8-bit image, then a vertical
//    pass (only if the height changes); each pass rounds and clamps to 0..255, so the intermediate is uint8;
//  * per output sample a window of source samples: scale = in/out, the filter is stretched by max(scale, 1)
//    (antialiasing when shrinking), window = [center - support, center + support] rounded, clipped to the image;
//  * weights are the bicubic kernel (a = -0.5) at the stretched distances, divided by their sum, then converted
//    to fixed point with 22 fractional bits (rounded away from zero) and accumulated in 32-bit integers starting
//    from one half (round to nearest).
// The floating-point expressions keep Pillow's evaluation order so that the double weights, and therefore their
// fixed-point images, are the same bits.
#include "image_resize.hpp"

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "txt2img/error.hpp"

namespace txt2img {
namespace {

// Pillow's choice for 8-bit images: 32 bits minus 8 for the sample minus 2 of headroom for the filter's
// negative lobes (weight sums of the positive part exceed 1). With it the int32 accumulator cannot overflow:
// normalised bicubic weights have sum |w| < 2, and 255 * 2 * 2^22 < 2^31.
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr double kBicubicSupport = 2.0;

double bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Fixed-point weights of a 1-D resampling from in_size to out_size samples (Pillow's box = whole image).
struct Taps {
  int width = 0;                // coefficients stored per output sample
  std::vector<int> first;       // first source index per output sample
  std::vector<int> count;       // number of source samples used
  std::vector<int32_t> weight;  // out_size * width fixed-point weights
};

Taps compute_taps(int in_size, int out_size) {
  // Pillow takes the box edges as float and the scale as double; exact for any realistic size.
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = kBicubicSupport * filterscale;

  Taps taps;
  taps.width = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  taps.weight.assign(static_cast<size_t>(out_size) * taps.width, 0);
  std::vector<double> w(taps.width);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // (int) truncates, as in C; negative starts are clamped to 0 right after, so truncation equals rounding.
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double sum = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[x] = bicubic((x + xmin - center + 0.5) * ss);
      sum += w[x];
    }
    int32_t* out = &taps.weight[static_cast<size_t>(xx) * taps.width];
    for (int x = 0; x < xmax; ++x) {
      const double v = sum != 0.0 ? w[x] / sum : w[x];
      // Round half away from zero, then truncate: Pillow's conversion to fixed point.
      out[x] = v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                     : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    taps.first[xx] = xmin;
    taps.count[xx] = xmax;
  }
  return taps;
}

uint8_t clip8(int32_t acc) {
  if (acc < 0) return 0;
  const int32_t v = acc >> kPrecisionBits;
  return static_cast<uint8_t>(v > 255 ? 255 : v);
}

// One pass along an axis of an HWC uint8 image. `outer` lines of `n_in` samples, sample stride `step` (in
// elements), line stride `line_in` / `line_out`, `channels` interleaved channels per sample.
void resample_axis(const uint8_t* in, uint8_t* out, const Taps& taps, int out_size, int outer, int64_t line_in,
                   int64_t line_out, int64_t step, int channels) {
  constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);
  for (int o = 0; o < outer; ++o) {
    const uint8_t* src = in + o * line_in;
    uint8_t* dst = out + o * line_out;
    for (int xx = 0; xx < out_size; ++xx) {
      const int32_t* k = &taps.weight[static_cast<size_t>(xx) * taps.width];
      const uint8_t* s = src + taps.first[xx] * step;
      for (int c = 0; c < channels; ++c) {
        int32_t acc = kHalf;
        for (int x = 0; x < taps.count[xx]; ++x) acc += static_cast<int32_t>(s[x * step + c]) * k[x];
        dst[xx * step + c] = clip8(acc);
      }
    }
  }
}

}  // namespace

torch::Tensor resize_bicubic_like_pillow(const torch::Tensor& hwc_uint8, int out_height, int out_width) {
  if (hwc_uint8.dim() != 3 || hwc_uint8.scalar_type() != torch::kUInt8 ||
      (hwc_uint8.size(2) != 1 && hwc_uint8.size(2) != 3)) {
    // Pillow premultiplies alpha for RGBA/LA, so only L and RGB images resample channel by channel like this.
    throw Error(ErrorKind::Runtime, "resize_bicubic_like_pillow expects a uint8 HWC image with 1 or 3 channels");
  }
  if (out_height < 1 || out_width < 1 || hwc_uint8.size(0) < 1 || hwc_uint8.size(1) < 1) {
    throw Error(ErrorKind::Runtime, "resize_bicubic_like_pillow: image sizes must be positive, got " +
                                        std::to_string(hwc_uint8.size(0)) + "x" + std::to_string(hwc_uint8.size(1)) +
                                        " -> " + std::to_string(out_height) + "x" + std::to_string(out_width));
  }
  torch::Tensor image = hwc_uint8.to(torch::kCPU).contiguous();
  const int in_h = static_cast<int>(image.size(0));
  const int in_w = static_cast<int>(image.size(1));
  const int channels = static_cast<int>(image.size(2));

  // Like Pillow, a pass runs only for an axis whose size changes (an unchanged axis is not filtered at all).
  if (out_width != in_w) {
    torch::Tensor tmp = torch::empty({in_h, out_width, channels}, torch::kUInt8);
    resample_axis(image.data_ptr<uint8_t>(), tmp.data_ptr<uint8_t>(), compute_taps(in_w, out_width), out_width, in_h,
                  static_cast<int64_t>(in_w) * channels, static_cast<int64_t>(out_width) * channels, channels,
                  channels);
    image = tmp;
  }
  if (out_height != in_h) {
    const int width = static_cast<int>(image.size(1));
    torch::Tensor tmp = torch::empty({out_height, width, channels}, torch::kUInt8);
    // Vertical pass: each (column, channel) is a line; its samples are a row apart.
    resample_axis(image.data_ptr<uint8_t>(), tmp.data_ptr<uint8_t>(), compute_taps(in_h, out_height), out_height,
                  1, 0, 0, static_cast<int64_t>(width) * channels, width * channels);
    image = tmp;
  }
  // With no pass to run the result is a copy (Pillow's too), never the caller's tensor itself.
  return image.is_same(hwc_uint8) ? image.clone() : image;
}

}  // namespace txt2img
