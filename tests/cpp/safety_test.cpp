#include "txt2img/safety.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "image_resize.hpp"
#include "safety_parts.hpp"
#include "txt2img/error.hpp"
#include "txt2img/safetensors.hpp"

namespace {

namespace fs = std::filesystem;
using txt2img::Error;
using txt2img::ErrorKind;
using txt2img::SafeTensors;

fs::path reference() { return fs::path(std::getenv("TXT2IMG_SHARED")) / "reference"; }

// The presets' feature_extractor: shortest edge 32, crop 32x32, OpenAI CLIP mean/std (defaults of SafetyConfig).
txt2img::SafetyConfig fixture_config() {
  txt2img::SafetyConfig config;
  config.shortest_edge = 32;
  config.crop_height = 32;
  config.crop_width = 32;
  return config;
}

// Every fixture folder (pipeline runs and safety cases of both presets) whose tensors include the checker's input.
std::vector<fs::path> checker_fixtures() {
  std::vector<fs::path> dirs;
  for (const char* preset : {"tiny", "sd1"})
    for (const char* kind : {"runs", "safety"})
      for (const auto& entry : fs::directory_iterator(reference() / preset / kind))
        if (entry.is_directory() && SafeTensors::open(entry.path() / "tensors.safetensors").contains("safety/clip_input"))
          dirs.push_back(entry.path());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::string name_of(const fs::path& dir) {
  return dir.parent_path().parent_path().filename().string() + "/" + dir.parent_path().filename().string() + "/" +
         dir.filename().string();
}

// diffusers' image_processor.postprocess + numpy_to_pil: (decode_out / 2 + 0.5).clamp(0, 1), NHWC, * 255, round half
// to even, uint8. torch's float32 ops and round are numpy's.
torch::Tensor pil_images(const SafeTensors& st) {
  auto images = (st.get("vae/decode_out") / 2 + 0.5).clamp(0, 1).permute({0, 2, 3, 1});
  return (images * 255).round().to(torch::kUInt8).contiguous();
}

// ---------------------------------------------------------------------------------------------------------------
// Resize: golden FNV-1a 64 checksums of Pillow 9.4.0 output (python3-pil on Debian 12),
// np.array(Image.fromarray(img).resize((out_w, out_h), Image.BICUBIC)).tobytes(), computed once and embedded so the
// test needs no Python. Inputs are generated identically here and there (see noise_image / block_image); 1-channel
// inputs were given to Pillow as 2-D arrays (mode "L").

uint64_t fnv1a(const torch::Tensor& t) {
  const auto* p = t.contiguous().data_ptr<uint8_t>();
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int64_t i = 0; i < t.numel(); ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

// High bits of a 64-bit LCG, one byte per sample in HWC order; seed = h * 1000 + w.
torch::Tensor noise_image(int h, int w, int c) {
  auto t = torch::empty({h, w, c}, torch::kUInt8);
  uint64_t s = static_cast<uint64_t>(h) * 1000 + w;
  auto* p = t.data_ptr<uint8_t>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    p[i] = static_cast<uint8_t>(s >> 56);
  }
  return t;
}

// 0/255 blocks 3 rows by 2 columns, shifted by one block per channel: maximal overshoot, so clamping matters.
torch::Tensor block_image(int h, int w, int c) {
  auto t = torch::empty({h, w, c}, torch::kUInt8);
  auto a = t.accessor<uint8_t, 3>();
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int ch = 0; ch < c; ++ch) a[y][x][ch] = ((y / 3 + x / 2 + ch) % 2) ? 255 : 0;
  return t;
}

struct ResizeGolden {
  int in_h, in_w, channels, out_h, out_w;
  uint64_t noise, blocks;
};

const ResizeGolden kResizeGoldens[] = {
    // downscaling (antialiased), including odd factors and 1-pixel outputs
    {128, 128, 3, 32, 32, 0x911110b8425fd60bULL, 0x1524853247f16fd3ULL},
    {512, 512, 3, 224, 224, 0x0076b6afb3bc235eULL, 0x3b5da9e06f334e19ULL},
    {512, 768, 3, 224, 336, 0x0f31b1f0ea0be567ULL, 0x8274fb33c9730969ULL},
    {97, 131, 3, 31, 45, 0x2c6d084b97914a67ULL, 0x3123f07d6fc4ff09ULL},
    {97, 131, 1, 31, 45, 0x4a63ddb678ca3a0bULL, 0x7d75e4f9a6b2dbdaULL},
    {64, 48, 3, 17, 13, 0x6adace4f5dec72e5ULL, 0x33c4da3855173a85ULL},
    {33, 65, 3, 11, 9, 0x58732e00b46bab9aULL, 0x5855088a916d1e15ULL},
    {300, 200, 3, 7, 5, 0x510bcba428c6791fULL, 0x08840ad3a32d4b32ULL},
    {16, 16, 3, 1, 1, 0x9163db1964da3d4eULL, 0x2fbd121ae17f4037ULL},
    {16, 16, 1, 1, 1, 0xaf64444c86029d44ULL, 0xaf643d4c8602915fULL},
    {8, 9, 3, 1, 3, 0x1db95a8c30b5c802ULL, 0xe6b68fb1a75d6b37ULL},
    {1000, 3, 3, 2, 3, 0x60ad6558dd34412dULL, 0x0beb73c415b318cfULL},
    {257, 255, 3, 3, 254, 0x6e76c5615a63b11eULL, 0x2934e17ab11934a4ULL},
    {96, 128, 3, 32, 42, 0x12732025f5f9dc2cULL, 0x58e35032c5cb3cadULL},
    {7, 1000, 3, 3, 9, 0x93b2ab701d219faaULL, 0xe97256f053c3e602ULL},
    // upscaling
    {16, 16, 3, 32, 32, 0x9746ddd0208c9b4bULL, 0x7d25cf3a589412a9ULL},
    {16, 16, 1, 32, 32, 0xe17616cc27bc437dULL, 0xe56365406ae44a01ULL},
    {16, 24, 3, 32, 48, 0xc2ba5bac130b4c3cULL, 0xddd836d76d01dfa9ULL},
    {5, 7, 3, 31, 17, 0x021e56fafb533481ULL, 0x5b860117d7b5bad5ULL},
    {3, 3, 3, 10, 10, 0x28e74dbd2610006cULL, 0xbfc73cba61f82839ULL},
    {1, 1, 3, 4, 4, 0x2aff91a0b2bc1765ULL, 0x1a6010f9435195f5ULL},
    {2, 5, 3, 9, 11, 0xdd93058f07fbde0cULL, 0x88879ecc2f042d4dULL},
    // one axis up, the other down
    {40, 20, 3, 20, 60, 0x7f119198f6d80716ULL, 0x7fff509abe641c87ULL},
    {37, 41, 3, 74, 13, 0xd6c6efb597396201ULL, 0x37dc139b3653e277ULL},
    // one axis unchanged: Pillow runs only the other pass
    {50, 60, 3, 50, 23, 0x4f4597938002db55ULL, 0xe3ff7f4dcea5465bULL},
    {50, 60, 1, 50, 23, 0x3cc8169e93526810ULL, 0xc3317e733ac136ffULL},
    {50, 60, 3, 17, 60, 0xa8c4ee51151dc184ULL, 0xa557b7890acfffdbULL},
    {50, 60, 1, 17, 60, 0xd5c591b22c2b0c1dULL, 0x2227fe82757a4c0fULL},
    // same size: a copy
    {20, 20, 3, 20, 20, 0x694fe3d3f449ef6eULL, 0x1f0a03597407631dULL},
};

TEST(SafetyResize, BitExactWithPillowGoldens) {
  for (const auto& g : kResizeGoldens) {
    SCOPED_TRACE(std::to_string(g.in_h) + "x" + std::to_string(g.in_w) + "x" + std::to_string(g.channels) + " -> " +
                 std::to_string(g.out_h) + "x" + std::to_string(g.out_w));
    auto noise = txt2img::resize_bicubic_like_pillow(noise_image(g.in_h, g.in_w, g.channels), g.out_h, g.out_w);
    ASSERT_EQ(noise.sizes(), torch::IntArrayRef({g.out_h, g.out_w, g.channels}));
    EXPECT_EQ(noise.scalar_type(), torch::kUInt8);
    EXPECT_EQ(fnv1a(noise), g.noise);
    EXPECT_EQ(fnv1a(txt2img::resize_bicubic_like_pillow(block_image(g.in_h, g.in_w, g.channels), g.out_h, g.out_w)),
              g.blocks);
  }
}

TEST(SafetyResize, SameSizeIsAnIndependentCopyAndViewsAreAccepted) {
  auto image = noise_image(9, 7, 3);
  auto same = txt2img::resize_bicubic_like_pillow(image, 9, 7);
  EXPECT_TRUE(torch::equal(same, image));
  same.zero_();
  EXPECT_FALSE(torch::equal(same, image));
  // A non-contiguous view (a crop of a wider image) resizes like its contiguous copy.
  auto wide = noise_image(16, 40, 3);
  auto view = wide.slice(1, 5, 29);
  EXPECT_TRUE(torch::equal(txt2img::resize_bicubic_like_pillow(view, 7, 11),
                           txt2img::resize_bicubic_like_pillow(view.contiguous(), 7, 11)));
}

TEST(SafetyResize, RejectsBadInput) {
  EXPECT_THROW(txt2img::resize_bicubic_like_pillow(torch::zeros({4, 4, 3}), 2, 2), Error);          // float
  EXPECT_THROW(txt2img::resize_bicubic_like_pillow(noise_image(4, 4, 4), 2, 2), Error);             // RGBA
  EXPECT_THROW(txt2img::resize_bicubic_like_pillow(noise_image(4, 4, 3)[0], 2, 2), Error);          // 2-D
  EXPECT_THROW(txt2img::resize_bicubic_like_pillow(noise_image(4, 4, 3), 0, 2), Error);             // empty
}

// ---------------------------------------------------------------------------------------------------------------
// Preprocessing: exactly transformers' CLIPImageProcessor output stored by the reference.

TEST(SafetyPreprocess, MatchesReferenceClipInputExactly) {
  const auto dirs = checker_fixtures();
  ASSERT_GE(dirs.size(), 30u);  // 26 runs with safety tensors + 8 safety cases
  double worst = 0;
  for (const auto& dir : dirs) {
    SCOPED_TRACE(name_of(dir));
    auto st = SafeTensors::open(dir / "tensors.safetensors");
    auto pixels = pil_images(st);
    if (st.contains("safety/pil_uint8")) {
      ASSERT_TRUE(torch::equal(pixels, st.get("safety/pil_uint8")));
    }
    auto expected = st.get("safety/clip_input");
    auto actual = txt2img::safety_preprocess(pixels, fixture_config());
    ASSERT_EQ(actual.sizes(), expected.sizes());
    ASSERT_EQ(actual.scalar_type(), torch::kFloat32);
    const double err = (actual - expected).abs().max().item<double>();
    worst = std::max(worst, err);
    EXPECT_EQ(err, 0.0);  // bit-exact, well inside the 1e-6 the pipeline needs
  }
  RecordProperty("worst_clip_input_abs_error", std::to_string(worst));
}

TEST(SafetyPreprocess, CentreCropPadsLikeTransformers) {
  // A 4x6 image already has its short edge at 4, so no resampling; cropping 7x5 takes rows from -2 (zeros) and
  // columns from (6 - 5) // 2 = 0, as transformers' center_crop does with its zero padding.
  auto image = noise_image(4, 6, 3);
  txt2img::SafetyConfig config;
  config.shortest_edge = 4;
  config.crop_height = 7;
  config.crop_width = 5;
  config.mean = {0.5, 0.25, 0.125};
  config.std = {0.5, 0.5, 0.25};
  auto out = txt2img::safety_preprocess(image.unsqueeze(0), config);
  ASSERT_EQ(out.sizes(), torch::IntArrayRef({1, 3, 7, 5}));
  auto a = image.accessor<uint8_t, 3>();
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 7; ++y)
      for (int x = 0; x < 5; ++x) {
        const int v = (y >= 2 && y < 6) ? a[y - 2][x][c] : 0;
        const float expected =
            (static_cast<float>(v * config.rescale_factor) - static_cast<float>(config.mean[c])) /
            static_cast<float>(config.std[c]);
        EXPECT_EQ(out[0][c][y][x].item<float>(), expected) << c << " " << y << " " << x;
      }
}

TEST(SafetyPreprocess, RejectsBadInput) {
  EXPECT_THROW(txt2img::safety_preprocess(noise_image(8, 8, 3), fixture_config()), Error);  // no batch axis
  EXPECT_THROW(txt2img::safety_preprocess(torch::zeros({1, 8, 8, 3}), fixture_config()), Error);
  EXPECT_THROW(txt2img::safety_preprocess(noise_image(8, 8, 1).unsqueeze(0), fixture_config()), Error);
}

// ---------------------------------------------------------------------------------------------------------------
// Scoring rule.

void expect_scores_match(const txt2img::SafetyScores& scores, const SafeTensors& st) {
  // The rule is reproduced exactly, so compare for equality (the pipeline would accept 1e-3).
  EXPECT_TRUE(torch::equal(scores.special_scores, st.get("safety/special_scores")))
      << scores.special_scores << "\n" << st.get("safety/special_scores");
  EXPECT_TRUE(torch::equal(scores.concept_scores, st.get("safety/concept_scores")))
      << scores.concept_scores << "\n" << st.get("safety/concept_scores");
  auto has_nsfw = st.get("safety/has_nsfw");
  ASSERT_EQ(scores.flagged.size(), static_cast<size_t>(has_nsfw.size(0)));
  for (size_t i = 0; i < scores.flagged.size(); ++i)
    EXPECT_EQ(scores.flagged[i], has_nsfw[static_cast<int64_t>(i)].item<bool>()) << "image " << i;
}

TEST(SafetyScore, MatchesEveryReferenceCaseAndRun) {
  int compared = 0;
  for (const auto& dir : checker_fixtures()) {
    auto st = SafeTensors::open(dir / "tensors.safetensors");
    if (!st.contains("safety/concept_scores")) continue;  // older runs store no scores
    SCOPED_TRACE(name_of(dir));
    auto scores = txt2img::score_safety(st.get("safety/cos_dist"), st.get("safety/concept_embeds_weights"),
                                        st.get("safety/special_cos_dist"),
                                        st.get("safety/special_care_embeds_weights"));
    expect_scores_match(scores, st);
    ++compared;
  }
  EXPECT_GE(compared, 8);
}

TEST(SafetyScore, CasesFlagAsDocumented) {
  const std::vector<std::pair<std::string, std::vector<bool>>> cases = {
      {"A_all_flagged", {true, true}},
      {"B_one_flagged", {true, false}},
      {"C_special_care_adjustment", {true, false}},
      {"D_none_flagged", {false, false}},
  };
  for (const char* preset : {"tiny", "sd1"})
    for (const auto& [name, flags] : cases) {
      SCOPED_TRACE(std::string(preset) + "/" + name);
      auto st = SafeTensors::open(reference() / preset / "safety" / name / "tensors.safetensors");
      auto scores = txt2img::score_safety(st.get("safety/cos_dist"), st.get("safety/concept_embeds_weights"),
                                          st.get("safety/special_cos_dist"),
                                          st.get("safety/special_care_embeds_weights"));
      EXPECT_EQ(scores.flagged, flags);
      if (name == "C_special_care_adjustment") {
        // Concept 7's raw score is -0.005 for both images; image 0 crosses zero only through the +0.01.
        EXPECT_EQ(scores.concept_scores[0][7].item<double>(), 0.005);
        EXPECT_EQ(scores.concept_scores[1][7].item<double>(), -0.005);
      }
    }
}

TEST(SafetyScore, RoundsLikeNumpyNotPython) {
  // A special concept fires (adjustment 0.01), then concept 0 has cos - threshold = 0.3125 (float32 inputs below)
  // and 0.3125 + 0.01 = 0.32250000000000000888, just above the decimal tie. diffusers' round() acts on a
  // numpy.float64: times 1000 that is exactly 322.5, rounded half to even, so 0.322; Python's round(float) would
  // give 0.323 (checked with numpy 1.24).
  auto f32 = [](uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  };
  auto cos = torch::tensor({f32(1062380741u)}).reshape({1, 1});     // 0.8228266835212708
  auto weights = torch::tensor({f32(1057137861u)});                 // 0.5103266835212708
  auto special = torch::tensor({0.5f}).reshape({1, 1});
  auto special_weights = torch::tensor({0.25f});
  auto scores = txt2img::score_safety(cos, weights, special, special_weights);
  EXPECT_EQ(scores.special_scores[0][0].item<double>(), 0.25);
  EXPECT_EQ(scores.concept_scores[0][0].item<double>(), 0.322);
  EXPECT_TRUE(scores.flagged[0]);
  EXPECT_EQ(scores.concept_scores.scalar_type(), torch::kFloat64);
}

TEST(SafetyScore, AdjustmentAppliesToLaterSpecialConceptsAndIsPerImage) {
  // Image 0: special concept 0 fires, which lifts special concept 1 (-0.005 -> 0.005) and concept 0 (-0.005 ->
  // 0.005, flagged). Image 1: nothing fires, nothing is lifted.
  auto special = torch::tensor({0.5f, 0.495f, 0.25f, 0.495f}).reshape({2, 2});
  auto special_weights = torch::tensor({0.25f, 0.5f});
  auto cos = torch::tensor({0.495f, 0.495f}).reshape({2, 1});
  auto weights = torch::tensor({0.5f});
  auto scores = txt2img::score_safety(cos, weights, special, special_weights);
  EXPECT_EQ(scores.special_scores[0][1].item<double>(), 0.005);
  EXPECT_EQ(scores.special_scores[1][0].item<double>(), 0.0);
  EXPECT_EQ(scores.special_scores[1][1].item<double>(), -0.005);
  EXPECT_EQ(scores.concept_scores[0][0].item<double>(), 0.005);
  EXPECT_EQ(scores.concept_scores[1][0].item<double>(), -0.005);
  EXPECT_EQ(scores.flagged, (std::vector<bool>{true, false}));
}

TEST(SafetyScore, RejectsMismatchedShapes) {
  EXPECT_THROW(txt2img::score_safety(torch::zeros({2, 17}), torch::zeros({16}), torch::zeros({2, 3}),
                                     torch::zeros({3})),
               Error);
  EXPECT_THROW(txt2img::score_safety(torch::zeros({2, 17}), torch::zeros({17}), torch::zeros({1, 3}),
                                     torch::zeros({3})),
               Error);
}

// ---------------------------------------------------------------------------------------------------------------
// SafetyChecker plumbing with stand-in TorchScript modules of the exported contract (the real vision tower's parity
// is tested with the converter).

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "txt2img-safety-XXXXXX").string();
    path = mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path); }
};

// Returns the fixture's similarities and thresholds, plus 1000 times the largest difference between its input
// and the fixture's clip_input: scores only equal the reference if check() fed the module exactly clip_input.
fs::path save_replay_module(const SafeTensors& st, const fs::path& dir) {
  torch::jit::Module m("SafetyReplay");
  m.register_buffer("clip_input", st.get("safety/clip_input"));
  m.register_buffer("image_embeds", st.get("safety/image_embeds"));
  m.register_buffer("cos_dist", st.get("safety/cos_dist"));
  m.register_buffer("special_cos_dist", st.get("safety/special_cos_dist"));
  m.register_buffer("concept_embeds_weights", st.get("safety/concept_embeds_weights"));
  m.register_buffer("special_care_embeds_weights", st.get("safety/special_care_embeds_weights"));
  m.define(R"(
    def forward(self, clip_input: Tensor):
        err = (clip_input - self.clip_input).abs().max() * 1000.0
        return (self.image_embeds, self.cos_dist + err, self.special_cos_dist + err,
                self.concept_embeds_weights, self.special_care_embeds_weights)
  )");
  const fs::path file = dir / "safety_checker.pt";
  m.save(file.string());
  return file;
}

TEST(SafetyChecker, RunsTheModuleOnPreprocessedImagesAndScores) {
  for (const char* preset : {"tiny", "sd1"})
    for (const char* name : {"B_one_flagged", "C_special_care_adjustment"}) {
      SCOPED_TRACE(std::string(preset) + "/" + name);
      TempDir tmp;
      auto st = SafeTensors::open(reference() / preset / "safety" / name / "tensors.safetensors");
      txt2img::SafetyChecker checker(save_replay_module(st, tmp.path), fixture_config(), torch::kCPU);
      expect_scores_match(checker.check(st.get("safety/pil_uint8")), st);
    }
}

TEST(SafetyChecker, RunsOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  TempDir tmp;
  auto st = SafeTensors::open(reference() / "sd1/safety/C_special_care_adjustment/tensors.safetensors");
  txt2img::SafetyChecker checker(save_replay_module(st, tmp.path), fixture_config(), torch::Device(torch::kCUDA, 0));
  expect_scores_match(checker.check(st.get("safety/pil_uint8")), st);
}

void expect_bundle_error(const std::function<void()>& f, const std::string& file) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Bundle);
    const std::string message = e.what();
    EXPECT_NE(message.find(file), std::string::npos) << message;
    EXPECT_NE(message.find("scripts/convert.py"), std::string::npos) << message;
  }
}

TEST(SafetyChecker, LoadingProblemsAreBundleErrors) {
  TempDir tmp;
  const fs::path missing = tmp.path / "safety_checker.pt";
  expect_bundle_error([&] { txt2img::SafetyChecker(missing, fixture_config(), torch::kCPU); }, missing.string());

  const fs::path garbage = tmp.path / "garbage.pt";
  std::ofstream(garbage) << "not a TorchScript archive";
  expect_bundle_error([&] { txt2img::SafetyChecker(garbage, fixture_config(), torch::kCPU); }, garbage.string());

  // Loads, but its forward breaks the output contract: reported when first used.
  torch::jit::Module m("WrongContract");
  m.define(R"(
    def forward(self, clip_input: Tensor):
        return clip_input.mean()
  )");
  const fs::path wrong = tmp.path / "wrong.pt";
  m.save(wrong.string());
  txt2img::SafetyChecker checker(wrong, fixture_config(), torch::kCPU);
  expect_bundle_error([&] { checker.check(noise_image(16, 16, 3).unsqueeze(0)); }, wrong.string());
}

}  // namespace
