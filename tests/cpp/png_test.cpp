#include "txt2img/png.hpp"

#include <gtest/gtest.h>
#include <stb/stb_image.h>
#include <sys/resource.h>
#include <zlib.h>

#include <csignal>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include "txt2img/error.hpp"

namespace {

std::filesystem::path temp_dir() {
  auto dir = std::filesystem::temp_directory_path() / ("txt2img_png_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

// `bytes` with the chunk at `offset` (its length field) given its right CRC again, after an edit of its data.
std::string with_crc_fixed(std::string bytes, size_t offset) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data()) + offset;
  const uint32_t length = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
  const uLong crc = crc32(0, p + 4, 4 + length);
  for (int i = 0; i < 4; ++i) bytes[offset + 8 + length + i] = static_cast<char>((crc >> (24 - 8 * i)) & 0xff);
  return bytes;
}

// `png` with a chunk added before IEND.
std::string with_chunk(const std::string& png, const std::string& type, const std::string& data) {
  std::string chunk(4, '\0');
  for (int i = 0; i < 4; ++i) chunk[i] = static_cast<char>((data.size() >> (24 - 8 * i)) & 0xff);
  chunk += type + data + std::string(4, '\0');
  const size_t end = png.rfind("IEND") - 4;
  return with_crc_fixed(png.substr(0, end) + chunk + png.substr(end), end);
}

std::string zlib_compressed(const std::string& text) {
  uLongf size = compressBound(text.size());
  std::string out(size, '\0');
  EXPECT_EQ(
      compress(reinterpret_cast<Bytef*>(out.data()), &size, reinterpret_cast<const Bytef*>(text.data()), text.size()),
      Z_OK);
  out.resize(size);
  return out;
}

std::string read_bytes(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<uint8_t> gradient(int w, int h) {
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<uint8_t>((i * 7) % 256);
  return rgb;
}

TEST(Png, RoundTripsPixelsAndText) {
  const auto dir = temp_dir();
  const auto rgb = gradient(24, 16);
  const txt2img::PngText text = {{"parameters", "a cat\nSteps: 2, Seed: 1"},
                                 {"txt2img", "{\"prompt\": \"caf\xc3\xa9 \xe2\x98\x95\"}"}};
  txt2img::write_file_atomic(dir / "a.png", txt2img::encode_png(rgb.data(), 24, 16, text));
  const auto info = txt2img::read_png_info(dir / "a.png");
  EXPECT_EQ(info.width, 24);
  EXPECT_EQ(info.height, 16);
  EXPECT_EQ(info.text, text);
  // The pixels as another decoder reads them.
  int width = 0, height = 0, channels = 0;
  unsigned char* pixels = stbi_load((dir / "a.png").c_str(), &width, &height, &channels, 3);
  ASSERT_NE(pixels, nullptr);
  EXPECT_EQ(std::vector<uint8_t>(pixels, pixels + rgb.size()), rgb);
  stbi_image_free(pixels);

  // The image data is never decoded: a header claiming 16000x16000 over 24x16 pixels still reads.
  std::ifstream in(dir / "a.png", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string side("\0\0\x3e\x80", 4);  // 16000, big-endian
  bytes.replace(16, 4, side).replace(20, 4, side);
  bytes = with_crc_fixed(bytes, 8);  // IHDR's
  std::ofstream(dir / "huge.png", std::ios::binary) << bytes;
  const auto huge = txt2img::read_png_info(dir / "huge.png");
  EXPECT_EQ(huge.width, 16000);
  EXPECT_EQ(huge.height, 16000);
  EXPECT_EQ(huge.text, text);
  // A size of 0 is no PNG's.
  std::string zero = bytes;
  zero = with_crc_fixed(zero.replace(16, 4, std::string(4, '\0')), 8);
  std::ofstream(dir / "zero.png", std::ios::binary) << zero;
  EXPECT_THROW(txt2img::read_png_info(dir / "zero.png"), txt2img::Error);
  // A file cut short is an error, not a PNG without its last chunks.
  std::ofstream(dir / "cut.png", std::ios::binary) << bytes.substr(0, bytes.size() - 20);
  try {
    txt2img::read_png_info(dir / "cut.png");
    ADD_FAILURE();
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), txt2img::ErrorKind::Io);
    EXPECT_NE(std::string(e.what()).find("truncated PNG"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

// A key PNG does not allow would make a file other tools misread ("a\0b" reads back as key "a"), and a side of 0 no
// image at all: both are refused.
TEST(Png, KeysPngDoesNotAllowAndEmptyImagesAreRefused) {
  const auto rgb = gradient(2, 2);
  for (const std::string key : {std::string(""), std::string("a\0b", 3), std::string(80, 'k'), std::string(" lead"),
                                std::string("two  spaces"), std::string("caf\xc3\xa9")}) {
    try {
      txt2img::encode_png(rgb.data(), 2, 2, {{key, "w"}});
      ADD_FAILURE() << "key accepted: " << key;
    } catch (const txt2img::Error& e) {
      EXPECT_EQ(e.kind(), txt2img::ErrorKind::Usage);
      EXPECT_NE(std::string(e.what()).find("PNG text key"), std::string::npos) << e.what();
    }
  }
  EXPECT_NO_THROW(txt2img::encode_png(rgb.data(), 2, 2, {{std::string(79, 'k'), "w"}, {"Model hash", "v"}}));
  EXPECT_THROW(txt2img::encode_png(rgb.data(), 0, 2, {}), txt2img::Error);
}

TEST(Png, AtomicWriteLeavesNoTemporaryFile) {
  const auto dir = temp_dir();
  const auto rgb = gradient(8, 8);
  txt2img::write_file_atomic(dir / "b.png", txt2img::encode_png(rgb.data(), 8, 8, {}));
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    ++files;
    EXPECT_EQ(entry.path().filename(), "b.png");
  }
  EXPECT_EQ(files, 1u);
  std::filesystem::remove_all(dir);
}

// Without replace, a file that took the name meanwhile (another run's image, even a dangling link) is kept as it is.
TEST(Png, AWriteThatMustNotReplaceLeavesAnotherFileOfTheName) {
  const auto dir = temp_dir();
  const auto rgb = gradient(8, 8);
  const auto png = txt2img::encode_png(rgb.data(), 8, 8, {});
  std::ofstream(dir / "taken.png") << "another run's";
  std::filesystem::create_symlink(dir / "nowhere", dir / "link.png");
  for (const char* name : {"taken.png", "link.png"}) {
    try {
      txt2img::write_file_atomic(dir / name, png, /*replace=*/false);
      ADD_FAILURE() << name << " replaced";
    } catch (const txt2img::Error& e) {
      EXPECT_EQ(e.kind(), txt2img::ErrorKind::Io);
      EXPECT_NE(std::string(e.what()).find("appeared while it was being written"), std::string::npos) << e.what();
    }
  }
  std::ifstream in(dir / "taken.png");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "another run's");
  EXPECT_TRUE(std::filesystem::is_symlink(dir / "link.png"));
  txt2img::write_file_atomic(dir / "free.png", png, /*replace=*/false);
  txt2img::write_file_atomic(dir / "taken.png", png);
  EXPECT_EQ(std::filesystem::file_size(dir / "taken.png"), png.size());
  size_t files = 0;  // no temporary file left
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir)) ++files;
  EXPECT_EQ(files, 3u);
  std::filesystem::remove_all(dir);
}

TEST(Png, FailedWriteIsIoErrorAndRemovesTemporaryFile) {
  const auto dir = temp_dir();
  const auto rgb = gradient(64, 64);
  const auto bytes = txt2img::encode_png(rgb.data(), 64, 64, {});
  // A file-size limit below the PNG's size makes the write fail as a full disk would.
  std::signal(SIGXFSZ, SIG_IGN);
  rlimit old{};
  getrlimit(RLIMIT_FSIZE, &old);
  rlimit small = old;
  small.rlim_cur = 100;
  setrlimit(RLIMIT_FSIZE, &small);
  try {
    txt2img::write_file_atomic(dir / "c.png", bytes);
    ADD_FAILURE() << "write should have failed";
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), txt2img::ErrorKind::Io);
  }
  setrlimit(RLIMIT_FSIZE, &old);
  EXPECT_TRUE(std::filesystem::is_empty(dir));
  std::filesystem::remove_all(dir);
}

// Damage that keeps a file's length (an interrupted in-place copy) is found by the chunks' CRCs, the image data's
// included, though it is never decoded.
TEST(Png, AChunkThatFailsItsCrcIsACorruptFile) {
  const auto dir = temp_dir();
  const auto rgb = gradient(24, 16);
  txt2img::write_file_atomic(dir / "a.png", txt2img::encode_png(rgb.data(), 24, 16, {{"parameters", "a cat"}}));
  std::string bytes = read_bytes(dir / "a.png");
  const size_t idat = bytes.find("IDAT");
  ASSERT_NE(idat, std::string::npos);
  bytes[idat + 10] = static_cast<char>(bytes[idat + 10] ^ 0x40);
  std::ofstream(dir / "bad.png", std::ios::binary) << bytes;
  try {
    txt2img::read_png_info(dir / "bad.png");
    ADD_FAILURE();
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), txt2img::ErrorKind::Io);
    EXPECT_NE(std::string(e.what()).find("corrupt PNG (chunk IDAT fails its CRC check)"), std::string::npos)
        << e.what();
  }
  std::filesystem::remove_all(dir);
}

// Text chunks that cannot be read are passed over, with the reason; compressed ones unpack to 64 MiB in all, however
// many there are.
TEST(Png, UnreadableTextChunksAreListedWithTheirReason) {
  const auto dir = temp_dir();
  const auto rgb = gradient(4, 4);
  txt2img::write_file_atomic(dir / "a.png", txt2img::encode_png(rgb.data(), 4, 4, {}));
  std::string png = read_bytes(dir / "a.png");
  std::string damaged = zlib_compressed("a cat");
  damaged.replace(damaged.size() - 4, 4, "\0\0\0\0");  // its Adler-32
  png = with_chunk(png, "zTXt", std::string("parameters\0\0", 12) + damaged);
  png = with_chunk(png, "zTXt", std::string("method\0\1", 8) + zlib_compressed("x"));
  png = with_chunk(png, "iTXt", std::string("short\0\0", 7));
  png = with_chunk(png, "zTXt", std::string("nomethod\0", 9));
  png = with_chunk(png, "iTXt", std::string("flag\0\2\0\0\0text", 13));
  png = with_chunk(png, "iTXt", std::string("latin1\0\0\0\0\0caf\xe9", 15));  // iTXt is UTF-8 by definition
  png = with_chunk(png, "iTXt", std::string("zlatin1\0\1\0\0\0", 12) + zlib_compressed("caf\xe9"));
  png = with_chunk(png, "iTXt", std::string("utf8\0\0\0\0\0caf\xc3\xa9", 14));
  png = with_chunk(png, "tEXt", std::string("Comment\0fine", 12));
  const std::string twenty_mib(size_t{20} << 20, 'a');
  // A damaged stream counts what it unpacked too: the work was done all the same.
  std::string damaged_big = zlib_compressed(twenty_mib);
  damaged_big.back() = static_cast<char>(damaged_big.back() ^ 1);
  png = with_chunk(png, "zTXt", std::string("bad20\0\0", 7) + damaged_big);
  for (const char* key : {"big1", "big2", "big3"})
    png = with_chunk(png, "zTXt", std::string(key) + std::string("\0\0", 2) + zlib_compressed(twenty_mib));
  std::ofstream(dir / "t.png", std::ios::binary) << png;
  const auto info = txt2img::read_png_info(dir / "t.png");
  ASSERT_EQ(info.text.size(), 4u);
  EXPECT_EQ(info.text[0], (std::pair<std::string, std::string>{"utf8", "caf\xc3\xa9"}));
  EXPECT_EQ(info.text[1], (std::pair<std::string, std::string>{"Comment", "fine"}));
  EXPECT_EQ(info.text[3].first, "big2");
  EXPECT_EQ(info.unread, (std::vector<std::string>{
                             "zTXt chunk \"parameters\": damaged compressed text",
                             "zTXt chunk \"method\": an unknown compression method",
                             "iTXt chunk \"short\": cut short",
                             "zTXt chunk \"nomethod\": cut short",
                             "iTXt chunk \"flag\": a compression flag other than 0 or 1",
                             "iTXt chunk \"latin1\": not valid UTF-8",
                             "iTXt chunk \"zlatin1\": not valid UTF-8",
                             "zTXt chunk \"bad20\": damaged compressed text",
                             "zTXt chunk \"big3\": past the 64 MiB of text a file's compressed chunks may unpack to",
                         }));
  std::filesystem::remove_all(dir);
}

TEST(Png, RejectsNonPng) {
  const auto dir = temp_dir();
  std::ofstream(dir / "x.png") << "not a png";
  try {
    txt2img::read_png_info(dir / "x.png");
    ADD_FAILURE();
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), txt2img::ErrorKind::Io);
  }
  EXPECT_THROW(txt2img::read_png_info(dir / "missing.png"), txt2img::Error);
  std::istringstream piped("not a png");
  try {
    txt2img::read_png_info(piped, "<stdin>");
    ADD_FAILURE();
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(std::string(e.what()), "<stdin>: not a PNG file");
  }
  std::filesystem::remove_all(dir);
}

TEST(Png, ReadsFromAStream) {
  const auto rgb = gradient(6, 5);
  const auto bytes = txt2img::encode_png(rgb.data(), 6, 5, {{"parameters", "a cat"}});
  std::istringstream piped(std::string(bytes.begin(), bytes.end()));
  const auto info = txt2img::read_png_info(piped, "<stdin>");
  EXPECT_EQ(info.width, 6);
  EXPECT_EQ(info.height, 5);
  EXPECT_EQ(info.text, (txt2img::PngText{{"parameters", "a cat"}}));
}

TEST(Png, UnwritableDirectoryIsIoError) {
  try {
    txt2img::write_file_atomic("/nonexistent-dir/x.png", {1, 2, 3});
    ADD_FAILURE();
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), txt2img::ErrorKind::Io);
  }
}

}  // namespace
