// LoRAs added by a batch's params (prompt tags on the command line) against the same LoRAs merged by convert.py, on
// the reference tiny model: a kohya LoRA (ink-style) and a LyCORIS LoHa (detail-loha), fixtures of
// tests/fixtures/make_lora.py in bundles ref-tiny-loras (scripts/add_lora.py) and ref-tiny-merged (convert.py --lora
// ink-style:0.8 --lora detail-loha:-0.5).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <map>

#include "expect_error.hpp"
#include "fixtures.hpp"
#include "txt2img/error.hpp"
#include "txt2img/pipeline.hpp"

namespace {

using txt2img::Error;
using txt2img::ErrorKind;
using txt2img::LoraUse;

struct Keep : txt2img::Observer {
  void tensor(const std::string& name, const torch::Tensor& value) override { kept[name] = value.clone(); }
  std::map<std::string, torch::Tensor> kept;
};

struct Run {
  std::vector<uint8_t> rgb;
  std::map<std::string, torch::Tensor> tensors;
};

Run run(txt2img::Pipeline& pipeline, std::vector<LoraUse> loras = {}) {
  txt2img::GenerationParams params;
  params.steps = 3;
  params.loras = std::move(loras);
  txt2img::SeededNoise noise({5});
  Keep keep;
  auto images = pipeline.generate({"a lighthouse at dusk"}, {"fog"}, params, noise, &keep);
  return {images[0].rgb, keep.kept};
}

class Loras : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pipeline_ = new txt2img::Pipeline(
        txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "ref-tiny-loras"), {}));
  }
  static void TearDownTestSuite() { delete pipeline_; }
  static txt2img::Pipeline* pipeline_;
};
txt2img::Pipeline* Loras::pipeline_ = nullptr;

const std::vector<LoraUse> kMergedInFixture = {{"ink-style", 0.8, 0.8}, {"detail-loha", -0.5, -0.5}};

TEST_F(Loras, TheBundleListsThem) {
  const auto& m = pipeline_->manifest();
  ASSERT_EQ(m.loras.size(), 2u);
  EXPECT_EQ(m.loras[0].name, "detail-loha");
  EXPECT_EQ(m.loras[1].name, "ink-style");
  EXPECT_EQ(m.loras[1].file, "loras/ink-style.safetensors");
  EXPECT_EQ(m.loras[1].a1111_hash.size(), 12u);
}

// The same sums in the same order in float32: the merged bundle's numbers exactly, text embeddings to image.
TEST_F(Loras, AddedAtRunTimeTheyGiveTheMergedModelsImage) {
  auto merged_pipeline =
      txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "ref-tiny-merged"), {});
  const auto merged = run(merged_pipeline);
  const auto added = run(*pipeline_, kMergedInFixture);
  for (const auto* name : {"text/last_hidden_state", "uncond_text/last_hidden_state", "unet/000/noise_pred",
                           "latents/step_002", "vae/decode_out"})
    EXPECT_TRUE(torch::equal(added.tensors.at(name), merged.tensors.at(name))) << name;
  EXPECT_EQ(added.rgb, merged.rgb);
  EXPECT_NE(run(*pipeline_).rgb, merged.rgb);
}

TEST_F(Loras, TheWeightsComeBackWhenABatchAsksForOthersOrNone) {
  const auto plain = run(*pipeline_);
  const auto ink = run(*pipeline_, {{"ink-style", 1.0, 1.0}});
  EXPECT_NE(ink.rgb, plain.rgb);
  const auto both = run(*pipeline_, kMergedInFixture);
  EXPECT_EQ(run(*pipeline_, {{"ink-style", 1.0, 1.0}}).rgb, ink.rgb);
  EXPECT_EQ(run(*pipeline_, kMergedInFixture).rgb, both.rgb);
  const auto again = run(*pipeline_);
  EXPECT_TRUE(torch::equal(again.tensors.at("latents/step_002"), plain.tensors.at("latents/step_002")));
  EXPECT_EQ(again.rgb, plain.rgb);
  // Weight 0 leaves the weights exactly as they are.
  EXPECT_EQ(run(*pipeline_, {{"ink-style", 0.0, 0.0}}).rgb, plain.rgb);
}

// The text encoder's weight changes only the embeddings, the U-Net's only the denoising.
TEST_F(Loras, TextEncoderAndUNetWeightsApplyApart) {
  const auto plain = run(*pipeline_);
  const auto te_only = run(*pipeline_, {{"ink-style", 1.0, 0.0}});
  const auto unet_only = run(*pipeline_, {{"ink-style", 0.0, 1.0}});
  const auto both = run(*pipeline_, {{"ink-style", 1.0, 1.0}});
  const std::string text = "text/last_hidden_state";
  EXPECT_FALSE(torch::equal(te_only.tensors.at(text), plain.tensors.at(text)));
  EXPECT_TRUE(torch::equal(te_only.tensors.at(text), both.tensors.at(text)));
  EXPECT_TRUE(torch::equal(unet_only.tensors.at(text), plain.tensors.at(text)));
  // Same embeddings and noise, other U-Net weights: another first prediction.
  const std::string first = "unet/000/noise_pred";
  EXPECT_FALSE(torch::equal(unet_only.tensors.at(first), plain.tensors.at(first)));
  EXPECT_NE(unet_only.rgb, plain.rgb);
  EXPECT_NE(te_only.rgb, plain.rgb);
}

// A1111 encodes the empty prompt that --pad-conds pads with when it loads the model, with no LoRA active: the
// padding of a batch with a text-encoder LoRA is the plain model's "", not the LoRA's, whichever ran first.
TEST_F(Loras, PaddingWithTheEmptyPromptLeavesLorasOut) {
  const auto first_context = [&](const std::string& prompt, const std::string& negative,
                                 const std::vector<LoraUse>& loras, bool pad) {
    txt2img::GenerationParams params;
    params.steps = 2;
    params.long_prompts = true;
    params.loras = loras;
    if (pad) params.pad_conds = txt2img::GenerationParams::PadConds::EmptyChunks;
    txt2img::SeededNoise noise({5});
    Keep keep;
    pipeline_->generate({prompt}, {negative}, params, noise, &keep);
    return keep.kept.at("unet/encoder_hidden_states");
  };
  const std::vector<LoraUse> ink = {{"ink-style", 1.0, 1.0}};
  // The uncond row of a short prompt with an empty negative prompt: the encoding of "".
  const auto empty = first_context("a fox", "", {}, false)[0];
  const auto empty_with_ink = first_context("a fox", "", ink, false)[0];  // and the LoRA stays in place
  ASSERT_FALSE(torch::allclose(empty, empty_with_ink));
  std::string long_prompt;
  for (int i = 0; i < 12; ++i) long_prompt += "a lighthouse on a rocky coast, ";
  const auto padded = first_context(long_prompt, "fog", ink, true);
  ASSERT_EQ(padded.size(1), 2 * empty.size(0));
  EXPECT_TRUE(torch::allclose(padded[0].narrow(0, empty.size(0), empty.size(0)), empty, 1e-5, 1e-6));
}

TEST_F(Loras, UnknownNamesAndFrozenGraphsAreUsageErrors) {
  txt2img::GenerationParams params;
  params.loras = {{"ink-styel", 1.0, 1.0}};
  expect_error([&] { txt2img::resolve_params(pipeline_->manifest(), params); }, ErrorKind::Usage,
               {"no LoRA named \"ink-styel\" (it has detail-loha, ink-style)"});
  txt2img::PipelineOptions frozen;
  frozen.graph = txt2img::GraphOptimization::Freeze;
  params.loras = {{"ink-style", 1.0, 1.0}};
  EXPECT_THROW(txt2img::check_loras_supported(params, frozen), Error);
  EXPECT_NO_THROW(txt2img::check_loras_supported(params, {}));
}

// In bfloat16 the float32 sums are cast once; taking the LoRAs out again gives the bfloat16 weights back exactly,
// and the image stays near the float32 one.
TEST(LoraFiles, Bfloat16WeightsComeBackExactly) {
  txt2img::PipelineOptions options;
  options.dtype = torch::kBFloat16;
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "ref-tiny-loras"), options);
  const auto plain = run(pipeline);
  const auto with_loras = run(pipeline, kMergedInFixture);
  EXPECT_NE(with_loras.rgb, plain.rgb);
  EXPECT_EQ(run(pipeline).rgb, plain.rgb);
  auto float32 = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "ref-tiny-loras"), {});
  const auto reference = run(float32, kMergedInFixture);
  const auto a = with_loras.tensors.at("text/last_hidden_state").to(torch::kFloat32);
  const auto b = reference.tensors.at("text/last_hidden_state");
  EXPECT_LT(((a - b).abs().max() / b.abs().max()).item<double>(), 0.05);
}

// A copy of ref-tiny-loras whose detail-loha file is `bytes` (model.json updated to its size), removed with it.
class ReplacedLoraFile {
 public:
  explicit ReplacedLoraFile(const std::string& bytes)
      : dir_(std::filesystem::temp_directory_path() / ("txt2img_loras_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(dir_);
    std::filesystem::copy(fixtures() / "ref-tiny-loras", dir_, std::filesystem::copy_options::recursive);
    std::ofstream(dir_ / "loras" / "detail-loha.safetensors", std::ios::binary) << bytes;
    nlohmann::json manifest;
    std::ifstream(dir_ / "model.json") >> manifest;
    manifest["files"]["loras/detail-loha.safetensors"]["bytes"] = bytes.size();
    std::ofstream(dir_ / "model.json") << manifest.dump(1);
  }
  ~ReplacedLoraFile() { std::filesystem::remove_all(dir_); }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return bytes + header + std::string(data_bytes, '\0');
}

// Runs with both LoRAs (detail-loha's file replaced by `bytes`) fail with Error(Bundle) holding `fragments`, and the
// weights stay as they were.
void expect_unusable(const std::string& bytes, std::initializer_list<std::string> fragments) {
  const ReplacedLoraFile copy(bytes);
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(copy.dir()), {});
  const auto plain = run(pipeline);
  expect_error(
      [&] {
        run(pipeline, {{"ink-style", 1.0, 1.0}, {"detail-loha", 1.0, 1.0}});
      },
      ErrorKind::Bundle, fragments);
  EXPECT_EQ(run(pipeline).rgb, plain.rgb);
}

// A packed file that no longer fits the modules (the bundle converted again from another model, say) is a bundle
// error that names the weight, and the weights stay as they were.
TEST(LoraFiles, AFileThatDoesNotFitIsABundleErrorAndChangesNothing) {
  expect_unusable(
      safetensors_bytes(R"({"unet.no_such_layer.weight.diff":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4),
      {"unet.no_such_layer.weight, which is no weight of this model", "add_lora.py"});
}

// So is one damaged after packing (its size unchanged, so that opening the bundle passes), or whose factors cannot be
// multiplied out: not a LibTorch failure of the run.
TEST(LoraFiles, AFileThatCannotBeReadOrMultipliedOutIsABundleError) {
  std::string damaged;
  {
    std::ifstream in(fixtures() / "ref-tiny-loras" / "loras" / "detail-loha.safetensors", std::ios::binary);
    damaged.assign(std::istreambuf_iterator<char>(in), {});
  }
  damaged.replace(8, 4, "xxxx");  // the header's JSON
  expect_unusable(damaged, {"detail-loha.safetensors cannot be used (", "add_lora.py"});
  expect_unusable(safetensors_bytes(R"({"unet.conv_in.weight.up":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]},)"
                                    R"("unet.conv_in.weight.down":{"dtype":"F32","shape":[2,1],"data_offsets":[4,12]},)"
                                    R"("unet.conv_in.weight.scale":{"dtype":"F32","shape":[],"data_offsets":[12,16]}})",
                                    16),
                  {"detail-loha.safetensors cannot be used (", "cannot be multiplied", "add_lora.py"});
}

// A LoRA file deleted after its bundle was opened (a long-running host) is found missing when checked, not when it
// is read.
TEST(LoraFiles, ALoraFileDeletedAfterTheBundleOpenedIsABundleError) {
  const auto dir = std::filesystem::temp_directory_path() / ("txt2img_loras_gone_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::copy(fixtures() / "ref-tiny-loras", dir, std::filesystem::copy_options::recursive);
  const auto bundle = txt2img::Bundle::open(dir);
  txt2img::GenerationParams params;
  params.loras = {{"ink-style", 1.0, 1.0}};
  EXPECT_NO_THROW(txt2img::check_lora_files(bundle, params));
  std::filesystem::remove(dir / "loras" / "ink-style.safetensors");
  expect_error([&] { txt2img::check_lora_files(bundle, params); }, ErrorKind::Bundle,
               {"LoRA \"ink-style\" is missing its file", "add_lora.py"});
  std::filesystem::remove_all(dir);
}

}  // namespace
