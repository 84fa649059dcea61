// Schedulers against the diffusers v0.31.0 goldens in reference/scheduler/ (fake model outputs, explicit noise),
// plus batch independence, configuration variants and error paths.
#include "txt2img/scheduler.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>

#include "txt2img/error.hpp"
#include "txt2img/noise.hpp"
#include "txt2img/safetensors.hpp"

namespace {

using txt2img::ErrorKind;
using txt2img::SchedulerConfig;

std::filesystem::path scheduler_dir() {
  const char* shared = std::getenv("TXT2IMG_SHARED");
  return std::filesystem::path(shared ? shared : "") / "reference/scheduler";
}

// Python's json writes DPM-Solver's lambda_min_clipped as -Infinity, which is not JSON; no test reads it.
nlohmann::json read_python_json(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw std::runtime_error("cannot read " + file.string() + ": is TXT2IMG_SHARED set?");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t at; (at = text.find("-Infinity")) != std::string::npos;) text.replace(at, 9, "null");
  return nlohmann::json::parse(text);
}

struct Goldens {
  txt2img::SafeTensors tensors;
  nlohmann::json info;
};

const Goldens& goldens() {
  static const Goldens g = [] {
    return Goldens{txt2img::SafeTensors::open(scheduler_dir() / "goldens.safetensors"),
                   read_python_json(scheduler_dir() / "goldens.json")};
  }();
  return g;
}

torch::Tensor golden(const std::string& key) { return goldens().tensors.get(key); }
bool has_golden(const std::string& key) { return goldens().tensors.contains(key); }

// The SD v1 scheduler config; the spacing is left to each sampler's diffusers default, as in the goldens.
SchedulerConfig sd_config() { return SchedulerConfig{}; }

std::string step_key(const std::string& run, size_t i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "step%03zu/", i);
  return run + "/" + buf;
}

// Worst differences against the goldens over one run, relative to the largest reference magnitude per tensor.
struct Worst {
  double abs = 0, rel = 0;
  bool exact = true;
  size_t tensors = 0;
  double tolerance = 1e-6;  // relative to the reference's largest value (or 1)

  void compare(const torch::Tensor& got, const torch::Tensor& ref, const std::string& what) {
    ASSERT_TRUE(got.defined()) << what;
    ASSERT_EQ(got.sizes(), ref.sizes()) << what;
    ASSERT_EQ(got.scalar_type(), torch::kFloat32) << what;
    const double diff = (got - ref).abs().max().item<double>();
    const double scale = ref.abs().max().item<double>();
    abs = std::max(abs, diff);
    rel = std::max(rel, diff / std::max(scale, 1e-30));
    exact = exact && torch::equal(got, ref);
    ++tensors;
    EXPECT_LE(diff, tolerance * std::max(scale, 1.0)) << what;
  }
};

std::map<std::string, Worst>& worst_by_sampler() {
  static std::map<std::string, Worst> w;
  return w;
}

struct GoldenCase {
  std::string sampler;  // make_scheduler name
  std::string run;      // goldens prefix
  int steps;
  double eta;
};

void PrintTo(const GoldenCase& c, std::ostream* os) { *os << c.run << " n" << c.steps; }

std::string case_name(const testing::TestParamInfo<GoldenCase>& info) {
  std::string run = info.param.run;
  for (char& c : run)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return run + "_n" + std::to_string(info.param.steps);
}

class SchedulerGolden : public testing::TestWithParam<GoldenCase> {};

TEST_P(SchedulerGolden, MatchesDiffusers) {
  const auto& c = GetParam();
  const std::string run = c.run + "/n" + std::to_string(c.steps);
  auto sched = txt2img::make_scheduler(c.sampler, sd_config(), c.steps, c.eta);

  const auto expected_ts = goldens().info.at("runs").at(run).at("timesteps").get<std::vector<double>>();
  ASSERT_EQ(sched->timesteps(), expected_ts);
  EXPECT_EQ(sched->needs_noise(0),
            has_golden(step_key(run, 0) + "variance_noise") || has_golden(step_key(run, 0) + "noise"));

  Worst w;
  torch::Tensor x = golden("common/sample0");
  if (has_golden(run + "/init_noise_sigma")) {
    EXPECT_EQ(static_cast<float>(sched->init_noise_sigma()), golden(run + "/init_noise_sigma").item<float>());
    x = x * sched->init_noise_sigma();
    w.compare(x, golden(run + "/sample_start"), run + " sample_start");
  } else {
    EXPECT_EQ(sched->init_noise_sigma(), 1.0);
  }

  for (size_t i = 0; i < sched->timesteps().size(); ++i) {
    const std::string s = step_key(run, i);
    if (has_golden(s + "model_input")) w.compare(x, golden(s + "model_input"), s + "model_input");
    const auto scaled = sched->scale_model_input(x, i);
    if (has_golden(s + "scaled_model_input")) w.compare(scaled, golden(s + "scaled_model_input"), s + "scaled_model_input");
    torch::Tensor noise;
    if (has_golden(s + "variance_noise")) noise = golden(s + "variance_noise");
    if (has_golden(s + "noise")) noise = golden(s + "noise");
    x = sched->step(golden(s + "model_output"), i, x, noise);
    w.compare(x, golden(s + "prev_sample"), s + "prev_sample");
    if (has_golden(s + "pred_original_sample"))
      w.compare(sched->pred_original_sample(), golden(s + "pred_original_sample"), s + "pred_original_sample");
  }
  w.compare(x, golden(run + "/final"), run + "/final");

  auto& total = worst_by_sampler()[c.run];
  total.abs = std::max(total.abs, w.abs);
  total.rel = std::max(total.rel, w.rel);
  total.exact = total.exact && w.exact;
  total.tensors += w.tensors;
  std::cout << "[worst] " << run << ": abs " << w.abs << ", rel " << w.rel << (w.exact ? " (bit-exact)" : "")
            << " over " << w.tensors << " tensors; " << c.run << " so far: abs " << total.abs << ", rel "
            << total.rel << (total.exact ? " (bit-exact)" : "") << "\n";
  RecordProperty("worst_abs", std::to_string(w.abs));
  RecordProperty("worst_rel", std::to_string(w.rel));
}

std::vector<GoldenCase> golden_cases() {
  std::vector<GoldenCase> out;
  for (int n : {1, 2, 10, 50}) {
    out.push_back({"ddim", "ddim", n, 0.0});
    out.push_back({"ddim", "ddim_eta0.5", n, 0.5});
    out.push_back({"pndm", "pndm", n, 0.0});
  }
  for (const char* sampler : {"euler", "euler_a", "dpmpp_2m_karras", "lms"})
    for (int n : {1, 2, 10, 20, 50}) out.push_back({sampler, sampler, n, 0.0});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Goldens, SchedulerGolden, testing::ValuesIn(golden_cases()), case_name);

// The samplers reference/scheduler/ has no runs of, against tests/fixtures/sampler_goldens.safetensors: diffusers
// v0.31.0's schedulers run by tests/fixtures/make_sampler_goldens.py on the same kind of fake inputs (a float64
// formula per element, rounded to float32, for the start sample, each call's model output and its noise).
const txt2img::SafeTensors& sampler_goldens() {
  static const auto g = txt2img::SafeTensors::open(TXT2IMG_SAMPLER_GOLDENS);
  return g;
}

torch::Tensor formula(const std::function<double(int64_t)>& f) {
  std::vector<float> values;
  for (int64_t k = 0; k < 256; ++k) values.push_back(static_cast<float>(f(k)));
  return torch::tensor(values).reshape({1, 4, 8, 8});
}
torch::Tensor fake_sample0() {
  return formula([](int64_t k) { return std::sin(0.13 * k) * 1.3 + std::cos(0.07 * k) * 0.4; });
}
torch::Tensor fake_model_output(size_t i) {
  return formula([i](int64_t k) { return std::sin(0.37 * k + 0.5 * i) * 0.8 + std::cos(0.011 * k * (i + 1)) * 0.2; });
}
torch::Tensor fake_noise(size_t i) {
  return formula(
      [i](int64_t k) { return std::sin(1.3 * k + 0.7 * i + 0.25) * 0.9 + std::cos(0.029 * k * (i + 2)) * 0.3; });
}

// The goldens' other configurations (make_sampler_goldens.py's VARIANTS), keyed "<variant>/<sampler>".
SchedulerConfig variant_config(const std::string& variant) {
  SchedulerConfig config = sd_config();
  if (variant == "leading" || variant == "trailing" || variant == "linspace") config.timestep_spacing = variant;
  if (variant == "v_prediction") config.prediction_type = variant;
  if (variant == "zero_snr") {
    config.rescale_betas_zero_snr = true;
    config.prediction_type = "v_prediction";
    config.timestep_spacing = "trailing";
  }
  return config;
}

// Replays run `key`/n`steps` of goldens in make_sampler_goldens.py's format: each call's timestep, scaled input,
// sample after the step and x0 prediction, and the final sample, within `tolerance` of the reference's largest value.
// `exact_final`: the result must be the reference's bit for bit. A key "eta<E>/<sampler>" runs it at k-diffusion's eta
// E (eta_ancestral).
void replay_sampler_golden(const txt2img::SafeTensors& g, const std::string& key, int steps, double tolerance = 1e-6,
                           bool exact_final = false) {
  const std::string run = key + "/n" + std::to_string(steps);
  const auto slash = key.find('/');
  const std::string name = slash == std::string::npos ? key : key.substr(slash + 1);
  const std::string variant = slash == std::string::npos ? "" : key.substr(0, slash);
  const bool eta_variant = variant.rfind("eta", 0) == 0;
  auto sched = txt2img::make_scheduler(name, eta_variant ? sd_config() : variant_config(variant), steps, 0.0,
                                       eta_variant ? std::stod(variant.substr(3)) : 1.0);
  // Timesteps interpolated at a sigma (Karras and exponential sigmas, DPM2's midpoints) come from NumPy's float32 log
  // of the training sigmas, which on this CPU (AVX-512) is off by an ulp for about 190 of the 1000 and differs between
  // CPUs; the sigmas the steps use are exact either way, and a timestep moves by a float32 ulp at most.
  const auto ts = g.get(run + "/timesteps");
  ASSERT_EQ(sched->timesteps().size(), static_cast<size_t>(ts.numel()));
  double timestep_error = 0;
  for (size_t i = 0; i < sched->timesteps().size(); ++i)
    timestep_error = std::max(timestep_error, std::abs(sched->timesteps()[i] - ts[static_cast<int64_t>(i)].item<double>()));
  const bool interpolated = !txt2img::split_sampler_name(name).schedule.empty() || name.rfind("dpm2", 0) == 0 ||
                            name.rfind("dpmpp_2s", 0) == 0 || name.rfind("dpmpp_sde", 0) == 0 ||
                            name.rfind("dpmpp_2m_sde_a1111", 0) == 0 || name.rfind("dpmpp_2m_sde_heun", 0) == 0 ||
                            name.rfind("dpmpp_3m_sde", 0) == 0 || name.rfind("restart", 0) == 0 ||
                            name.rfind("dpm_fast", 0) == 0 || eta_variant;
  // diffusers' Euler a and DPM2 a against k-diffusion's samplers ("eta<E>/" runs): diffusers' linspace timesteps where
  // CompVisDenoiser interpolates the sigma's log, up to 1.4e-3 apart.
  const bool diffusers_timesteps = eta_variant && (name == "euler_a" || name == "dpm2_a");
  EXPECT_LE(timestep_error, diffusers_timesteps ? 2e-3 : interpolated ? 1e-4 : 0.0) << run;
  EXPECT_EQ(static_cast<float>(sched->init_noise_sigma()), g.get(run + "/init_noise_sigma").item<float>());

  Worst w;
  w.tolerance = tolerance;
  torch::Tensor x = fake_sample0() * sched->init_noise_sigma();
  // A sampler with Brownian noise takes it from the trees of the run's seed, as A1111 seeds them.
  txt2img::SeededNoise brownian(
      {g.contains(run + "/brownian_seed") ? static_cast<uint64_t>(g.get(run + "/brownian_seed").item<int64_t>()) : 0});
  for (size_t i = 0; i < sched->timesteps().size(); ++i) {
    char call[16];
    std::snprintf(call, sizeof call, "/call%03zu/", i);
    const std::string s = run + call;
    if (g.contains(s + "scaled_model_input"))
      w.compare(sched->scale_model_input(x, i), g.get(s + "scaled_model_input"), s + "scaled_model_input");
    torch::Tensor noise;
    if (sched->needs_noise(i)) {
      const auto increment = sched->brownian_increment(i);
      noise = increment ? brownian.brownian(x.sizes().vec(), *increment) : fake_noise(i);
    }
    x = sched->step(fake_model_output(i), i, x, noise);
    if (g.contains(s + "prev_sample")) w.compare(x, g.get(s + "prev_sample"), s + "prev_sample");
    if (g.contains(s + "pred_original_sample"))
      w.compare(sched->pred_original_sample(), g.get(s + "pred_original_sample"), s + "pred_original_sample");
  }
  w.compare(x, g.get(run + "/final"), run + "/final");
  if (exact_final) EXPECT_TRUE(torch::equal(x, g.get(run + "/final"))) << run << ": the result is not bit for bit";
  std::cout << "[worst] " << run << ": abs " << w.abs << ", rel " << w.rel << (w.exact ? " (bit-exact)" : "")
            << " over " << w.tensors << " tensors; timesteps within " << timestep_error << "\n";
}

class SamplerGolden : public testing::TestWithParam<std::pair<std::string, int>> {};

TEST_P(SamplerGolden, MatchesDiffusers) {
  // DDPM ends on diffusers' sample bit for bit. DEIS's second-order weights take NumPy's float32 log, an ulp off
  // libm's for some values on the goldens' machine (and different on others): over 20 steps that grows to a relative
  // 3e-6.
  const auto& key = GetParam().first;
  const std::string base = txt2img::split_sampler_name(key.substr(key.find('/') + 1)).base;
  replay_sampler_golden(sampler_goldens(), key, GetParam().second, base == "deis" ? 1e-5 : 1e-6, base == "ddpm");
}

std::vector<std::pair<std::string, int>> sampler_golden_cases() {
  std::vector<std::pair<std::string, int>> out;
  for (const char* name : {"euler_karras", "lms_karras", "heun", "heun_karras", "dpmpp_2m_sde", "dpmpp_2m_sde_karras",
                           "unipc", "unipc_karras", "dpm2", "dpm2_karras", "dpm2_a", "dpm2_a_karras",
                           "euler_exponential", "heun_exponential", "lms_exponential", "dpm2_exponential",
                           "dpm2_a_exponential"})
    for (int steps : {1, 2, 3, 10, 25}) out.emplace_back(name, steps);
  for (const char* name : {"ddpm", "deis", "deis_karras"})
    for (int steps : {1, 2, 3, 10, 25}) out.emplace_back(name, steps);
  for (const char* name : {"leading/dpmpp_2m", "leading/unipc", "trailing/dpmpp_2m", "trailing/unipc",
                           "zero_snr/ddim", "zero_snr/euler", "zero_snr/euler_karras", "zero_snr/euler_a",
                           "zero_snr/dpmpp_2m", "zero_snr/dpmpp_2m_karras", "zero_snr/dpmpp_2m_sde", "zero_snr/unipc",
                           "zero_snr/lcm"})
    for (int steps : {1, 2, 3, 10, 20}) out.emplace_back(name, steps);
  for (const char* name :
       {"zero_snr/ddpm", "trailing/ddpm", "linspace/ddpm", "leading/deis", "trailing/deis", "v_prediction/deis"})
    for (int steps : {1, 2, 3, 10, 20}) out.emplace_back(name, steps);
  return out;
}

std::string sampler_case_name(const testing::TestParamInfo<std::pair<std::string, int>>& info) {
  std::string name = info.param.first;
  std::replace(name.begin(), name.end(), '/', '_');
  return name + "_n" + std::to_string(info.param.second);
}

INSTANTIATE_TEST_SUITE_P(Goldens, SamplerGolden, testing::ValuesIn(sampler_golden_cases()), sampler_case_name);

// The samplers diffusers has no class for, against tests/fixtures/kdiffusion_goldens.safetensors: k-diffusion's own
// sampling functions (at the commit A1111 pins) run by tests/fixtures/make_kdiffusion_goldens.py on the same fake
// inputs and on the sigmas txt2img computes for them.
class KDiffusionGolden : public testing::TestWithParam<std::pair<std::string, int>> {};

const txt2img::SafeTensors& kdiffusion_goldens() {
  static const auto g = txt2img::SafeTensors::open(TXT2IMG_KDIFFUSION_GOLDENS);
  return g;
}

TEST_P(KDiffusionGolden, MatchesKDiffusion) {
  replay_sampler_golden(kdiffusion_goldens(), GetParam().first, GetParam().second, 1e-6, /*exact_final=*/true);
}

std::vector<std::pair<std::string, int>> kdiffusion_golden_cases() {
  std::vector<std::pair<std::string, int>> out;
  for (const char* name : {"dpmpp_2s_a", "dpmpp_2s_a_karras", "dpmpp_2s_a_exponential", "v_prediction/dpmpp_2s_a",
                           "dpmpp_sde", "dpmpp_sde_karras", "dpmpp_sde_exponential", "v_prediction/dpmpp_sde"})
    for (int steps : {1, 2, 3, 10, 20, 25}) out.emplace_back(name, steps);
  // k-diffusion's DPM++ 2M SDE and 3M SDE fail on one step (a step length read before any step set it).
  for (const char* name : {"dpmpp_2m_sde_a1111", "dpmpp_2m_sde_a1111_karras", "dpmpp_2m_sde_a1111_exponential",
                           "v_prediction/dpmpp_2m_sde_a1111", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_karras",
                           "dpmpp_2m_sde_heun_exponential", "v_prediction/dpmpp_2m_sde_heun", "dpmpp_3m_sde",
                           "dpmpp_3m_sde_karras", "dpmpp_3m_sde_exponential", "v_prediction/dpmpp_3m_sde"})
    for (int steps : {2, 3, 10, 20, 25}) out.emplace_back(name, steps);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Goldens, KDiffusionGolden, testing::ValuesIn(kdiffusion_golden_cases()), sampler_case_name);

// k-diffusion's eta (A1111's eta_ancestral) other than 1, against k-diffusion's samplers run with it by
// make_kdiffusion_goldens.py: bit for bit where txt2img's sampler is k-diffusion's; euler_a and dpm2_a, diffusers'
// classes, step as k-diffusion does up to rounding.
class AncestralEtaGolden : public testing::TestWithParam<std::pair<std::string, int>> {};

TEST_P(AncestralEtaGolden, MatchesKDiffusion) {
  const std::string sampler = GetParam().first.substr(GetParam().first.find('/') + 1);
  const bool diffusers_class = sampler == "euler_a" || sampler == "dpm2_a";
  replay_sampler_golden(kdiffusion_goldens(), GetParam().first, GetParam().second, 1e-6, !diffusers_class);
}

std::vector<std::pair<std::string, int>> ancestral_eta_golden_cases() {
  std::vector<std::pair<std::string, int>> out;
  for (const char* eta : {"eta0", "eta0.3"})
    for (const char* sampler :
         {"euler_a", "dpm2_a", "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m_sde_a1111", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"})
      for (int steps : {2, 3, 10, 20}) out.emplace_back(std::string(eta) + "/" + sampler, steps);
  return out;
}

std::string eta_case_name(const testing::TestParamInfo<std::pair<std::string, int>>& info) {
  std::string name = sampler_case_name(info);
  std::replace(name.begin(), name.end(), '.', '_');
  return name;
}

INSTANTIATE_TEST_SUITE_P(Goldens, AncestralEtaGolden, testing::ValuesIn(ancestral_eta_golden_cases()), eta_case_name);

// AUTOMATIC1111's own schedule types, against tests/fixtures/a1111_schedule_goldens.safetensors: the sigmas of A1111's
// sd_schedulers.py and k-diffusion's samplers run on them (DPM2's and DPM++ 3M SDE's on the schedule A1111 gives
// them, one step longer without its next-to-last sigma; DPM++ 2M's U-Net inputs and result, txt2img stepping it in
// another space; the SDE samplers with the Brownian trees of the run's seed, as A1111 makes them), by
// tests/fixtures/make_a1111_schedule_goldens.py.
const txt2img::SafeTensors& a1111_schedule_goldens() {
  static const auto g = txt2img::SafeTensors::open(TXT2IMG_A1111_SCHEDULE_GOLDENS);
  return g;
}

const std::vector<std::string>& a1111_schedules() {
  static const std::vector<std::string> names = {"uniform", "sgm_uniform", "align_your_steps",
                                                 "simple",  "normal",      "polyexponential",
                                                 "beta",    "ddim",        "kl_optimal"};
  return names;
}

// A1111's "Schedule type" labels read back to the schedule they label, for each schedule a sampler name can end in.
TEST(A1111Schedules, LabelsRoundTrip) {
  EXPECT_EQ(txt2img::a1111_schedule_label("sgm_uniform"), "SGM Uniform");
  EXPECT_EQ(txt2img::a1111_schedule_label("align_your_steps"), "Align Your Steps");
  EXPECT_EQ(txt2img::a1111_schedule_label("karras"), "Karras");
  EXPECT_EQ(txt2img::schedule_from_a1111_label("SGMUniform"), "sgm_uniform");
  EXPECT_EQ(txt2img::schedule_from_a1111_label("Automatic"), "");
  std::vector<std::string> schedules = a1111_schedules();
  schedules.insert(schedules.end(), {"karras", "exponential"});
  for (const auto& schedule : schedules) {
    const std::string label = txt2img::a1111_schedule_label(schedule);
    EXPECT_NE(label, schedule) << "no label for " << schedule;
    EXPECT_EQ(txt2img::schedule_from_a1111_label(label), schedule);
    EXPECT_EQ(txt2img::schedule_from_a1111_label(schedule), schedule);
  }
}

// Every sampler on each schedule steps through A1111's sigmas exactly (one per call, a second-order sampler's
// midpoints between them), starts from noise times the first, and gives the U-Net k-diffusion's timestep of each.
TEST(A1111Schedules, AreA1111sSigmas) {
  // A name ends in its schedule: the longest that fits.
  const auto split = txt2img::split_sampler_name("dpmpp_2m_sde_sgm_uniform");
  EXPECT_EQ(split.base, "dpmpp_2m_sde");
  EXPECT_EQ(split.schedule, "sgm_uniform");
  // They are computed for the beta schedules of SD models (scaled_linear, linear); a cosine one is refused.
  SchedulerConfig cosine = sd_config();
  cosine.beta_schedule = "squaredcos_cap_v2";
  try {
    txt2img::make_scheduler("euler_sgm_uniform", cosine, 10);
    ADD_FAILURE() << "a cosine schedule taken";
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Bundle);
    EXPECT_NE(std::string(e.what()).find("scaled_linear or linear beta schedule"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(txt2img::make_scheduler("euler_karras", cosine, 10));
  const auto& g = a1111_schedule_goldens();
  for (const auto& schedule : a1111_schedules()) {
    for (int steps : {1, 2, 3, 7, 10, 11, 20, 25, 50}) {
      const std::string run = schedule + "/n" + std::to_string(steps);
      const auto sigmas = g.get(run + "/sigmas");
      const auto timesteps = g.get(run + "/timesteps");
      // DDIM's takes as many steps as its stride fits: more than asked for where it does not divide 999.
      const int64_t calls = timesteps.numel();
      EXPECT_EQ(calls, schedule == "ddim" ? (999 + 1000 / steps - 1) / (1000 / steps) : steps) << run;
      for (const char* base : {"euler", "euler_a", "lms", "dpmpp_2m", "dpmpp_2m_sde"}) {
        const auto sched = txt2img::make_scheduler(std::string(base) + "_" + schedule, sd_config(), steps);
        ASSERT_EQ(sched->timesteps().size(), static_cast<size_t>(calls)) << base << " " << run;
        for (int64_t i = 0; i < calls; ++i) {
          EXPECT_EQ(static_cast<float>(sched->a1111_sigma(i)), sigmas[i].item<float>())
              << base << " " << run << " " << i;
          EXPECT_NEAR(sched->timesteps()[i], timesteps[i].item<double>(), 1e-4) << base << " " << run << " " << i;
        }
      }
      const auto euler = txt2img::make_scheduler("euler_" + schedule, sd_config(), steps);
      EXPECT_EQ(static_cast<float>(euler->init_noise_sigma()), sigmas[0].item<float>()) << run;
      // Heun's corrector calls take the next sigma, but the last step to sigma 0 has none (KL Optimal's ends above
      // 0).
      const auto heun = txt2img::make_scheduler("heun_" + schedule, sd_config(), steps);
      const bool ends_at_zero = sigmas[-1].item<float>() == 0.0f;
      EXPECT_EQ(ends_at_zero, schedule != "kl_optimal") << run;
      ASSERT_EQ(heun->timesteps().size(), static_cast<size_t>(2 * calls - (ends_at_zero ? 1 : 0))) << run;
      for (int64_t i = 1; i < calls; ++i)
        EXPECT_EQ(static_cast<float>(heun->a1111_sigma(2 * i - 1)), sigmas[i].item<float>());
    }
  }
}

class A1111ScheduleGolden : public testing::TestWithParam<std::pair<std::string, int>> {};

TEST_P(A1111ScheduleGolden, MatchesKDiffusion) {
  // txt2img's DPM++ 2M steps samples divided by sqrt(sigma^2 + 1), k-diffusion's the samples themselves: their
  // roundings part by up to about 1.2e-6 of the result over 10 steps.
  const bool other_space = txt2img::split_sampler_name(GetParam().first).base == "dpmpp_2m";
  // LMS's coefficients come out as k-diffusion's only from its float64 integrand: in float32 (diffusers') the result
  // is an ulp off.
  const bool lms = GetParam().first.rfind("lms", 0) == 0;
  replay_sampler_golden(a1111_schedule_goldens(), GetParam().first, GetParam().second, other_space ? 3e-6 : 1e-6, lms);
}

std::vector<std::pair<std::string, int>> a1111_schedule_golden_cases() {
  std::vector<std::pair<std::string, int>> out;
  for (const auto& schedule : a1111_schedules())
    for (const char* sampler : {"euler", "euler_a", "heun", "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m_sde_a1111",
                                "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "dpmpp_2m", "dpm2", "dpm2_a", "lms"})
      for (int steps : {2, 10}) out.emplace_back(std::string(sampler) + "_" + schedule, steps);
  // DDIM's schedule type at a step count its stride does not divide into 999: 8 steps for 7.
  for (const char* sampler : {"euler", "heun", "dpmpp_sde", "dpmpp_3m_sde", "dpmpp_2m", "dpm2_a", "lms"})
    out.emplace_back(std::string(sampler) + "_ddim", 7);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Goldens, A1111ScheduleGolden, testing::ValuesIn(a1111_schedule_golden_cases()),
                         sampler_case_name);

// AUTOMATIC1111's Restart, against tests/fixtures/restart_goldens.safetensors: its restart_sampler over k-diffusion's
// denoiser, run by tests/fixtures/make_restart_goldens.py on the same fake inputs, on txt2img's sigmas and on A1111's
// own schedule types; below 20 steps Heun steps, from 20 re-planned on Karras sigmas with one stretch run again after
// noise (twice from 36).
const txt2img::SafeTensors& restart_goldens() {
  static const auto g = txt2img::SafeTensors::open(TXT2IMG_RESTART_GOLDENS);
  return g;
}

class RestartGolden : public testing::TestWithParam<std::pair<std::string, int>> {};

TEST_P(RestartGolden, MatchesA1111) {
  replay_sampler_golden(restart_goldens(), GetParam().first, GetParam().second, 1e-6, /*exact_final=*/true);
}

std::vector<std::pair<std::string, int>> restart_golden_cases() {
  std::vector<std::pair<std::string, int>> out;
  for (const char* name : {"restart", "restart_karras", "restart_exponential", "v_prediction/restart"})
    for (int steps : {1, 2, 3, 10, 19, 20, 25, 36, 40}) out.emplace_back(name, steps);
  for (const auto& [name, steps] : std::vector<std::pair<std::string, int>>{{"restart_uniform", 10},
                                                                            {"restart_uniform", 20},
                                                                            {"restart_sgm_uniform", 20},
                                                                            {"restart_kl_optimal", 10},
                                                                            {"restart_kl_optimal", 20},
                                                                            {"restart_ddim", 20}})
    out.emplace_back(name, steps);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Goldens, RestartGolden, testing::ValuesIn(restart_golden_cases()), sampler_case_name);

// N steps make 2N - 1 calls, as Heun's: from 20 steps the stretch run again takes the calls of the steps its plan
// leaves out. It draws noise only where it runs a stretch again, once a stretch from 20 steps and twice from 36.
TEST(Restart, CallsAndNoise) {
  for (int steps : {1, 2, 10, 19, 20, 35, 36, 50}) {
    const auto sched = txt2img::make_scheduler("restart_karras", sd_config(), steps);
    EXPECT_EQ(sched->timesteps().size(), static_cast<size_t>(2 * steps - 1)) << steps;
    EXPECT_EQ(sched->calls_per_step(), 2u);
    int draws = 0;
    for (size_t call = 0; call < sched->timesteps().size(); ++call) draws += sched->needs_noise(call);
    EXPECT_EQ(draws, steps < 20 ? 0 : steps < 36 ? 1 : 2) << steps;
  }
}

// Replays golden run `run` of a sampler that plans a run of its own where start_at(`from`) enters its schedule
// (restart*, dpm_fast): its calls counted from 0, their timesteps, the start noised to the golden's first sigma, and
// the result bit for bit.
void replay_late_entry(const txt2img::SafeTensors& g, const std::string& run, txt2img::Scheduler& sched, size_t from) {
  sched.start_at(from);
  ASSERT_EQ(sched.first_call(), 0u) << run;
  const auto ts = g.get(run + "/timesteps");
  ASSERT_EQ(sched.timesteps().size(), static_cast<size_t>(ts.numel())) << run;
  for (size_t i = 0; i < sched.timesteps().size(); ++i)
    EXPECT_NEAR(sched.timesteps()[i], ts[static_cast<int64_t>(i)].item<double>(), 1e-4) << run << " " << i;
  auto x = sched.add_noise(torch::zeros_like(fake_sample0()), fake_sample0(), 0);
  EXPECT_TRUE(torch::equal(x, fake_sample0() * g.get(run + "/init_noise_sigma"))) << run;
  for (size_t i = 0; i < sched.timesteps().size(); ++i)
    x = sched.step(fake_model_output(i), i, x, sched.needs_noise(i) ? fake_noise(i) : torch::Tensor());
  EXPECT_TRUE(torch::equal(x, g.get(run + "/final"))) << run;
}

// A run entered part-way (A1111's img2img and hires pass) is restart_sampler's on the schedule's rest, noised to the
// schedule's sigma there, its calls counted from 0.
TEST(Restart, EntersPartWayAsA1111) {
  const auto& g = restart_goldens();
  const std::tuple<std::string, int, size_t> runs[] = {
      {"restart_karras", 40, 12}, {"restart_karras", 25, 5}, {"restart_karras", 12, 4}, {"restart_sgm_uniform", 30, 6}};
  for (const auto& [name, steps, from] : runs) {
    const std::string run = name + "/n" + std::to_string(steps) + "_from" + std::to_string(from);
    auto sched = txt2img::make_scheduler(name, sd_config(), steps);
    replay_late_entry(g, run, *sched, from);
  }
  auto sched = txt2img::make_scheduler("restart", sd_config(), 10);
  EXPECT_THROW(sched->start_at(10), txt2img::Error);  // past the schedule's last step
}

// AUTOMATIC1111's DPM fast, against tests/fixtures/a1111_dpm_fast_goldens.safetensors: k-diffusion's sample_dpm_fast
// as A1111 calls it (the model's sigma range, N calls, A1111's eta_ancestral 1 unless "eta<E>/"), run by
// tests/fixtures/make_a1111_dpm_fast_goldens.py on the same fake inputs: every call's input and the result bit for bit.
const txt2img::SafeTensors& a1111_dpm_fast_goldens() {
  static const auto g = txt2img::SafeTensors::open(TXT2IMG_A1111_DPM_FAST_GOLDENS);
  return g;
}

class DpmFastGolden : public testing::TestWithParam<std::pair<std::string, int>> {};

TEST_P(DpmFastGolden, MatchesA1111) {
  replay_sampler_golden(a1111_dpm_fast_goldens(), GetParam().first, GetParam().second, 1e-6, /*exact_final=*/true);
}

std::vector<std::pair<std::string, int>> dpm_fast_golden_cases() {
  std::vector<std::pair<std::string, int>> out;
  for (const char* name : {"dpm_fast", "v_prediction/dpm_fast", "eta0/dpm_fast", "eta0.3/dpm_fast"})
    for (int steps : {1, 2, 3, 4, 5, 6, 10, 20}) out.emplace_back(name, steps);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Goldens, DpmFastGolden, testing::ValuesIn(dpm_fast_golden_cases()), eta_case_name);

// N steps are N U-Net calls in N // 3 + 1 solver steps of order 3 but the last one or two, noise drawn after each
// step; a run entered part-way (A1111's hires pass) spans its uniform schedule's rest, noised to its sigma there.
TEST(DpmFast, CallsNoiseAndLateEntries) {
  for (int steps : {1, 2, 3, 4, 9, 10, 11}) {
    const auto sched = txt2img::make_scheduler("dpm_fast", sd_config(), steps);
    ASSERT_EQ(sched->timesteps().size(), static_cast<size_t>(steps));
    int draws = 0;
    for (size_t call = 0; call < sched->timesteps().size(); ++call) draws += sched->needs_noise(call);
    EXPECT_EQ(draws, steps / 3 + 1) << steps;
    EXPECT_TRUE(sched->needs_noise(sched->timesteps().size() - 1));
  }
  const auto& g = a1111_dpm_fast_goldens();
  for (const auto& [key, steps, from] : std::vector<std::tuple<std::string, int, size_t>>{{"dpm_fast", 10, 4},
                                                                                          {"dpm_fast", 20, 13},
                                                                                          {"dpm_fast", 7, 5},
                                                                                          {"eta0/dpm_fast", 10, 4},
                                                                                          {"eta0/dpm_fast", 7, 5}}) {
    const std::string run = key + "/n" + std::to_string(steps) + "_from" + std::to_string(from);
    auto sched = txt2img::make_scheduler("dpm_fast", sd_config(), steps, 0.0, key == "dpm_fast" ? 1.0 : 0.0);
    replay_late_entry(g, run, *sched, from);
  }
  auto sched = txt2img::make_scheduler("dpm_fast", sd_config(), 10);
  EXPECT_THROW(sched->start_at(10), txt2img::Error);  // past the schedule's last step
  // One step left, from the schedule's last sigma to itself: k-diffusion refuses it with an eta.
  auto last = txt2img::make_scheduler("dpm_fast", sd_config(), 10);
  try {
    last->start_at(9);
    ADD_FAILURE() << "a run of one sigma with an eta";
  } catch (const txt2img::Error& e) {
    EXPECT_NE(std::string(e.what()).find("dpm_fast cannot run a single step from the schedule's last sigma with eta "
                                         "ancestral 1: k-diffusion refuses"),
              std::string::npos)
        << e.what();
  }
  EXPECT_NO_THROW(txt2img::make_scheduler("dpm_fast", sd_config(), 10, 0.0, 0.0)->start_at(9));
}

// At eta 0, with a perfect noise prediction, every call's input lies on the path x0 + sigma * noise (the noise drawn
// after each step scaled by 0), down to the run's end at the model's smallest sigma, not at x0; also from a late
// start.
TEST(DpmFast, FollowsThePathAtEtaZero) {
  const auto x0 = fake_sample0() * 0.5;
  const auto n = fake_noise(0);
  for (size_t from : {0, 4}) {
    auto sched = txt2img::make_scheduler("dpm_fast", sd_config(), 10, 0.0, 0.0);
    if (from > 0) sched->start_at(from);
    const size_t calls = sched->timesteps().size();
    auto x = sched->add_noise(x0, n, 0);
    for (size_t i = 0; i < calls; ++i) {
      x = sched->step(n, i, x, sched->needs_noise(i) ? fake_noise(i) : torch::Tensor());
      EXPECT_TRUE(torch::allclose(sched->pred_original_sample(), x0, 1e-4, 1e-4)) << from << " " << i;
      if (i + 1 < calls)
        EXPECT_TRUE(torch::allclose(x, sched->add_noise(x0, n, i + 1), 1e-5, 1e-5)) << from << " " << i;
    }
    // Both end at timestep 0's sigma: the model's smallest, and the last above 0 of the schedule the late run spans.
    const float a0 = 1.0f - 0.00085f;
    const float end = std::sqrt((1 - a0) / a0);
    EXPECT_TRUE(torch::allclose(x, x0 + n * end, 1e-5, 1e-5)) << from << ": " << (x - x0 - n * end).abs().max();
  }
}

// TCD against tests/fixtures/tcd_goldens.safetensors: diffusers v0.31.0's TCDScheduler run by
// tests/fixtures/make_tcd_goldens.py on the fake inputs, with gammas (--eta) 0, 0.3 and 1: its timesteps (LCM's),
// and every call's sample bit for bit.
TEST(Tcd, MatchesDiffusers) {
  const auto g = txt2img::SafeTensors::open(TXT2IMG_TCD_GOLDENS);
  for (const char* prediction_type : {"epsilon", "v_prediction"}) {
    for (const char* gamma : {"0.0", "0.3", "1.0"}) {
      for (int steps : {1, 2, 3, 4, 8}) {
        const std::string run = std::string(prediction_type) + "/eta" + gamma + "/n" + std::to_string(steps);
        SchedulerConfig config = sd_config();
        config.prediction_type = prediction_type;
        auto sched = txt2img::make_scheduler("tcd", config, steps, std::stod(gamma));
        const auto timesteps = g.get(run + "/timesteps");
        ASSERT_EQ(sched->timesteps().size(), static_cast<size_t>(timesteps.numel())) << run;
        torch::Tensor x = fake_sample0();
        EXPECT_EQ(sched->init_noise_sigma(), 1.0);
        for (size_t i = 0; i < sched->timesteps().size(); ++i) {
          EXPECT_EQ(sched->timesteps()[i], timesteps[static_cast<int64_t>(i)].item<double>()) << run;
          EXPECT_EQ(sched->needs_noise(i), std::string(gamma) != "0.0" && i + 1 < sched->timesteps().size()) << run;
          x = sched->step(fake_model_output(i), i, x, sched->needs_noise(i) ? fake_noise(i) : torch::Tensor());
          char call[16];
          std::snprintf(call, sizeof call, "/call%03zu/", i);
          EXPECT_TRUE(torch::equal(x, g.get(run + call + "prev_sample"))) << run << call;
        }
      }
    }
  }
  // Gamma 0 is DDIM's deterministic step onto the next timestep: from the x0 of an exact noise prediction, the
  // sample that add_noise makes there.
  auto sched = txt2img::make_scheduler("tcd", sd_config(), 4);
  const auto x0 = fake_sample0() * 0.5, eps = fake_noise(0);
  const auto start = sched->add_noise(x0, eps, 0);
  const auto next = sched->step(eps, 0, start);
  EXPECT_TRUE(torch::allclose(sched->pred_original_sample(), x0, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(next, sched->add_noise(x0, eps, 1), 1e-5, 1e-5));
}

// AUTOMATIC1111's DDIM and PLMS (ddim_a1111, plms_a1111) against tests/fixtures/a1111_timesteps_goldens.safetensors:
// A1111's own ddim and plms functions run by tests/fixtures/make_a1111_timesteps_goldens.py on their timesteps, whole
// runs and (DDIM) hires passes entered as A1111's sample_img2img enters them, with eta and for a v-prediction model.
struct A1111TimestepsCase {
  std::string key;  // [variant/]sampler[_etaE]
  int steps;
  double eta;
  int hires_steps;  // 0: a whole run
};

class A1111TimestepsGolden : public testing::TestWithParam<A1111TimestepsCase> {};

TEST_P(A1111TimestepsGolden, MatchesA1111) {
  static const auto g = txt2img::SafeTensors::open(TXT2IMG_A1111_TIMESTEPS_GOLDENS);
  const auto& c = GetParam();
  const std::string run = c.key + "/n" + std::to_string(c.steps) +
                          (c.hires_steps ? "_hires" + std::to_string(c.hires_steps) : std::string());
  const auto slash = c.key.find('/');
  const bool plms = c.key.find("plms_a1111") != std::string::npos;
  auto sched = txt2img::make_scheduler(
      plms ? "plms_a1111" : "ddim_a1111",
      slash == std::string::npos ? sd_config() : variant_config(c.key.substr(0, slash)), c.steps, c.eta);
  if (c.hires_steps) sched->start_at(static_cast<size_t>(c.steps - c.hires_steps));
  const size_t first = sched->first_call();
  const auto ts = g.get(run + "/timesteps");
  ASSERT_EQ(sched->timesteps().size() - first, static_cast<size_t>(ts.numel())) << run;
  for (size_t i = 0; i < static_cast<size_t>(ts.numel()); ++i)
    EXPECT_EQ(sched->timesteps()[first + i], ts[static_cast<int64_t>(i)].item<double>()) << run << " call " << i;
  const auto noise_img2img = formula([](int64_t k) { return ((k * 7919) % 101) / 50.0 - 1.0; });
  torch::Tensor x = c.hires_steps ? sched->add_noise(fake_sample0(), noise_img2img, first) : fake_sample0();
  EXPECT_TRUE(torch::equal(x, g.get(run + "/init"))) << run;
  for (size_t i = 0; i + first < sched->timesteps().size(); ++i) {
    x = sched->step(fake_model_output(i), first + i, x,
                    sched->needs_noise(first + i) ? fake_noise(i) : torch::Tensor());
    // PLMS's first step ends with its second call; DDIM's steps are its calls.
    if (plms && i == 0) continue;
    char step[16];
    std::snprintf(step, sizeof step, "/step%03zu/", plms ? i - 1 : i);
    if (!g.contains(run + step + "prev_sample")) continue;
    EXPECT_TRUE(torch::equal(x, g.get(run + step + "prev_sample"))) << run << step;
    EXPECT_TRUE(torch::equal(sched->pred_original_sample(), g.get(run + step + "pred_original_sample"))) << run << step;
  }
  EXPECT_TRUE(torch::equal(x, g.get(run + "/final")))
      << run << ": off by " << (x - g.get(run + "/final")).abs().max().item<double>();
}

std::vector<A1111TimestepsCase> a1111_timesteps_cases() {
  std::vector<A1111TimestepsCase> out;
  for (int steps : {2, 3, 7, 10, 30, 50, 600}) out.push_back({"ddim_a1111", steps, 0.0, 0});
  out.push_back({"ddim_a1111_eta0.5", 10, 0.5, 0});
  out.push_back({"ddim_a1111_eta1", 7, 1.0, 0});
  out.push_back({"v_prediction/ddim_a1111", 10, 0.0, 0});
  out.push_back({"ddim_a1111", 28, 0.0, 20});
  out.push_back({"ddim_a1111", 20, 0.0, 20});
  out.push_back({"ddim_a1111_eta0.5", 14, 0.5, 10});
  out.push_back({"ddim_a1111", 1000, 0.0, 3});
  for (int steps : {2, 3, 4, 5, 7, 10, 50}) out.push_back({"plms_a1111", steps, 0.0, 0});
  out.push_back({"v_prediction/plms_a1111", 10, 0.0, 0});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Goldens, A1111TimestepsGolden, testing::ValuesIn(a1111_timesteps_cases()),
                         [](const testing::TestParamInfo<A1111TimestepsCase>& info) {
                           std::string name = info.param.key + "_n" + std::to_string(info.param.steps) + "_hires" +
                                              std::to_string(info.param.hires_steps);
                           for (char& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

// AUTOMATIC1111's LCM against tests/fixtures/a1111_lcm_goldens.safetensors: its sample_lcm over its LCM denoiser, run
// by tests/fixtures/make_a1111_lcm_goldens.py on the same fake inputs; bit for bit, whole runs and runs entered
// part-way (its calls then counted from the entry's).
class A1111LcmGolden : public testing::TestWithParam<int> {};

const txt2img::SafeTensors& a1111_lcm_goldens() {
  static const auto g = txt2img::SafeTensors::open(TXT2IMG_A1111_LCM_GOLDENS);
  return g;
}

TEST_P(A1111LcmGolden, MatchesA1111) {
  replay_sampler_golden(a1111_lcm_goldens(), "lcm_a1111", GetParam(), 1e-6, /*exact_final=*/true);
}

INSTANTIATE_TEST_SUITE_P(Goldens, A1111LcmGolden, testing::Values(1, 2, 3, 4, 6, 8, 25, 60));

TEST(A1111Lcm, EntersPartWayAsA1111) {
  const auto& g = a1111_lcm_goldens();
  for (const auto& [steps, from] : std::vector<std::pair<int, size_t>>{{8, 3}, {20, 12}}) {
    const std::string run = "lcm_a1111/n" + std::to_string(steps) + "_from" + std::to_string(from);
    auto sched = txt2img::make_scheduler("lcm_a1111", sd_config(), steps);
    sched->start_at(from);
    ASSERT_EQ(sched->first_call(), from) << run;
    const auto ts = g.get(run + "/timesteps");
    ASSERT_EQ(sched->timesteps().size() - from, static_cast<size_t>(ts.numel())) << run;
    auto x = sched->add_noise(torch::zeros_like(fake_sample0()), fake_sample0(), from);
    for (size_t i = 0; i < static_cast<size_t>(ts.numel()); ++i) {
      EXPECT_EQ(sched->timesteps()[from + i], ts[static_cast<int64_t>(i)].item<double>()) << run << " " << i;
      x = sched->step(fake_model_output(i), from + i, x,
                      sched->needs_noise(from + i) ? fake_noise(i) : torch::Tensor());
    }
    EXPECT_TRUE(torch::equal(x, g.get(run + "/final"))) << run;
  }
}

// AUTOMATIC1111's UniPC against tests/fixtures/a1111_unipc_goldens.safetensors: its unipc function over its uni_pc.py
// (bh1, order 3, time-uniform), run by tests/fixtures/make_a1111_unipc_goldens.py on the same fake inputs, whole runs
// and hires passes (a run of their own from A1111's img2img time); bit for bit, its fractional timesteps too.
class A1111UniPcGolden : public testing::TestWithParam<std::tuple<std::string, int, int>> {};

TEST_P(A1111UniPcGolden, MatchesA1111) {
  static const auto g = txt2img::SafeTensors::open(TXT2IMG_A1111_UNIPC_GOLDENS);
  const auto& [key, steps, hires_steps] = GetParam();
  const std::string run =
      key + "/n" + std::to_string(steps) + (hires_steps ? "_hires" + std::to_string(hires_steps) : std::string());
  const auto slash = key.find('/');
  auto sched = txt2img::make_scheduler(
      "unipc_a1111", slash == std::string::npos ? sd_config() : variant_config(key.substr(0, slash)), steps);
  if (hires_steps) sched->start_at(static_cast<size_t>(steps - hires_steps));
  ASSERT_EQ(sched->first_call(), 0u);
  const auto ts = g.get(run + "/timesteps");
  ASSERT_EQ(sched->timesteps().size(), static_cast<size_t>(ts.numel())) << run;
  for (size_t i = 0; i < sched->timesteps().size(); ++i)
    EXPECT_EQ(sched->timesteps()[i], ts[static_cast<int64_t>(i)].item<double>()) << run << " call " << i;
  const auto noise_img2img = formula([](int64_t k) { return ((k * 7919) % 101) / 50.0 - 1.0; });
  torch::Tensor x = hires_steps ? sched->add_noise(fake_sample0(), noise_img2img, 0) : fake_sample0();
  EXPECT_EQ(sched->init_noise_sigma(), 1.0);
  EXPECT_TRUE(torch::equal(x, g.get(run + "/init"))) << run;
  for (size_t i = 0; i < sched->timesteps().size(); ++i) {
    EXPECT_FALSE(sched->needs_noise(i));
    x = sched->step(fake_model_output(i), i, x);
    char call[16];
    std::snprintf(call, sizeof call, "/call%03zu/", i);
    EXPECT_TRUE(torch::equal(x, g.get(run + call + "prev_sample")))
        << run << call << " off by " << (x - g.get(run + call + "prev_sample")).abs().max().item<double>();
  }
  EXPECT_TRUE(torch::equal(x, g.get(run + "/final"))) << run;
}

INSTANTIATE_TEST_SUITE_P(Goldens, A1111UniPcGolden,
                         testing::Values(std::make_tuple("unipc_a1111", 3, 0), std::make_tuple("unipc_a1111", 4, 0),
                                         std::make_tuple("unipc_a1111", 5, 0), std::make_tuple("unipc_a1111", 7, 0),
                                         std::make_tuple("unipc_a1111", 10, 0), std::make_tuple("unipc_a1111", 20, 0),
                                         std::make_tuple("unipc_a1111", 30, 0),
                                         std::make_tuple("v_prediction/unipc_a1111", 10, 0),
                                         std::make_tuple("unipc_a1111", 10, 5), std::make_tuple("unipc_a1111", 28, 20),
                                         std::make_tuple("unipc_a1111", 14, 4)),
                         [](const testing::TestParamInfo<std::tuple<std::string, int, int>>& info) {
                           std::string name = std::get<0>(info.param) + "_n" + std::to_string(std::get<1>(info.param)) +
                                              "_hires" + std::to_string(std::get<2>(info.param));
                           for (char& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

// The schedulers inside complete diffusers pipeline runs (guided model outputs of real shapes, batch 2 or 4,
// generator noise): replaying each run's scheduler inputs reproduces its latents.
class SchedulerRunReplay : public testing::TestWithParam<std::string> {};

TEST_P(SchedulerRunReplay, ReproducesLatents) {
  const char* shared = std::getenv("TXT2IMG_SHARED");
  const auto dir = std::filesystem::path(shared ? shared : "") / "reference" / GetParam();
  const auto info = read_python_json(dir / "info.json");
  const auto tensors = txt2img::SafeTensors::open(dir / "tensors.safetensors");
  const auto get = [&](const std::string& key) { return tensors.get(key); };
  const auto key = [](const char* prefix, size_t i, const char* suffix = "") {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%03zu%s", prefix, i, suffix);
    return std::string(buf);
  };

  auto sched = txt2img::make_scheduler(info.at("scheduler").get<std::string>(), sd_config(),
                                       info.at("num_inference_steps").get<int>(), info.at("eta").get<double>());
  const auto expected_ts = get("scheduler/timesteps").to(torch::kFloat64);
  ASSERT_EQ(sched->timesteps(),
            std::vector<double>(expected_ts.data_ptr<double>(), expected_ts.data_ptr<double>() + expected_ts.numel()));

  Worst w;
  torch::Tensor x = get("rng/000") * sched->init_noise_sigma();
  w.compare(x, get("latents/init"), "latents/init");
  size_t draws = 1;
  for (size_t i = 0; i < sched->timesteps().size(); ++i) {
    const auto unet_in = get(key("unet/", i, "/sample_in"));
    w.compare(sched->scale_model_input(x, i), unet_in.slice(0, 0, x.size(0)), key("unet/", i, "/sample_in"));
    EXPECT_EQ(get(key("unet/", i, "/timestep")).item<double>(), sched->timesteps()[i]);
    const auto noise = sched->needs_noise(i) ? get(key("rng/", draws++)) : torch::Tensor();
    x = sched->step(get(key("step/", i, "/model_output")), i, x, noise);
    w.compare(x, get(key("latents/step_", i)), key("latents/step_", i));
    if (tensors.contains(key("step/", i, "/pred_original_sample")))
      w.compare(sched->pred_original_sample(), get(key("step/", i, "/pred_original_sample")),
                key("step/", i, "/pred_original_sample"));
  }
  EXPECT_EQ(draws, info.at("generator").at("draws_in_order").size());
  w.compare(x, get("latents/final"), "latents/final");
  std::cout << "[worst] " << GetParam() << ": abs " << w.abs << ", rel " << w.rel
            << (w.exact ? " (bit-exact)" : "") << " over " << w.tensors << " tensors\n";
}

std::vector<std::string> pipeline_runs() {
  std::vector<std::string> out;
  for (const char* preset : {"tiny", "sd1"})
    for (const char* run : {"ddim_s10_eta0.5", "ddim_s10_g1", "dpmpp_2m_karras_s20", "euler_a_s20", "euler_s20",
                            "lms_s20", "pndm_s10_2x2"})
      out.push_back(std::string(preset) + "/runs/" + run);
  out.push_back("tiny/runs/ddim_s10_neg_g5_w24_h16");
  out.push_back("sd1/runs/ddim_s10_neg_g5_w128_h96");
  return out;
}

INSTANTIATE_TEST_SUITE_P(Runs, SchedulerRunReplay, testing::ValuesIn(pipeline_runs()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

TEST(Scheduler, AlphasCumprodMatchesDiffusers) {
  const auto ac = txt2img::alphas_cumprod(sd_config());
  EXPECT_EQ(ac.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(ac, golden("common/alphas_cumprod")));
}

TEST(Scheduler, OtherBetaSchedules) {
  for (const char* schedule : {"linear", "squaredcos_cap_v2"}) {
    SchedulerConfig config;
    config.beta_schedule = schedule;
    const auto ac = txt2img::alphas_cumprod(config);
    ASSERT_EQ(ac.numel(), 1000) << schedule;
    EXPECT_TRUE((ac.slice(0, 1) < ac.slice(0, 0, -1)).all().item<bool>()) << schedule;
    EXPECT_GT(ac[-1].item<float>(), 0.0f) << schedule;
    EXPECT_LT(ac[0].item<float>(), 1.0f) << schedule;
  }
  SchedulerConfig linear;
  linear.beta_schedule = "linear";
  EXPECT_NEAR(txt2img::alphas_cumprod(linear)[0].item<double>(), 1.0 - 0.00085, 1e-7);
}

// A batch of two rows gives each row exactly what it gets alone: every update is elementwise.
TEST(Scheduler, RowsAreIndependent) {
  const auto sample0 = golden("common/sample0");
  for (const auto& [name, eta] : std::vector<std::pair<std::string, double>>{{"ddim", 0.0},
                                                                             {"ddim", 0.5},
                                                                             {"pndm", 0.0},
                                                                             {"euler", 0.0},
                                                                             {"euler_a", 0.0},
                                                                             {"dpmpp_2m_karras", 0.0},
                                                                             {"lms", 0.0},
                                                                             {"lcm", 0.0},
                                                                             {"dpmpp_2m", 0.0},
                                                                             {"euler_karras", 0.0},
                                                                             {"heun", 0.0},
                                                                             {"heun_karras", 0.0},
                                                                             {"lms_karras", 0.0},
                                                                             {"dpmpp_2m_sde", 0.0},
                                                                             {"dpmpp_2m_sde_karras", 0.0},
                                                                             {"unipc", 0.0},
                                                                             {"unipc_karras", 0.0},
                                                                             {"dpm2", 0.0},
                                                                             {"dpm2_karras", 0.0},
                                                                             {"dpm2_a", 0.0},
                                                                             {"dpm2_a_karras", 0.0},
                                                                             {"euler_exponential", 0.0},
                                                                             {"heun_exponential", 0.0},
                                                                             {"lms_exponential", 0.0},
                                                                             {"dpm2_exponential", 0.0},
                                                                             {"dpm2_a_exponential", 0.0},
                                                                             {"dpmpp_2s_a", 0.0},
                                                                             {"dpmpp_2s_a_karras", 0.0},
                                                                             {"dpmpp_2s_a_exponential", 0.0},
                                                                             {"ddpm", 0.0},
                                                                             {"deis", 0.0},
                                                                             {"deis_karras", 0.0}}) {
    const int steps = 10;
    const auto run = [&](const torch::Tensor& start, const std::function<torch::Tensor(size_t)>& output,
                         const std::function<torch::Tensor(size_t)>& noise) {
      auto sched = txt2img::make_scheduler(name, sd_config(), steps, eta);
      torch::Tensor x = start * sched->init_noise_sigma();
      for (size_t i = 0; i < sched->timesteps().size(); ++i) {
        x = sched->step(output(i), i, x, sched->needs_noise(i) ? noise(i) : torch::Tensor());
      }
      return x;
    };
    const auto eps = [](size_t i, double phase) {
      return torch::sin(torch::arange(256, torch::kFloat32).reshape({1, 4, 8, 8}) * 0.37 + 0.5 * i + phase) * 0.8;
    };
    const auto noise = [](size_t i, double phase) {
      return torch::cos(torch::arange(256, torch::kFloat32).reshape({1, 4, 8, 8}) * 1.3 + 0.7 * i + phase);
    };
    const auto other = sample0.flip(3) * -0.7 + 0.1;
    const auto a = run(sample0, [&](size_t i) { return eps(i, 0.0); }, [&](size_t i) { return noise(i, 0.0); });
    const auto b = run(other, [&](size_t i) { return eps(i, 1.0); }, [&](size_t i) { return noise(i, 1.0); });
    const auto both = run(
        torch::cat({sample0, other}), [&](size_t i) { return torch::cat({eps(i, 0.0), eps(i, 1.0)}); },
        [&](size_t i) { return torch::cat({noise(i, 0.0), noise(i, 1.0)}); });
    EXPECT_TRUE(torch::equal(both[0], a[0])) << name << " eta " << eta;
    EXPECT_TRUE(torch::equal(both[1], b[0])) << name << " eta " << eta;
  }
}

std::vector<double> timesteps_of(const std::string& name, const std::string& spacing, int steps) {
  SchedulerConfig config;
  config.timestep_spacing = spacing;
  return txt2img::make_scheduler(name, config, steps)->timesteps();
}

TEST(Scheduler, OtherSpacings) {
  EXPECT_EQ(timesteps_of("ddim", "trailing", 10),
            (std::vector<double>{999, 899, 799, 699, 599, 499, 399, 299, 199, 99}));
  EXPECT_EQ(timesteps_of("ddim", "linspace", 10),
            (std::vector<double>{999, 888, 777, 666, 555, 444, 333, 222, 111, 0}));
  // np.linspace(0, 999, 3) = 0, 499.5, 999 and np.round rounds half to even
  EXPECT_EQ(timesteps_of("ddim", "linspace", 3), (std::vector<double>{999, 500, 0}));
  EXPECT_EQ(timesteps_of("pndm", "trailing", 3), (std::vector<double>{999, 666, 666, 332}));
  EXPECT_EQ(timesteps_of("euler", "leading", 4), (std::vector<double>{751, 501, 251, 1}));
  EXPECT_EQ(timesteps_of("euler", "trailing", 4), (std::vector<double>{999, 749, 499, 249}));

  // Leading spacing for a sigma sampler starts from sqrt(sigma_max^2 + 1).
  SchedulerConfig leading;
  leading.timestep_spacing = "leading";
  const auto euler = txt2img::make_scheduler("euler", leading, 10);
  const auto sigmas = golden("euler/n10/sigmas");
  EXPECT_GT(euler->init_noise_sigma(), 1.0);
  EXPECT_LT(euler->init_noise_sigma(), std::sqrt(std::pow(sigmas[0].item<double>(), 2) + 1));
}

// With x0 or v predictions equivalent to the golden epsilon, DDIM follows the epsilon trajectory.
TEST(Scheduler, DdimPredictionTypes) {
  const auto ac = golden("common/alphas_cumprod");
  for (const char* type : {"sample", "v_prediction"}) {
    SchedulerConfig config;
    config.prediction_type = type;
    auto sched = txt2img::make_scheduler("ddim", config, 10);
    torch::Tensor x = golden("common/sample0");
    for (size_t i = 0; i < 10; ++i) {
      const std::string s = step_key("ddim/n10", i);
      const auto eps = golden(s + "model_output");
      const auto x0 = golden(s + "pred_original_sample");
      const double a = ac[static_cast<int64_t>(sched->timesteps()[i])].item<double>();
      const auto output = std::string(type) == "sample" ? x0 : std::sqrt(a) * eps - std::sqrt(1 - a) * x0;
      x = sched->step(output, i, x);
      EXPECT_TRUE(torch::allclose(x, golden(s + "prev_sample"), 1e-4, 1e-4)) << type << " step " << i;
    }
  }
}

// With x0 predictions (and, for DDPM, v predictions) equivalent to the fake epsilon outputs of the goldens, DDPM
// and DEIS follow the epsilon run (the goldens have DDPM's v_prediction on a zero-terminal-SNR schedule and DEIS's).
TEST(Scheduler, DdpmAndDeisPredictionTypes) {
  const auto ac = txt2img::alphas_cumprod(sd_config());
  for (const std::string name : {"ddpm", "deis"}) {
    for (const std::string type : {"sample", "v_prediction"}) {
      if (name == "deis" && type == "v_prediction") continue;
      SchedulerConfig config;
      config.prediction_type = type;
      auto epsilon = txt2img::make_scheduler(name, sd_config(), 10);
      auto other = txt2img::make_scheduler(name, config, 10);
      torch::Tensor x = fake_sample0(), y = x;
      for (size_t i = 0; i < 10; ++i) {
        const auto noise = epsilon->needs_noise(i) ? fake_noise(i) : torch::Tensor();
        x = epsilon->step(fake_model_output(i), i, x, noise);
        const auto x0 = epsilon->pred_original_sample();
        const double a = ac[static_cast<int64_t>(epsilon->timesteps()[i])].item<double>();
        const auto output = type == "sample" ? x0 : std::sqrt(a) * fake_model_output(i) - std::sqrt(1 - a) * x0;
        y = other->step(output, i, y, noise);
        EXPECT_TRUE(torch::allclose(y, x, 1e-4, 1e-4)) << name << " " << type << " call " << i;
      }
    }
  }
}

template <typename F>
void expect_error(ErrorKind kind, const std::string& needle, F&& f) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << needle;
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// The samplers on A1111's own schedule types, by schedule.
std::vector<std::string> a1111_schedule_samplers() {
  std::vector<std::string> out;
  for (const auto& schedule : a1111_schedules())
    for (const char* sampler :
         {"euler", "euler_a", "heun", "dpm2", "dpm2_a", "dpmpp_2s_a", "dpmpp_sde", "lms", "dpmpp_2m", "dpmpp_2m_sde",
          "dpmpp_2m_sde_a1111", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "restart"})
      out.push_back(std::string(sampler) + "_" + schedule);
  return out;
}

// Euler a on Karras' and exponential sigmas, which diffusers' EulerAncestralDiscreteScheduler lacks (A1111's Euler a
// with its schedule type Karras or Exponential): the sigmas, timesteps and input scaling of euler_karras and
// euler_exponential (golden-tested against diffusers), stepped as euler_a steps (k-diffusion's
// sample_euler_ancestral: down to sigma_down, then noise times sigma_up).
TEST(Scheduler, EulerAncestralOnKarrasAndExponentialSigmas) {
  for (const std::string schedule : {"_karras", "_exponential"}) {
    const auto ancestral = txt2img::make_scheduler("euler_a" + schedule, sd_config(), 10);
    const auto plain = txt2img::make_scheduler("euler" + schedule, sd_config(), 10);
    EXPECT_EQ(ancestral->timesteps(), plain->timesteps()) << schedule;
    EXPECT_EQ(ancestral->init_noise_sigma(), plain->init_noise_sigma()) << schedule;
    torch::manual_seed(3);
    auto sample = torch::randn({1, 4, 8, 8}) * ancestral->init_noise_sigma();
    for (size_t call = 0; call < ancestral->timesteps().size(); ++call) {
      // x0 + sigma * noise with x0 = 0 and noise = 1 gives the call's sigma.
      const auto sigma_of = [&](size_t i) {
        return plain->add_noise(torch::zeros({1}), torch::ones({1}), i).item<double>();
      };
      const double sigma = sigma_of(call);
      const double next = call + 1 < ancestral->timesteps().size() ? sigma_of(call + 1) : 0.0;
      EXPECT_TRUE(torch::equal(ancestral->scale_model_input(sample, call), plain->scale_model_input(sample, call)));
      EXPECT_TRUE(ancestral->needs_noise(call));
      const auto epsilon = torch::randn_like(sample);
      const auto noise = torch::randn_like(sample);
      const double up = std::sqrt(next * next * (sigma * sigma - next * next) / (sigma * sigma));
      const double down = std::sqrt(next * next - up * up);
      const auto expected = sample + epsilon * (down - sigma) + noise * up;  // the derivative of eps is eps itself
      sample = ancestral->step(epsilon, call, sample, noise);
      EXPECT_TRUE(torch::allclose(sample, expected, 1e-5, 1e-5)) << schedule << " call " << call;
    }
  }
}

// At k-diffusion's eta 0 an ancestral step goes all the way to the next sigma and adds its noise scaled by 0: Euler a
// is Euler, bit for bit, on every schedule, whatever noise it is handed.
TEST(Scheduler, EulerAncestralAtEtaZeroIsEuler) {
  for (const std::string schedule : {"", "_karras", "_exponential", "_sgm_uniform"}) {
    const auto ancestral = txt2img::make_scheduler("euler_a" + schedule, sd_config(), 10, 0.0, 0.0);
    const auto plain = txt2img::make_scheduler("euler" + schedule, sd_config(), 10);
    ASSERT_EQ(ancestral->timesteps(), plain->timesteps()) << schedule;
    torch::manual_seed(5);
    auto a = torch::randn({1, 4, 8, 8}) * ancestral->init_noise_sigma();
    auto b = a.clone();
    for (size_t call = 0; call < ancestral->timesteps().size(); ++call) {
      const auto output = torch::randn_like(a);
      EXPECT_TRUE(torch::equal(ancestral->scale_model_input(a, call), plain->scale_model_input(b, call)));
      a = ancestral->step(output, call, a, torch::randn_like(a));
      b = plain->step(output, call, b, torch::Tensor());
      ASSERT_TRUE(torch::equal(a, b)) << schedule << " call " << call;
    }
  }
}

TEST(Scheduler, NamesAndValidation) {
  const auto& names = txt2img::scheduler_names();
  std::vector<std::string> diffusers_names = {"ddim",
                                              "ddim_a1111",
                                              "pndm",
                                              "plms_a1111",
                                              "ddpm",
                                              "euler",
                                              "euler_karras",
                                              "euler_exponential",
                                              "euler_a",
                                              "euler_a_karras",
                                              "euler_a_exponential",
                                              "heun",
                                              "heun_karras",
                                              "heun_exponential",
                                              "dpm2",
                                              "dpm2_karras",
                                              "dpm2_exponential",
                                              "dpm2_a",
                                              "dpm2_a_karras",
                                              "dpm2_a_exponential",
                                              "dpmpp_2s_a",
                                              "dpmpp_2s_a_karras",
                                              "dpmpp_2s_a_exponential",
                                              "dpmpp_sde",
                                              "dpmpp_sde_karras",
                                              "dpmpp_sde_exponential",
                                              "dpmpp_2m",
                                              "dpmpp_2m_karras",
                                              "dpmpp_2m_sde",
                                              "dpmpp_2m_sde_karras",
                                              "dpmpp_2m_sde_a1111",
                                              "dpmpp_2m_sde_a1111_karras",
                                              "dpmpp_2m_sde_a1111_exponential",
                                              "dpmpp_2m_sde_heun",
                                              "dpmpp_2m_sde_heun_karras",
                                              "dpmpp_2m_sde_heun_exponential",
                                              "dpmpp_3m_sde",
                                              "dpmpp_3m_sde_karras",
                                              "dpmpp_3m_sde_exponential",
                                              "restart",
                                              "restart_karras",
                                              "restart_exponential",
                                              "dpm_fast",
                                              "lms",
                                              "lms_karras",
                                              "lms_exponential",
                                              "unipc",
                                              "unipc_karras",
                                              "unipc_a1111",
                                              "deis",
                                              "deis_karras",
                                              "lcm",
                                              "lcm_a1111",
                                              "tcd"};
  auto expected = diffusers_names;
  for (const auto& name : a1111_schedule_samplers()) expected.push_back(name);
  EXPECT_EQ(names, expected);
  for (const auto& name : names) {
    // LCM's and TCD's timesteps are a subset of the 50 they were distilled on; A1111's DDIM and PLMS take no step
    // for 1, its UniPC (order 3) none below 3.
    const int most = name == "lcm" || name == "tcd" ? 50 : 999;
    const bool a1111_timesteps = name == "ddim_a1111" || name == "plms_a1111";
    EXPECT_NO_THROW(txt2img::make_scheduler(name, sd_config(),
                                            name == "unipc_a1111" ? 3
                                            : a1111_timesteps     ? 2
                                                                  : 1))
        << name;
    if (a1111_timesteps)
      expect_error(ErrorKind::Usage, "1 step makes none", [&] { txt2img::make_scheduler(name, sd_config(), 1); });
    EXPECT_NO_THROW(txt2img::make_scheduler(name, sd_config(), most)) << name;
    expect_error(ErrorKind::Usage, "steps", [&] { txt2img::make_scheduler(name, sd_config(), 0); });
    expect_error(ErrorKind::Usage, "steps", [&] { txt2img::make_scheduler(name, sd_config(), 1001); });
  }
  for (const char* distilled : {"lcm", "tcd"})
    expect_error(ErrorKind::Usage, "at most 50 steps", [&] { txt2img::make_scheduler(distilled, sd_config(), 51); });
  try {
    txt2img::make_scheduler("dpm_adaptive", sd_config(), 10);
    ADD_FAILURE();
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Usage);
    // The samplers on A1111's schedules are summed up: the schedules, then the samplers.
    for (const auto& name : diffusers_names) EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("schedule types uniform, sgm_uniform, align_your_steps, simple, normal, "
                                         "polyexponential, beta, ddim and kl_optimal: euler, euler_a, "),
              std::string::npos)
        << e.what();
  }
  expect_error(ErrorKind::Usage, "eta", [] { txt2img::make_scheduler("ddim", sd_config(), 10, -0.1); });
  expect_error(ErrorKind::Usage, "eta", [] { txt2img::make_scheduler("ddim", sd_config(), 10, NAN); });
  expect_error(ErrorKind::Usage, "from 0 to 1", [] { txt2img::make_scheduler("ddim", sd_config(), 10, 1.01); });
  EXPECT_NO_THROW(txt2img::make_scheduler("ddim", sd_config(), 10, 1.0));
  expect_error(ErrorKind::Usage, "eta", [] { txt2img::make_scheduler("pndm", sd_config(), 10, 0.5); });
  // k-diffusion's eta (A1111's eta_ancestral): the ancestral and SDE samplers', on any schedule, 0 to 1.
  expect_error(ErrorKind::Usage,
               "eta ancestral applies only to the euler_a, dpm2_a, dpmpp_2s_a, dpmpp_sde, dpmpp_2m_sde_a1111, "
               "dpmpp_2m_sde_heun, dpmpp_3m_sde and dpm_fast samplers (on any schedule), not to euler",
               [] { txt2img::make_scheduler("euler", sd_config(), 10, 0.0, 0.5); });
  expect_error(ErrorKind::Usage, "not to dpmpp_2m_sde",
               [] { txt2img::make_scheduler("dpmpp_2m_sde", sd_config(), 10, 0.0, 0.5); });
  expect_error(ErrorKind::Usage, "eta ancestral must be from 0 to 1",
               [] { txt2img::make_scheduler("euler_a", sd_config(), 10, 0.0, 1.5); });
  expect_error(ErrorKind::Usage, "eta ancestral must be from 0 to 1",
               [] { txt2img::make_scheduler("euler_a", sd_config(), 10, 0.0, NAN); });
  for (const char* name : {"euler_a_sgm_uniform", "dpm2_a_karras", "dpmpp_sde_beta", "dpmpp_2m_sde_heun_exponential",
                           "dpmpp_3m_sde_kl_optimal", "DPM++ SDE Karras"}) {
    EXPECT_TRUE(txt2img::sampler_takes_eta_ancestral(name)) << name;
    EXPECT_NO_THROW(txt2img::make_scheduler(name, sd_config(), 10, 0.0, 0.0)) << name;
  }
  for (const char* name : {"euler", "ddim", "dpmpp_2m_sde_karras", "restart", "lcm_a1111", "euler_uniform"})
    EXPECT_FALSE(txt2img::sampler_takes_eta_ancestral(name)) << name;
  // A run's passes share the etas: one pass taking each is enough.
  EXPECT_NO_THROW(txt2img::check_etas_taken({"euler", "euler_a"}, 0.0, 0.5));
  EXPECT_NO_THROW(txt2img::check_etas_taken({"euler", "ddim"}, 0.5, 1.0));
  expect_error(ErrorKind::Usage, "not to euler or heun", [] {
    txt2img::check_etas_taken({"euler", "heun"}, 0.5, 1.0);
  });
  // With eta 0 the SDE samplers add no noise, and the ancestral ones still draw theirs (scaled by 0), as k-diffusion's.
  EXPECT_FALSE(txt2img::make_scheduler("dpmpp_2m_sde_a1111", sd_config(), 10, 0.0, 0.0)->needs_noise(0));
  EXPECT_TRUE(txt2img::make_scheduler("dpmpp_2m_sde_a1111", sd_config(), 10, 0.0, 0.3)->needs_noise(0));
  EXPECT_TRUE(txt2img::make_scheduler("euler_a", sd_config(), 10, 0.0, 0.0)->needs_noise(0));
  EXPECT_FALSE(txt2img::make_scheduler("ddim", sd_config(), 10, 0.0)->needs_noise(0));
  EXPECT_TRUE(txt2img::make_scheduler("ddim", sd_config(), 10, 0.5)->needs_noise(0));
  EXPECT_TRUE(txt2img::make_scheduler("euler_a", sd_config(), 10)->needs_noise(9));
  // DPM2 ancestral draws noise at each step's midpoint call: calls 1, 3, ..., none at the last step's single call.
  const auto dpm2_a = txt2img::make_scheduler("dpm2_a", sd_config(), 3);
  EXPECT_FALSE(dpm2_a->needs_noise(0) || dpm2_a->needs_noise(2) || dpm2_a->needs_noise(4));
  EXPECT_TRUE(dpm2_a->needs_noise(1) && dpm2_a->needs_noise(3));
  EXPECT_FALSE(txt2img::make_scheduler("dpm2", sd_config(), 3)->needs_noise(1));
  // k-diffusion's DPM++ 2S a draws after each step's midpoint call, as DPM2 a does: not in the last step.
  const auto dpmpp_2s_a = txt2img::make_scheduler("dpmpp_2s_a", sd_config(), 3);
  ASSERT_EQ(dpmpp_2s_a->timesteps().size(), 5u);
  EXPECT_FALSE(dpmpp_2s_a->needs_noise(0) || dpmpp_2s_a->needs_noise(2) || dpmpp_2s_a->needs_noise(4));
  EXPECT_TRUE(dpmpp_2s_a->needs_noise(1) && dpmpp_2s_a->needs_noise(3));
  // LCM draws noise after every call but the last (so a single step draws none).
  const auto lcm = txt2img::make_scheduler("lcm", sd_config(), 3);
  EXPECT_TRUE(lcm->needs_noise(0) && lcm->needs_noise(1));
  EXPECT_FALSE(lcm->needs_noise(2));
  EXPECT_FALSE(txt2img::make_scheduler("lcm", sd_config(), 1)->needs_noise(0));
  // DDPM draws noise at every call whose timestep is above 0: all of SD's leading schedule (its last timestep is 1),
  // all but the last of a linspace one (which ends on 0).
  const auto ddpm = txt2img::make_scheduler("ddpm", sd_config(), 3);
  EXPECT_TRUE(ddpm->needs_noise(0) && ddpm->needs_noise(1) && ddpm->needs_noise(2));
  SchedulerConfig linspace;
  linspace.timestep_spacing = "linspace";
  const auto ddpm_linspace = txt2img::make_scheduler("ddpm", linspace, 3);
  ASSERT_EQ(ddpm_linspace->timesteps(), (std::vector<double>{999, 500, 0}));
  EXPECT_TRUE(ddpm_linspace->needs_noise(0) && ddpm_linspace->needs_noise(1));
  EXPECT_FALSE(ddpm_linspace->needs_noise(2));
  EXPECT_FALSE(txt2img::make_scheduler("deis", sd_config(), 3)->needs_noise(0));

  // diffusers would index past alphas_cumprod (leading, offset 1, 1000 steps) or make an extra timestep
  // (trailing, 61 steps).
  expect_error(ErrorKind::Usage, "1000", [] { txt2img::make_scheduler("ddim", sd_config(), 1000); });
  expect_error(ErrorKind::Usage, "1000", [] { txt2img::make_scheduler("pndm", sd_config(), 1000); });
  expect_error(ErrorKind::Usage, "1000", [] { txt2img::make_scheduler("ddpm", sd_config(), 1000); });
  SchedulerConfig trailing;
  trailing.timestep_spacing = "trailing";
  expect_error(ErrorKind::Usage, "62 timesteps", [&] { txt2img::make_scheduler("euler", trailing, 61); });
  EXPECT_NO_THROW(txt2img::make_scheduler("euler", sd_config(), 1000));
  // The log-SNR solvers' rounded linspace repeats a timestep at 1000 steps (a zero step they would divide by).
  for (const char* name : {"dpmpp_2m", "dpmpp_2m_sde", "unipc", "deis"}) {
    expect_error(ErrorKind::Usage, "at most 999 steps", [&] { txt2img::make_scheduler(name, sd_config(), 1000); });
    EXPECT_NO_THROW(txt2img::make_scheduler(name, sd_config(), 999)) << name;
    EXPECT_NO_THROW(txt2img::make_scheduler(std::string(name) + "_karras", sd_config(), 1000)) << name;
  }
  // Their "leading" spacing at 999 steps starts at timestep 1000, past the schedule: diffusers' np.interp takes
  // timestep 999's sigma there (it was read from beyond the training sigmas).
  SchedulerConfig leading;
  leading.timestep_spacing = "leading";
  for (const char* name : {"dpmpp_2m", "unipc"}) {
    const auto past = txt2img::make_scheduler(name, leading, 999);
    const auto last = txt2img::make_scheduler(name, sd_config(), 999);
    ASSERT_EQ(past->timesteps().front(), 1000) << name;
    ASSERT_EQ(last->timesteps().front(), 999) << name;
    const auto x0 = torch::zeros({1, 4, 2, 2}), noise = torch::ones({1, 4, 2, 2});
    EXPECT_TRUE(torch::equal(past->add_noise(x0, noise, 0), last->add_noise(x0, noise, 0))) << name;
  }
}

// LCM has no run in reference/scheduler/ (v0.31.0 fixtures predate it here): its goldens are diffusers' own
// LCMScheduler tests (tests/schedulers/test_scheduler_lcm.py): the full loop over their deterministic sample with
// their dummy model (sample * t / (t + 1)) and the default CPU generator seeded 0, summarised as sum and mean of
// absolute values with their tolerances (the values of diffusers since 0.23); and the timesteps
// LCMScheduler.set_timesteps gives.
TEST(Scheduler, LcmMatchesDiffusersTests) {
  EXPECT_EQ(txt2img::make_scheduler("lcm", sd_config(), 4)->timesteps(), (std::vector<double>{999, 759, 499, 259}));
  EXPECT_EQ(txt2img::make_scheduler("lcm", sd_config(), 3)->timesteps(), (std::vector<double>{999, 679, 339}));
  EXPECT_EQ(txt2img::make_scheduler("lcm", sd_config(), 1)->timesteps(), (std::vector<double>{999}));
  std::vector<double> all;
  for (int t = 999; t > 0; t -= 20) all.push_back(t);
  EXPECT_EQ(txt2img::make_scheduler("lcm", sd_config(), 50)->timesteps(), all);

  const auto full_loop = [](int steps) {
    // arange(768).reshape(3, 8, 8, 4) / 768, permuted to batch-first [4, 3, 8, 8].
    auto sample = (torch::arange(768).reshape({3, 8, 8, 4}) / 768).permute({3, 0, 1, 2});
    auto generator = at::detail::createCPUGenerator(0);
    auto sched = txt2img::make_scheduler("lcm", sd_config(), steps);
    for (size_t i = 0; i < sched->timesteps().size(); ++i) {
      const auto t = torch::tensor(static_cast<int64_t>(sched->timesteps()[i]));
      const auto residual = sample * t / (t + 1);
      const auto noise =
          sched->needs_noise(i) ? torch::randn({4, 3, 8, 8}, generator, torch::kFloat32) : torch::Tensor();
      sample = sched->step(residual, i, sample, noise);
    }
    return sample.abs();
  };
  const auto one = full_loop(1);
  EXPECT_NEAR(one.sum().item<double>(), 18.7097, 1e-3);
  EXPECT_NEAR(one.mean().item<double>(), 0.0244, 1e-3);
  // Before diffusers 0.23 (PR 5681) the last call added noise too and the test expected 280.5618 here.
  const auto ten = full_loop(10);
  EXPECT_NEAR(ten.sum().item<double>(), 197.7616, 1e-3);
  EXPECT_NEAR(ten.mean().item<double>(), 0.2575, 1e-3);
}

// A model output that is exactly the noise in the sample takes LCM to the clean sample in one call, up to its
// c_skip (2.5e-9 at t = 999): the consistency function maps any point of a trajectory to its origin.
TEST(Scheduler, LcmRecoversTheOriginFromAPerfectNoisePrediction) {
  const auto x0 = golden("common/sample0") * 0.5;
  const auto eps = torch::cos(torch::arange(x0.numel(), torch::kFloat32).reshape(x0.sizes()));
  const float a = txt2img::alphas_cumprod(sd_config())[999].item<float>();
  const auto noisy = std::sqrt(a) * x0 + std::sqrt(1.0f - a) * eps;
  auto sched = txt2img::make_scheduler("lcm", sd_config(), 1);
  const auto out = sched->step(eps, 0, noisy);
  EXPECT_TRUE(torch::allclose(out, x0, 1e-4, 1e-4)) << (out - x0).abs().max();
  EXPECT_TRUE(torch::equal(sched->pred_original_sample(), out));  // the last call returns its denoised sample
}

// Other tools' names for our samplers: A1111's (as its infotext writes them), k-diffusion's, diffusers' classes.
TEST(Scheduler, OtherToolsNamesStandForTheSameSampler) {
  for (const auto& name : txt2img::scheduler_names()) EXPECT_EQ(txt2img::canonical_scheduler_name(name), name);
  const std::vector<std::pair<std::string, std::string>> aliases = {
      {"DDIM", "ddim"},
      {"PLMS", "pndm"},
      {"Euler", "euler"},
      {"Euler a", "euler_a"},
      {"k_euler_a", "euler_a"},
      {"LMS", "lms"},
      {"DPM++ 2M Karras", "dpmpp_2m_karras"},
      {"LCM", "lcm"},
      {"EulerAncestralDiscreteScheduler", "euler_a"},
      {"LCMScheduler", "lcm"},
      {"PNDMScheduler", "pndm"},
      {"LMSDiscreteScheduler", "lms"},
      {"DPM++ 2M", "dpmpp_2m"},
      {"DPMSolverMultistepScheduler", "dpmpp_2m"},
      {"Heun", "heun"},
      {"HeunDiscreteScheduler", "heun"},
      {"DPM++ 2M SDE", "dpmpp_2m_sde"},
      {"DPM++ 2M SDE Karras", "dpmpp_2m_sde_karras"},
      {"LMS Karras", "lms_karras"},
      {"Euler Karras", "euler_karras"},
      {"UniPC", "unipc"},
      {"UniPCMultistepScheduler", "unipc"},
      {"DPM2", "dpm2"},
      {"DPM2 Karras", "dpm2_karras"},
      {"DPM2 a", "dpm2_a"},
      {"DPM2 a Karras", "dpm2_a_karras"},
      {"k_dpm_2_a", "dpm2_a"},
      {"DPM++ 2S a", "dpmpp_2s_a"},
      {"DPM++ 2S a Karras", "dpmpp_2s_a_karras"},
      {"k_dpmpp_2s_a", "dpmpp_2s_a"},
      {"DPM++ 2S a Exponential", "dpmpp_2s_a_exponential"},
      {"k_dpmpp_2s_a_ka", "dpmpp_2s_a_karras"},
      {"DPM++ SDE", "dpmpp_sde"},
      {"DPM++ SDE Karras", "dpmpp_sde_karras"},
      {"k_dpmpp_sde", "dpmpp_sde"},
      {"k_dpmpp_sde_ka", "dpmpp_sde_karras"},
      {"DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun"},
      {"DPM++ 2M SDE Heun Karras", "dpmpp_2m_sde_heun_karras"},
      {"k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun"},
      {"DPM++ 3M SDE", "dpmpp_3m_sde"},
      {"DPM++ 3M SDE Exponential", "dpmpp_3m_sde_exponential"},
      {"k_dpmpp_3m_sde", "dpmpp_3m_sde"},
      {"k_dpm_2_a_ka", "dpm2_a_karras"},
      {"k_dpm_2_ka", "dpm2_karras"},
      {"k_lms_ka", "lms_karras"},
      {"k_dpmpp_2m_ka", "dpmpp_2m_karras"},
      {"KDPM2DiscreteScheduler", "dpm2"},
      {"KDPM2AncestralDiscreteScheduler", "dpm2_a"},
      {"Euler Exponential", "euler_exponential"},
      {"DPM2 a Exponential", "dpm2_a_exponential"},
      {"DDPMScheduler", "ddpm"},
      {"DDPM", "ddpm"},
      {"DEISMultistepScheduler", "deis"},
      {"DEIS", "deis"},
      {"DEIS Karras", "deis_karras"},
      {"Restart", "restart"},
      {"Restart Exponential", "restart_exponential"},
      {"DPM fast", "dpm_fast"},
      {"k_dpm_fast", "dpm_fast"}};
  for (const auto& [alias, name] : aliases) {
    EXPECT_EQ(txt2img::canonical_scheduler_name(alias), name) << alias;
    EXPECT_EQ(txt2img::make_scheduler(alias, sd_config(), 10)->timesteps(),
              txt2img::make_scheduler(name, sd_config(), 10)->timesteps()) << alias;
  }
  for (const char* other : {"DPM adaptive"}) {
    EXPECT_EQ(txt2img::canonical_scheduler_name(other), other);
    expect_error(ErrorKind::Usage, "unknown sampler", [&] { txt2img::make_scheduler(other, sd_config(), 10); });
  }
}

// dpmpp_2m has no reference run: its solver is dpmpp_2m_karras's (golden-tested above) and its schedule is
// DPMSolverMultistepScheduler's default, np.linspace(0, 999, steps + 1).round()[::-1][:-1] (499.5 rounds to even).
TEST(Scheduler, DpmPP2MOnTheDefaultSchedule) {
  EXPECT_EQ(txt2img::make_scheduler("dpmpp_2m", sd_config(), 10)->timesteps(),
            (std::vector<double>{999, 899, 799, 699, 599, 500, 400, 300, 200, 100}));
  EXPECT_EQ(txt2img::make_scheduler("dpmpp_2m", sd_config(), 1)->timesteps(), (std::vector<double>{999}));
}

// Zero terminal SNR: alphas_cumprod ends at exactly 0 (rescaled betas end at 1) with the first value unchanged, as
// Lin et al.'s Algorithm 1 leaves it; the sampler goldens above check every sampler that takes it against diffusers.
TEST(Scheduler, ZeroTerminalSnr) {
  SchedulerConfig zero_snr = variant_config("zero_snr");
  const auto plain = txt2img::alphas_cumprod(sd_config());
  const auto rescaled = txt2img::alphas_cumprod(zero_snr);
  EXPECT_EQ(rescaled[-1].item<float>(), 0.0f);
  EXPECT_NEAR(rescaled[0].item<float>(), plain[0].item<float>(), 1e-6);
  EXPECT_LT(rescaled[500].item<float>(), plain[500].item<float>());
  // Its samplers start at the pure-noise timestep 999 (trailing spacing); Euler's first sigma is 2^12, from the
  // 2^-24 that stands in for the final 0.
  EXPECT_EQ(txt2img::make_scheduler("ddim", zero_snr, 10)->timesteps().front(), 999);
  EXPECT_FLOAT_EQ(static_cast<float>(txt2img::make_scheduler("euler", zero_snr, 10)->init_noise_sigma()), 4096.0f);
  // diffusers' Heun, DPM2, LMS and PNDM have no rescale_betas_zero_snr: refused rather than run on another schedule.
  for (const char* name : {"heun", "dpm2_a_karras", "lms", "pndm", "deis", "deis_karras"})
    expect_error(ErrorKind::Usage, "zero-terminal-SNR", [&] { txt2img::make_scheduler(name, zero_snr, 10); });
  // From 21 steps, Karras sigmas round to a repeated first timestep, where diffusers' solvers run off the schedule.
  for (const char* name : {"dpmpp_2m_karras", "unipc_karras"}) {
    EXPECT_NO_THROW(txt2img::make_scheduler(name, zero_snr, 20));
    expect_error(ErrorKind::Usage, "repeats the first timestep", [&] { txt2img::make_scheduler(name, zero_snr, 21); });
  }
}

// A model that predicts exactly the noise of one clean sample makes every x0 prediction that sample, so both DPM++
// schedules end on it (the second-order term vanishes and the last step lands at sigma 0).
TEST(Scheduler, DpmPP2MRecoversTheCleanSampleFromAPerfectPrediction) {
  const auto x0 = golden("common/sample0") * 0.5;
  const auto eps = torch::cos(torch::arange(x0.numel(), torch::kFloat32).reshape(x0.sizes()));
  for (const char* name : {"dpmpp_2m", "dpmpp_2m_karras"}) {
    auto sched = txt2img::make_scheduler(name, sd_config(), 12);
    // The first sigma: x = x0 + sigma * eps in sigma space, i.e. alpha * (x0 + sigma * eps) in the VP space the
    // DPM solver works in, where the initial noise is drawn at scale 1 (init_noise_sigma).
    const double t0 = sched->timesteps()[0];
    const float a = txt2img::alphas_cumprod(sd_config())[static_cast<int64_t>(t0)].item<float>();
    torch::Tensor x = std::sqrt(a) * x0 + std::sqrt(1.0f - a) * eps;
    for (size_t i = 0; i < sched->timesteps().size(); ++i) {
      const float at = txt2img::alphas_cumprod(sd_config())[static_cast<int64_t>(sched->timesteps()[i])].item<float>();
      // The noise that takes x0 to x at this timestep, as a perfect epsilon model would predict it.
      const auto model_eps = (x - std::sqrt(at) * x0) / std::sqrt(1.0f - at);
      x = sched->step(model_eps, i, x);
    }
    EXPECT_TRUE(torch::allclose(x, x0, 1e-4, 1e-4)) << name << " " << (x - x0).abs().max();
  }
}

TEST(Scheduler, UnsupportedConfigValuesAreBundleErrors) {
  SchedulerConfig schedule;
  schedule.beta_schedule = "sigmoid";
  expect_error(ErrorKind::Bundle, "sigmoid", [&] { txt2img::alphas_cumprod(schedule); });
  SchedulerConfig spacing;
  spacing.timestep_spacing = "karras";
  SchedulerConfig prediction;
  prediction.prediction_type = "flow";
  for (const auto& name : txt2img::scheduler_names()) {
    expect_error(ErrorKind::Bundle, "sigmoid", [&] { txt2img::make_scheduler(name, schedule, 10); });
    // LCM's and TCD's timesteps come from their distillation schedule, A1111's DDIM's, PLMS's and UniPC's from
    // A1111's own spacing: none reads the configured one.
    if (name != "lcm" && name != "tcd" && name != "ddim_a1111" && name != "plms_a1111" && name != "unipc_a1111" &&
        name != "lcm_a1111")
      expect_error(ErrorKind::Bundle, "karras", [&] { txt2img::make_scheduler(name, spacing, 10); });
    expect_error(ErrorKind::Bundle, "flow", [&] { txt2img::make_scheduler(name, prediction, 10); });
  }
  SchedulerConfig sample;
  sample.prediction_type = "sample";
  expect_error(ErrorKind::Bundle, "sample", [&] { txt2img::make_scheduler("pndm", sample, 10); });
  expect_error(ErrorKind::Bundle, "sample", [&] { txt2img::make_scheduler("euler_a", sample, 10); });
}

TEST(Scheduler, StepsMustComeInOrderWithNoiseWhereNeeded) {
  const auto x = golden("common/sample0");
  for (const auto& name : txt2img::scheduler_names()) {
    auto sched = txt2img::make_scheduler(name, sd_config(), 3);
    const auto noise = torch::zeros_like(x);
    expect_error(ErrorKind::Runtime, "order", [&] { sched->step(x, 1, x, noise); });
    // A model output and sample that cannot be stepped together are refused before any history is kept.
    expect_error(ErrorKind::Runtime, "of one shape", [&] { sched->step(x[0], 0, x, noise); });
    expect_error(ErrorKind::Runtime, "of one shape", [&] { sched->step(x, 0, x.to(torch::kFloat64), noise); });
    expect_error(ErrorKind::Runtime, "undefined", [&] { sched->step(torch::Tensor(), 0, x, noise); });
    sched->step(x, 0, x, noise);
    expect_error(ErrorKind::Runtime, "order", [&] { sched->step(x, 0, x, noise); });
    const size_t calls = sched->timesteps().size();
    for (size_t i = 1; i < calls; ++i) sched->step(x, i, x, noise);
    expect_error(ErrorKind::Runtime, "U-Net calls", [&] { sched->step(x, calls, x, noise); });
  }
  for (const auto& [name, eta] :
       std::vector<std::pair<std::string, double>>{{"ddim", 0.5}, {"euler_a", 0.0}, {"lcm", 0.0}, {"ddpm", 0.0}}) {
    auto sched = txt2img::make_scheduler(name, sd_config(), 2, eta);
    expect_error(ErrorKind::Runtime, "noise", [&] { sched->step(x, 0, x); });
    expect_error(ErrorKind::Runtime, "noise", [&] { sched->step(x, 0, x, torch::zeros({1, 4, 8, 7})); });
  }
  auto lcm = txt2img::make_scheduler("lcm", sd_config(), 2);
  lcm->step(x, 0, x, torch::zeros_like(x));
  EXPECT_NO_THROW(lcm->step(x, 1, x));
}


// ---- Entering a schedule part-way (start_at, add_noise): A1111's hires fix and img2img ----

// The samplers that can start part-way, with the sample space their add_noise works in.
const std::vector<std::string>& late_starters() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out = {"ddim",
                                    "euler",
                                    "euler_karras",
                                    "euler_a",
                                    "euler_a_karras",
                                    "euler_a_exponential",
                                    "heun",
                                    "heun_karras",
                                    "lms",
                                    "lms_karras",
                                    "dpmpp_2m",
                                    "dpmpp_2m_karras",
                                    "dpmpp_2m_sde",
                                    "dpmpp_2m_sde_karras",
                                    "dpmpp_2m_sde_a1111",
                                    "dpmpp_2m_sde_a1111_karras",
                                    "dpmpp_2m_sde_a1111_exponential",
                                    "dpmpp_2m_sde_heun",
                                    "dpmpp_2m_sde_heun_karras",
                                    "dpmpp_2m_sde_heun_exponential",
                                    "dpmpp_3m_sde",
                                    "dpmpp_3m_sde_karras",
                                    "dpmpp_3m_sde_exponential",
                                    "unipc",
                                    "unipc_karras",
                                    "dpm2",
                                    "dpm2_karras",
                                    "dpm2_a",
                                    "dpm2_a_karras",
                                    "euler_exponential",
                                    "heun_exponential",
                                    "lms_exponential",
                                    "dpm2_exponential",
                                    "dpm2_a_exponential",
                                    "dpmpp_2s_a",
                                    "dpmpp_2s_a_karras",
                                    "dpmpp_2s_a_exponential",
                                    "dpmpp_sde",
                                    "dpmpp_sde_karras",
                                    "dpmpp_sde_exponential",
                                    "ddpm",
                                    "deis",
                                    "deis_karras",
                                    "restart",
                                    "restart_karras",
                                    "restart_exponential",
                                    "lcm_a1111",
                                    "dpm_fast"};
    for (const auto& name : a1111_schedule_samplers()) out.push_back(name);
    return out;
  }();
  return names;
}

torch::Tensor unit_noise(const torch::Tensor& like) {
  return torch::cos(torch::arange(like.numel(), torch::kFloat32).reshape(like.sizes()) * 0.9 + 0.3);
}

// Float32 sqrt(a) and sqrt(1 - a) of alphas_cumprod at a timestep, as DDIMScheduler.add_noise takes them.
torch::Tensor vp_noised(const torch::Tensor& x0, const torch::Tensor& noise, double timestep) {
  const float a = golden("common/alphas_cumprod")[static_cast<int64_t>(timestep)].item<float>();
  return std::sqrt(a) * x0 + std::sqrt(1.0f - a) * noise;
}

// A whole run starts from noise * init_noise_sigma(); add_noise at call 0 gives a clean sample of zeros that noise
// exactly for the sigma samplers, and for the variance-preserving ones the marginal at the first timestep, whose
// scale sqrt(1 - a) is within 1% of diffusers' unit-scale start.
TEST(SchedulerStartAt, AddNoiseAtTheFirstCallIsTheInitialNoise) {
  const auto n = golden("common/sample0");
  const auto zeros = torch::zeros_like(n);
  for (const auto& name : late_starters()) {
    const auto sched = txt2img::make_scheduler(name, sd_config(), 10);
    const auto start = sched->add_noise(zeros, n, 0);
    const auto whole_run_start = n * sched->init_noise_sigma();
    const auto on_a1111_schedules = a1111_schedule_samplers();
    const bool a1111_schedule =
        std::find(on_a1111_schedules.begin(), on_a1111_schedules.end(), name) != on_a1111_schedules.end();
    // Sigma space (A1111's DPM++ 2M SDE's too), or A1111's start (noise * sigmas[0]) in the variance-preserving space.
    const std::string base = txt2img::split_sampler_name(name).base;
    const bool variance_preserving = name.rfind("ddim", 0) == 0 || name.rfind("ddpm", 0) == 0 || base == "dpmpp_2m" ||
                                     base == "dpmpp_2m_sde" || name.rfind("unipc", 0) == 0 ||
                                     name.rfind("deis", 0) == 0;
    if (a1111_schedule || !variance_preserving) {
      EXPECT_TRUE(torch::equal(start, whole_run_start)) << name;
    } else {
      EXPECT_EQ(sched->init_noise_sigma(), 1.0) << name;
      EXPECT_TRUE(torch::allclose(start, whole_run_start, 1e-2, 0)) << name;
      // The first timesteps: ddim's and ddpm's leading 901, DPM-Solver's 999 (both schedules).
      const auto expected = vp_noised(zeros, n, sched->timesteps()[0]);
      EXPECT_TRUE(torch::allclose(start, expected, 1e-6, 0)) << name << " " << (start - expected).abs().max();
      if (name == "ddim" || name == "ddpm") EXPECT_TRUE(torch::equal(start, expected));
      EXPECT_FALSE(torch::equal(start, whole_run_start)) << name;
    }
  }
}

// diffusers' add_noise golden (add_noise/*: one row per timestep 1, 251, 501, 999) for the samplers that index
// alphas_cumprod with their timestep, at the calls with those timesteps.
TEST(SchedulerStartAt, AddNoiseMatchesDiffusersForTheTimestepSamplers) {
  const auto x0 = golden("add_noise/original"), noise = golden("add_noise/noise"), noisy = golden("add_noise/noisy");
  SchedulerConfig linspace;
  linspace.timestep_spacing = "linspace";
  struct Case {
    std::string name;
    SchedulerConfig config;
    int steps;
    size_t call;
    int64_t row;
  };
  for (const auto& c : std::vector<Case>{{"ddim", sd_config(), 4, 3, 0},
                                        {"ddim", sd_config(), 4, 2, 1},
                                        {"ddim", sd_config(), 4, 1, 2},
                                        {"ddim", linspace, 10, 0, 3},
                                        {"pndm", sd_config(), 4, 4, 0},
                                        {"pndm", sd_config(), 4, 2, 2},
                                        {"lcm", sd_config(), 4, 0, 3}}) {
    const auto sched = txt2img::make_scheduler(c.name, c.config, c.steps);
    const auto got = sched->add_noise(x0[c.row], noise[c.row], c.call);
    EXPECT_TRUE(torch::equal(got, noisy[c.row])) << c.name << " call " << c.call << ": "
                                                  << (got - noisy[c.row]).abs().max();
  }
}

// add_noise at a call in the middle: x0 + sigma * noise with the sigma of the diffusers golden schedule, its
// variance-preserving form for DPM-Solver++, alphas_cumprod at that call's timestep for DDIM.
TEST(SchedulerStartAt, AddNoiseInTheMiddleOfTheSchedule) {
  const auto x0 = golden("common/sample0") * 0.5;
  const auto n = unit_noise(x0);
  const size_t k = 4;
  for (const char* name : {"euler", "euler_a", "lms"}) {
    const float sigma = golden(std::string(name) + "/n10/sigmas")[k].item<float>();
    const auto got = txt2img::make_scheduler(name, sd_config(), 10)->add_noise(x0, n, k);
    EXPECT_TRUE(torch::equal(got, x0 + sigma * n)) << name;
  }
  {
    const float s = golden("dpmpp_2m_karras/n10/sigmas")[k].item<float>();
    const float alpha = 1.0f / std::sqrt(s * s + 1.0f), sigma = s * alpha;
    const auto got = txt2img::make_scheduler("dpmpp_2m_karras", sd_config(), 10)->add_noise(x0, n, k);
    EXPECT_TRUE(torch::equal(got, alpha * x0 + sigma * n));
    // Not sigma space: A1111's x0 + s * noise, scaled by alpha.
    EXPECT_TRUE(torch::allclose(got, (x0 + s * n) * alpha, 1e-5, 1e-6));
  }
  {
    const auto sched = txt2img::make_scheduler("ddim", sd_config(), 10);
    ASSERT_EQ(sched->timesteps()[k], 501);
    EXPECT_TRUE(torch::equal(sched->add_noise(x0, n, k), vp_noised(x0, n, 501)));
  }
}

// A1111's NGMS compares the noise level A1111's sampler hands its denoiser: the timestep for DDIM, PLMS and UniPC
// (and for DDPM and DEIS, which A1111 lacks), else the sigma of the call's input, which add_noise puts on a clean
// sample of zeros with unit noise (over the signal's scale alpha, add_noise's of ones without noise, in the
// variance-preserving space of DPM-Solver++ and LCM).
TEST(SchedulerA1111Sigma, IsTheTimestepOrTheSigmaOfTheCallsInput) {
  const auto zeros = torch::zeros({1});
  const auto ones = torch::ones({1});
  for (const auto& name : txt2img::scheduler_names()) {
    const auto sched = txt2img::make_scheduler(name, sd_config(), 10);
    const auto base = txt2img::split_sampler_name(name).base;
    for (size_t call = 0; call < sched->timesteps().size(); ++call) {
      const double got = sched->a1111_sigma(call);
      if (base == "ddim" || base == "ddim_a1111" || base == "pndm" || base == "plms_a1111" || base == "unipc" ||
          base == "unipc_a1111" || base == "ddpm" || base == "deis") {
        EXPECT_EQ(got, sched->timesteps()[call]) << name << " call " << call;
        continue;
      }
      const float noised = sched->add_noise(zeros, ones, call).item<float>();
      if (base == "dpmpp_2m" || base == "dpmpp_2m_sde" || base == "lcm" || base == "tcd")
        EXPECT_NEAR(got, noised / sched->add_noise(ones, zeros, call).item<float>(), 1e-6 * got)
            << name << " call " << call;
      else
        EXPECT_EQ(got, noised) << name << " call " << call;
    }
  }
  // Heun's corrector call takes the next step's sigma, as k-diffusion's sample_heun calls the model with it.
  const auto heun = txt2img::make_scheduler("heun", sd_config(), 10);
  const auto sigmas = golden("euler/n10/sigmas");
  EXPECT_EQ(heun->a1111_sigma(0), sigmas[0].item<float>());
  EXPECT_EQ(heun->a1111_sigma(1), sigmas[1].item<float>());
  EXPECT_EQ(heun->a1111_sigma(2), sigmas[1].item<float>());
  EXPECT_EQ(heun->a1111_sigma(3), sigmas[2].item<float>());
  // LCM's 4 steps: timesteps 999, 759, 499, 259 and their sigmas sqrt((1 - a) / a).
  const auto lcm = txt2img::make_scheduler("lcm", sd_config(), 4);
  const float a = golden("common/alphas_cumprod")[259].item<float>();
  EXPECT_EQ(lcm->a1111_sigma(3), std::sqrt((1.0f - a) / a));
}

// Feeds the golden model outputs (and step noise) of calls first.. of a golden run to `sched`, from `x`; returns
// the sample after each call.
std::vector<torch::Tensor> golden_calls(txt2img::Scheduler& sched, const std::string& run, size_t first,
                                        torch::Tensor x) {
  std::vector<torch::Tensor> out;
  for (size_t i = first; i < sched.timesteps().size(); ++i) {
    const std::string s = step_key(run, i);
    torch::Tensor noise;
    if (has_golden(s + "variance_noise")) noise = golden(s + "variance_noise");
    if (has_golden(s + "noise")) noise = golden(s + "noise");
    x = sched.step(golden(s + "model_output"), i, x, noise);
    out.push_back(x);
  }
  return out;
}

// The single-step samplers keep no history: entered at call 4 with the golden sample before it, they follow the
// golden run to its end, and compute bit for bit what a whole run computes from the same sample.
TEST(SchedulerStartAt, MemorylessSamplersFollowTheWholeRun) {
  const size_t k = 4;
  for (const auto& c : std::vector<GoldenCase>{{"ddim", "ddim", 10, 0.0},
                                              {"ddim", "ddim_eta0.5", 10, 0.5},
                                              {"euler", "euler", 10, 0.0},
                                              {"euler_a", "euler_a", 10, 0.0}}) {
    const std::string run = c.run + "/n10";
    auto late = txt2img::make_scheduler(c.sampler, sd_config(), c.steps, c.eta);
    late->start_at(k);
    const auto tail = golden_calls(*late, run, k, golden(step_key(run, k - 1) + "prev_sample"));
    ASSERT_EQ(tail.size(), 10 - k);
    Worst w;
    for (size_t i = k; i < 10; ++i) w.compare(tail[i - k], golden(step_key(run, i) + "prev_sample"), run);
    w.compare(tail.back(), golden(run + "/final"), run + "/final");

    auto whole = txt2img::make_scheduler(c.sampler, sd_config(), c.steps, c.eta);
    const auto start = has_golden(run + "/sample_start") ? golden(run + "/sample_start") : golden("common/sample0");
    const auto all = golden_calls(*whole, run, 0, start);
    auto again = txt2img::make_scheduler(c.sampler, sd_config(), c.steps, c.eta);
    again->start_at(k);
    const auto ours = golden_calls(*again, run, k, all[k - 1]);
    EXPECT_TRUE(torch::equal(ours.back(), all.back())) << run;
    EXPECT_TRUE(torch::equal(again->pred_original_sample(), whole->pred_original_sample())) << run;
  }
}

// The single-step samplers of tests/fixtures/sampler_goldens.safetensors entered at step 4 from the golden sample
// before it follow the golden run bit for bit; heun's and dpm2's step 4 is their call 8, a predictor (Euler) call.
TEST(SchedulerStartAt, SingleStepSamplersOfTheGoldensFollowTheWholeRun) {
  for (const std::string name :
       {"euler_karras", "heun", "heun_karras", "dpm2", "dpm2_karras", "dpm2_a", "dpm2_a_karras", "euler_exponential",
        "heun_exponential", "dpm2_exponential", "dpm2_a_exponential", "dpmpp_2s_a", "dpmpp_2s_a_karras",
        "dpmpp_2s_a_exponential", "ddpm"}) {
    const auto& goldens = name.rfind("dpmpp_2s_a", 0) == 0 ? kdiffusion_goldens() : sampler_goldens();
    const std::string run = name + "/n10";
    auto late = txt2img::make_scheduler(name, sd_config(), 10);
    late->start_at(4);
    const size_t first = late->first_call();
    EXPECT_EQ(first, name.rfind("euler", 0) == 0 || name == "ddpm" ? 4u : 8u);
    const auto key = [&](size_t call) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "/call%03zu/prev_sample", call);
      return run + buf;
    };
    torch::Tensor x = goldens.get(key(first - 1));
    for (size_t i = first; i < late->timesteps().size(); ++i) {
      x = late->step(fake_model_output(i), i, x, late->needs_noise(i) ? fake_noise(i) : torch::Tensor());
      EXPECT_TRUE(torch::equal(x, goldens.get(key(i)))) << name << " call " << i;
    }
  }
}

// DPM-Solver++(2M) entered at call k has no earlier x0 prediction: its first step is the first-order
// (DPM-Solver++ 1, DDIM-like) update, where the whole run's call k is second order; from call k + 1 on it is the
// whole run's second-order step again.
TEST(SchedulerStartAt, DpmPP2MStartsWithAFirstOrderStep) {
  const std::string run = "dpmpp_2m_karras/n10";
  const size_t k = 4;
  const auto sample = golden(step_key(run, k - 1) + "prev_sample");
  const auto eps = golden(step_key(run, k) + "model_output");
  auto late = txt2img::make_scheduler("dpmpp_2m_karras", sd_config(), 10);
  late->start_at(k);
  const auto first = late->step(eps, k, sample);

  // DPM-Solver++ first order in log-SNR time, in double from the golden sigmas.
  const auto sigmas = golden(run + "/sigmas").to(torch::kFloat64);
  const auto vp = [&](size_t i) {
    const double s = sigmas[static_cast<int64_t>(i)].item<double>();
    const double alpha = 1 / std::sqrt(s * s + 1);
    return std::pair<double, double>{alpha, s * alpha};
  };
  const auto [alpha_s, sigma_s] = vp(k);
  const auto [alpha_t, sigma_t] = vp(k + 1);
  const double h = std::log(alpha_t / sigma_t) - std::log(alpha_s / sigma_s);
  const auto x0 = (sample.to(torch::kFloat64) - sigma_s * eps.to(torch::kFloat64)) / alpha_s;
  const auto expected = (sigma_t / sigma_s) * sample.to(torch::kFloat64) - alpha_t * (std::exp(-h) - 1) * x0;
  EXPECT_TRUE(torch::allclose(first.to(torch::kFloat64), expected, 1e-5, 1e-5))
      << (first.to(torch::kFloat64) - expected).abs().max();
  EXPECT_TRUE(torch::allclose(late->pred_original_sample().to(torch::kFloat64), x0, 1e-5, 1e-5));
  // The whole run's call k, from the same sample and output, is second order and lands elsewhere.
  const auto whole_k = golden(step_key(run, k) + "prev_sample");
  EXPECT_GT((first - whole_k).abs().max().item<double>(), 1e-3);

  // Call k + 1: second order from the x0 of call k, exactly as a whole run with the same x0 history computes it.
  auto history = txt2img::make_scheduler("dpmpp_2m_karras", sd_config(), 10);
  torch::Tensor x = golden(run + "/sample_start");
  for (size_t i = 0; i < k; ++i) x = history->step(golden(step_key(run, i) + "model_output"), i, x);
  history->step(eps, k, sample);  // the same x0 at call k as the late start's
  const auto eps_next = golden(step_key(run, k + 1) + "model_output");
  EXPECT_TRUE(torch::equal(late->step(eps_next, k + 1, first), history->step(eps_next, k + 1, first)));
}

// A multistep sampler entered at call k of 10 starts as a fresh run: its first step is first order, DPM-Solver++'s
// first-order step up to rounding, from the same x0 prediction; the whole run's call k is of a higher order and
// lands elsewhere. Returns the late start after its first call, that first call's sample, and the whole run after
// its call k.
struct LateStart {
  std::unique_ptr<txt2img::Scheduler> late;
  torch::Tensor first;
  std::unique_ptr<txt2img::Scheduler> whole;
};
LateStart expect_a_first_order_start(const std::string& sampler, size_t k) {
  const auto sample = fake_sample0(), eps = fake_model_output(k);
  auto late = txt2img::make_scheduler(sampler, sd_config(), 10);
  late->start_at(k);
  auto dpm = txt2img::make_scheduler("dpmpp_2m", sd_config(), 10);
  dpm->start_at(k);
  EXPECT_EQ(late->timesteps(), dpm->timesteps()) << sampler;
  const auto first = late->step(eps, k, sample);
  EXPECT_TRUE(torch::allclose(first, dpm->step(eps, k, sample), 1e-5, 1e-6)) << sampler;
  EXPECT_TRUE(torch::equal(late->pred_original_sample(), dpm->pred_original_sample())) << sampler;

  auto whole = txt2img::make_scheduler(sampler, sd_config(), 10);
  torch::Tensor x = sample;
  for (size_t i = 0; i < k; ++i) x = whole->step(fake_model_output(i), i, x);
  EXPECT_GT((whole->step(eps, k, sample) - first).abs().max().item<double>(), 1e-3) << sampler;
  return {std::move(late), first, std::move(whole)};
}

// UniPC's first step skips the corrector too (nothing to correct yet); its first order is DPM-Solver++'s up to
// expm1(-h) against exp(-h) - 1.
TEST(SchedulerStartAt, UniPCStartsWithAFirstOrderStepAndNoCorrector) { expect_a_first_order_start("unipc", 4); }

// DEIS's first step is DDIM's, which DPM-Solver++'s first-order step also is (up to rounding: one integrates the
// noise prediction, the other the x0 prediction). From call k + 1 on it is second order from the late start's own
// history.
TEST(SchedulerStartAt, DeisStartsWithAFirstOrderStep) {
  const size_t k = 4;
  auto [late, first, whole] = expect_a_first_order_start("deis", k);
  // The whole run's history at call k + 1 is the late start's: the noise prediction of call k.
  const auto eps_next = fake_model_output(k + 1);
  EXPECT_TRUE(torch::equal(late->step(eps_next, k + 1, first), whole->step(eps_next, k + 1, first)));
}

// DPM++ 3M SDE entered at call k starts afresh, as k-diffusion's sampler on the rest of the schedule: its first step
// is the first-order SDE step (here without noise: exp(-2h) x + (1 - exp(-2h)) x0 with exp(-h) = next / sigma), its
// second has one earlier denoised sample to correct with where the whole run has two, and from its third on both
// correct with the same two.
TEST(SchedulerStartAt, DpmPP3MSdeRampsUpItsOrderFromTheStart) {
  const size_t k = 3;
  auto late = txt2img::make_scheduler("dpmpp_3m_sde_karras", sd_config(), 10);
  late->start_at(k);
  auto whole = txt2img::make_scheduler("dpmpp_3m_sde_karras", sd_config(), 10);
  const auto quiet = torch::zeros_like(fake_sample0());
  torch::Tensor x = fake_sample0() * whole->init_noise_sigma();
  for (size_t i = 0; i < k; ++i) x = whole->step(fake_model_output(i), i, x, quiet);

  const auto eps = fake_model_output(k);
  const auto first = late->step(eps, k, x, quiet);
  const double sigma = late->a1111_sigma(k), next = late->a1111_sigma(k + 1);
  const auto x0 = x.to(torch::kFloat64) - sigma * eps.to(torch::kFloat64);
  const double decay = (next / sigma) * (next / sigma);
  const auto expected = decay * x.to(torch::kFloat64) + (1 - decay) * x0;
  EXPECT_TRUE(torch::allclose(first.to(torch::kFloat64), expected, 1e-5, 1e-5))
      << (first.to(torch::kFloat64) - expected).abs().max();
  EXPECT_GT((whole->step(eps, k, x, quiet) - first).abs().max().item<double>(), 1e-3);

  const auto eps_1 = fake_model_output(k + 1), eps_2 = fake_model_output(k + 2);
  const auto second = late->step(eps_1, k + 1, first, quiet);
  EXPECT_GT((whole->step(eps_1, k + 1, first, quiet) - second).abs().max().item<double>(), 1e-4);
  EXPECT_TRUE(torch::equal(late->step(eps_2, k + 2, second, quiet), whole->step(eps_2, k + 2, second, quiet)));
}

// A1111 runs DPM++ 3M SDE on the schedule of one step more without its next-to-last sigma, on every schedule type:
// N steps take the first N sigmas of the N + 1 steps' schedule, then 0.
TEST(Scheduler, DpmPP3MSdeDropsTheNextToLastSigma) {
  for (const std::string suffix : {"", "_karras", "_exponential", "_sgm_uniform"}) {
    const auto sde = txt2img::make_scheduler("dpmpp_3m_sde" + suffix, sd_config(), 10);
    const auto longer = txt2img::make_scheduler("euler" + suffix, sd_config(), 11);
    ASSERT_EQ(sde->timesteps().size(), 10u) << suffix;
    for (size_t i = 0; i < 10; ++i) {
      EXPECT_EQ(sde->a1111_sigma(i), longer->a1111_sigma(i)) << suffix << " " << i;
      EXPECT_NEAR(sde->timesteps()[i], longer->timesteps()[i], 1e-3) << suffix << " " << i;
    }
    EXPECT_EQ(static_cast<float>(sde->init_noise_sigma()), static_cast<float>(longer->a1111_sigma(0))) << suffix;
  }
}

// LMS entered at call k ramps its order up from 1 there: its first step is an Euler step, its second the
// two-step Adams-Bashforth-like step on the sigmas of calls k and k + 1.
TEST(SchedulerStartAt, LmsRampsUpItsOrderFromTheStart) {
  const std::string run = "lms/n10";
  const size_t k = 4;
  const auto sample = golden(step_key(run, k - 1) + "prev_sample");
  const auto eps = golden(step_key(run, k) + "model_output");
  auto late = txt2img::make_scheduler("lms", sd_config(), 10);
  late->start_at(k);
  auto euler = txt2img::make_scheduler("euler", sd_config(), 10);
  euler->start_at(k);
  const auto first = late->step(eps, k, sample);
  EXPECT_TRUE(torch::allclose(first, euler->step(eps, k, sample), 1e-6, 1e-6));
  // The whole run's call k is fourth order.
  EXPECT_GT((first - golden(step_key(run, k) + "prev_sample")).abs().max().item<double>(), 1e-3);

  // Second order: the integrals of the two Lagrange basis polynomials through sigma_k and sigma_k+1 over
  // [sigma_k+1, sigma_k+2], times the derivatives (the epsilons, for an epsilon model).
  const auto sigmas = golden(run + "/sigmas").to(torch::kFloat64);
  const double s0 = sigmas[k].item<double>(), s1 = sigmas[k + 1].item<double>(), s2 = sigmas[k + 2].item<double>();
  const double newest = ((s2 - s0) * (s2 - s0) - (s1 - s0) * (s1 - s0)) / 2 / (s1 - s0);
  const double older = (s2 - s1) * (s2 - s1) / 2 / (s0 - s1);
  const auto eps_next = golden(step_key(run, k + 1) + "model_output");
  const auto second = late->step(eps_next, k + 1, first);
  const auto expected = first.to(torch::kFloat64) + newest * eps_next.to(torch::kFloat64) +
                        older * eps.to(torch::kFloat64);
  EXPECT_TRUE(torch::allclose(second.to(torch::kFloat64), expected, 1e-5, 1e-5))
      << (second.to(torch::kFloat64) - expected).abs().max();
}

// A model that predicts exactly the noise add_noise put in keeps every sampler on add_noise's path, from any
// start: each step lands on add_noise(x0, noise, next call) (so add_noise gives samples in the space the steps
// take), every x0 prediction is x0, and the run ends on x0 (DDIM on sqrt(a) x0 + sqrt(1 - a) noise with a =
// alphas_cumprod[0], its final alpha as set_alpha_to_one is false; DEIS near there too, at the smallest training
// sigma).
TEST(SchedulerStartAt, APerfectPredictionStaysOnTheAddNoisePathFromAnyStart) {
  const auto x0 = golden("common/sample0") * 0.5;
  const auto n = unit_noise(x0);
  for (const auto& name : late_starters()) {
    // Their fresh noise leaves the path; MemorylessSamplersFollowTheWholeRun has euler_a.
    if (name.rfind("euler_a", 0) == 0 || name.rfind("dpmpp_2m_sde", 0) == 0 || name.rfind("dpm2_a", 0) == 0 ||
        name.rfind("dpmpp_2s_a", 0) == 0 || name.rfind("dpmpp_sde", 0) == 0 || name.rfind("dpmpp_3m_sde", 0) == 0 ||
        name == "ddpm" || name == "lcm_a1111" || name == "dpm_fast")  // DpmFast.FollowsThePathAtEtaZero
      continue;
    for (size_t k : {0, 3, 7, 11}) {
      auto sched = txt2img::make_scheduler(name, sd_config(), 12);
      sched->start_at(k);
      const size_t first = sched->first_call(), calls = sched->timesteps().size();
      torch::Tensor x = sched->add_noise(x0, n, first);
      for (size_t i = first; i < calls; ++i) {
        x = sched->step(n, i, x);
        EXPECT_TRUE(torch::allclose(sched->pred_original_sample(), x0, 1e-4, 1e-4)) << name << " " << k << " " << i;
        if (i + 1 < calls)
          EXPECT_TRUE(torch::allclose(x, sched->add_noise(x0, n, i + 1), 1e-5, 1e-5))
              << name << " from " << k << " call " << i << ": " << (x - sched->add_noise(x0, n, i + 1)).abs().max();
      }
      // DEIS stops at the smallest training sigma too (deis_karras at its last Karras sigma, which is that sigma), and
      // so does A1111's KL Optimal schedule, in sigma space: sqrt(beta_0 / (1 - beta_0)) away from x0.
      const bool kl_optimal = txt2img::split_sampler_name(name).schedule == "kl_optimal";
      const auto end = name == "ddim" || name.rfind("deis", 0) == 0 ? vp_noised(x0, n, 0)
                       : kl_optimal                                 ? x0 + n * std::sqrt(0.00085 / (1 - 0.00085))
                                                                    : x0;
      EXPECT_TRUE(torch::allclose(x, end, 1e-5, 1e-5)) << name << " from " << k << ": " << (x - end).abs().max();
    }
  }
}

TEST(SchedulerStartAt, Errors) {
  const auto x = golden("common/sample0");
  const auto noise = torch::zeros_like(x);
  for (const char* name : {"pndm", "lcm", "tcd"}) {
    auto sched = txt2img::make_scheduler(name, sd_config(), 4);
    try {
      sched->start_at(1);
      ADD_FAILURE() << name;
    } catch (const txt2img::Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Usage) << e.what();
      const std::string what = e.what();
      EXPECT_NE(what.find(std::string("the ") + name + " scheduler cannot start part-way"), std::string::npos) << what;
      EXPECT_NE(what.find("; every sampler but pndm, plms_a1111, lcm and tcd can start part-way"), std::string::npos)
          << what;
    }
    // Call 0 is where every run starts: allowed, and the run is the whole one.
    EXPECT_NO_THROW(sched->start_at(0)) << name;
    auto plain = txt2img::make_scheduler(name, sd_config(), 4);
    torch::Tensor a = x, b = x;
    for (size_t i = 0; i < sched->timesteps().size(); ++i) {
      const auto out = torch::sin(x + static_cast<double>(i));
      a = sched->step(out, i, a, noise);
      b = plain->step(out, i, b, noise);
    }
    EXPECT_TRUE(torch::equal(a, b)) << name;
  }
  for (const auto& name : txt2img::scheduler_names()) {
    auto sched = txt2img::make_scheduler(name, sd_config(), 4);
    const size_t calls = sched->timesteps().size();
    // pndm, plms_a1111, lcm and tcd refuse any later start first (Usage), whatever the call; ddim_a1111 one that leaves
    // it no call.
    const bool late = std::find(late_starters().begin(), late_starters().end(), name) != late_starters().end();
    if (name == "ddim_a1111" || name == "unipc_a1111")
      expect_error(ErrorKind::Usage, name == "ddim_a1111" ? "give it 3 or more steps" : "give it 4 or more steps",
                   [&] { sched->start_at(calls); });
    else
      expect_error(late ? ErrorKind::Runtime : ErrorKind::Usage, late ? "U-Net calls" : "cannot start part-way",
                   [&] { sched->start_at(calls); });
    expect_error(ErrorKind::Runtime, "U-Net calls", [&] { sched->add_noise(x, noise, calls); });
    sched->step(x, 0, x, noise);
    expect_error(ErrorKind::Runtime, "after a step", [&] { sched->start_at(0); });
  }
  for (const auto& name : late_starters()) {
    // At its default eta k-diffusion refuses dpm_fast the one-step run that start_at(3) leaves (DpmFast's tests).
    auto sched = txt2img::make_scheduler(name, sd_config(), 4, 0.0, name == "dpm_fast" ? 0.0 : 1.0);
    sched->start_at(3);
    sched->start_at(2);  // before any step the start may still move
    // Step 2 is call 2, but heun's, dpm2's, dpmpp_2s_a's and dpmpp_sde's call 4 (two calls per step); restart's and
    // dpm_fast's runs are planned anew from there, their calls counted from 0.
    const bool replans = name.rfind("restart", 0) == 0 || name == "dpm_fast";
    const size_t c = sched->first_call();
    EXPECT_EQ(c, replans ? 0u : sched->calls_per_step() == 2 ? 4u : 2u) << name;
    EXPECT_EQ(sched->calls_per_step() == 2, name.rfind("heun", 0) == 0 || name.rfind("dpm2", 0) == 0 ||
                                                name.rfind("dpmpp_2s_a", 0) == 0 || name.rfind("dpmpp_sde", 0) == 0 ||
                                                name.rfind("restart", 0) == 0)
        << name;
    const auto expected = [](size_t want, size_t got) {
      return "expected call " + std::to_string(want) + ", got " + std::to_string(got);
    };
    if (c > 0) {
      expect_error(ErrorKind::Runtime, expected(c, c - 1), [&] { sched->step(x, c - 1, x, noise); });
      expect_error(ErrorKind::Runtime, expected(c, 0), [&] { sched->step(x, 0, x, noise); });
    }
    expect_error(ErrorKind::Runtime, expected(c, c + 1), [&] { sched->step(x, c + 1, x, noise); });
    sched->step(x, c, x, noise);
    expect_error(ErrorKind::Runtime, "after a step", [&] { sched->start_at(3); });
    expect_error(ErrorKind::Runtime, expected(c + 1, c), [&] { sched->step(x, c, x, noise); });
    EXPECT_NO_THROW(sched->step(x, c + 1, x, noise)) << name;
  }
}

// A1111's UniPC needs as many steps as its order, 3 (A1111 stops below that), and so does a hires pass, whose run is
// one step shorter.
TEST(A1111UniPc, Refusals) {
  for (int steps : {1, 2})
    expect_error(ErrorKind::Usage, "needs 3 or more steps",
                 [&] { txt2img::make_scheduler("unipc_a1111", sd_config(), steps); });
  auto sched = txt2img::make_scheduler("unipc_a1111", sd_config(), 10);
  expect_error(ErrorKind::Usage, "give it 4 or more steps", [&] { sched->start_at(7); });
  EXPECT_NO_THROW(sched->start_at(6));
  EXPECT_EQ(sched->timesteps().size(), 3u);
  SchedulerConfig zero_snr = variant_config("zero_snr");
  expect_error(ErrorKind::Usage, "runs on SD's training schedule as A1111's model holds it",
               [&] { txt2img::make_scheduler("unipc_a1111", zero_snr, 10); });
}

// What A1111's DDIM refuses to run: a step count that leaves it no U-Net call, a hires pass of fewer than 3 steps, a
// zero-terminal-SNR model.
TEST(A1111Ddim, Refusals) {
  expect_error(ErrorKind::Usage, "1 step makes none", [] { txt2img::make_scheduler("ddim_a1111", sd_config(), 1); });
  auto sched = txt2img::make_scheduler("ddim_a1111", sd_config(), 20);
  expect_error(ErrorKind::Usage, "give it 3 or more steps", [&] { sched->start_at(18); });
  expect_error(ErrorKind::Usage, "SD's training schedule as A1111's model holds it",
               [] { txt2img::make_scheduler("ddim_a1111", variant_config("zero_snr"), 10); });
  // Its eta is DDIM's, the only other sampler that takes one.
  EXPECT_TRUE(txt2img::sampler_takes_eta("ddim_a1111"));
  EXPECT_TRUE(txt2img::sampler_takes_eta("DDIM"));
  EXPECT_FALSE(txt2img::sampler_takes_eta("euler"));
  EXPECT_NO_THROW(txt2img::make_scheduler("ddim_a1111", sd_config(), 10, 0.3));
}

}  // namespace
