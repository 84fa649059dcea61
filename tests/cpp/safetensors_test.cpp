#include "txt2img/safetensors.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "txt2img/error.hpp"

namespace {

std::filesystem::path shared() { return std::getenv("TXT2IMG_SHARED"); }

TEST(SafeTensors, ReadsSchedulerGoldens) {
  auto st = txt2img::SafeTensors::open(shared() / "reference/scheduler/goldens.safetensors");
  auto ac = st.get("common/alphas_cumprod");
  ASSERT_EQ(ac.dim(), 1);
  EXPECT_EQ(ac.size(0), 1000);
  EXPECT_EQ(ac.scalar_type(), torch::kFloat32);
  // alphas_cumprod[0] = 1 - beta_start
  EXPECT_NEAR(ac[0].item<double>(), 1.0 - 0.00085, 1e-7);
  // Its header's __metadata__, which is not a tensor.
  EXPECT_EQ(st.metadata().at("generator"), "refharness scheduler_goldens.py");
  EXPECT_FALSE(st.contains("__metadata__"));
}

TEST(SafeTensors, MissingKeyAndFileAreIoErrors) {
  auto st = txt2img::SafeTensors::open(shared() / "reference/scheduler/goldens.safetensors");
  try {
    st.get("no/such/key");
    FAIL();
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), txt2img::ErrorKind::Io);
  }
  EXPECT_THROW(txt2img::SafeTensors::open("/nonexistent.safetensors"), txt2img::Error);
}

// Bytes beyond those the header describes (a damaged file, or a header length cut into the header's padding) would
// be read from the wrong offsets: refused, as the reference reader refuses them.
TEST(SafeTensors, DataOfAnotherLengthThanDescribedIsAnIoError) {
  const auto golden = shared() / "reference/scheduler/goldens.safetensors";
  std::ifstream in(golden, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto copy = std::filesystem::temp_directory_path() / ("safetensors_test_" + std::to_string(getpid()));
  std::ofstream(copy, std::ios::binary) << bytes << "xyz";
  try {
    txt2img::SafeTensors::open(copy);
    ADD_FAILURE() << "three bytes past the tensors taken";
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), txt2img::ErrorKind::Io);
    EXPECT_NE(std::string(e.what()).find("bytes of tensor data but the file holds"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("a damaged file, or its header length is wrong"), std::string::npos);
  }
  std::ofstream(copy, std::ios::binary) << bytes;
  EXPECT_NO_THROW(txt2img::SafeTensors::open(copy));
  std::filesystem::remove(copy);
}

}  // namespace
