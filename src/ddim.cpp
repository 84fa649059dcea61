// DDIM (diffusers DDIMScheduler, clip_sample and thresholding off).
#include <cmath>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class Ddim final : public Scheduler {
 public:
  Ddim(const SchedulerConfig& config, int steps, double eta)
      : alphas_cumprod_(alphas_cumprod_values(config)),
        final_alpha_cumprod_(config.set_alpha_to_one ? 1.0f : alphas_cumprod_[0]),
        step_ratio_(config.num_train_timesteps / steps),
        prediction_type_(config.prediction_type),
        eta_(eta) {
    require_prediction_type(config, "ddim", {"epsilon", "v_prediction", "sample"});
    for (int64_t t : discrete_timesteps(config, resolve_spacing(config, "leading"), steps))
      timesteps_.push_back(static_cast<double>(t));
  }

  bool needs_noise(size_t) const override { return eta_ > 0; }

  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    return add_noise_vp(x0, noise, alphas_cumprod_[static_cast<int64_t>(timesteps_[call])]);
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    if (needs_noise(call)) check_noise(noise, sample);
    const auto t = static_cast<int64_t>(timesteps_[call]);
    // diffusers steps back by num_train_timesteps // steps whatever the spacing, and past 0 to the final alpha.
    const int64_t prev_t = t - step_ratio_;
    const float alpha_t = alphas_cumprod_[t];
    const float alpha_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : final_alpha_cumprod_;
    const float beta_t = 1.0f - alpha_t;

    const auto x0 = vp_predict_x0(prediction_type_, model_output, sample, alpha_t);
    const auto eps = vp_predict_eps(prediction_type_, model_output, sample, x0, alpha_t);

    const float beta_prev = 1.0f - alpha_prev;
    const float variance = (beta_prev / beta_t) * (1.0f - alpha_t / alpha_prev);
    const float std_dev = static_cast<float>(eta_) * std::sqrt(variance);
    const float direction_coeff = std::sqrt(1.0f - alpha_prev - std_dev * std_dev);
    auto prev = std::sqrt(alpha_prev) * x0 + direction_coeff * eps;
    if (needs_noise(call)) prev = prev + std_dev * noise;

    pred_original_sample_ = x0;
    ++next_call_;
    return prev;
  }

 private:
  std::vector<float> alphas_cumprod_;
  float final_alpha_cumprod_;
  int step_ratio_;
  std::string prediction_type_;
  double eta_;
};

}  // namespace

std::unique_ptr<Scheduler> make_ddim(const SchedulerConfig& config, int steps, double eta) {
  return std::make_unique<Ddim>(config, steps, eta);
}

}  // namespace txt2img::detail
