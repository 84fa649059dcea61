// write_file_atomic on file systems without RENAME_NOREPLACE (and without hard links, as FAT): this executable's own
// renameat2 and link stand in for the C library's, refusing as such a file system does, and can let another writer
// take the name just before, as a run writing the same names would.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "txt2img/error.hpp"
#include "txt2img/png.hpp"

namespace {

struct FileSystem {
  int renameat2_errno = EINVAL;           // what renameat2 fails with: these file systems lack it
  int link_errno = 0;                     // what link fails with; 0: it works
  std::filesystem::path taken_meanwhile;  // a file another writer puts there when renameat2 is called
  int renameat2_calls = 0;
  int link_calls = 0;
};
FileSystem fs;

void another_writer() {
  if (!fs.taken_meanwhile.empty()) std::ofstream(fs.taken_meanwhile) << "another run's";
}

}  // namespace

extern "C" int renameat2(int, const char*, int, const char*, unsigned int) {
  ++fs.renameat2_calls;
  another_writer();
  errno = fs.renameat2_errno;
  return -1;
}

extern "C" int link(const char* oldpath, const char* newpath) {
  ++fs.link_calls;
  if (fs.link_errno) {
    errno = fs.link_errno;
    return -1;
  }
  return linkat(AT_FDCWD, oldpath, AT_FDCWD, newpath, 0);
}

namespace {

class PngFallback : public ::testing::Test {
 protected:
  void SetUp() override {
    fs = FileSystem{};
    dir_ = std::filesystem::temp_directory_path() / ("txt2img-png-fallback-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // The names in the folder: no temporary file may be left.
  std::vector<std::string> names() const {
    std::vector<std::string> found;
    for (const auto& entry : std::filesystem::directory_iterator(dir_)) found.push_back(entry.path().filename());
    std::sort(found.begin(), found.end());
    return found;
  }
  std::string text_of(const std::string& name) const {
    std::ifstream in(dir_ / name, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  void expect_kept_the_other_file() {
    try {
      txt2img::write_file_atomic(dir_ / "a.png", bytes_, /*replace=*/false);
      ADD_FAILURE() << "the other writer's file was replaced";
    } catch (const txt2img::Error& e) {
      EXPECT_EQ(e.kind(), txt2img::ErrorKind::Io);
      EXPECT_NE(std::string(e.what()).find("appeared while it was being written"), std::string::npos) << e.what();
    }
    EXPECT_EQ(text_of("a.png"), "another run's");
    EXPECT_EQ(names(), std::vector<std::string>{"a.png"});
  }

  std::filesystem::path dir_;
  const std::vector<uint8_t> bytes_ = {0x89, 'P', 'N', 'G', 1, 2, 3};
};

TEST_F(PngFallback, WithoutRenameNoReplaceAHardLinkPutsTheFileInPlace) {
  for (const int refusal : {EINVAL, ENOSYS}) {
    fs.renameat2_errno = refusal;
    txt2img::write_file_atomic(dir_ / "a.png", bytes_, /*replace=*/false);
    EXPECT_EQ(text_of("a.png"), std::string(bytes_.begin(), bytes_.end()));
    EXPECT_EQ(names(), std::vector<std::string>{"a.png"});
    std::filesystem::remove(dir_ / "a.png");
  }
  EXPECT_EQ(fs.link_calls, 2);
}

TEST_F(PngFallback, AHardLinkNeverReplacesAFileThatAppeared) {
  fs.taken_meanwhile = dir_ / "a.png";
  expect_kept_the_other_file();
  EXPECT_EQ(fs.link_calls, 1);
}

TEST_F(PngFallback, WithoutHardLinksTheNameIsCheckedThenRenamed) {
  for (const int refusal : {EPERM, EOPNOTSUPP, ENOSYS}) {
    fs.link_errno = refusal;
    txt2img::write_file_atomic(dir_ / "a.png", bytes_, /*replace=*/false);
    EXPECT_EQ(text_of("a.png"), std::string(bytes_.begin(), bytes_.end()));
    EXPECT_EQ(names(), std::vector<std::string>{"a.png"});
    std::filesystem::remove(dir_ / "a.png");
  }
}

TEST_F(PngFallback, TheCheckKeepsAFileThatAppearedBeforeIt) {
  fs.link_errno = EPERM;
  fs.taken_meanwhile = dir_ / "a.png";
  expect_kept_the_other_file();
}

// Any other failure of the link is the write's: reported, the temporary file removed, nothing renamed.
TEST_F(PngFallback, OtherLinkFailuresAreReported) {
  fs.link_errno = EMLINK;
  try {
    txt2img::write_file_atomic(dir_ / "a.png", bytes_, /*replace=*/false);
    ADD_FAILURE() << "no error";
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), txt2img::ErrorKind::Io);
    EXPECT_NE(std::string(e.what()).find(std::strerror(EMLINK)), std::string::npos) << e.what();
  }
  EXPECT_TRUE(names().empty());
}

// Replacing (--overwrite, previews) takes a plain rename, wherever the file system stands.
TEST_F(PngFallback, ReplacingNeedsNeitherCall) {
  fs.link_errno = EPERM;
  std::ofstream(dir_ / "a.png") << "old";
  txt2img::write_file_atomic(dir_ / "a.png", bytes_);
  EXPECT_EQ(text_of("a.png"), std::string(bytes_.begin(), bytes_.end()));
  EXPECT_EQ(fs.renameat2_calls + fs.link_calls, 0);
}

}  // namespace
