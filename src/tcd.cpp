// TCD (diffusers' TCDScheduler: Trajectory Consistency Distillation's strategic stochastic sampling, for TCD-LoRA)
// on ConsistencyScheduler's timesteps. Each call predicts the clean sample and the noise, and from them the sample at
// timestep s = floor((1 - gamma) * t') below the next timestep t' (the last call's t' is 0); with gamma > 0 that
// sample is noised forward to t' with fresh noise, but after the last call, whose sample at s is the result (it keeps
// timestep 0's noise level, as diffusers' does). Gamma 0 is deterministic (DDIM's step to t'); diffusers'
// StableDiffusionPipeline hands the scheduler its `eta` as gamma, 0 unless given, where TCD's authors use 0.3.
#include <cmath>

#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img::detail {
namespace {

class Tcd final : public ConsistencyScheduler {
 public:
  Tcd(const SchedulerConfig& config, int steps, double gamma)
      : ConsistencyScheduler(config, steps, "tcd"), gamma_(gamma) {}

  bool needs_noise(size_t call) const override { return gamma_ > 0 && call + 1 < timesteps_.size(); }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    if (needs_noise(call)) check_noise(noise, sample);
    const int64_t next = call + 1 < timesteps_.size() ? static_cast<int64_t>(timesteps_[call + 1]) : 0;
    // (1 - eta) * prev_timestep: a Python float times an int64 tensor, computed in float32.
    const auto s = static_cast<int64_t>(std::floor(static_cast<float>(1.0 - gamma_) * static_cast<float>(next)));
    const float alpha_t = alpha(call);
    const float alpha_s = alpha_at(s), beta_s = 1.0f - alpha_s;

    const auto x0 = vp_predict_x0(prediction_type_, model_output, sample, alpha_t);
    const auto eps = vp_predict_eps(prediction_type_, model_output, sample, x0, alpha_t);
    auto at_s = std::sqrt(alpha_s) * x0 + std::sqrt(beta_s) * eps;

    pred_original_sample_ = x0;
    ++next_call_;
    if (!needs_noise(call)) return at_s;
    const float ratio = alpha_at(next) / alpha_s;
    return std::sqrt(ratio) * at_s + std::sqrt(1.0f - ratio) * noise;
  }

 private:
  double gamma_;
};

}  // namespace

std::unique_ptr<Scheduler> make_tcd(const SchedulerConfig& config, int steps, double eta) {
  return std::make_unique<Tcd>(config, steps, eta);
}

}  // namespace txt2img::detail
