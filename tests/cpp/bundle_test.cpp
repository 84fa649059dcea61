#include "txt2img/bundle.hpp"

#include <gtest/gtest.h>

#include <fstream>

#include "expect_error.hpp"
#include "fixtures.hpp"
#include "txt2img/error.hpp"
#include "txt2img/pipeline.hpp"

namespace {

using txt2img::ErrorKind;

TEST(Bundle, OpensTheTinyBundle) {
  auto b = txt2img::Bundle::open(fixtures() / "tiny");
  EXPECT_EQ(b.manifest().family, "sd1");
  EXPECT_EQ(b.manifest().vae_scale_factor, 8);
  EXPECT_TRUE(b.has("unet.pt"));
  EXPECT_TRUE(b.manifest().safety.has_value());
  EXPECT_TRUE(b.corrupt_files().empty());
}

TEST(Bundle, MissingDirectoryOrManifestOrFile) {
  expect_error([] { txt2img::Bundle::open("/nonexistent/bundle"); }, ErrorKind::Bundle, {"not found", "convert.py"});
  // A checkpoint file given as the bundle: it exists, it is just not one.
  const auto file = std::filesystem::temp_directory_path() / "txt2img-not-a-bundle.safetensors";
  std::ofstream(file) << "x";
  expect_error([&] { txt2img::Bundle::open(file); }, ErrorKind::Bundle, {"not a directory", "converted first"});
  std::filesystem::remove(file);
  BundleCopy copy;
  std::filesystem::remove(copy.dir() / "unet.pt");
  expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle, {"unet.pt missing", "convert.py"});
  std::filesystem::remove(copy.dir() / "model.json");
  expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle, {"model.json missing"});
}

TEST(Bundle, OptionalFilesMayBeDeletedAndAreNamedWhenNeeded) {
  BundleCopy copy;
  std::filesystem::remove(copy.dir() / "safety_checker.pt");
  const auto bundle = txt2img::Bundle::open(copy.dir());
  EXPECT_TRUE(bundle.lists("safety_checker.pt"));
  EXPECT_FALSE(bundle.has("safety_checker.pt"));
  EXPECT_TRUE(bundle.corrupt_files().empty());
  expect_error(
      [&] { txt2img::Pipeline::load(bundle, {}); }, ErrorKind::Usage,
      {"safety_checker.pt (its safety checker) is missing, though model.json lists it", "--no-safety-checker"});
  txt2img::PipelineOptions off;
  off.safety = txt2img::SafetyMode::Off;
  EXPECT_NO_THROW(txt2img::Pipeline::load(bundle, off));
}

TEST(Bundle, UnknownFormatFamilyAndNewerPyTorchAreRefused) {
  BundleCopy copy;
  auto j = copy.manifest();
  j["format_version"] = 99;
  copy.set_manifest(j);
  expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle, {"format version 99"});
  j = copy.manifest();
  j["format_version"] = txt2img::kBundleFormatVersion;
  j["family"] = "sdxl";
  copy.set_manifest(j);
  expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle, {"\"sdxl\""});
  j["family"] = "sd1";
  j["torch_version"] = "99.1.0";
  copy.set_manifest(j);
  expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle,
               {"PyTorch 99.1.0", txt2img::libtorch_version(), "re-export"});
  std::ofstream(copy.dir() / "model.json") << "{ not json";
  expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle, {"corrupt"});
}

TEST(Bundle, AManifestListingFilesItCannotHaveIsRefused) {
  BundleCopy copy;
  const auto original = copy.manifest();
  for (const std::string name : {"/etc/passwd", "../tiny/unet.pt", "loras/../../x.pt", ""}) {
    auto j = original;
    j["files"][name] = {{"sha256", "0"}, {"bytes", 1}};
    copy.set_manifest(j);
    expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle,
                 {"lists the file \"" + name + "\", which is not inside the bundle's folder"});
  }
  // A name the file system refuses is named with its reason, not thrown as a std::filesystem error.
  auto j = original;
  j["files"][std::string(300, 'x') + ".pt"] = {{"sha256", "0"}, {"bytes", 1}};
  copy.set_manifest(j);
  expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle, {"cannot read xxx", "too long"});
  // A safety checker without the settings that prepare its input: refused where it would run.
  j = original;
  j["safety"] = nullptr;
  copy.set_manifest(j);
  const auto unsafe = txt2img::Bundle::open(copy.dir());
  expect_error([&] { txt2img::Pipeline::check_options(unsafe, {}); }, ErrorKind::Bundle,
               {"lists safety_checker.pt but gives no \"safety\" settings", "--no-safety-checker"});
  txt2img::PipelineOptions off;
  off.safety = txt2img::SafetyMode::Off;
  EXPECT_NO_THROW(txt2img::Pipeline::check_options(unsafe, off));
}

TEST(Bundle, TruncatedOrCorruptFilesAreDetected) {
  BundleCopy copy;
  const auto unet = copy.dir() / "unet.pt";
  const auto size = std::filesystem::file_size(unet);
  {
    std::fstream f(unet, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size / 2));
    f.put('\x5a');
  }
  auto bundle = txt2img::Bundle::open(copy.dir());  // same size: only the hash tells
  EXPECT_EQ(bundle.corrupt_files(), std::vector<std::string>{"unet.pt"});
  std::filesystem::resize_file(unet, size - 10);
  expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle, {"unet.pt", "truncated"});
  // A garbage module whose manifest entry matches still fails to load, as a bundle error.
  std::ofstream(unet, std::ios::binary) << "garbage";
  auto j = copy.manifest();
  j["files"]["unet.pt"]["bytes"] = 7;
  copy.set_manifest(j);
  expect_error([&] { txt2img::Pipeline::load(txt2img::Bundle::open(copy.dir()), {}); }, ErrorKind::Bundle,
               {"cannot load unet.pt"});
}

// model.json's embeddings reach the tokenizer, an added token (a diffusers model's own) marked so.
TEST(Bundle, EmbeddingsAndAddedTokensReachTheTokenizer) {
  BundleCopy copy;
  auto j = copy.manifest();
  j["embeddings"] = {{{"name", "<cat-toy>"}, {"first_id", 49408}, {"vectors", 1}, {"added_token", true}},
                     {{"name", "sks"}, {"first_id", 49409}, {"vectors", 2}}};
  copy.set_manifest(j);
  const auto bundle = txt2img::Bundle::open(copy.dir());
  ASSERT_EQ(bundle.manifest().embeddings.size(), 2u);
  EXPECT_TRUE(bundle.manifest().embeddings[0].added_token);
  EXPECT_FALSE(bundle.manifest().embeddings[1].added_token);
  const auto tokenizer = bundle.load_tokenizer();
  const auto ids = tokenizer.encode("x<cat-toy>, sks");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 49408), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 49410), 1);
  j["embeddings"][0]["added_token"] = "yes";
  copy.set_manifest(j);
  expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle, {"\"added_token\" has the wrong type"});
}

// A module of another exporter in the U-Net's place is judged by its inputs (the converter's own by their class, as
// the CLI tests show).
TEST(Bundle, AModuleThatTakesOtherInputsThanItsFilesNetworkIsRefused) {
  BundleCopy copy;
  torch::jit::Module other("Elsewhere");
  other.define("def forward(self, z):\n  return z\n");
  other.save((copy.dir() / "unet.pt").string());
  auto j = copy.manifest();
  j["files"]["unet.pt"]["bytes"] = std::filesystem::file_size(copy.dir() / "unet.pt");
  copy.set_manifest(j);
  const auto bundle = txt2img::Bundle::open(copy.dir());
  expect_error([&] { bundle.load_module("unet.pt", torch::kCPU); }, ErrorKind::Bundle,
               {"unet.pt is not the module it should be: its forward takes 1 inputs where a U-Net's takes 3"});
  EXPECT_NO_THROW(bundle.load_module("vae_decoder.pt", torch::kCPU));
}

}  // namespace
