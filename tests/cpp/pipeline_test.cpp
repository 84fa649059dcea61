#include "txt2img/pipeline.hpp"

#include <gtest/gtest.h>
#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/cuda.h>
#include <torch/nn/functional/upsampling.h>

#include <cstdlib>
#include <fstream>
#include <map>

#include "expect_error.hpp"
#include "fixtures.hpp"
#include "sha256.hpp"
#include "txt2img/error.hpp"
#include "txt2img/safetensors.hpp"
#include "txt2img/scheduler.hpp"

namespace {

using txt2img::Error;
using txt2img::ErrorKind;

TEST(Pipeline, RefusesABundleWithoutCheckerUnlessSafetyIsOff) {
  BundleCopy copy;
  auto j = copy.manifest();
  j["files"].erase("safety_checker.pt");
  j["safety"] = nullptr;
  copy.set_manifest(j);
  std::filesystem::remove(copy.dir() / "safety_checker.pt");
  auto bundle = txt2img::Bundle::open(copy.dir());
  expect_error([&] { txt2img::Pipeline::load(bundle, {}); }, ErrorKind::Usage, {"--no-safety-checker"});
  txt2img::PipelineOptions off;
  off.safety = txt2img::SafetyMode::Off;
  auto pipeline = txt2img::Pipeline::load(bundle, off);
  txt2img::SeededNoise noise({1});
  txt2img::GenerationParams params;
  params.steps = 2;
  auto images = pipeline.generate({"a"}, {""}, params, noise);
  EXPECT_FALSE(images[0].safety_checked);
}

// Keeps every named tensor a generation shows (a copy) and its progress, (call, calls) per U-Net call.
struct Keep : txt2img::Observer {
  void tensor(const std::string& name, const torch::Tensor& value) override { kept[name] = value.clone(); }
  void step(size_t call, size_t calls) override { progress.emplace_back(call, calls); }
  std::map<std::string, torch::Tensor> kept;
  std::vector<std::pair<size_t, size_t>> progress;
};

// A U-Net call's number as observed tensors name it ("unet/003/noise_pred").
std::string call_name(size_t call) {
  char name[8];
  std::snprintf(name, sizeof name, "%03zu", call);
  return name;
}

// The settings of the small generations here: 64x48 pixels, 3 steps.
txt2img::GenerationParams small_params() {
  txt2img::GenerationParams params;
  params.width = 64;
  params.height = 48;
  params.steps = 3;
  return params;
}

// small_params with `sampler` and a hires pass at 1.5 times the size (96x72) of strength 0.5: the last 3 steps of a
// 6-step schedule.
txt2img::GenerationParams small_hires_params(const std::string& sampler) {
  auto params = small_params();
  params.sampler = sampler;
  params.hires.scale = 1.5;
  params.hires.denoise = 0.5;
  return params;
}

// The tiny bundle's images of `prompts` with empty negative prompts.
std::vector<txt2img::GeneratedImage> generate_small(txt2img::Pipeline& pipeline, const std::vector<std::string>& prompts,
                                                    std::vector<uint64_t> seeds,
                                                    const txt2img::GenerationParams& params = small_params(),
                                                    txt2img::Observer* observer = nullptr) {
  txt2img::SeededNoise noise(std::move(seeds));
  return pipeline.generate(prompts, std::vector<std::string>(prompts.size(), ""), params, noise, observer);
}

// Whether two latents agree within `relative` of the larger one's largest magnitude. A batch's matrix products round
// differently from a single row's, and the difference scales with the latents (which reach hundreds on the random
// models), so an element-wise tolerance fails on elements near zero depending on the CPU's BLAS kernels.
testing::AssertionResult latents_agree(const torch::Tensor& a, const torch::Tensor& b, double relative = 1e-5) {
  const double scale = std::max(a.abs().max().item<double>(), b.abs().max().item<double>());
  const double worst = (a - b).abs().max().item<double>();
  if (worst <= relative * scale) return testing::AssertionSuccess();
  return testing::AssertionFailure() << "largest difference " << worst << " exceeds " << relative << " x " << scale;
}

// The largest difference between two images of the same size, in 8-bit levels.
int max_level_difference(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  EXPECT_EQ(a.size(), b.size());
  int worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

class TinyPipeline : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pipeline_ = new txt2img::Pipeline(txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {}));
  }
  static void TearDownTestSuite() { delete pipeline_; }

  static std::vector<txt2img::GeneratedImage> run(const std::vector<std::string>& prompts,
                                                  std::vector<uint64_t> seeds) {
    return generate_small(*pipeline_, prompts, std::move(seeds));
  }
  static txt2img::Pipeline* pipeline_;
};
txt2img::Pipeline* TinyPipeline::pipeline_ = nullptr;

TEST_F(TinyPipeline, ImageHasTheAskedSizeAndIsChecked) {
  auto images = run({"a red cube"}, {7});
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0].width, 64);
  EXPECT_EQ(images[0].height, 48);
  EXPECT_EQ(images[0].rgb.size(), 64u * 48 * 3);
  EXPECT_TRUE(images[0].safety_checked);
  EXPECT_FALSE(images[0].nsfw);
}

TEST_F(TinyPipeline, SameSeedSameImageOtherSeedOtherImage) {
  auto a = run({"a red cube"}, {7});
  auto b = run({"a red cube"}, {7});
  auto c = run({"a red cube"}, {8});
  EXPECT_EQ(a[0].rgb, b[0].rgb);
  EXPECT_NE(a[0].rgb, c[0].rgb);
}

TEST_F(TinyPipeline, AnImageDoesNotDependOnItsBatch) {
  auto together = run({"a red cube", "a blue sphere"}, {7, 8});
  auto first = run({"a red cube"}, {7});
  auto second = run({"a blue sphere"}, {8});
  for (auto [batched, alone] : {std::pair{&together[0], &first[0]}, {&together[1], &second[0]}})
    EXPECT_LE(max_level_difference(batched->rgb, alone->rgb), 1);
}

// The command line runs TorchScript unprofiled on the CPU (and with CUDA graphs): the same computation, so the same
// pixels as the profiling executor's, whose optimised graphs take over from the third call on.
TEST_F(TinyPipeline, UnprofiledExecutionGivesTheSameImage) {
  txt2img::PipelineOptions plain;
  plain.profiling_executor = false;
  auto unprofiled = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), plain);
  const auto image = generate_small(unprofiled, {"a red cube"}, {7})[0].rgb;
  // Frozen graphs too (freezing needs the executor's optimisations, which the pipeline turns off only afterwards).
  for (auto graph : {txt2img::GraphOptimization::Freeze, txt2img::GraphOptimization::FreezeAndOptimize}) {
    plain.graph = graph;
    auto frozen = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), plain);
    EXPECT_LE(max_level_difference(generate_small(frozen, {"a red cube"}, {7})[0].rgb, image), 1);
  }
  txt2img::PipelineOptions profiled;  // setGraphExecutorOptimize is process-wide: restore LibTorch's default
  auto again = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), profiled);
  for (int run = 0; run < 2; ++run) EXPECT_EQ(generate_small(again, {"a red cube"}, {7})[0].rgb, image);
}

TEST_F(TinyPipeline, LowVramBelowTheTileSizeGivesTheSameImage) {
  txt2img::PipelineOptions low_vram;
  low_vram.low_vram = true;
  auto low = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), low_vram);
  // Twice: on a GPU the U-Net and the decoder take turns, and a second batch must find each where it needs it.
  for (int batch = 0; batch < 2; ++batch) {
    auto images = generate_small(low, {"a red cube"}, {7});
    EXPECT_TRUE(images[0].safety_checked);
    EXPECT_EQ(images[0].rgb, run({"a red cube"}, {7})[0].rgb);
  }
}

// A1111's Tiling: the U-Net and the VAE decoder pad circularly (circular_padding_test shows that they then wrap
// around), which changes the image. Freezing keeps the switch (set before it), and with low_vram the decoder takes an
// image above the tile size whole, since each tile would wrap around inside itself.
TEST_F(TinyPipeline, TilingPadsCircularlyFrozenOrNotAndDecodesWhole) {
  txt2img::PipelineOptions options;
  options.tiling = true;
  auto tiling = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), options);
  const auto image = generate_small(tiling, {"a red cube"}, {7})[0].rgb;
  EXPECT_GT(max_level_difference(image, run({"a red cube"}, {7})[0].rgb), 8);
  options.graph = txt2img::GraphOptimization::FreezeAndOptimize;
  auto frozen = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), options);
  EXPECT_LE(max_level_difference(generate_small(frozen, {"a red cube"}, {7})[0].rgb, image), 1);

  auto wide = small_params();
  wide.width = 576;  // 72 latents: above low_vram's 64-latent tiles
  wide.height = 64;
  wide.steps = 1;
  options.graph = txt2img::GraphOptimization::None;
  options.low_vram = true;
  for (bool tiles : {true, false}) {
    options.tiling = !tiles;
    auto low = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), options);
    EXPECT_EQ(generate_small(low, {"a red cube"}, {7}, wide)[0].decoded_in_tiles, tiles);
  }
}

// TAESD decodes the final latents as the U-Net left them (the VAE takes them divided by the scaling factor), with
// the bundle's taesd_decoder.pt, whole even with low_vram; the images differ from the VAE's.
TEST_F(TinyPipeline, TaesdDecodesTheUndividedLatents) {
  txt2img::PipelineOptions tiny_decoder;
  tiny_decoder.decoder = txt2img::Decoder::Taesd;
  auto taesd = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), tiny_decoder);
  Keep keep;
  const auto image = generate_small(taesd, {"a red cube"}, {7}, small_params(), &keep)[0].rgb;
  EXPECT_TRUE(torch::equal(keep.kept.at("vae/decode_in"), keep.kept.at("latents/step_002")));
  auto module = torch::jit::load((fixtures() / "tiny" / "taesd_decoder.pt").string());
  c10::InferenceMode inference;
  const auto decoded = module.forward({keep.kept.at("vae/decode_in")}).toTensor();
  EXPECT_TRUE(torch::allclose(keep.kept.at("vae/decode_out"), decoded, 1e-6, 1e-6));
  EXPECT_GT(max_level_difference(image, run({"a red cube"}, {7})[0].rgb), 8);

  tiny_decoder.low_vram = true;
  auto low = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), tiny_decoder);
  auto large = small_params();
  large.width = large.height = 1024;  // 128 latents a side: the VAE would be tiled
  large.steps = 1;
  Keep whole;
  generate_small(low, {"a red cube"}, {7}, large, &whole);
  EXPECT_TRUE(torch::allclose(whole.kept.at("vae/decode_out"), module.forward({whole.kept.at("vae/decode_in")}).toTensor(),
                              1e-6, 1e-6));
}

// Previews: TAESD's decode of the sampler's x0 estimate after the calls the observer asks for, safety-checked as the
// final images; they leave the final images as they are.
TEST(Pipeline, PreviewsShowTheEstimateAndAreChecked) {
  struct Previews : txt2img::Observer {
    void tensor(const std::string& name, const torch::Tensor& value) override {
      if (name.rfind("step/", 0) == 0 && name.find("pred_original_sample") != std::string::npos) x0.push_back(value);
    }
    bool wants_preview(size_t call, size_t) override { return call % 2 == 0; }
    void preview(size_t call, size_t calls, const std::vector<txt2img::GeneratedImage>& images) override {
      calls_seen.emplace_back(call, calls);
      shown.push_back(images);
    }
    std::vector<torch::Tensor> x0;
    std::vector<std::pair<size_t, size_t>> calls_seen;
    std::vector<std::vector<txt2img::GeneratedImage>> shown;
  };
  txt2img::PipelineOptions with_previews;
  with_previews.previews = true;
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), with_previews);
  auto params = small_params();
  params.steps = 4;
  Previews previews;
  const auto images = generate_small(pipeline, {"a red cube", "a blue ball"}, {7, 8}, params, &previews);
  ASSERT_EQ(previews.calls_seen, (std::vector<std::pair<size_t, size_t>>{{2, 4}, {4, 4}}));
  ASSERT_EQ(previews.shown[0].size(), 2u);
  EXPECT_EQ(previews.shown[0][0].width, 64);
  EXPECT_EQ(previews.shown[0][0].height, 48);
  EXPECT_TRUE(previews.shown[0][0].safety_checked);
  auto taesd = torch::jit::load((fixtures() / "tiny" / "taesd_decoder.pt").string());
  c10::InferenceMode inference;
  const auto decoded = taesd.forward({previews.x0[1]}).toTensor();  // after the second call
  const auto pixels =
      ((decoded[1] * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch::kUInt8).permute({1, 2, 0}).contiguous();
  const auto* data = pixels.data_ptr<uint8_t>();
  EXPECT_LE(max_level_difference(previews.shown[0][1].rgb, std::vector<uint8_t>(data, data + pixels.numel())), 1);
  txt2img::PipelineOptions plain;
  auto without = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), plain);
  EXPECT_EQ(generate_small(without, {"a red cube", "a blue ball"}, {7, 8}, params)[0].rgb, images[0].rgb);
  // Decoding the images with TAESD too, the previews share its module and are the same.
  auto both = with_previews;
  both.decoder = txt2img::Decoder::Taesd;
  auto taesd_pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), both);
  Previews shared;
  generate_small(taesd_pipeline, {"a red cube", "a blue ball"}, {7, 8}, params, &shared);
  ASSERT_EQ(shared.shown.size(), previews.shown.size());
  for (size_t i = 0; i < shared.shown.size(); ++i) EXPECT_EQ(shared.shown[i][1].rgb, previews.shown[i][1].rgb);

  auto flag_all = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny-flag-all"), with_previews);
  Previews flagged;
  generate_small(flag_all, {"a red cube"}, {7}, params, &flagged);
  ASSERT_FALSE(flagged.shown.empty());
  EXPECT_TRUE(flagged.shown[0][0].nsfw);
  EXPECT_EQ(flagged.shown[0][0].rgb, std::vector<uint8_t>(64 * 48 * 3, 0));
}

// An LCM-distilled U-Net takes the guidance scale as an embedding input, as LatentConsistencyModelPipeline runs it:
// one U-Net row per image (no unconditional rows, so the negative prompt is unused), given w = scale - 1.
TEST(Pipeline, GuidanceEmbeddingModelsTakeTheScaleAsAnInput) {
  const auto bundle = txt2img::Bundle::open(fixtures() / "tiny-lcm");
  ASSERT_EQ(bundle.manifest().guidance_embedding_dim, 8);
  auto pipeline = txt2img::Pipeline::load(bundle, {});
  txt2img::GenerationParams params;
  params.sampler = "lcm";
  params.steps = 2;
  params.cfg_scale = 8.5;
  auto make = [&](const std::string& negative, double scale, Keep* keep = nullptr) {
    params.cfg_scale = scale;
    txt2img::SeededNoise noise({3});
    return pipeline.generate({"a red cube"}, {negative}, params, noise, keep)[0].rgb;
  };
  Keep keep;
  const auto image = make("", 8.5, &keep);
  const auto& sample = keep.kept.at("latents/init");
  const auto& context = keep.kept.at("unet/encoder_hidden_states");
  ASSERT_EQ(context.size(0), 1);  // the prompt's row only
  auto unet = torch::jit::load((fixtures() / "tiny-lcm" / "unet.pt").string());
  c10::InferenceMode inference;
  const auto first = unet.forward({sample, torch::tensor(int64_t{999}), context, torch::tensor({7.5f})}).toTensor();
  EXPECT_TRUE(torch::allclose(keep.kept.at("unet/000/noise_pred"), first, 1e-5, 1e-6));
  EXPECT_EQ(make("blurry, dark", 8.5), image);
  EXPECT_GT(max_level_difference(make("", 2.0), image), 0);
}

TEST(Pipeline, TaesdNeedsABundleWithOne) {
  BundleCopy copy;
  auto j = copy.manifest();
  j["files"].erase("taesd_decoder.pt");
  copy.set_manifest(j);
  std::filesystem::remove(copy.dir() / "taesd_decoder.pt");
  txt2img::PipelineOptions options;
  options.decoder = txt2img::Decoder::Taesd;
  expect_error([&] { txt2img::Pipeline::load(txt2img::Bundle::open(copy.dir()), options); }, ErrorKind::Usage,
               {"has no TAESD decoder", "--taesd", "--decoder full"});
  txt2img::PipelineOptions previews;
  previews.previews = true;
  expect_error([&] { txt2img::Pipeline::load(txt2img::Bundle::open(copy.dir()), previews); }, ErrorKind::Usage,
               {"has no TAESD decoder", "--taesd", "without previews"});
  EXPECT_NO_THROW(txt2img::Pipeline::load(txt2img::Bundle::open(copy.dir()), {}));
}

// A U-Net from a converter before the circular-padding switch (here a frozen one: freezing inlines the switch away)
// is a bundle error that says to convert again; the bundle still loads without tiling.
TEST(Pipeline, TilingNeedsAUNetWithTheSwitch) {
  BundleCopy copy;
  const auto unet_file = copy.dir() / "unet.pt";
  auto unet = torch::jit::load(unet_file.string());
  unet.eval();
  torch::jit::freeze(unet).save(unet_file.string());
  auto j = copy.manifest();
  j["files"]["unet.pt"]["bytes"] = std::filesystem::file_size(unet_file);
  copy.set_manifest(j);
  txt2img::PipelineOptions options;
  options.tiling = true;
  expect_error([&] { txt2img::Pipeline::load(txt2img::Bundle::open(copy.dir()), options); }, ErrorKind::Bundle,
               {"unet.pt cannot pad circularly for --tiling", "scripts/convert.py"});
  EXPECT_NO_THROW(txt2img::Pipeline::load(txt2img::Bundle::open(copy.dir()), {}));
}

// A run of `params` (seed 7, "a red cube") replayed from its guided model outputs through a fresh scheduler and a
// fresh SeededNoise of its seed, which gives step noise exactly at the calls the scheduler asks for: a draw from the
// image's generator, or where the scheduler names one, a Brownian increment. The replay's latents and the run's, and
// how many increments it took.
struct Replay {
  torch::Tensor latents, run_latents;
  size_t increments = 0;
};
Replay replay_seed_7(txt2img::Pipeline& pipeline, const txt2img::GenerationParams& params) {
  Keep run;
  generate_small(pipeline, {"a red cube"}, {7}, params, &run);
  auto config = pipeline.manifest().scheduler;
  config.timestep_spacing.clear();  // each sampler's own default, as the pipeline uses
  auto scheduler = txt2img::make_scheduler(params.sampler, config, params.steps, params.eta);
  txt2img::SeededNoise noise({7});
  Replay replay;
  replay.latents = noise.draw(run.kept.at("latents/init").sizes().vec()) * scheduler->init_noise_sigma();
  const size_t calls = scheduler->timesteps().size();
  for (size_t call = 0; call < calls; ++call) {
    torch::Tensor step_noise;
    if (const auto increment = scheduler->brownian_increment(call)) {
      EXPECT_TRUE(scheduler->needs_noise(call)) << call;
      step_noise = noise.brownian(replay.latents.sizes().vec(), *increment);
      ++replay.increments;
    } else if (scheduler->needs_noise(call)) {
      step_noise = noise.draw(replay.latents.sizes().vec());
    }
    replay.latents =
        scheduler->step(run.kept.at("step/" + call_name(call) + "/model_output"), call, replay.latents, step_noise);
  }
  replay.run_latents = run.kept.at("latents/step_" + call_name(calls - 1));
  return replay;
}

// The samplers that draw noise while stepping draw it from each image's own generator, right after the initial
// latents and exactly at the calls the scheduler asks for (LCM, TCD with a gamma: all but the last): replaying a run
// gives its latents; and a batch gives each image what it gets alone.
TEST_F(TinyPipeline, StochasticSamplersDrawStepNoisePerImageInDiffusersOrder) {
  for (const auto& [sampler, eta] :
       std::vector<std::pair<std::string, double>>{{"lcm", 0}, {"euler_a", 0}, {"tcd", 0.3}}) {
    auto params = small_params();
    params.sampler = sampler;
    params.eta = eta;
    params.steps = 4;
    const auto replay = replay_seed_7(*pipeline_, params);
    EXPECT_TRUE(torch::equal(replay.latents, replay.run_latents)) << sampler;
    EXPECT_EQ(replay.increments, 0u) << sampler;

    const auto image = generate_small(*pipeline_, {"a red cube"}, {7}, params)[0];
    const auto together = generate_small(*pipeline_, {"a blue sphere", "a red cube"}, {8, 7}, params);
    EXPECT_LE(max_level_difference(together[1].rgb, image.rgb), 1) << sampler;
  }
}

// A1111's Restart draws its noise, from 20 steps on, where it runs a stretch of its schedule again: from each image's
// generator, as the ancestral samplers do, so that the ENSD moves it and the image says it drew step noise. A hires
// pass of 20 steps or more plans its own restart over the rest of its schedule.
TEST_F(TinyPipeline, RestartDrawsStepNoiseWhereItRestarts) {
  auto params = small_params();
  params.sampler = "restart_karras";
  params.steps = 20;
  const auto replay = replay_seed_7(*pipeline_, params);
  EXPECT_TRUE(torch::equal(replay.latents, replay.run_latents));
  const auto image = generate_small(*pipeline_, {"a red cube"}, {7}, params)[0];
  EXPECT_TRUE(image.drew_step_noise);
  txt2img::SeededNoise with_ensd({7}, {}, 31337);
  EXPECT_GT(max_level_difference(pipeline_->generate({"a red cube"}, {""}, params, with_ensd)[0].rgb, image.rgb), 0);
  params.steps = 19;
  EXPECT_FALSE(generate_small(*pipeline_, {"a red cube"}, {7}, params)[0].drew_step_noise);

  auto hires = small_hires_params("restart");
  hires.hires.steps = 20;
  const auto upscaled = generate_small(*pipeline_, {"a red cube"}, {7}, hires)[0];
  EXPECT_EQ(upscaled.width, 96);
  EXPECT_TRUE(upscaled.drew_step_noise);
}

// DPM++ SDE, A1111's DPM++ 2M SDE (Heun) and DPM++ 3M SDE take their step noise from Brownian trees whose entropy is
// each image's seed, as A1111 seeds them: replaying a run with SeededNoise's trees gives its latents. No generator
// draws it, so the ENSD changes nothing (and the image says it drew no step noise); a batch gives each image what it
// gets alone; a hires pass makes trees over its own schedule.
TEST_F(TinyPipeline, SdeSamplersTakeBrownianNoiseFromEachImagesSeed) {
  // 4 steps: both calls of each step but the last, or each step but the last.
  for (const auto& [sampler, increments] : std::vector<std::pair<std::string, size_t>>{
           {"dpmpp_sde", 6}, {"dpmpp_2m_sde_a1111", 3}, {"dpmpp_2m_sde_heun_karras", 3}, {"dpmpp_3m_sde", 3}}) {
    SCOPED_TRACE(sampler);
    auto params = small_params();
    params.sampler = sampler;
    params.steps = 4;
    const auto replay = replay_seed_7(*pipeline_, params);
    EXPECT_EQ(replay.increments, increments);
    EXPECT_TRUE(torch::equal(replay.latents, replay.run_latents));

    const auto image = generate_small(*pipeline_, {"a red cube"}, {7}, params)[0];
    EXPECT_FALSE(image.drew_step_noise);
    txt2img::SeededNoise with_ensd({7}, {}, 31337);
    EXPECT_EQ(pipeline_->generate({"a red cube"}, {""}, params, with_ensd)[0].rgb, image.rgb);
    const auto together = generate_small(*pipeline_, {"a blue sphere", "a red cube"}, {8, 7}, params);
    EXPECT_LE(max_level_difference(together[1].rgb, image.rgb), 1);
    EXPECT_GT(max_level_difference(together[0].rgb, image.rgb), 8);
  }
  const auto hires = generate_small(*pipeline_, {"a red cube"}, {7}, small_hires_params("dpmpp_sde"))[0];
  EXPECT_EQ(hires.width, 96);
  EXPECT_GT(max_level_difference(
                hires.rgb, generate_small(*pipeline_, {"a red cube"}, {8}, small_hires_params("dpmpp_sde"))[0].rgb),
            8);
}

// Records the prompts' text embeddings ("text/last_hidden_state").
struct TextEmbeddings : txt2img::Observer {
  void tensor(const std::string& name, const torch::Tensor& value) override {
    if (name == "text/last_hidden_state") shapes.push_back(value.sizes().vec());
  }
  std::vector<std::vector<int64_t>> shapes;
};

std::vector<uint8_t> long_prompt_image(txt2img::Pipeline& pipeline, const std::string& prompt, bool long_prompts,
                                       txt2img::Observer* observer = nullptr) {
  auto params = small_params();
  params.long_prompts = long_prompts;
  return generate_small(pipeline, {prompt}, {7}, params, observer)[0].rgb;
}

std::string words(const std::string& word, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += word + " ";
  return out;
}

TEST_F(TinyPipeline, LongPromptsEncodeTheWholeTextInChunks) {
  // A text that fits: the same image either way.
  EXPECT_EQ(long_prompt_image(*pipeline_, "a red cube", true), long_prompt_image(*pipeline_, "a red cube", false));
  // 100 and 80 words of which the text encoder reads 75: cut off, they are the same prompt; in chunks they differ.
  const std::string longer = words("cat", 100), shorter = words("cat", 80);
  EXPECT_EQ(long_prompt_image(*pipeline_, longer, false), long_prompt_image(*pipeline_, shorter, false));
  TextEmbeddings seen;
  EXPECT_NE(long_prompt_image(*pipeline_, longer, true, &seen), long_prompt_image(*pipeline_, shorter, true));
  ASSERT_EQ(seen.shapes.size(), 1u);
  EXPECT_EQ(seen.shapes[0][1], 2 * 77);  // two chunks of 77 tokens, end to end
  txt2img::GenerationParams params;
  params.long_prompts = true;
  using Chunks = std::vector<txt2img::Pipeline::TextChunks>;  // {prompt, negative prompt}, one per pass
  EXPECT_EQ(pipeline_->text_chunks(longer, "", params), (Chunks{{2, 1}}));
  EXPECT_EQ(pipeline_->text_chunks("a cat", words("dog", 160), params), (Chunks{{1, 3}}));
  // With prompt editing, each pass counts the texts it reads: here the long text only in the hires pass.
  params.emphasis = true;
  params.hires.scale = 2;
  EXPECT_EQ(pipeline_->text_chunks("[a cat:" + longer + ":1.5]", "", params), (Chunks{{1, 1}, {2, 1}}));
  EXPECT_EQ(pipeline_->text_chunks(longer, "", params), (Chunks{{2, 1}, {2, 1}}));
  // A composable prompt counts its longest part.
  EXPECT_EQ(pipeline_->text_chunks("a cat AND " + longer, "", params), (Chunks{{2, 1}, {2, 1}}));
  params.hires.scale = 0;
  params.emphasis = false;
  params.cfg_scale = 1;  // without guidance the negative prompt is not read
  EXPECT_EQ(pipeline_->text_chunks("a cat", words("dog", 160), params), (Chunks{{1, 0}}));
  params.long_prompts = false;
  EXPECT_EQ(pipeline_->text_chunks(longer, "", params), (Chunks{{1, 0}}));
}

// One small generation's named tensors, with a negative prompt.
std::map<std::string, torch::Tensor> kept_tensors(txt2img::Pipeline& pipeline, const std::string& prompt,
                                                  const std::string& negative_prompt,
                                                  txt2img::GenerationParams params = small_params()) {
  Keep keep;
  txt2img::SeededNoise noise({7});
  pipeline.generate({prompt}, {negative_prompt}, params, noise, &keep);
  return keep.kept;
}

TEST_F(TinyPipeline, PromptAndNegativePromptOfDifferentLengthsGoThroughTheUNetApartAsInA1111) {
  // A1111 pads neither: a prediction depends on its own text alone, whatever length the other has.
  auto params = small_params();
  params.long_prompts = true;
  const std::string longer = words("cat", 100), long_negative = words("dog", 100);
  const auto apart = kept_tensors(*pipeline_, longer, "blurry", params);
  EXPECT_EQ(apart.at("unet/uncond_encoder_hidden_states").sizes(), (std::vector<int64_t>{1, 77, 32}));
  EXPECT_EQ(apart.at("unet/encoder_hidden_states").sizes(), (std::vector<int64_t>{1, 2 * 77, 32}));
  const auto short_prompt = kept_tensors(*pipeline_, "a cat", "blurry", params);  // one U-Net batch [uncond, cond]
  EXPECT_EQ(short_prompt.count("unet/uncond_encoder_hidden_states"), 0u);
  const auto same_length = kept_tensors(*pipeline_, longer, long_negative, params);
  const auto& prediction = apart.at("unet/000/noise_pred");
  ASSERT_EQ(prediction.size(0), 2);
  EXPECT_TRUE(latents_agree(prediction[0], short_prompt.at("unet/000/noise_pred")[0]));
  EXPECT_TRUE(latents_agree(prediction[1], same_length.at("unet/000/noise_pred")[1]));
  EXPECT_FALSE(latents_agree(prediction[0], same_length.at("unet/000/noise_pred")[0]));  // the negative prompt counts
  // The same holds for the negative prompt being the longer one.
  const auto longer_negative = kept_tensors(*pipeline_, "a cat", long_negative, params);
  EXPECT_TRUE(latents_agree(longer_negative.at("unet/000/noise_pred")[1], short_prompt.at("unet/000/noise_pred")[1]));
}

// Two images whose prompts (one with AND) and negative prompts take different numbers of chunks, made in one batch
// (observed by `batch`), and each again alone: each image of the batch must be the one it makes alone.
std::vector<txt2img::GeneratedImage> expect_batch_of_two_as_alone(txt2img::Pipeline& pipeline,
                                                                  const txt2img::GenerationParams& params,
                                                                  Keep& batch) {
  const std::vector<std::string> prompts = {words("cat", 100), words("dog", 90) + "AND a fox:0.5"};
  const std::vector<std::string> negatives = {"blurry", ""};
  txt2img::SeededNoise noise({3, 4});
  auto images = pipeline.generate(prompts, negatives, params, noise, &batch);
  for (size_t image = 0; image < 2; ++image) {
    Keep alone;
    txt2img::SeededNoise seeded({3 + image});
    pipeline.generate({prompts[image]}, {negatives[image]}, params, seeded, &alone);
    EXPECT_TRUE(
        latents_agree(batch.kept.at("vae/decode_in")[static_cast<int64_t>(image)], alone.kept.at("vae/decode_in")[0]))
        << image;
  }
  return images;
}

TEST_F(TinyPipeline, ImagesWhosePromptRowsGoApartShareABatchAndMakeTheImagesTheyMakeAlone) {
  auto params = small_params();
  params.long_prompts = params.emphasis = true;
  Keep batch;
  expect_batch_of_two_as_alone(*pipeline_, params, batch);
  EXPECT_EQ(batch.kept.at("unet/000/uncond_encoder_hidden_states").size(0), 2);
  EXPECT_EQ(batch.kept.at("unet/000/encoder_hidden_states").size(0), 3);  // the cat's row, the dog's and the fox's
}

// Padded conds in a batch of two images and through a hires pass: one U-Net call a step, each image as alone.
TEST_F(TinyPipeline, PaddedCondsInABatchAndAHiresPassMakeTheImagesTheyMakeAlone) {
  auto params = small_params();
  params.long_prompts = params.emphasis = true;
  params.hires.scale = 1.5;
  params.hires.steps = 2;
  for (const auto pad :
       {txt2img::GenerationParams::PadConds::EmptyChunks, txt2img::GenerationParams::PadConds::LastVector}) {
    params.pad_conds = pad;
    Keep batch;
    const auto images = expect_batch_of_two_as_alone(*pipeline_, params, batch);
    EXPECT_EQ(batch.kept.count("unet/000/uncond_encoder_hidden_states"), 0u);
    EXPECT_EQ(batch.kept.count("hires/unet/000/uncond_encoder_hidden_states"), 0u);
    EXPECT_EQ(batch.kept.count("hires/unet/000/encoder_hidden_states"), 1u);
    EXPECT_EQ(batch.kept.at("unet/000/encoder_hidden_states").sizes(), (std::vector<int64_t>{5, 2 * 77, 32}));
    for (const auto& image : images) EXPECT_TRUE(image.padded_conds);
  }
}

TEST_F(TinyPipeline, ComposablePromptsOfDifferentLengthsRepeatTheShorterOnesLastVectorAsA1111) {
  auto params = small_params();
  params.long_prompts = true;
  params.emphasis = true;
  const std::string longer = words("cat", 100);
  const auto kept = kept_tensors(*pipeline_, "a dog AND " + longer, "", params);
  const auto& context = kept.at("unet/encoder_hidden_states");  // the two prompt rows, apart from the negative's
  ASSERT_EQ(context.sizes(), (std::vector<int64_t>{2, 2 * 77, 32}));
  const auto short_row = context[0];
  EXPECT_TRUE(torch::equal(short_row.slice(0, 77), short_row[76].expand({77, 32})));
  // The row's own 77 vectors are its text's encoding, as a prompt of its own encodes it.
  EXPECT_TRUE(latents_agree(short_row.slice(0, 0, 77),
                            kept_tensors(*pipeline_, "a dog", "", params).at("text/last_hidden_state")[0]));
}

TEST_F(TinyPipeline, PromptEditingPadsAPromptsTextsWithEmptyChunksAsA1111) {
  // A1111 encodes a prompt's schedule in one batch, every text with as many chunks as the longest.
  auto params = small_params();
  params.long_prompts = true;
  params.emphasis = true;
  const auto kept = kept_tensors(*pipeline_, "[a dog:" + words("cat", 100) + ":0.5]", "", params);
  const auto& texts = kept.at("text/last_hidden_state");
  ASSERT_EQ(texts.sizes(), (std::vector<int64_t>{2, 2 * 77, 32}));
  const auto empty = kept.at("uncond_text/last_hidden_state")[0];  // the negative prompt "" is one empty chunk
  EXPECT_TRUE(latents_agree(texts[0].slice(0, 77), empty));
  // Both go through the U-Net apart from the shorter negative prompt's.
  EXPECT_EQ(kept.at("unet/encoder_hidden_states").sizes(), (std::vector<int64_t>{1, 2 * 77, 32}));
}

// The prompts' text embeddings of a small generation.
torch::Tensor text_embeddings(
    txt2img::Pipeline& pipeline, const std::string& prompt, bool emphasis,
    txt2img::GenerationParams::EmphasisMode mode = txt2img::GenerationParams::EmphasisMode::Original) {
  struct Keep : txt2img::Observer {
    void tensor(const std::string& name, const torch::Tensor& value) override {
      if (name == "text/last_hidden_state") kept = value.clone();
    }
    torch::Tensor kept;
  } keep;
  auto params = small_params();
  params.emphasis = emphasis;
  params.emphasis_mode = mode;
  generate_small(pipeline, {prompt}, {7}, params, &keep);
  return keep.kept;
}

// The random text encoders' final layer norm gives every token mean 0, which would leave A1111's emphasis rescaling
// nothing to keep (a mean of about 0 divided by another): the copy's layer norm adds 0.5 everywhere instead, so its
// embeddings have mean 0.5.
void shift_text_embeddings(const BundleCopy& copy) {
  const auto text_encoder = copy.dir() / "text_encoder.pt";
  {
    auto module = torch::jit::load(text_encoder.string());
    torch::NoGradGuard no_grad;
    for (const auto& p : module.named_parameters())
      if (p.name.find("final_layer_norm.bias") != std::string::npos) p.value.fill_(0.5);
    module.save(text_encoder.string());
  }
  auto j = copy.manifest();
  j["files"]["text_encoder.pt"] = {{"sha256", txt2img::sha256_file(text_encoder)},
                                   {"bytes", std::filesystem::file_size(text_encoder)}};
  copy.set_manifest(j);
}

TEST(Pipeline, EmphasisScalesTokensAndKeepsTheMeanAsA1111) {
  BundleCopy copy;
  shift_text_embeddings(copy);
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(copy.dir()), {});

  // z * w, then rescaled to z's mean: A1111's "Original" emphasis, over the chunk's 77 x hidden values.
  const auto plain = text_embeddings(pipeline, "a red cat", false).to(torch::kFloat64);
  ASSERT_NEAR(plain.mean().item<double>(), 0.5, 1e-3);
  const auto weighted = text_embeddings(pipeline, "a (red:1.5) [cat]", true).to(torch::kFloat64);
  auto w = torch::ones({1, 77, 1}, torch::kFloat64);
  w.index_put_({0, 2, 0}, 1.5);      // bos, "a", "red"
  w.index_put_({0, 3, 0}, 1 / 1.1);  // "cat"
  const auto scaled = plain * w;
  EXPECT_TRUE(torch::allclose(weighted, scaled * (plain.mean() / scaled.mean()), 1e-6, 1e-6));
  // With prompt editing, over the chunk of every text the prompt's schedule reads: A1111 encodes them as one batch.
  const auto edited = text_embeddings(pipeline, "[a (red:1.5) [cat]:a dog:0.5]", true).to(torch::kFloat64);
  const auto dog = text_embeddings(pipeline, "a dog", false).to(torch::kFloat64);
  const auto both = torch::cat({scaled, dog});
  EXPECT_TRUE(torch::allclose(edited, both * (torch::cat({plain, dog}).mean() / both.mean()), 1e-6, 1e-6));
  // Weights of 1 change nothing, bit for bit; escaped brackets are the brackets.
  EXPECT_TRUE(torch::equal(text_embeddings(pipeline, "a (red:1.0) cat", true).to(torch::kFloat64), plain));
  EXPECT_TRUE(torch::equal(text_embeddings(pipeline, "a \\(red\\) cat", true),
                           text_embeddings(pipeline, "a (red) cat", false)));
}

// A1111's other emphasis modes: No norm scales each token's embedding by its weight and leaves the mean as that makes
// it; Ignore reads the brackets (they are no tokens) but not the weights; None reads them as text, but prompt editing
// still works.
TEST(Pipeline, EmphasisModesNoNormIgnoreAndNone) {
  BundleCopy copy;
  shift_text_embeddings(copy);
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(copy.dir()), {});
  using Mode = txt2img::GenerationParams::EmphasisMode;
  const auto plain = text_embeddings(pipeline, "a red cat", false);
  const auto no_norm = text_embeddings(pipeline, "a (red:1.5) [cat]", true, Mode::NoNorm);
  auto w = torch::ones({1, 77, 1}, torch::kFloat32);
  w.index_put_({0, 2, 0}, 1.5);
  w.index_put_({0, 3, 0}, static_cast<float>(1 / 1.1));
  EXPECT_TRUE(torch::equal(no_norm, plain * w));
  EXPECT_GT(std::abs(no_norm.mean().item<double>() - plain.mean().item<double>()), 1e-4);
  EXPECT_FALSE(torch::allclose(no_norm, text_embeddings(pipeline, "a (red:1.5) [cat]", true), 1e-4, 1e-4));
  EXPECT_TRUE(torch::equal(text_embeddings(pipeline, "a (red:1.5) [cat]", true, Mode::Ignore), plain));
  // The escapes are read in every mode but None.
  EXPECT_TRUE(torch::equal(text_embeddings(pipeline, "a ((red)) \\(cat\\)", true, Mode::Ignore),
                           text_embeddings(pipeline, "a red (cat)", false)));
  EXPECT_TRUE(torch::equal(text_embeddings(pipeline, "a (red:1.5) \\(cat\\)", true, Mode::None),
                           text_embeddings(pipeline, "a (red:1.5) \\(cat\\)", false)));
  // Prompt editing: the two texts of its schedule, as with the other modes, where without emphasis it is one text.
  EXPECT_EQ(text_embeddings(pipeline, "[a (red) cat:a dog:0.5]", true, Mode::None).size(0), 2);
  EXPECT_EQ(text_embeddings(pipeline, "[a (red) cat:a dog:0.5]", false).size(0), 1);
}

// The cases of A1111's own code (tests/fixtures/make_a1111_conditioning_goldens.py), made on the reference tiny text
// encoder shifted as above, and a pipeline of that bundle without the checker.
class A1111Conditioning : public testing::Test {
 protected:
  static txt2img::Pipeline load(const BundleCopy& copy) {
    shift_text_embeddings(copy);
    txt2img::PipelineOptions options;
    options.safety = txt2img::SafetyMode::Off;
    return txt2img::Pipeline::load(txt2img::Bundle::open(copy.dir()), options);
  }

  // A case's generation as A1111 made it: its prompt syntax, long prompts, and one U-Net call a step (its Euler).
  static txt2img::GenerationParams params_of(const nlohmann::json& golden) {
    txt2img::GenerationParams params;
    params.sampler = "euler";
    params.steps = golden.at("steps");
    params.emphasis = params.long_prompts = true;
    return params;
  }

  const txt2img::SafeTensors goldens_ = txt2img::SafeTensors::open(TXT2IMG_A1111_CONDITIONING_GOLDENS);
  const nlohmann::json cases_ = nlohmann::json::parse(goldens_.metadata().at("cases"));
  const BundleCopy copy_{"ref-tiny"};
  txt2img::Pipeline pipeline_ = load(copy_);
};

// A1111's prompt_parser and sd_hijack_clip (long prompts, emphasis, prompt editing, AND) made the contexts of each
// U-Net call, and its CFGDenoiser said whether it runs the negative prompt's row and the prompt's together or apart.
TEST_F(A1111Conditioning, EachCallReadsA1111sContexts) {
  ASSERT_GE(cases_.size(), 8u);
  for (const auto& golden : cases_) {
    SCOPED_TRACE(golden.at("name").get<std::string>());
    const auto params = params_of(golden);
    Keep keep;
    txt2img::SeededNoise noise({1});
    pipeline_.generate({golden.at("prompt")}, {golden.at("negative_prompt")}, params, noise, &keep);
    std::vector<double> weights;  // of the prompt rows, which A1111 mixes by them
    for (const auto& row : pipeline_.row_prompts(pipeline_.manifest(), golden.at("prompt"), params))
      weights.push_back(row.weight);
    for (size_t call = 0; call < static_cast<size_t>(params.steps); ++call) {
      SCOPED_TRACE(call);
      EXPECT_EQ(golden.at("weights")[call].get<std::vector<double>>(), weights);
      const auto cond = goldens_.get(golden.at("cond")[call]), uncond = goldens_.get(golden.at("uncond")[call]);
      const std::string name = "unet/" + call_name(call) + "/";
      const bool apart = golden.at("apart")[call];
      ASSERT_EQ(keep.kept.count(name + "uncond_encoder_hidden_states"), apart ? 1u : 0u);
      const auto& context = keep.kept.at(name + "encoder_hidden_states");
      const auto ours_uncond = apart ? keep.kept.at(name + "uncond_encoder_hidden_states") : context.slice(0, 0, 1);
      const auto ours_cond = apart ? context : context.slice(0, 1);
      ASSERT_EQ(ours_cond.sizes(), cond.sizes());
      ASSERT_EQ(ours_uncond.sizes(), uncond.sizes());
      EXPECT_TRUE(latents_agree(ours_cond, cond));
      EXPECT_TRUE(latents_agree(ours_uncond, uncond));
    }
  }
}

// A1111's options "Pad prompt/negative prompt" and its "(v0)": the contexts its CFGDenoiser.pad_cond_uncond and
// pad_cond_uncond_v0 make of the conditioning goldens' (tests/fixtures/make_a1111_pad_conds_goldens.py). Every step
// is then one U-Net call, and the image records the padding where the last call padded, as A1111's infotext does.
TEST_F(A1111Conditioning, PaddedCondsAreWhatA1111sPaddingMakes) {
  const auto padded_goldens = txt2img::SafeTensors::open(TXT2IMG_A1111_PAD_CONDS_GOLDENS);
  const auto padded_cases = nlohmann::json::parse(padded_goldens.metadata().at("cases"));
  ASSERT_EQ(padded_cases.size(), cases_.size());
  using Pad = txt2img::GenerationParams::PadConds;
  int padded_steps = 0;
  for (const auto& [pad, mode] : {std::pair{Pad::EmptyChunks, "pad"}, {Pad::LastVector, "pad_v0"}}) {
    for (size_t c = 0; c < cases_.size(); ++c) {
      const auto& golden = cases_[c];
      const auto& padded = padded_cases[c];
      SCOPED_TRACE(golden.at("name").get<std::string>() + " " + mode);
      ASSERT_EQ(padded.at("name"), golden.at("name"));
      auto params = params_of(golden);
      params.pad_conds = pad;
      Keep keep;
      txt2img::SeededNoise noise({1});
      const auto images =
          pipeline_.generate({golden.at("prompt")}, {golden.at("negative_prompt")}, params, noise, &keep);
      const auto last = static_cast<size_t>(params.steps) - 1;
      EXPECT_EQ(images[0].padded_conds, padded.at("padded").at(mode)[last].get<bool>());
      for (size_t call = 0; call < static_cast<size_t>(params.steps); ++call) {
        SCOPED_TRACE(call);
        auto cond = goldens_.get(golden.at("cond")[call]), uncond = goldens_.get(golden.at("uncond")[call]);
        const auto& keys = padded.at(mode)[call];
        if (!keys.is_null()) {
          ++padded_steps;
          if (!keys.at("cond").is_null()) cond = padded_goldens.get(keys.at("cond"));
          if (!keys.at("uncond").is_null()) uncond = padded_goldens.get(keys.at("uncond"));
        }
        const std::string name = "unet/" + call_name(call) + "/";
        ASSERT_EQ(keep.kept.count(name + "uncond_encoder_hidden_states"), 0u);
        const auto& context = keep.kept.at(name + "encoder_hidden_states");
        ASSERT_EQ(context.slice(0, 1).sizes(), cond.sizes());
        ASSERT_EQ(context.slice(0, 0, 1).sizes(), uncond.sizes());
        EXPECT_TRUE(latents_agree(context.slice(0, 1), cond));
        EXPECT_TRUE(latents_agree(context.slice(0, 0, 1), uncond));
      }
    }
  }
  EXPECT_GE(padded_steps, 2 * 12);  // the steps that A1111 runs apart, padded both ways
}

TEST(Pipeline, LowVramRefusesFrozenGraphs) {
  for (auto graph : {txt2img::GraphOptimization::Freeze, txt2img::GraphOptimization::FreezeAndOptimize}) {
    txt2img::PipelineOptions options;
    options.low_vram = true;
    options.graph = graph;
    expect_error([&] { txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), options); },
                 ErrorKind::Usage, {"--low-vram", "--graph"});
  }
}

TEST_F(TinyPipeline, ChannelsLastGivesTheSameImage) {
  txt2img::PipelineOptions nhwc;
  nhwc.channels_last = true;
  for (auto graph : {txt2img::GraphOptimization::None, txt2img::GraphOptimization::FreezeAndOptimize}) {
    nhwc.graph = graph;
    auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), nhwc);
    EXPECT_LE(max_level_difference(generate_small(pipeline, {"a red cube"}, {7})[0].rgb, run({"a red cube"}, {7})[0].rgb),
              1);
  }
}

TEST(Pipeline, CudaGraphsAreRefusedOffCuda) {
  txt2img::PipelineOptions options;
  options.cuda_graph = true;
  expect_error([&] { txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), options); },
               ErrorKind::Usage, {"CUDA"});
}

TEST(Pipeline, NonFiniteDecodedImagesAreAnErrorNotABlackImage) {
  BundleCopy copy;
  const auto vae = copy.dir() / "vae_decoder.pt";
  {
    auto module = torch::jit::load(vae.string());
    torch::NoGradGuard no_grad;
    for (auto p : module.parameters()) p.mul_(1e30);  // overflows float32 within a couple of layers
    module.save(vae.string());
  }
  auto j = copy.manifest();
  j["files"]["vae_decoder.pt"] = {{"sha256", txt2img::sha256_file(vae)}, {"bytes", std::filesystem::file_size(vae)}};
  copy.set_manifest(j);
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(copy.dir()), {});
  txt2img::SeededNoise noise({7});
  txt2img::GenerationParams params;
  params.steps = 2;
  expect_error([&] { pipeline.generate({"a red cube"}, {""}, params, noise); }, ErrorKind::Runtime,
               {"decoded images", "non-finite"});
}

// What a host that embeds the library gets wrong is a usage error (a noise source of other seeds than images, at its
// first draw); what its observer throws comes back as it was thrown (its way to cancel); a noise source passed again
// gives the same images.
TEST(Pipeline, TheCallersMistakesObserverAndNoiseAsTheHeaderSays) {
  txt2img::PipelineOptions options;
  options.safety = txt2img::SafetyMode::Off;
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), options);
  auto params = small_params();
  txt2img::SeededNoise one({7});
  expect_error(
      [&] {
        pipeline.generate({"a", "b"}, {""}, params, one);
      },
      ErrorKind::Usage, {"a batch of 2 prompts takes as many negative prompts, not 1"});
  EXPECT_TRUE(pipeline.generate({}, {}, params, one).empty());
  expect_error(
      [&] {
        pipeline.generate({"a", "b"}, {"", ""}, params, one);
      },
      ErrorKind::Usage, {"a batch of 2 images takes as many seeds, not 1"});
  expect_error(
      [&] {
        txt2img::SeededNoise({1, 2}, {{3, 0.5}});
      },
      ErrorKind::Usage, {"2 seeds take one variation each or none, not 1"});

  struct Cancelled {};
  struct Cancels : txt2img::Observer {
    void step(size_t call, size_t) override {
      if (call == 1) throw Cancelled{};
    }
  } cancels;
  EXPECT_THROW(pipeline.generate({"a"}, {""}, params, one, &cancels), Cancelled);
  struct Refuses : txt2img::Observer {
    void tensor(const std::string&, const torch::Tensor&) override { throw std::runtime_error("out of memory here"); }
  } refuses;
  try {
    pipeline.generate({"a"}, {""}, params, one, &refuses);
    ADD_FAILURE() << "no exception";
  } catch (const Error&) {
    ADD_FAILURE() << "the observer's std::runtime_error became a txt2img::Error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "out of memory here");
  }

  // `one` was drawn from by the runs above, some cut short: each run starts from its seed again.
  txt2img::SeededNoise fresh({7});
  const auto expected = pipeline.generate({"a"}, {""}, params, fresh)[0].rgb;
  EXPECT_EQ(pipeline.generate({"a"}, {""}, params, one)[0].rgb, expected);
  EXPECT_EQ(pipeline.generate({"a"}, {""}, params, one)[0].rgb, expected);
}

// LibTorch's process-wide settings that a load changes are put back when it fails, for the pipelines already loaded.
TEST(Pipeline, AFailedLoadLeavesTheProcessSettingsAsTheyWere) {
  const auto dir = std::filesystem::temp_directory_path() / ("txt2img_damaged_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::copy(fixtures() / "tiny", dir, std::filesystem::copy_options::recursive);
  // The VAE decoder loads after the text encoder and the U-Net; damaged with its size kept, the bundle opens.
  const auto size = std::filesystem::file_size(dir / "vae_decoder.pt");
  std::ofstream(dir / "vae_decoder.pt", std::ios::binary) << std::string(size, '\0');
  const auto bundle = txt2img::Bundle::open(dir);
  txt2img::PipelineOptions options;
  options.safety = txt2img::SafetyMode::Off;
  for (const bool optimize : {false, true}) {
    torch::jit::setGraphExecutorOptimize(optimize);
    expect_error([&] { txt2img::Pipeline::load(bundle, options); }, ErrorKind::Bundle, {"cannot load vae_decoder.pt"});
    EXPECT_EQ(torch::jit::getGraphExecutorOptimize(), optimize);
  }
  std::filesystem::remove_all(dir);
}

TEST(Pipeline, DevicesAndDtypesItCannotRunAreUsageErrors) {
  const auto bundle = txt2img::Bundle::open(fixtures() / "tiny");
  txt2img::PipelineOptions options;
  options.safety = txt2img::SafetyMode::Off;
  options.dtype = torch::kInt;
  expect_error([&] { txt2img::Pipeline::check_options(bundle, options); }, ErrorKind::Usage,
               {"dtype Int", "fp32, fp16 or bf16"});
  options.dtype = torch::kHalf;
  expect_error([&] { txt2img::Pipeline::load(bundle, options); }, ErrorKind::Usage, {"fp16 needs a CUDA device"});
  if (!torch::cuda::is_available()) {
    options.dtype = torch::kFloat;
    options.device = torch::Device(torch::kCUDA, 0);
    expect_error([&] { txt2img::Pipeline::load(bundle, options); }, ErrorKind::Usage,
                 {"device cuda:0: this LibTorch sees no CUDA device"});
  }
}

TEST(Pipeline, LibTorchFailuresLeaveAsRuntimeErrors) {
  txt2img::PipelineOptions options;
  options.safety = txt2img::SafetyMode::Off;
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), options);
  // A noise source of the wrong shape makes the U-Net itself fail, inside the TorchScript interpreter.
  struct WrongShape : txt2img::NoiseSource {
    torch::Tensor draw(const std::vector<int64_t>& shape) override {
      return torch::zeros({shape[0], shape[1] + 1, shape[2], shape[3]});
    }
    void restart() override {}
  } noise;
  txt2img::GenerationParams params;
  params.steps = 1;
  try {
    pipeline.generate({"a"}, {""}, params, noise);
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Runtime);
    const std::string what = e.what();
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    EXPECT_EQ(what.find("TorchScript"), std::string::npos) << what;
  }
}

TEST_F(TinyPipeline, ResolveRejectsBadParameters) {
  txt2img::GenerationParams p;
  p.width = 60;
  expect_error([&] { txt2img::resolve_params(pipeline_->manifest(), p); }, ErrorKind::Usage, {"width 60", "multiple of 8"});
  p = {};
  p.height = 8192;
  expect_error([&] { txt2img::resolve_params(pipeline_->manifest(), p); }, ErrorKind::Usage, {"height 8192"});
  p = {};
  p.steps = 0;
  expect_error([&] { txt2img::resolve_params(pipeline_->manifest(), p); }, ErrorKind::Usage, {"steps 0"});
  p = {};
  p.cfg_scale = std::nan("");
  expect_error([&] { txt2img::resolve_params(pipeline_->manifest(), p); }, ErrorKind::Usage, {"cfg"});
  p = {};
  p.sampler = "nope";
  expect_error([&] { txt2img::resolve_params(pipeline_->manifest(), p); }, ErrorKind::Usage, {"nope"});
  p = {};
  auto resolved = txt2img::resolve_params(pipeline_->manifest(), p);
  EXPECT_EQ(resolved.width, pipeline_->manifest().default_size);
}

}  // namespace

namespace {

TEST(Pipeline, Bfloat16RunStaysCloseToFloat32AndIsChecked) {
  txt2img::PipelineOptions bf16;
  bf16.dtype = torch::kBFloat16;
  auto low = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "ref-tiny"), bf16);
  auto full = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "ref-tiny"), {});
  txt2img::GenerationParams params;
  params.steps = 4;
  txt2img::SeededNoise a({3}), b({3});
  auto x = low.generate({"a red cube"}, {""}, params, a);
  auto y = full.generate({"a red cube"}, {""}, params, b);
  ASSERT_EQ(x[0].rgb.size(), y[0].rgb.size());
  EXPECT_TRUE(x[0].safety_checked);
  double total = 0;
  for (size_t i = 0; i < x[0].rgb.size(); ++i) total += std::abs(x[0].rgb[i] - y[0].rgb[i]);
  // About 1 level on average here; another sampler's image is 5 levels away, so this tells a wrong run apart.
  EXPECT_LT(total / static_cast<double>(x[0].rgb.size()), 2.5);  // mean difference in 8-bit levels
  EXPECT_GT(max_level_difference(x[0].rgb, y[0].rgb), 0);        // and it did run in bf16
}

}  // namespace

// --- clip skip ------------------------------------------------------------------------------------------------------

namespace {

std::vector<uint8_t> clip_skip_image(txt2img::Pipeline& pipeline, int clip_skip, txt2img::Observer* observer = nullptr,
                                     bool set = true) {
  txt2img::SeededNoise noise({7});
  txt2img::GenerationParams params;
  params.width = 32;
  params.height = 32;
  params.steps = 2;
  if (set) params.clip_skip = clip_skip;
  return pipeline.generate({"a red cube"}, {"a blue sphere"}, params, noise, observer)[0].rgb;
}

TEST(ClipSkip, TheTinyBundleRecordsItsTextEncoderLayers) {
  const auto bundle = txt2img::Bundle::open(fixtures() / "tiny");
  EXPECT_EQ(bundle.manifest().text_num_layers, 5);  // the tiny preset's text encoder
  EXPECT_TRUE(bundle.manifest().text_num_layers_known);
  EXPECT_TRUE(txt2img::Pipeline::load(bundle, {}).supports_clip_skip());
}

TEST(ClipSkip, OneIsTheDefaultAndTwoChangesTheImageForPromptAndNegativePrompt) {
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  Keep by_default, one, two;
  const auto default_image = clip_skip_image(pipeline, 0, &by_default, false);
  EXPECT_EQ(txt2img::GenerationParams{}.clip_skip, 1);
  EXPECT_EQ(clip_skip_image(pipeline, 1, &one), default_image);
  const auto skipped = clip_skip_image(pipeline, 2, &two);
  EXPECT_NE(skipped, default_image);
  EXPECT_EQ(clip_skip_image(pipeline, 2), skipped);  // deterministic

  // Clip skip 1 is forward(), under the reference fixtures' names; more goes through encode() for both prompts.
  for (const auto* name : {"text/last_hidden_state", "uncond_text/last_hidden_state"}) {
    ASSERT_TRUE(one.kept.count(name)) << name;
    EXPECT_TRUE(one.kept[name].equal(by_default.kept[name])) << name;
    EXPECT_FALSE(two.kept.count(name)) << name;
  }
  for (const auto* prefix : {"text", "uncond_text"}) {
    const std::string name = std::string(prefix) + "/clip_skip_hidden_state";
    ASSERT_TRUE(two.kept.count(name)) << name;
    EXPECT_FALSE(two.kept[name].equal(one.kept[std::string(prefix) + "/last_hidden_state"])) << name;
  }
  EXPECT_FALSE(two.kept["unet/encoder_hidden_states"].equal(one.kept["unet/encoder_hidden_states"]));
}

TEST(ClipSkip, EveryLayerWorksAndFrozenGraphsKeepEncode) {
  auto plain = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  std::vector<std::vector<uint8_t>> images;
  for (int clip_skip = 1; clip_skip <= 5; ++clip_skip) images.push_back(clip_skip_image(plain, clip_skip));
  for (size_t i = 1; i < images.size(); ++i) EXPECT_NE(images[i], images[i - 1]) << "clip skip " << i + 1;
  for (auto graph : {txt2img::GraphOptimization::Freeze, txt2img::GraphOptimization::FreezeAndOptimize}) {
    txt2img::PipelineOptions options;
    options.graph = graph;
    auto frozen = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), options);
    EXPECT_TRUE(frozen.supports_clip_skip());
    EXPECT_LE(max_level_difference(clip_skip_image(frozen, 2), images[1]), 1);
  }
  txt2img::PipelineOptions low_vram;
  low_vram.low_vram = true;
  auto low = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), low_vram);
  EXPECT_EQ(clip_skip_image(low, 2), images[1]);
}

TEST(ClipSkip, OutOfRangeIsAUsageError) {
  const auto bundle = txt2img::Bundle::open(fixtures() / "tiny");
  txt2img::GenerationParams p;
  for (int bad : {0, -1, 6, 12}) {
    p.clip_skip = bad;
    expect_error([&] { txt2img::resolve_params(bundle.manifest(), p); }, ErrorKind::Usage,
                 {"clip skip " + std::to_string(bad), "from 1 to 5", "--clip-skip"});
  }
  p.clip_skip = 5;  // keeps the first layer only
  EXPECT_EQ(txt2img::resolve_params(bundle.manifest(), p).clip_skip, 5);
  // The pipeline checks it too, before it computes anything.
  auto pipeline = txt2img::Pipeline::load(bundle, {});
  expect_error([&] { clip_skip_image(pipeline, 6); }, ErrorKind::Usage, {"clip skip 6"});
}

// A bundle converted before --clip-skip: its text encoder has forward() only and model.json no text_num_layers.
TEST(ClipSkip, AnOldBundleWorksWithOneAndRefusesMoreAsABundleError) {
  BundleCopy copy;
  const auto text_encoder = copy.dir() / "text_encoder.pt";
  {
    auto current = torch::jit::load(text_encoder.string());
    ASSERT_TRUE(current.find_method("encode"));
    torch::jit::Module old("__torch__.OldTextEncoder");
    old.register_module("inner", current);
    old.define("def forward(self, input_ids):\n  return self.inner.forward(input_ids)\n");
    old.save(text_encoder.string());
    ASSERT_FALSE(torch::jit::load(text_encoder.string()).find_method("encode"));
  }
  auto j = copy.manifest();
  j["files"]["text_encoder.pt"] = {{"sha256", txt2img::sha256_file(text_encoder)},
                                   {"bytes", std::filesystem::file_size(text_encoder)}};
  j.erase("text_num_layers");
  copy.set_manifest(j);

  const auto bundle = txt2img::Bundle::open(copy.dir());
  EXPECT_FALSE(bundle.manifest().text_num_layers_known);
  EXPECT_EQ(bundle.manifest().text_num_layers, txt2img::kDefaultTextLayers);  // SD v1's, until loaded
  txt2img::GenerationParams p;
  p.clip_skip = txt2img::kDefaultTextLayers + 1;
  expect_error([&] { txt2img::resolve_params(bundle.manifest(), p); }, ErrorKind::Usage, {"from 1 to 12"});

  for (auto graph : {txt2img::GraphOptimization::None, txt2img::GraphOptimization::Freeze}) {
    txt2img::PipelineOptions options;
    options.graph = graph;
    auto old = txt2img::Pipeline::load(bundle, options);
    EXPECT_FALSE(old.supports_clip_skip());
    auto current = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), options);
    EXPECT_EQ(clip_skip_image(old, 1), clip_skip_image(current, 1));
    expect_error([&] { clip_skip_image(old, 2); }, ErrorKind::Bundle,
                 {copy.dir().string(), "--clip-skip 2", "re-convert", "scripts/convert.py"});
  }
}

}  // namespace

// A1111's hires fix: the first pass's latents resized, noised to where a stretched schedule's last steps begin
// (int(3 / 0.5) = 6 steps, of which the last 3), denoised again with noise drawn anew from the seed.
TEST(HiresFix, ResizesTheLatentsAndRunsTheLastStepsOfAStretchedSchedule) {
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  auto params = small_hires_params("euler");
  Keep keep;
  const auto images = generate_small(pipeline, {"a red cube"}, {11}, params, &keep);
  EXPECT_EQ(images[0].width, 96);
  EXPECT_EQ(images[0].height, 72);

  namespace F = torch::nn::functional;
  const auto upscaled = F::interpolate(keep.kept.at("latents/step_002"), F::InterpolateFuncOptions()
                                                                            .size(std::vector<int64_t>{9, 12})
                                                                            .mode(torch::kBilinear)
                                                                            .align_corners(false));
  EXPECT_TRUE(torch::equal(keep.kept.at("hires/latents/upscaled"), upscaled));
  auto config = pipeline.manifest().scheduler;
  config.timestep_spacing.clear();
  const auto stretched = txt2img::make_scheduler("euler", config, 6);
  txt2img::SeededNoise noise({11});
  const auto expected_init = stretched->add_noise(upscaled, noise.draw({1, 4, 9, 12}), 3);
  EXPECT_TRUE(torch::equal(keep.kept.at("hires/latents/init"), expected_init));
  // The hires pass's U-Net calls are those of the stretched schedule's last three timesteps.
  EXPECT_TRUE(keep.kept.count("hires/unet/002/noise_pred"));
  EXPECT_FALSE(keep.kept.count("hires/unet/003/noise_pred"));
  ASSERT_EQ(keep.progress.size(), 6u);
  EXPECT_EQ(keep.progress[2], (std::pair<size_t, size_t>{3, 6}));
  EXPECT_EQ(keep.progress.back(), (std::pair<size_t, size_t>{6, 6}));

  // Another strength enters the schedule elsewhere; another upscaler resizes otherwise.
  params.hires.denoise = 0.9;
  EXPECT_NE(generate_small(pipeline, {"a red cube"}, {11}, params)[0].rgb, images[0].rgb);
  params.hires.denoise = 0.5;
  params.hires.upscaler = "latent-nearest";
  EXPECT_NE(generate_small(pipeline, {"a red cube"}, {11}, params)[0].rgb, images[0].rgb);
  // Nearest-exact is F::interpolate's, called through its operator (without LibTorch's warning about the mode).
  params.hires.upscaler = "latent-nearest-exact";
  Keep exact;
  generate_small(pipeline, {"a red cube"}, {11}, params, &exact);
  EXPECT_TRUE(torch::equal(
      exact.kept.at("hires/latents/upscaled"),
      F::interpolate(exact.kept.at("latents/step_002"),
                     F::InterpolateFuncOptions().size(std::vector<int64_t>{9, 12}).mode(torch::kNearestExact))));
  params.hires.upscaler = "latent";
  EXPECT_EQ(generate_small(pipeline, {"a red cube"}, {11}, params)[0].rgb, images[0].rgb);
}

// A1111's prompt editing, read with its emphasis syntax: "[a:b:N]" is a up to step N (from 0) and b after it.
TEST(PromptEditing, EachStepReadsItsScheduledText) {
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  auto params = small_params();  // 3 steps
  params.sampler = "euler";
  params.emphasis = true;
  // The final latents, and what the run observed.
  const auto make = [&](const std::string& prompt, Keep& keep) {
    generate_small(pipeline, {prompt}, {5}, params, &keep);
    return keep.kept.at("vae/decode_in");
  };
  Keep red, blue, edited, before, after, fraction, text;
  const auto red_cube = make("a red cube", red);
  const auto blue_sphere = make("a blue sphere", blue);
  ASSERT_FALSE(torch::equal(red_cube, blue_sphere));
  // The change after step 0 or after the last step never happens; after step 1 it makes other latents, the first
  // two U-Net calls reading the first text.
  EXPECT_TRUE(torch::equal(make("[a red cube:a blue sphere:0]", before), blue_sphere));
  EXPECT_TRUE(torch::equal(make("[a red cube:a blue sphere:3]", after), red_cube));
  const auto changed = make("[a red cube:a blue sphere:1]", edited);
  EXPECT_FALSE(torch::equal(changed, red_cube));
  EXPECT_FALSE(torch::equal(changed, blue_sphere));
  EXPECT_TRUE(torch::allclose(edited.kept.at("unet/001/noise_pred"), red.kept.at("unet/001/noise_pred"), 1e-4, 1e-5));
  EXPECT_FALSE(torch::equal(edited.kept.at("unet/002/noise_pred"), red.kept.at("unet/002/noise_pred")));
  // Both texts are encoded, once each, besides the negative prompt.
  EXPECT_EQ(edited.kept.at("text/input_ids").size(0), 2);
  EXPECT_EQ(edited.kept.at("uncond_text/input_ids").size(0), 1);
  // Fractions count the steps: .34 of 3 is step 1.
  EXPECT_TRUE(torch::equal(make("[a red cube:a blue sphere:.34]", fraction), changed));
  // Heun's steps count twice, as A1111 counts them: of 3 steps (5 U-Net calls, 6 counted) .5 ends after call 3.
  params.sampler = "heun";
  Keep heun_red, heun_edited;
  make("a red cube", heun_red);
  make("[a red cube:a blue sphere:.5]", heun_edited);
  EXPECT_TRUE(
      torch::allclose(heun_edited.kept.at("unet/003/noise_pred"), heun_red.kept.at("unet/003/noise_pred"), 1e-4, 1e-5));
  EXPECT_FALSE(torch::equal(heun_edited.kept.at("unet/004/noise_pred"), heun_red.kept.at("unet/004/noise_pred")));
  // Without A1111's syntax the brackets are text.
  params.sampler = "euler";
  params.emphasis = false;
  EXPECT_EQ(make("[a red cube:a blue sphere:1]", text).size(0), 1);
  EXPECT_FALSE(torch::equal(text.kept.at("vae/decode_in"), changed));
  EXPECT_EQ(text.kept.at("text/input_ids").size(0), 1);
}

// The first U-Net call (from 0) at which a run of `prompt` and `negative` differs from one of the plain texts.
size_t first_differing_call(txt2img::Pipeline& pipeline, const txt2img::GenerationParams& params,
                            const std::string& prompt, const std::string& negative) {
  Keep edited, plain;
  txt2img::SeededNoise noise({5}), again({5});
  pipeline.generate({prompt}, {negative}, params, noise, &edited);
  pipeline.generate({"a red cube"}, {"blurry"}, params, again, &plain);
  const auto noise_pred = [](size_t call) { return "unet/" + call_name(call) + "/noise_pred"; };
  // Texts encoded in a batch of two may differ from those encoded alone in the last bits.
  size_t call = 0;
  while (edited.kept.count(noise_pred(call)) &&
         torch::allclose(edited.kept.at(noise_pred(call)), plain.kept.at(noise_pred(call)), 1e-4, 1e-5))
    ++call;
  return call;
}

// A1111 counts the steps of Heun, DPM2, DPM++ 2S a, DPM++ SDE and Restart (two U-Net calls a step) twice: "[a:b:.5]"
// of 3 steps changes after call 3 of 5 there, after call 1 for the others (whose first step is call 0), negative
// prompts alike.
TEST(PromptEditing, EverySamplerCountsItsStepsAsA1111) {
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  auto params = small_params();  // 3 steps
  params.emphasis = true;
  for (const auto& sampler : txt2img::scheduler_names()) {
    if (sampler == "lcm") continue;  // a sampler for LCM models only
    SCOPED_TRACE(sampler);
    params.sampler = sampler;
    const bool second_order = sampler.rfind("heun", 0) == 0 || sampler.rfind("dpm2", 0) == 0 ||
                              sampler.rfind("dpmpp_2s_a", 0) == 0 || sampler.rfind("dpmpp_sde", 0) == 0 ||
                              sampler.rfind("restart", 0) == 0;
    const size_t expected = second_order ? 4 : 2;
    EXPECT_EQ(first_differing_call(pipeline, params, "[a red cube:a blue sphere:.5]", "blurry"), expected);
    EXPECT_EQ(first_differing_call(pipeline, params, "a red cube", "[blurry:dark:.5]"), expected);
  }
}

// Rows of a batch follow their own schedules: each makes the image it makes alone.
TEST(PromptEditing, RowsOfABatchReadTheirOwnTexts) {
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  auto params = small_params();
  params.sampler = "euler";
  params.emphasis = true;
  const std::vector<std::string> prompts = {"[a red cube:a blue sphere:1]", "a [green|yellow] cone"};
  const std::vector<std::string> negatives = {"", "[blurry::1]"};
  Keep batch;
  txt2img::SeededNoise noise({5, 6});
  pipeline.generate(prompts, negatives, params, noise, &batch);
  EXPECT_EQ(batch.kept.at("text/input_ids").size(0), 4);  // two texts each
  EXPECT_EQ(batch.kept.at("uncond_text/input_ids").size(0), 3);
  for (size_t row = 0; row < 2; ++row) {
    Keep alone;
    txt2img::SeededNoise one({row == 0 ? 5u : 6u});
    pipeline.generate({prompts[row]}, {negatives[row]}, params, one, &alone);
    const auto batched = batch.kept.at("vae/decode_in")[static_cast<int64_t>(row)];
    EXPECT_TRUE(latents_agree(batched, alone.kept.at("vae/decode_in")[0])) << row;
  }
}

// A1111's composable diffusion: each prompt of "a AND b:w" is a U-Net row guiding the image by its weight.
TEST(ComposablePrompts, EachPromptGuidesByItsWeight) {
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  auto params = small_params();
  params.sampler = "euler";
  params.emphasis = true;
  Keep keep;
  txt2img::SeededNoise noise({5});
  pipeline.generate({"a red cube AND a blue sphere:0.5"}, {""}, params, noise, &keep);
  const auto& out = keep.kept.at("unet/000/noise_pred");
  ASSERT_EQ(out.size(0), 3);  // the negative prompt's row, then the two prompts'
  EXPECT_EQ(keep.kept.at("text/input_ids").size(0), 2);
  const double s = params.cfg_scale;
  const auto expected = out[0] + (out[1] - out[0]) * (1.0 * s) + (out[2] - out[0]) * (0.5 * s);
  EXPECT_TRUE(torch::allclose(keep.kept.at("step/000/model_output")[0], expected, 1e-5, 1e-6));

  // A weight of 1 is the plain prompt, bit for bit; another scales its guidance.
  const auto latents = [&](const std::string& prompt) {
    Keep run;
    txt2img::SeededNoise seeded({5});
    pipeline.generate({prompt}, {""}, params, seeded, &run);
    return run.kept.at("vae/decode_in");
  };
  EXPECT_TRUE(torch::equal(latents("a red cube:1"), latents("a red cube")));
  const auto doubled = latents("a red cube:2");
  params.cfg_scale *= 2;
  EXPECT_TRUE(torch::allclose(doubled, latents("a red cube"), 1e-5, 1e-6));
  params.cfg_scale /= 2;

  // Rows of a batch with different numbers of prompts make the images they make alone.
  Keep batch;
  txt2img::SeededNoise two({5, 6});
  pipeline.generate({"a red cube AND a blue sphere:0.5", "a green cone"}, {"", "blurry"}, params, two, &batch);
  EXPECT_EQ(batch.kept.at("unet/000/noise_pred").size(0), 5);
  EXPECT_TRUE(latents_agree(batch.kept.at("vae/decode_in")[0], latents("a red cube AND a blue sphere:0.5")[0]));
  Keep cone;
  txt2img::SeededNoise six({6});
  pipeline.generate({"a green cone"}, {"blurry"}, params, six, &cone);
  EXPECT_TRUE(latents_agree(batch.kept.at("vae/decode_in")[1], cone.kept.at("vae/decode_in")[0]));

  // A guidance weight past float32 would make the image infinite.
  expect_error([&] { pipeline.row_prompts(pipeline.manifest(), "a cat:1" + std::string(44, '0'), params); },
               ErrorKind::Usage, {"guidance weight 1e+44", "float32"});

  // A1111 guides every prompt, so composable prompts add up at a CFG scale of 1 (or less) too, where a plain prompt
  // stays unguided as in diffusers: "a red cube:2" at scale 1 is "a red cube" at scale 2.
  const double scale = params.cfg_scale;
  params.cfg_scale = 1;
  const auto& manifest = pipeline.manifest();
  EXPECT_TRUE(txt2img::classifier_free_guidance(manifest, params, "a AND b"));
  EXPECT_TRUE(txt2img::classifier_free_guidance(manifest, params, "a cat:2"));
  EXPECT_FALSE(txt2img::classifier_free_guidance(manifest, params, "a cat:1"));
  EXPECT_EQ(pipeline.row_prompts(manifest, "a AND b", params).size(), 2u);
  EXPECT_EQ(pipeline.texts_read(manifest, "a AND b", "blurry", params).negative_prompt,
            std::vector<std::string>{"blurry"});
  EXPECT_TRUE(pipeline.texts_read(manifest, "a b", "blurry", params).negative_prompt.empty());
  // Guided and unguided rows take other numbers of negative prompt chunks: they never share a batch.
  EXPECT_EQ(pipeline.text_chunks("a AND b", "blurry", params)[0].negative_prompt, 1u);
  EXPECT_EQ(pipeline.text_chunks("a b", "blurry", params)[0].negative_prompt, 0u);
  Keep composable;
  txt2img::SeededNoise once({5});
  pipeline.generate({"a red cube AND a blue sphere"}, {""}, params, once, &composable);
  EXPECT_EQ(composable.kept.at("unet/000/noise_pred").size(0), 3);
  const auto weighted = latents("a red cube:2");
  params.cfg_scale = 2;
  EXPECT_TRUE(torch::allclose(weighted, latents("a red cube"), 1e-5, 1e-6));
  params.cfg_scale = 1;
  Keep plain;
  txt2img::SeededNoise again({5});
  pipeline.generate({"a red cube"}, {""}, params, again, &plain);
  EXPECT_EQ(plain.kept.at("unet/000/noise_pred").size(0), 1);
  EXPECT_EQ(plain.kept.count("uncond_text/input_ids"), 0u);
  // Guiding the plain prompt's row in a guided batch would change its image below a scale of 1.
  txt2img::SeededNoise pair({5, 6});
  params.cfg_scale = 0.5;
  expect_error(
      [&] {
        pipeline.generate({"a red cube AND a blue sphere", "a red cube"}, {"", ""}, params, pair);
      },
      ErrorKind::Usage, {"with classifier-free guidance and without", "CFG scale of 1 or less", "separate batches"});
  params.cfg_scale = scale;
}

// A1111's Skip Early CFG: a call whose index over the pass's calls as A1111 counts them (the steps, twice that for a
// second-order sampler) is at most the fraction runs the prompt rows alone, and guides as A1111's combine_denoised
// does at scale 1 with each image's first prompt row in place of its negative prompt's; the hires pass counts again
// from 0 over its own steps.
TEST(SkipEarlyCfg, TheFirstCallsRunThePromptRowsAloneAsA1111CountsThem) {
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  const auto rows_per_call = [&](txt2img::GenerationParams params, const std::string& prompt,
                                 const std::string& prefix = "") {
    Keep keep;
    txt2img::SeededNoise noise({5});
    pipeline.generate({prompt}, {""}, params, noise, &keep);
    std::vector<int64_t> rows;
    for (size_t call = 0; keep.kept.count(prefix + "unet/" + call_name(call) + "/noise_pred"); ++call)
      rows.push_back(keep.kept.at(prefix + "unet/" + call_name(call) + "/noise_pred").size(0));
    return std::make_pair(rows, keep);
  };
  auto params = small_params();
  params.steps = 10;
  params.sampler = "euler";
  params.skip_early_cfg = 0.2;  // calls 0, 1 and 2 of 10: 0/10, 1/10, 2/10 <= 0.2
  auto [euler, kept] = rows_per_call(params, "a fox");
  EXPECT_EQ(euler, (std::vector<int64_t>{1, 1, 1, 2, 2, 2, 2, 2, 2, 2}));
  // The unguided call's prediction is the prompt row's: its own plus zero times the difference from itself.
  EXPECT_TRUE(torch::equal(kept.kept.at("step/000/model_output"), kept.kept.at("unet/000/noise_pred")));

  // Heun's 10 steps are 19 calls, which A1111 counts as 20: calls 0 to 4 of 20 are at most 0.2.
  params.sampler = "heun";
  EXPECT_EQ(rows_per_call(params, "a fox").first,
            (std::vector<int64_t>{1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2}));

  // Composable prompts: the first prompt's row stands in for the negative prompt's, at scale 1.
  params.sampler = "euler";
  params.emphasis = true;
  auto [composed, composable] = rows_per_call(params, "a red cube AND a blue sphere:0.5");
  EXPECT_EQ(composed.front(), 2);
  EXPECT_EQ(composed.back(), 3);
  const auto& out = composable.kept.at("unet/000/noise_pred");
  const auto expected = out[0] + (out[0] - out[0]) * 1.0 + (out[1] - out[0]) * 0.5;
  EXPECT_TRUE(torch::allclose(composable.kept.at("step/000/model_output")[0], expected, 1e-6, 1e-7));

  // Every call skipped is the image without guidance; 0 is off.
  params.emphasis = false;
  const auto latents = [&](const txt2img::GenerationParams& p) {
    Keep keep;
    txt2img::SeededNoise noise({5});
    pipeline.generate({"a fox"}, {""}, p, noise, &keep);
    return keep.kept.at("vae/decode_in");
  };
  params.skip_early_cfg = 1;
  auto unguided = params;
  unguided.skip_early_cfg = 0;
  unguided.cfg_scale = 1;
  EXPECT_TRUE(torch::equal(latents(params), latents(unguided)));
  params.skip_early_cfg = 0;
  EXPECT_EQ(rows_per_call(params, "a fox").first, std::vector<int64_t>(10, 2));

  // The hires pass (the last 5 of a 10-step schedule) counts its 5 steps from 0: calls 0 and 1 of 5 are at most 0.25.
  params.skip_early_cfg = 0.25;
  params.hires.scale = 1.5;
  params.hires.denoise = 0.5;
  params.hires.steps = 5;
  EXPECT_EQ(rows_per_call(params, "a fox", "hires/").first, (std::vector<int64_t>{1, 1, 2, 2, 2}));

  params.skip_early_cfg = 1.5;
  expect_error([&] { rows_per_call(params, "a fox"); }, ErrorKind::Usage, {"skip early CFG must be from 0 to 1"});
}

// A1111's NGMS: a call that Skip Early CFG leaves guided, odd by its count from the pass's start (any with
// ngms_all_steps), runs the prompt rows alone where A1111's sampler's noise level for it is below the threshold: the
// sigma for Euler, the timestep for DDIM.
TEST(Ngms, OddCallsBelowTheSigmaRunThePromptRowsAlone) {
  const auto bundle = txt2img::Bundle::open(fixtures() / "tiny");
  auto pipeline = txt2img::Pipeline::load(bundle, {});
  const auto run = [&](const txt2img::GenerationParams& params, const std::string& prefix = "") {
    Keep keep;
    txt2img::SeededNoise noise({5});
    const auto images = pipeline.generate({"a fox"}, {""}, params, noise, &keep);
    std::vector<int64_t> rows;
    for (size_t call = 0; keep.kept.count(prefix + "unet/" + call_name(call) + "/noise_pred"); ++call)
      rows.push_back(keep.kept.at(prefix + "unet/" + call_name(call) + "/noise_pred").size(0));
    return std::make_tuple(rows, images.at(0).ngms_skipped, keep.kept.at("vae/decode_in"));
  };
  auto params = small_params();
  params.steps = 10;
  params.sampler = "euler";
  const auto euler = txt2img::make_scheduler("euler", bundle.manifest().scheduler, 10);
  params.ngms = euler->a1111_sigma(6);  // calls 7, 8 and 9 are below it; 6 is not
  auto [rows, skipped, latents] = run(params);
  EXPECT_EQ(rows, (std::vector<int64_t>{2, 2, 2, 2, 2, 2, 2, 1, 2, 1}));
  EXPECT_TRUE(skipped);
  params.ngms_all_steps = true;
  EXPECT_EQ(std::get<0>(run(params)), (std::vector<int64_t>{2, 2, 2, 2, 2, 2, 2, 1, 1, 1}));
  // Skip Early CFG decides first; the calls it leaves guided count as before.
  params.ngms_all_steps = false;
  params.skip_early_cfg = 0.2;
  EXPECT_EQ(std::get<0>(run(params)), (std::vector<int64_t>{1, 1, 1, 2, 2, 2, 2, 1, 2, 1}));
  params.skip_early_cfg = 0;

  // DDIM's 10 steps are timesteps 901, 801, ..., 101, 1: below 150 are calls 8 and 9, of which 9 is odd.
  params.sampler = "ddim";
  params.ngms = 150;
  EXPECT_EQ(std::get<0>(run(params)), (std::vector<int64_t>{2, 2, 2, 2, 2, 2, 2, 2, 2, 1}));
  params.ngms_all_steps = true;
  EXPECT_EQ(std::get<0>(run(params)), (std::vector<int64_t>{2, 2, 2, 2, 2, 2, 2, 2, 1, 1}));

  // A threshold below every noise level skips nothing, and the image says so.
  params.ngms = 0.5;
  std::tie(rows, skipped, latents) = run(params);
  EXPECT_EQ(rows, std::vector<int64_t>(10, 2));
  EXPECT_FALSE(skipped);
  // Above every noise level with every call skipped: the image without guidance; without guidance nothing is skipped.
  params.ngms = 1000;
  auto unguided = params;
  unguided.ngms = 0;
  unguided.cfg_scale = 1;
  EXPECT_TRUE(torch::equal(std::get<2>(run(params)), std::get<2>(run(unguided))));
  unguided.ngms = 1000;
  EXPECT_FALSE(std::get<1>(run(unguided)));

  // The hires pass (calls 5 to 9 of a 10-step schedule) counts from 0: below call 5's sigma, counts 1 and 3 are odd.
  params.sampler = "euler";
  params.ngms_all_steps = false;
  params.ngms = euler->a1111_sigma(5);
  params.hires.scale = 1.5;
  params.hires.denoise = 0.5;
  params.hires.steps = 5;
  EXPECT_EQ(std::get<0>(run(params, "hires/")), (std::vector<int64_t>{2, 1, 2, 1, 2}));

  params.ngms = -1;
  expect_error([&] { run(params); }, ErrorKind::Usage, {"NGMS must be a finite number of 0 or more"});
}

// A hires pass's schedule counts whole steps on from the first pass's and fractions from 1 to 2 over its own.
TEST(PromptEditing, TheHiresPassContinuesTheSchedule) {
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  auto params = small_hires_params("euler");
  params.emphasis = true;
  const auto ids = [&](const std::string& text) {
    auto ids = pipeline.tokenizer().encode_padded(text, 77, 49407);
    return torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).view({1, -1});
  };
  Keep keep;
  generate_small(pipeline, {"[a red cube:a blue sphere:3]"}, {5}, params, &keep);
  EXPECT_TRUE(torch::equal(keep.kept.at("text/input_ids"), ids("a red cube")));
  EXPECT_TRUE(torch::equal(keep.kept.at("hires/text/input_ids"), ids("a blue sphere")));
  // 1.5: half-way through the 3 hires steps, int(1.5) = after its call 1; the first pass reads the first text.
  Keep fraction, red;
  generate_small(pipeline, {"[a red cube:a blue sphere:1.5]"}, {5}, params, &fraction);
  generate_small(pipeline, {"a red cube"}, {5}, params, &red);
  EXPECT_TRUE(torch::equal(fraction.kept.at("text/input_ids"), ids("a red cube")));
  EXPECT_TRUE(
      torch::equal(fraction.kept.at("hires/text/input_ids"), torch::cat({ids("a red cube"), ids("a blue sphere")})));
  for (const std::string call : {"unet/002", "hires/unet/001"})
    EXPECT_TRUE(torch::allclose(fraction.kept.at(call + "/noise_pred"), red.kept.at(call + "/noise_pred"), 1e-4, 1e-5))
        << call;
  EXPECT_FALSE(torch::equal(fraction.kept.at("hires/unet/002/noise_pred"), red.kept.at("hires/unet/002/noise_pred")));
  // Prompts without prompt editing are encoded once for both passes.
  Keep plain;
  generate_small(pipeline, {"a (red:1.2) cube"}, {5}, params, &plain);
  EXPECT_FALSE(plain.kept.count("hires/text/input_ids"));
}

// One run of a diffusers reference (runs/NAME/latents and .../image, of the reference runs' first prompt and seed 0),
// made in a batch of two whose first image is the reference's: the final latents within 1e-4, the pixels within one
// 8-bit level. `keep` holds what the run observed.
void expect_reference_run(txt2img::Pipeline& pipeline, const txt2img::SafeTensors& reference, const std::string& name,
                          const txt2img::GenerationParams& params, Keep& keep) {
  const std::string prompt = "a photo of an astronaut riding a horse on mars";
  const auto images = generate_small(pipeline, {prompt, "a red cube"}, {0, 7}, params, &keep);
  EXPECT_TRUE(torch::allclose(keep.kept.at("vae/decode_in").slice(0, 0, 1) * pipeline.manifest().scale_factor,
                              reference.get("runs/" + name + "/latents"), 1e-4, 1e-4));
  const auto expected = (reference.get("runs/" + name + "/image") * 255).round().to(torch::kUInt8).flatten();
  const auto* pixels = expected.data_ptr<uint8_t>();
  EXPECT_LE(max_level_difference(images[0].rgb, std::vector<uint8_t>(pixels, pixels + expected.numel())), 1);
}

// The reference is diffusers' StableDiffusionInpaintPipeline on the same model with a white mask, given the
// masked image's latents as txt2img computes them (tests/fixtures/make_inpainting_reference.py).
TEST(Inpainting, MatchesDiffusersWithTheWholeImageMasked) {
  const auto reference = txt2img::SafeTensors::open(TXT2IMG_INPAINTING_REFERENCE);
  const auto bundle = txt2img::Bundle::open(fixtures() / "tiny-inpainting");
  ASSERT_TRUE(bundle.manifest().inpainting);
  txt2img::PipelineOptions options;
  options.safety = txt2img::SafetyMode::Off;
  auto pipeline = txt2img::Pipeline::load(bundle, options);
  struct Run {
    std::string name, sampler;
    int steps, width, height;
  };
  for (const Run& run : {Run{"ddim_s10_w24_h16", "ddim", 10, 24, 16}, Run{"euler_a_s20", "euler_a", 20, 16, 16}}) {
    SCOPED_TRACE(run.name);
    txt2img::GenerationParams params;
    params.sampler = run.sampler;
    params.steps = run.steps;
    params.width = run.width;
    params.height = run.height;
    Keep keep;
    expect_reference_run(pipeline, reference, run.name, params, keep);
    const auto conditioning = keep.kept.at("unet/image_conditioning");
    EXPECT_TRUE(torch::equal(conditioning.slice(1, 0, 1), torch::ones({1, 1, run.height / 2, run.width / 2})));
    EXPECT_TRUE(torch::allclose(conditioning.slice(1, 1), reference.get("runs/" + run.name + "/masked_image_latents"),
                                1e-5, 1e-6));
  }
}

// Counts the encodings a generation makes.
struct CountEncodings : Keep {
  void tensor(const std::string& name, const torch::Tensor& value) override {
    encodings += name == "vae/encode_out";
    Keep::tensor(name, value);
  }
  int encodings = 0;
};

// Each pass sees the whole image masked at its own size; the encoding is made once per size.
TEST(Inpainting, TheHiresPassIsConditionedAtItsSize) {
  txt2img::PipelineOptions options;
  options.safety = txt2img::SafetyMode::Off;
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny-inpainting"), options);
  auto params = small_hires_params("euler");
  CountEncodings keep;
  const auto images = generate_small(pipeline, {"a red cube"}, {11}, params, &keep);
  EXPECT_EQ(images[0].width, 96);
  EXPECT_EQ(keep.encodings, 2);
  const auto& first = keep.kept.at("unet/image_conditioning");
  const auto& hires = keep.kept.at("hires/unet/image_conditioning");
  EXPECT_EQ(first.sizes(), (std::vector<int64_t>{1, 5, 24, 32}));
  EXPECT_EQ(hires.sizes(), (std::vector<int64_t>{1, 5, 36, 48}));
  auto encoder = torch::jit::load((fixtures() / "tiny-inpainting" / "vae_encoder.pt").string());
  c10::InferenceMode inference;
  const auto gray = encoder.forward({torch::zeros({1, 3, 72, 96})}).toTensor();
  EXPECT_TRUE(torch::allclose(hires.slice(1, 1), gray * pipeline.manifest().scale_factor, 1e-6, 1e-7));
  // A second batch of the same sizes encodes nothing again, and makes the same images.
  CountEncodings again;
  EXPECT_EQ(generate_small(pipeline, {"a red cube"}, {11}, params, &again)[0].rgb, images[0].rgb);
  EXPECT_EQ(again.encodings, 0);
}

TEST(Inpainting, ABundleWithoutItsEncoderIsRefused) {
  BundleCopy copy;
  auto j = copy.manifest();
  j["inpainting"] = true;
  copy.set_manifest(j);
  expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle, {"inpainting model", "vae_encoder.pt"});
  j["inpainting"] = "yes";
  copy.set_manifest(j);
  expect_error([&] { txt2img::Bundle::open(copy.dir()); }, ErrorKind::Bundle, {"\"inpainting\" has the wrong type"});
}

// Heun makes two U-Net calls per step but the last: the hires pass enters its stretched schedule at the predictor
// call of its first step (step 3 of 6 is call 6 of 11) and makes 2N - 1 = 5 calls, counted in the progress.
TEST(HiresFix, HeunEntersItsScheduleAtAStep) {
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  auto params = small_hires_params("heun");
  Keep keep;
  generate_small(pipeline, {"a red cube"}, {11}, params, &keep);

  auto config = pipeline.manifest().scheduler;
  config.timestep_spacing.clear();
  const auto stretched = txt2img::make_scheduler("heun", config, 6);
  ASSERT_EQ(stretched->timesteps().size(), 11u);
  txt2img::SeededNoise noise({11});
  const auto expected_init = stretched->add_noise(keep.kept.at("hires/latents/upscaled"), noise.draw({1, 4, 9, 12}), 6);
  EXPECT_TRUE(torch::equal(keep.kept.at("hires/latents/init"), expected_init));
  EXPECT_TRUE(keep.kept.count("hires/unet/004/noise_pred"));
  EXPECT_FALSE(keep.kept.count("hires/unet/005/noise_pred"));
  // 5 calls for the first pass's 3 steps, 5 for the hires pass's.
  ASSERT_EQ(keep.progress.size(), 10u);
  EXPECT_EQ(keep.progress[4], (std::pair<size_t, size_t>{5, 10}));
  EXPECT_EQ(keep.progress.back(), (std::pair<size_t, size_t>{10, 10}));
}

// A hires pass to a size (A1111's Resize width to / height to) on the 64x48 first pass, as A1111's
// calculate_target_resolution and sample_hr_pass size it: one side keeps the proportions (rounded down); both resize
// the latents to cover them, then cut them to the size in the middle (an odd latent off the bottom or the right); the
// noise is drawn at the cut size.
TEST(HiresFix, ResizesToASizeAsA1111Does) {
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  struct Case {
    int rx, ry;
    int64_t upscaled_h, upscaled_w, top, left, h, w;
  };
  for (const Case& c : {Case{96, 0, 9, 12, 0, 0, 9, 12},       // 96 x 96 * 48 // 64 = 72
                        Case{0, 40, 5, 6, 0, 0, 5, 6},         // 40 * 64 // 48 = 53 x 40
                        Case{96, 96, 12, 16, 0, 2, 12, 12},    // covered by 128 x 96, 4 latents cut
                        Case{100, 60, 9, 12, 0, 0, 8, 12}}) {  // covered by 100 x 75: (75 - 60) // 8 = 1 cut
    auto params = small_hires_params("euler");
    params.hires.scale = 0;
    params.hires.resize_width = c.rx;
    params.hires.resize_height = c.ry;
    Keep keep;
    const auto image =
        generate_small(pipeline, {"a red cube"}, {11}, txt2img::resolve_params(pipeline.manifest(), params), &keep)[0];
    const std::string label = std::to_string(c.rx) + "x" + std::to_string(c.ry);
    EXPECT_EQ(image.width, c.w * 8) << label;
    EXPECT_EQ(image.height, c.h * 8) << label;
    namespace F = torch::nn::functional;
    const auto upscaled =
        F::interpolate(keep.kept.at("latents/step_002"), F::InterpolateFuncOptions()
                                                             .size(std::vector<int64_t>{c.upscaled_h, c.upscaled_w})
                                                             .mode(torch::kBilinear)
                                                             .align_corners(false))
            .narrow(2, c.top, c.h)
            .narrow(3, c.left, c.w);
    EXPECT_TRUE(torch::equal(keep.kept.at("hires/latents/upscaled"), upscaled)) << label;
    auto config = pipeline.manifest().scheduler;
    config.timestep_spacing.clear();
    txt2img::SeededNoise noise({11});
    EXPECT_TRUE(
        torch::equal(keep.kept.at("hires/latents/init"),
                     txt2img::make_scheduler("euler", config, 6)->add_noise(upscaled, noise.draw({1, 4, c.h, c.w}), 3)))
        << label;
  }

  auto both = small_hires_params("euler");
  both.hires.resize_width = 96;
  expect_error([&] { txt2img::resolve_params(pipeline.manifest(), both); }, ErrorKind::Usage,
               {"a scale or a size to resize to, not both"});
  both.hires.scale = 0;
  both.hires.resize_width = 8192;
  expect_error([&] { txt2img::resolve_params(pipeline.manifest(), both); }, ErrorKind::Usage,
               {"hires resize 8192x0: each side must be from 0 to 4096"});
  // 8x4096 is covered by 5461 x 4096 first.
  both.hires.resize_width = 8;
  both.hires.resize_height = 4096;
  expect_error([&] { txt2img::resolve_params(pipeline.manifest(), both); }, ErrorKind::Usage,
               {"the width before the cut to the resize would be 5456 (resized to 8x4096)"});
}

// The passes share GenerationParams' two etas, each sampler taking the one it has: a hires pass on Euler a at
// k-diffusion's eta 0 after a first pass on Euler is Euler's image (it draws its noise and scales it by 0), and DDIM's
// eta is the hires pass's where only it takes one. An eta neither pass takes is refused, naming both samplers.
TEST(HiresFix, EachPassTakesTheEtaItsSamplerHas) {
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(fixtures() / "tiny"), {});
  auto euler = small_hires_params("euler");
  auto euler_a = euler;
  euler_a.hires.sampler = "euler_a";
  euler_a.eta_ancestral = 0;
  const auto expected = generate_small(pipeline, {"a red cube"}, {9}, euler)[0];
  const auto image =
      generate_small(pipeline, {"a red cube"}, {9}, txt2img::resolve_params(pipeline.manifest(), euler_a))[0];
  EXPECT_EQ(image.rgb, expected.rgb);
  euler_a.eta_ancestral = 1;
  EXPECT_NE(generate_small(pipeline, {"a red cube"}, {9}, euler_a)[0].rgb, expected.rgb);

  auto ddim = euler;
  ddim.hires.sampler = "ddim";
  ddim.eta = 0.5;
  EXPECT_EQ(txt2img::resolve_params(pipeline.manifest(), ddim).eta, 0.5);
  auto heun = euler;
  heun.hires.sampler = "heun";
  heun.eta_ancestral = 0.5;
  expect_error([&] { txt2img::resolve_params(pipeline.manifest(), heun); }, ErrorKind::Usage,
               {"eta ancestral applies only to", "not to euler or heun"});
  heun.eta_ancestral = 1;
  heun.eta = 0.5;
  expect_error([&] { txt2img::resolve_params(pipeline.manifest(), heun); }, ErrorKind::Usage,
               {"eta applies only to", "not to euler or heun"});
}

TEST(HiresFix, WhatCannotRunIsRefused) {
  const auto manifest = txt2img::Bundle::open(fixtures() / "tiny").manifest();
  auto refused = [&](auto edit, std::initializer_list<std::string> fragments) {
    auto params = small_params();
    params.hires.scale = 2;
    edit(params);
    expect_error([&] { txt2img::resolve_params(manifest, params); }, ErrorKind::Usage, fragments);
  };
  refused([](auto& p) { p.sampler = "pndm"; }, {"hires fix: ", "pndm"});
  refused([](auto& p) { p.hires.denoise = 0; }, {"denoising strength"});
  refused([](auto& p) { p.hires.denoise = 1.5; }, {"denoising strength"});
  refused([](auto& p) { p.hires.scale = 100; }, {"hires scale"});
  refused([](auto& p) { p.width = 4096; }, {"hires fix: the width would be 8192"});
  refused([](auto& p) { p.hires.upscaler = "R-ESRGAN 4x+"; }, {"unknown hires upscaler"});
  refused([](auto& p) { p.hires.steps = 999, p.hires.denoise = 0.5; }, {"hires fix: ", "1998"});
  // A strength so small that the schedule's length is past int is refused before it is cast.
  refused([](auto& p) { p.hires.denoise = 1e-12; },
          {"hires fix: 3 hires steps at a denoising strength of 1e-12 take a schedule of 3000000000000 steps",
           "more than the model's 1000 timesteps"});
  refused([](auto& p) { p.hires.denoise = 1e-300; },
          {"hires fix: 3 hires steps at a denoising strength of 1e-300 take a schedule of 3e+300 steps",
           "more than the model's 1000 timesteps"});
  // A scale that is no number or below 0 asks for a pass it cannot have, not for none.
  refused([](auto& p) { p.hires.scale = std::nan(""); }, {"hires scale must be from 1 to 16"});
  refused([](auto& p) { p.hires.scale = -2; }, {"hires scale must be from 1 to 16"});
  auto fine = small_params();
  fine.hires.scale = 2;
  EXPECT_EQ(txt2img::resolve_params(manifest, fine).hires_steps(), 3);
  // A hires sampler that cannot run the model's prediction type is a model mismatch, as for the first pass.
  auto sample_model = manifest;
  sample_model.scheduler.prediction_type = "sample";
  fine.hires.sampler = "dpm2";
  expect_error([&] { txt2img::resolve_params(sample_model, fine); }, ErrorKind::Bundle,
               {"hires fix: ", "prediction_type \"sample\" is not supported by the dpm2 scheduler"});
}

// The reference is diffusers' StableDiffusionPipeline on the reference tiny model read as a zero-terminal-SNR
// v-prediction model, each sampler's class made from its scheduler config (trailing spacing included) as diffusers
// users switch samplers, with guidance_rescale (tests/fixtures/make_zero_snr_reference.py).
TEST(ZeroTerminalSnr, MatchesDiffusersWithGuidanceRescale) {
  const auto reference = txt2img::SafeTensors::open(TXT2IMG_ZERO_SNR_REFERENCE);
  const auto bundle = txt2img::Bundle::open(fixtures() / "ref-tiny-zero-snr");
  ASSERT_TRUE(bundle.manifest().scheduler.rescale_betas_zero_snr);
  txt2img::PipelineOptions options;
  options.safety = txt2img::SafetyMode::Off;
  auto pipeline = txt2img::Pipeline::load(bundle, options);
  struct Run {
    std::string name, sampler;
    int steps, width, height;
    double rescale;
  };
  for (const Run& run : {Run{"ddim_s10_w24_h16_rescale0.7", "ddim", 10, 24, 16, 0.7},
                         Run{"euler_a_s12_rescale0.5", "euler_a", 12, 16, 16, 0.5},
                         Run{"dpmpp_2m_s8_w16_h24", "dpmpp_2m", 8, 16, 24, 0.0}}) {
    SCOPED_TRACE(run.name);
    txt2img::GenerationParams params;
    params.sampler = run.sampler;
    params.steps = run.steps;
    params.width = run.width;
    params.height = run.height;
    params.guidance_rescale = run.rescale;
    Keep keep;
    expect_reference_run(pipeline, reference, run.name, params, keep);
  }
}

// Guidance rescale mixes the guided prediction with itself brought to the text prediction's spread (at 0, the
// dpmpp_2m run above, it is off); composable prompts, whose text prediction is their sum at scale 1, take it too.
TEST(ZeroTerminalSnr, GuidanceRescaleChangesTheImage) {
  const auto bundle = txt2img::Bundle::open(fixtures() / "ref-tiny-zero-snr");
  txt2img::PipelineOptions options;
  options.safety = txt2img::SafetyMode::Off;
  auto pipeline = txt2img::Pipeline::load(bundle, options);
  txt2img::GenerationParams params;
  params.steps = 4;
  params.width = params.height = 16;
  const auto plain = generate_small(pipeline, {"a red cube"}, {3}, params)[0].rgb;
  params.guidance_rescale = 0.7;
  EXPECT_NE(generate_small(pipeline, {"a red cube"}, {3}, params)[0].rgb, plain);
  params.emphasis = true;
  const auto composable = generate_small(pipeline, {"a red cube AND a blue ball"}, {3}, params)[0].rgb;
  params.guidance_rescale = 0;
  EXPECT_NE(generate_small(pipeline, {"a red cube AND a blue ball"}, {3}, params)[0].rgb, composable);
  params.guidance_rescale = 1.5;
  EXPECT_THROW(generate_small(pipeline, {"a red cube"}, {3}, params), txt2img::Error);
}
