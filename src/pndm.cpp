// PNDM in its PLMS form (diffusers PNDMScheduler with skip_prk_steps): N steps take N + 1 U-Net calls. The first
// call makes an Euler-like step; the second, at the same timestep as the third, re-does that step from the same
// start with the mean of both model outputs (a Heun-like correction); later calls use 2-, 3- and 4-step
// Adams–Bashforth combinations of the stored model outputs.
#include <cmath>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class Pndm final : public Scheduler {
 public:
  Pndm(const SchedulerConfig& config, int steps)
      : alphas_cumprod_(alphas_cumprod_values(config)),
        final_alpha_cumprod_(config.set_alpha_to_one ? 1.0f : alphas_cumprod_[0]),
        step_ratio_(config.num_train_timesteps / steps),
        v_prediction_(config.prediction_type == "v_prediction") {
    require_prediction_type(config, "pndm", {"epsilon", "v_prediction"});
    const auto ts = discrete_timesteps(config, resolve_spacing(config, "leading"), steps);
    // The second timestep is visited twice (the correction call); a single step has no second timestep.
    for (size_t i = 0; i < ts.size(); ++i) {
      timesteps_.push_back(static_cast<double>(ts[i]));
      if (i == 1) timesteps_.push_back(static_cast<double>(ts[i]));
    }
  }

  // As diffusers' PNDMScheduler.add_noise; with start_at limited to call 0 it serves a run entered there.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    return add_noise_vp(x0, noise, alphas_cumprod_[static_cast<int64_t>(timesteps_[call])]);
  }

  // The calls counted from 0 drive the warm-up below, which is why a run always starts at call 0.
  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor&) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    auto t = static_cast<int64_t>(timesteps_[call]);
    int64_t prev_t = t - step_ratio_;
    if (next_call_ == 1) {
      // The correction call re-does the first step: from the first timestep to this one.
      prev_t = t;
      t = t + step_ratio_;
    } else {
      if (ets_.size() == 4) ets_.erase(ets_.begin());
      ets_.push_back(model_output);
    }

    torch::Tensor eps, x = sample;
    if (next_call_ == 0) {
      eps = model_output;
      first_sample_ = sample;
    } else if (next_call_ == 1) {
      eps = (model_output + ets_.back()) / 2;
      x = first_sample_;
      first_sample_ = torch::Tensor();
    } else {
      const auto e = [&](size_t back) -> const torch::Tensor& { return ets_[ets_.size() - back]; };
      switch (ets_.size()) {
        case 2: eps = (3 * e(1) - e(2)) / 2; break;
        case 3: eps = (23 * e(1) - 16 * e(2) + 5 * e(3)) / 12; break;
        default: eps = (1.0 / 24) * (55 * e(1) - 59 * e(2) + 37 * e(3) - 9 * e(4)); break;
      }
    }
    ++next_call_;
    return prev_sample(x, t, prev_t, eps);
  }

  std::string why_it_cannot_start_later() const override {
    return "the pndm scheduler cannot start part-way through its schedule: its Adams-Bashforth steps extrapolate "
           "from the model outputs of the calls before, which its first calls build in a warm-up (a step re-done "
           "at a repeated timestep) that only the start of the schedule has; " +
           samplers_that_start_late() + " can start part-way";
  }

 private:
  // Formula (9) of the PNDM paper, as diffusers' _get_prev_sample.
  torch::Tensor prev_sample(const torch::Tensor& sample, int64_t t, int64_t prev_t, torch::Tensor eps) const {
    const float alpha_t = alphas_cumprod_[t];
    const float alpha_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : final_alpha_cumprod_;
    const float beta_t = 1.0f - alpha_t;
    const float beta_prev = 1.0f - alpha_prev;
    if (v_prediction_) eps = std::sqrt(alpha_t) * eps + std::sqrt(beta_t) * sample;
    const float sample_coeff = std::sqrt(alpha_prev / alpha_t);
    const float denom = alpha_t * std::sqrt(beta_prev) + std::sqrt(alpha_t * beta_t * alpha_prev);
    return sample_coeff * sample - (alpha_prev - alpha_t) * eps / denom;
  }

  std::vector<float> alphas_cumprod_;
  float final_alpha_cumprod_;
  int step_ratio_;
  bool v_prediction_;
  std::vector<torch::Tensor> ets_;  // the last (up to) 4 model outputs, except the correction call's
  torch::Tensor first_sample_;      // the sample the first step started from, until the correction call
};

}  // namespace

std::unique_ptr<Scheduler> make_pndm(const SchedulerConfig& config, int steps) {
  return std::make_unique<Pndm>(config, steps);
}

}  // namespace txt2img::detail
