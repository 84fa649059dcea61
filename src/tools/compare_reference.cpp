// Runs our pipeline with a reference run's prompts, seed, size, steps, guidance and sampler, and prints the error
// at every stage against the reference's intermediate tensors (diffusers v0.31.0, see ../shared/reference/).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <iostream>
#include <map>
#include <regex>

#include "txt2img/error.hpp"
#include "txt2img/pipeline.hpp"
#include "txt2img/safetensors.hpp"

using namespace txt2img;

namespace {

// The reference drew every row of a batch from one generator; for multi-row runs we replay its draws so that every
// later stage is comparable (our own rule gives row k its own seed, checked separately below).
class ReplayedNoise : public NoiseSource {
 public:
  explicit ReplayedNoise(std::vector<torch::Tensor> draws) : draws_(std::move(draws)) {}
  torch::Tensor draw(const std::vector<int64_t>& shape) override {
    if (next_ >= draws_.size()) throw Error(ErrorKind::Runtime, "the pipeline drew more noise than the reference did");
    auto t = draws_[next_++];
    if (t.sizes().vec() != shape) throw Error(ErrorKind::Runtime, "noise draw " + std::to_string(next_ - 1) +
                                                                      " has a shape the reference did not draw");
    return t;
  }
  void restart() override { next_ = 0; }
  size_t used() const { return next_; }

 private:
  std::vector<torch::Tensor> draws_;
  size_t next_ = 0;
};

class Recorder : public Observer {
 public:
  void tensor(const std::string& name, const torch::Tensor& value) override {
    tensors[name] = value.detach().to(torch::kCPU).clone();
  }
  std::map<std::string, torch::Tensor> tensors;
};

std::string key_with_index(const std::string& prefix, int i) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%03d", i);
  return prefix + buf;
}

std::string sampler_of(const std::string& scheduler_class) {
  static const std::map<std::string, std::string> names = {
      {"DDIMScheduler", "ddim"},          {"PNDMScheduler", "pndm"},
      {"EulerDiscreteScheduler", "euler"}, {"EulerAncestralDiscreteScheduler", "euler_a"},
      {"LMSDiscreteScheduler", "lms"},    {"DPMSolverMultistepScheduler", "dpmpp_2m_karras"}};
  auto it = names.find(scheduler_class);
  if (it == names.end()) throw Error(ErrorKind::Usage, "reference scheduler " + scheduler_class + " is not one we have");
  return it->second;
}

// "unet/003/noise_pred" -> "unet/noise_pred", "latents/step_003" -> "latents/step"
std::string stage_of(const std::string& key) {
  static const std::regex numbered("/[0-9]{3}(/|$)|_[0-9]{3}$");
  return std::regex_replace(key, numbered, "$1");
}

double relative_error(const torch::Tensor& ours, const torch::Tensor& ref) {
  auto a = ours.to(torch::kFloat64), b = ref.to(torch::kFloat64);
  const double denom = b.norm().item<double>();
  const double diff = (a - b).norm().item<double>();
  return denom == 0 ? diff : diff / denom;
}

struct Stage {
  size_t tensors = 0;
  double worst = 0;
  std::string unit;
  double tolerance = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Compare txt2img's pipeline stage by stage with a diffusers reference run"};
  std::string bundle_dir, run_dir, device = "cpu";
  // Every registered run's worst stage is within 7e-6 (float32 rounding, and the initial noise times the sigma
  // samplers' init_noise_sigma); a bug as small as a VAE GroupNorm epsilon of 1e-5 instead of 1e-6 gives 3e-5 on
  // the sd1 runs.
  double tolerance = 2e-5;
  app.add_option("bundle", bundle_dir, "Model bundle converted from the run's model")->required();
  app.add_option("run", run_dir, "Reference run folder (info.json + tensors.safetensors)")->required();
  app.add_option("--tolerance", tolerance, "Largest relative error allowed at a float stage")->capture_default_str();
  app.add_option("--device", device, "Device to run on")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    std::ifstream info_file(std::filesystem::path(run_dir) / "info.json");
    std::string info_text((std::istreambuf_iterator<char>(info_file)), std::istreambuf_iterator<char>());
    // Python's json writes -Infinity (DPM-Solver's lambda_min_clipped), which is not JSON; we never read it.
    info_text = std::regex_replace(info_text, std::regex("-Infinity"), "null");
    const auto info = nlohmann::json::parse(info_text);
    auto ref = SafeTensors::open(std::filesystem::path(run_dir) / "tensors.safetensors");

    const auto prompts_in = info.at("prompts").get<std::vector<std::string>>();
    const int per_prompt = info.value("num_images_per_prompt", nlohmann::json()).is_null()
                               ? 1
                               : info.at("num_images_per_prompt").get<int>();
    std::vector<std::string> negatives_in(prompts_in.size(), "");
    if (!info.at("negative_prompt").is_null()) negatives_in = info.at("negative_prompt").get<std::vector<std::string>>();
    std::vector<std::string> prompts, negatives;
    for (size_t p = 0; p < prompts_in.size(); ++p)
      for (int k = 0; k < per_prompt; ++k) {
        prompts.push_back(prompts_in[p]);
        negatives.push_back(negatives_in[p]);
      }

    GenerationParams params;
    params.width = info.at("width").get<int>();
    params.height = info.at("height").get<int>();
    params.steps = info.at("num_inference_steps").get<int>();
    params.cfg_scale = info.at("guidance_scale").get<double>();
    params.eta = info.at("eta").get<double>();
    params.sampler = sampler_of(info.at("scheduler_class").get<std::string>());

    std::vector<torch::Tensor> draws;
    for (int i = 0; ref.contains(key_with_index("rng/", i)); ++i) draws.push_back(ref.get(key_with_index("rng/", i)));
    if (draws.empty()) draws.push_back(ref.get("latents/init"));  // older runs stored only the initial draw

    PipelineOptions options;
    options.device = parse_device(device);
    auto bundle = Bundle::open(bundle_dir);
    auto pipeline = Pipeline::load(bundle, options);
    ReplayedNoise noise(draws);
    Recorder recorder;
    auto images = pipeline.generate(prompts, negatives, params, noise, &recorder);

    std::map<std::string, Stage> stages;
    auto record = [&](const std::string& stage, double err, const std::string& unit, double tol) {
      auto& s = stages[stage];
      s.tensors++;
      s.worst = std::max(s.worst, err);
      s.unit = unit;
      s.tolerance = tol;
    };
    for (const auto& [key, ours] : recorder.tensors) {
      if (!ref.contains(key)) continue;
      auto theirs = ref.get(key);
      auto mine = ours;
      // The reference encodes each prompt once and repeats it per image; we encode per row.
      if ((key.rfind("text/", 0) == 0 || key.rfind("uncond_text/", 0) == 0) && per_prompt > 1)
        mine = ours.index_select(0, torch::arange(0, ours.size(0), per_prompt));
      if (mine.sizes() != theirs.sizes()) {
        record(stage_of(key), INFINITY, "shape", 0);
        continue;
      }
      if (key.find("input_ids") != std::string::npos)
        record(stage_of(key), (mine != theirs).sum().item<double>(), "ids differing", 0);
      else
        record(stage_of(key), relative_error(mine, theirs), "rel. error", tolerance);
    }
    // Every tensor of the stages the pipeline records must have been compared: a stage renamed on one side would
    // otherwise drop out of the check unnoticed.
    std::map<std::string, size_t> in_reference;
    for (const auto& key : ref.keys()) in_reference[stage_of(key)]++;
    for (const char* stage :
         {"text/input_ids", "text/last_hidden_state", "uncond_text/input_ids", "uncond_text/last_hidden_state",
          "unet/encoder_hidden_states", "unet/noise_pred", "latents/step", "vae/decode_in", "vae/decode_out"}) {
      const auto expected = in_reference.find(stage);
      if (expected == in_reference.end()) continue;  // e.g. no unconditional text without guidance
      const size_t compared = stages.count(stage) ? stages.at(stage).tensors : 0;
      if (compared != expected->second)
        record(std::string(stage) + " (compared)",
               std::abs(static_cast<double>(expected->second) - static_cast<double>(compared)), "tensors missed", 0);
    }
    // Final 8-bit images against round(255 * reference images).
    auto ref_images = (ref.get("images") * 255).round().to(torch::kInt32);
    int worst_level = 0;
    for (size_t b = 0; b < images.size(); ++b) {
      auto ours = torch::from_blob(images[b].rgb.data(), {images[b].height, images[b].width, 3}, torch::kUInt8);
      worst_level = std::max(worst_level, (ours.to(torch::kInt32) - ref_images[b]).abs().max().item<int>());
    }
    record("images (8-bit)", worst_level, "levels", 1);
    // Seeds: our rule draws row k from its own generator; for row 0 that is the reference's generator.
    SeededNoise seeded({info.at("seed").get<uint64_t>()});
    auto first = draws[0].slice(0, 0, 1);
    record("seed (row 0 initial noise)", relative_error(seeded.draw(first.sizes().vec()), first), "rel. error", 0);
    record("noise draws used", std::abs(static_cast<double>(noise.used()) - static_cast<double>(draws.size())),
           "draws differing", 0);
    if (info.contains("nsfw_content_detected") && info.at("nsfw_content_detected").is_array()) {
      const auto expected = info.at("nsfw_content_detected").get<std::vector<bool>>();
      double differing = 0;
      for (size_t b = 0; b < images.size() && b < expected.size(); ++b) differing += images[b].nsfw != expected[b];
      record("safety flags", differing, "flags differing", 0);
      double lit = 0;
      for (const auto& image : images)
        if (image.nsfw) lit += static_cast<double>(std::count_if(image.rgb.begin(), image.rgb.end(), [](uint8_t v) { return v != 0; }));
      record("flagged images black", lit, "bytes not zero", 0);
    }

    bool pass = true;
    std::printf("%-32s %7s  %-16s %12s %10s\n", "stage", "tensors", "measure", "worst", "limit");
    for (const auto& [name, s] : stages) {
      const bool ok = s.worst <= s.tolerance;
      pass = pass && ok;
      std::printf("%-32s %7zu  %-16s %12.3g %10.3g %s\n", name.c_str(), s.tensors, s.unit.c_str(), s.worst,
                  s.tolerance, ok ? "ok" : "FAIL");
    }
    std::printf("%s: %s vs %s\n", pass ? "PASS" : "FAIL", bundle_dir.c_str(), run_dir.c_str());
    return pass ? 0 : 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "compare_reference: %s\n", e.what());
    return exit_code(e.kind());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compare_reference: %s\n", e.what());
    return 1;
  }
}
