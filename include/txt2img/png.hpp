// PNG output with text metadata, written atomically (temporary file in the same directory, then rename).
#pragma once

#include <cstdint>
#include <filesystem>
#include <istream>
#include <string>
#include <utility>
#include <vector>

namespace txt2img {

// Key/value text chunks (iTXt, UTF-8), e.g. {"parameters", "<A1111 text>"}.
using PngText = std::vector<std::pair<std::string, std::string>>;

// Encodes 8-bit RGB to PNG bytes with the text chunks placed before the image data. Throws Error(Usage) for a side
// below 1 and a key PNG does not allow (1 to 79 printable ASCII characters, no leading, trailing or double space).
std::vector<uint8_t> encode_png(const uint8_t* rgb, int width, int height, const PngText& text);

// Writes bytes to `file` through a temporary file and a rename, so that `file` is either absent or complete, and
// syncs it and its directory entry to the disk. Without `replace` a file of that name (made meanwhile by another
// program) is left as it is. Throws Error(Io) (the temporary file removed) on any failure, e.g. a full disk.
void write_file_atomic(const std::filesystem::path& file, const std::vector<uint8_t>& bytes, bool replace = true);

struct PngInfo {
  int64_t width = 0;
  int64_t height = 0;
  PngText text;
  std::vector<std::string> unread;  // the text chunks that could not be read, and why ("zTXt chunk "k": ...")
};

// Reads the size and every tEXt, zTXt and iTXt chunk (compressed ones inflated, 64 MiB in all at most), as UTF-8
// (tEXt's and zTXt's Latin-1 converted; an iTXt that is not UTF-8 is unread), skipping over the image data, which
// is neither kept nor decoded. Throws Error(Io) for a file that cannot be read, is no PNG, has a chunk that fails
// its CRC, or ends before its IEND.
PngInfo read_png_info(const std::filesystem::path& file);
// The same from a stream read to the PNG's end (a pipe: no seeking); errors name it `name` ("<stdin>").
PngInfo read_png_info(std::istream& in, const std::string& name);

}  // namespace txt2img
