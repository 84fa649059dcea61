#include "txt2img/png.hpp"

#include <fcntl.h>
#include <stb/stb_image_write.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <variant>

#include "txt2img/error.hpp"
#include "txt2img/utf8.hpp"

namespace txt2img {
namespace {

const uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
constexpr size_t kSignatureBytes = sizeof kPngSignature;
constexpr size_t kIhdrEnd = kSignatureBytes + 4 + 4 + 13 + 4;  // length, type, IHDR data, crc

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}

uint32_t get_u32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::vector<uint8_t> chunk(const std::string& type, const std::string& data) {
  std::vector<uint8_t> out;
  put_u32(out, static_cast<uint32_t>(data.size()));
  out.insert(out.end(), type.begin(), type.end());
  out.insert(out.end(), data.begin(), data.end());
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, out.data() + 4, static_cast<uInt>(out.size() - 4));
  put_u32(out, static_cast<uint32_t>(crc));
  return out;
}

bool is_ascii(const std::string& s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

// tEXt is Latin-1 only; readers such as A1111's PNG info accept either, so ASCII text stays in the simplest chunk.
std::vector<uint8_t> text_chunk(const std::string& key, const std::string& value) {
  if (is_ascii(value)) return chunk("tEXt", key + '\0' + value);
  // keyword, null, compression flag 0, method 0, empty language tag, null, empty translated keyword, null, text
  return chunk("iTXt", key + std::string("\0\0\0\0\0", 5) + value);
}

void append_bytes(void* context, void* data, int size) {
  auto* out = static_cast<std::vector<uint8_t>*>(context);
  auto* bytes = static_cast<uint8_t*>(data);
  out->insert(out->end(), bytes, bytes + size);
}

std::string describe_errno() { return std::strerror(errno); }

// Latin-1 bytes as UTF-8: tEXt's encoding, in which Pillow (and so A1111) writes any text Latin-1 can hold
// ("café", "naïve"), keeping iTXt for the rest.
std::string latin1_to_utf8(const std::string& latin1) {
  std::string out;
  for (const char c : latin1) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x80) {
      out += c;
    } else {
      out += static_cast<char>(0xc0 | (byte >> 6));
      out += static_cast<char>(0x80 | (byte & 0x3f));
    }
  }
  return out;
}

// The zlib stream `compressed` inflated, or why not: it is damaged, or would pass `budget` bytes, which it then
// takes all of.
std::variant<std::string, const char*> inflated(const std::string& compressed, size_t& budget) {
  z_stream stream{};
  if (inflateInit(&stream) != Z_OK) return "zlib failed to start";
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  stream.avail_in = static_cast<uInt>(compressed.size());
  std::string out;
  char buffer[16384];
  int status = Z_OK;
  while (status == Z_OK && out.size() <= budget) {
    stream.next_out = reinterpret_cast<Bytef*>(buffer);
    stream.avail_out = sizeof buffer;
    status = inflate(&stream, Z_NO_FLUSH);
    out.append(buffer, sizeof buffer - stream.avail_out);
    if (status == Z_BUF_ERROR && stream.avail_in == 0) break;  // truncated
  }
  inflateEnd(&stream);
  if (out.size() > budget) {
    budget = 0;
    return "past the 64 MiB of text a file's compressed chunks may unpack to";
  }
  budget -= out.size();  // a damaged stream's too: the work was done
  if (status != Z_STREAM_END) return "damaged compressed text";
  return out;
}

bool is_text_chunk(const std::string& type) { return type == "tEXt" || type == "zTXt" || type == "iTXt"; }

// Appends the key and text (UTF-8) of a tEXt, zTXt or iTXt chunk (compressed or not, as tools that optimise PNGs
// rewrite them) to `info`'s text, or where it cannot be read, why to its unread. Compressed text inflates within
// `budget` (no text chunk of generation parameters comes near; deliberately huge ones must not exhaust memory).
void add_text_chunk(const std::string& type, const std::string& data, size_t& budget, PngInfo& info) {
  const auto key_end = data.find('\0');
  if (key_end == std::string::npos) return info.unread.push_back(type + " chunk without a keyword");
  const std::string key = latin1_to_utf8(data.substr(0, key_end));
  const auto add = [&](std::variant<std::string, const char*> value, bool latin1) {
    if (const auto* why = std::get_if<const char*>(&value))
      return info.unread.push_back(type + " chunk \"" + key + "\": " + *why);
    auto& text = std::get<std::string>(value);
    // iTXt is UTF-8 by definition; Pillow (and so A1111) passes over one that is not.
    if (!latin1 && invalid_utf8_at(text))
      return info.unread.push_back(type + " chunk \"" + key + "\": not valid UTF-8");
    info.text.emplace_back(key, latin1 ? latin1_to_utf8(text) : std::move(text));
  };
  if (type == "tEXt") {
    add(data.substr(key_end + 1), true);
  } else if (type == "zTXt") {
    if (key_end + 1 >= data.size()) return add("cut short", false);
    if (data[key_end + 1] != 0) return add("an unknown compression method", false);  // 0, zlib, is the only one
    add(inflated(data.substr(key_end + 2), budget), true);
  } else if (type == "iTXt") {
    // The compression flag and method, then the language tag and translated keyword (both null-terminated).
    const auto lang_end = key_end + 3 <= data.size() ? data.find('\0', key_end + 3) : std::string::npos;
    const auto translated_end = lang_end == std::string::npos ? lang_end : data.find('\0', lang_end + 1);
    if (translated_end == std::string::npos) return add("cut short", false);
    if (data[key_end + 1] != 0 && data[key_end + 1] != 1) return add("a compression flag other than 0 or 1", false);
    const bool compressed = data[key_end + 1] == 1;
    if (compressed && data[key_end + 2] != 0) return add("an unknown compression method", false);
    const std::string value = data.substr(translated_end + 1);
    add(compressed ? inflated(value, budget) : value, false);
  }
}

// Reads `n` bytes into `out` (skips them where it is null) in blocks, so that a length field is never trusted for an
// allocation, and folds them into `crc`; false where the stream ends first.
bool read_exactly(std::istream& in, uint64_t n, std::string* out, uLong& crc) {
  char buffer[1 << 16];
  while (n > 0) {
    const auto block = static_cast<std::streamsize>(std::min<uint64_t>(n, sizeof buffer));
    if (!in.read(buffer, block)) return false;
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buffer), static_cast<uInt>(block));
    if (out) out->append(buffer, static_cast<size_t>(block));
    n -= static_cast<uint64_t>(block);
  }
  return true;
}

}  // namespace

std::vector<uint8_t> encode_png(const uint8_t* rgb, int width, int height, const PngText& text) {
  if (width < 1 || height < 1)
    throw Error(ErrorKind::Usage, "a PNG of " + std::to_string(width) + "x" + std::to_string(height) + " pixels");
  // PNG's keywords are 1 to 79 printable Latin-1 characters; ours, ASCII ones. A NUL would end the key early and
  // make the rest of it part of the value.
  for (const auto& [key, value] : text) {
    const bool printable = std::all_of(key.begin(), key.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
    if (key.empty() || key.size() > 79 || !printable || key.front() == ' ' || key.back() == ' ' ||
        key.find("  ") != std::string::npos)
      throw Error(ErrorKind::Usage, "PNG text key \"" + key +
                                        "\": keys are 1 to 79 printable ASCII characters without leading, trailing "
                                        "or double spaces");
  }
  std::vector<uint8_t> png;
  if (!stbi_write_png_to_func(append_bytes, &png, width, height, 3, rgb, width * 3) || png.size() < kIhdrEnd)
    throw Error(ErrorKind::Runtime, "PNG encoding failed");
  std::vector<uint8_t> chunks;
  for (const auto& [key, value] : text) {
    auto c = text_chunk(key, value);
    chunks.insert(chunks.end(), c.begin(), c.end());
  }
  png.insert(png.begin() + kIhdrEnd, chunks.begin(), chunks.end());
  return png;
}

namespace {

// Puts the finished temporary file in place as `file`; returns 0 or an errno value. Without `replace`, the kernel
// refuses a name that exists by then (EEXIST): a check beforehand would leave a window in which another writer's file
// is replaced. File systems without RENAME_NOREPLACE get a hard link instead, and those without hard links (FAT) the
// check and the window.
int put_in_place(const std::filesystem::path& tmp, const std::filesystem::path& file, bool replace) {
  if (!replace) {
    if (renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, file.c_str(), RENAME_NOREPLACE) == 0) return 0;
    if (errno != EINVAL && errno != ENOSYS) return errno;
    if (link(tmp.c_str(), file.c_str()) == 0) {
      unlink(tmp.c_str());
      return 0;
    }
    if (errno != EPERM && errno != EOPNOTSUPP && errno != ENOSYS) return errno;
    std::error_code ec;
    const auto type = std::filesystem::symlink_status(file, ec).type();
    if (type != std::filesystem::file_type::not_found) return ec ? ec.value() : EEXIST;
  }
  return std::rename(tmp.c_str(), file.c_str()) == 0 ? 0 : errno;
}

// After a rename, the directory entry reaches the disk only with the directory: an image reported as written must
// survive a power cut. Returns 0 or an errno value; a file system that cannot sync a directory (EINVAL) has nothing
// to do.
int sync_directory(const std::filesystem::path& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return 0;  // a directory it may write to but not read: nothing to sync through
  const int failure = fsync(fd) == 0 || errno == EINVAL ? 0 : errno;
  close(fd);
  return failure;
}

}  // namespace

void write_file_atomic(const std::filesystem::path& file, const std::vector<uint8_t>& bytes, bool replace) {
  const auto dir = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
  // A name of its own length, not the file's plus a suffix: a file name the file system just takes must not fail
  // here. O_EXCL keeps two writers in one directory off each other's temporary file.
  std::random_device rd;
  std::filesystem::path tmp;
  int fd = -1;
  for (int attempt = 0; fd < 0 && attempt < 100; ++attempt) {
    char name[32];
    std::snprintf(name, sizeof name, ".txt2img-%08x.tmp", static_cast<unsigned>(rd()));
    tmp = dir / name;
    fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  FILE* f = fd < 0 ? nullptr : fdopen(fd, "wb");
  if (!f) {
    const std::string error = describe_errno();
    if (fd >= 0) {
      close(fd);
      unlink(tmp.c_str());
    }
    throw Error(ErrorKind::Io, "cannot write " + file.string() + ": " + error);
  }
  const bool written = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const std::string write_error = written ? "" : describe_errno();
  const bool flushed = written && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  const std::string flush_error = flushed || !written ? "" : describe_errno();
  const bool closed = std::fclose(f) == 0;
  if (!written || !flushed || !closed) {
    const std::string error = !written ? write_error : !flushed ? flush_error : describe_errno();
    unlink(tmp.c_str());
    throw Error(ErrorKind::Io, "cannot write " + file.string() + ": " + error);
  }
  if (const int failure = put_in_place(tmp, file, replace)) {
    unlink(tmp.c_str());
    throw Error(ErrorKind::Io, "cannot write " + file.string() + ": " +
                                   (failure == EEXIST && !replace
                                        ? "a file of that name appeared while it was being written (another run "
                                          "writing the same names?); it was left as it is"
                                        : std::strerror(failure)));
  }
  if (const int failure = sync_directory(dir))
    throw Error(ErrorKind::Io, "cannot write " + file.string() +
                                   ": it is in place, but syncing its directory to the disk failed (" +
                                   std::strerror(failure) + ")");
}

PngInfo read_png_info(const std::filesystem::path& file) {
  errno = 0;
  std::ifstream in(file, std::ios::binary);
  if (!in)
    throw Error(ErrorKind::Io,
                "cannot open " + file.string() + (errno ? std::string(": ") + std::strerror(errno) : ""));
  return read_png_info(in, file.string());
}

PngInfo read_png_info(std::istream& in, const std::string& name) {
  // Read as a stream, not by its size or by seeking: `info /dev/stdin` and `info <(curl ...)` are pipes.
  uint8_t signature[kSignatureBytes];
  if (!in.read(reinterpret_cast<char*>(signature), kSignatureBytes) ||
      std::memcmp(signature, kPngSignature, kSignatureBytes) != 0)
    throw Error(ErrorKind::Io, name + ": not a PNG file");
  uint8_t head[8];  // a chunk's length and type
  PngInfo info;
  bool first = true;
  size_t inflate_budget = size_t{64} << 20;
  // Chunk by chunk, keeping the header and the text: the image data is skipped, never decoded, but its CRC is
  // checked, so that damage which keeps the file's length (an interrupted in-place copy) is found.
  while (in.read(reinterpret_cast<char*>(head), 8)) {
    const uint32_t len = get_u32(head);
    const std::string type(head + 4, head + 8);
    const bool keep = first || is_text_chunk(type);
    std::string data;
    uLong crc = crc32(0, head + 4, 4);
    uint8_t stored[4];
    if (!read_exactly(in, len, keep ? &data : nullptr, crc) || !in.read(reinterpret_cast<char*>(stored), 4))
      throw Error(ErrorKind::Io, name + ": truncated PNG chunk " + type);
    if (get_u32(stored) != crc)
      throw Error(ErrorKind::Io, name + ": corrupt PNG (chunk " + type + " fails its CRC check)");
    if (!first && type == "IEND") return info;
    if (first) {
      if (type != "IHDR" || len != 13) throw Error(ErrorKind::Io, name + ": corrupt PNG (no IHDR chunk first)");
      const auto* ihdr = reinterpret_cast<const uint8_t*>(data.data());
      info.width = get_u32(ihdr);
      info.height = get_u32(ihdr + 4);
      // PNG sizes are 1 to 2^31 - 1.
      if (info.width < 1 || info.height < 1 || info.width > 0x7fffffff || info.height > 0x7fffffff)
        throw Error(ErrorKind::Io, name + ": corrupt PNG (a size of " + std::to_string(info.width) + "x" +
                                       std::to_string(info.height) + ")");
      first = false;
    } else if (keep) {
      add_text_chunk(type, data, inflate_budget, info);
    }
  }
  throw Error(ErrorKind::Io, name + ": truncated PNG (no IEND chunk)");
}

}  // namespace txt2img
