#include "txt2img/png.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <csignal>
#include <fstream>

#include "txt2img/error.hpp"

namespace {

std::filesystem::path temp_dir() {
  auto dir = std::filesystem::temp_directory_path() / ("txt2img_png_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
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
  const auto back = txt2img::read_png(dir / "a.png");
  EXPECT_EQ(back.width, 24);
  EXPECT_EQ(back.height, 16);
  EXPECT_EQ(back.rgb, rgb);
  EXPECT_EQ(back.text, text);
  EXPECT_EQ(txt2img::read_png_text(dir / "a.png"), text);  // the same text, without reading the image
  std::filesystem::remove_all(dir);
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

TEST(Png, RejectsNonPng) {
  const auto dir = temp_dir();
  std::ofstream(dir / "x.png") << "not a png";
  try {
    txt2img::read_png(dir / "x.png");
    ADD_FAILURE();
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), txt2img::ErrorKind::Io);
  }
  EXPECT_THROW(txt2img::read_png(dir / "missing.png"), txt2img::Error);
  EXPECT_THROW(txt2img::read_png_text(dir / "x.png"), txt2img::Error);
  EXPECT_THROW(txt2img::read_png_text(dir / "missing.png"), txt2img::Error);
  std::filesystem::remove_all(dir);
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
