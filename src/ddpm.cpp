// DDPM (diffusers DDPMScheduler with variance_type "fixed_small"; clip_sample and thresholding off, as
// StableDiffusionPipeline turns sample clipping off when it loads a scheduler): ancestral sampling of Ho et al.
// (2020) on the spaced timesteps. Each step takes the mean of q(x_prev | x_t, x0) for the model's x0 prediction and
// adds fresh noise of that posterior's standard deviation, at every call whose timestep is above 0 (the whole
// schedule's last step included, whose variance, 0 there, is clamped to 1e-20), so that the caller's generator
// advances as diffusers' does.
#include <algorithm>
#include <cmath>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class Ddpm final : public Scheduler {
 public:
  Ddpm(const SchedulerConfig& config, int steps)
      : alphas_cumprod_(alphas_cumprod_values(config)),
        step_ratio_(config.num_train_timesteps / steps),
        prediction_type_(config.prediction_type) {
    require_prediction_type(config, "ddpm", {"epsilon", "v_prediction", "sample"});
    for (int64_t t : discrete_timesteps(config, resolve_spacing(config, "leading"), steps))
      timesteps_.push_back(static_cast<double>(t));
  }

  bool needs_noise(size_t call) const override { return timesteps_.at(call) > 0; }

  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    return add_noise_vp(x0, noise, alphas_cumprod_[static_cast<int64_t>(timesteps_[call])]);
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    if (needs_noise(call)) check_noise(noise, sample);
    const auto t = static_cast<int64_t>(timesteps_[call]);
    // As DDIM, diffusers steps back by num_train_timesteps // steps whatever the spacing; past 0 the sample is clean.
    const int64_t prev_t = t - step_ratio_;
    const float alpha_t = alphas_cumprod_[t];
    const float alpha_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : 1.0f;
    const float beta_t = 1.0f - alpha_t;
    const float beta_prev = 1.0f - alpha_prev;
    const float step_alpha = alpha_t / alpha_prev;
    const float step_beta = 1.0f - step_alpha;

    const auto x0 = vp_predict_x0(prediction_type_, model_output, sample, alpha_t);

    const float x0_coeff = (std::sqrt(alpha_prev) * step_beta) / beta_t;
    const float sample_coeff = std::sqrt(step_alpha) * beta_prev / beta_t;
    auto prev = x0_coeff * x0 + sample_coeff * sample;
    if (needs_noise(call)) {
      const float variance = std::max(beta_prev / beta_t * step_beta, 1e-20f);
      prev = prev + std::sqrt(variance) * noise;
    }
    pred_original_sample_ = x0;
    ++next_call_;
    return prev;
  }

 private:
  std::vector<float> alphas_cumprod_;
  int step_ratio_;
  std::string prediction_type_;
};

}  // namespace

std::unique_ptr<Scheduler> make_ddpm(const SchedulerConfig& config, int steps) {
  return std::make_unique<Ddpm>(config, steps);
}

}  // namespace txt2img::detail
