// PNG output with text metadata, written atomically (temporary file in the same directory, then rename).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace txt2img {

// Key/value text chunks (iTXt, UTF-8), e.g. {"parameters", "<A1111 text>"}.
using PngText = std::vector<std::pair<std::string, std::string>>;

// Encodes 8-bit RGB to PNG bytes with the text chunks placed before the image data.
std::vector<uint8_t> encode_png(const uint8_t* rgb, int width, int height, const PngText& text);

// Writes bytes to `file` through a temporary file and a rename, so that `file` is either absent or complete.
// Throws Error(Io) (the temporary file removed) on any failure, e.g. a full disk.
void write_file_atomic(const std::filesystem::path& file, const std::vector<uint8_t>& bytes);

struct DecodedPng {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
  PngText text;
};

// Reads pixels (as RGB) and every tEXt, zTXt and iTXt chunk (compressed ones inflated), as UTF-8 (tEXt's and zTXt's
// Latin-1 converted). Throws Error(Io).
DecodedPng read_png(const std::filesystem::path& file);

// Reads only the text chunks (as read_png does), skipping over the rest of the file. Throws Error(Io) for a file
// that cannot be read or does not start as a PNG.
PngText read_png_text(const std::filesystem::path& file);

}  // namespace txt2img
