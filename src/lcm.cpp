// LCM (diffusers LCMScheduler, the multistep consistency sampler of Latent Consistency Models, for LCM-LoRA and
// models merged with it; U-Nets distilled with a guidance embedding, such as LCM_Dreamshaper_v7, are not
// supported): each call maps the sample straight to a denoised estimate through the consistency
// boundary condition, then noises that estimate back to the next timestep with fresh noise, except after the
// last call, whose denoised estimate is the result.
//
// Its timesteps are a subset of the 50-step schedule the models were distilled on ([19, 39, ..., 999], every
// 1000 / 50 = 20th training timestep), so a run takes 1 to 50 steps. original_inference_steps = 50 and
// timestep_scaling = 10 are diffusers' defaults, which is what LCMScheduler.from_config of any SD v1 scheduler
// configuration gives (none sets them); the bundle's timestep_spacing, steps_offset and set_alpha_to_one do not
// apply (the next timestep is never below 0).
#include <cmath>
#include <string>

#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img::detail {
namespace {

constexpr int kOriginalSteps = 50;
constexpr float kTimestepScaling = 10.0f;
constexpr float kSigmaData = 0.5f;

class Lcm final : public Scheduler {
 public:
  Lcm(const SchedulerConfig& config, int steps)
      : alphas_cumprod_(alphas_cumprod_values(config)), prediction_type_(config.prediction_type) {
    require_prediction_type(config, "lcm", {"epsilon", "v_prediction", "sample"});
    if (config.num_train_timesteps < kOriginalSteps)
      throw Error(ErrorKind::Bundle, "the lcm scheduler needs at least " + std::to_string(kOriginalSteps) +
                                         " training timesteps, the model has " +
                                         std::to_string(config.num_train_timesteps));
    if (steps > kOriginalSteps)
      throw Error(ErrorKind::Usage, "the lcm scheduler takes at most " + std::to_string(kOriginalSteps) +
                                        " steps (the schedule LCM models were distilled on), got " +
                                        std::to_string(steps) + "; 2 to 8 are usual");
    const int k = config.num_train_timesteps / kOriginalSteps;
    // np.floor(np.linspace(0, 50, steps, endpoint=False)) indexes the descending distillation schedule.
    for (int i = 0; i < steps; ++i) {
      const auto index = static_cast<int>(std::floor(static_cast<double>(kOriginalSteps) / steps * i));
      timesteps_.push_back(static_cast<double>((kOriginalSteps - index) * k - 1));
    }
  }

  bool needs_noise(size_t call) const override { return call + 1 < timesteps_.size(); }

  // A1111's LCM samples on k-diffusion's sigmas of its timesteps, in float32.
  double a1111_sigma(size_t call) const override {
    const float a = alphas_cumprod_[static_cast<int64_t>(timesteps_.at(call))];
    return std::sqrt((1.0f - a) / a);
  }

  // As diffusers' LCMScheduler.add_noise; with start_at limited to call 0 it serves a run entered there.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    return add_noise_vp(x0, noise, alphas_cumprod_[static_cast<int64_t>(timesteps_[call])]);
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    if (needs_noise(call)) check_noise(noise, sample);
    const auto t = static_cast<int64_t>(timesteps_[call]);
    const float alpha_t = alphas_cumprod_[t];

    // The consistency model's boundary condition in diffusers' float32 order: c_skip -> 1 and c_out -> 0 at t = 0.
    const float scaled = static_cast<float>(t) * kTimestepScaling;
    const float denominator = scaled * scaled + kSigmaData * kSigmaData;
    const float c_skip = kSigmaData * kSigmaData / denominator;
    const float c_out = scaled / std::sqrt(denominator);

    const auto x0 = vp_predict_x0(prediction_type_, model_output, sample, alpha_t);
    auto denoised = c_out * x0 + c_skip * sample;

    pred_original_sample_ = denoised;
    ++next_call_;
    if (!needs_noise(call)) return denoised;
    const float alpha_next = alphas_cumprod_[static_cast<int64_t>(timesteps_[call + 1])];
    return std::sqrt(alpha_next) * denoised + std::sqrt(1.0f - alpha_next) * noise;
  }

  std::string why_it_cannot_start_later() const override {
    return "the lcm scheduler cannot start part-way through its schedule: its timesteps are those of the 50 it was "
           "distilled on that suit the step count, and LCM's own img2img (diffusers' LCMScheduler given a strength) "
           "chooses its steps among the distillation timesteps below the strength instead of entering a longer "
           "schedule, so a late start would match neither; " +
           samplers_that_start_late() + " can start part-way";
  }

 private:
  std::vector<float> alphas_cumprod_;
  std::string prediction_type_;
};

}  // namespace

std::unique_ptr<Scheduler> make_lcm(const SchedulerConfig& config, int steps) {
  return std::make_unique<Lcm>(config, steps);
}

}  // namespace txt2img::detail
