// Euler ancestral (diffusers EulerAncestralDiscreteScheduler; on Karras' and exponential sigmas, which it lacks, those
// of euler_karras and euler_exponential): an Euler step down to sigma_down, then fresh noise
// of scale sigma_up so that the marginal matches sigma_next (sigma_down^2 + sigma_up^2 = sigma_next^2). Noise is
// needed at every step, the last included (where sigma_up = 0), so that the caller's generator advances as
// diffusers' does. k-diffusion's eta (1 in diffusers) scales sigma_up, at most to sigma_next; at 0 each step is
// Euler's, to sigma_next, and its noise is still drawn, as k-diffusion draws it.
#include <cmath>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class EulerAncestral final : public SigmaScheduler {
 public:
  EulerAncestral(const SchedulerConfig& config, int steps, SigmaSchedule schedule, double eta)
      : SigmaScheduler(config, steps, schedule), eta_(static_cast<float>(eta)) {
    require_prediction_type(config, "euler_a" + schedule_suffix(schedule), {"epsilon", "v_prediction"});
    // On Karras' and exponential sigmas, which diffusers' EulerAncestralDiscreteScheduler lacks, the timesteps of
    // euler_karras and euler_exponential: EulerDiscreteScheduler's, float32.
    if (schedule == SigmaSchedule::kKarras || schedule == SigmaSchedule::kExponential)
      for (double& t : timesteps_) t = static_cast<float>(t);
  }

  bool needs_noise(size_t) const override { return true; }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    check_noise(noise, sample);
    const float sigma = sigmas_[call];
    const auto x0 = predict_x0(model_output, sample, sigma);
    const float next = sigmas_[call + 1];
    float sigma_up = 0.0f;
    if (eta_ != 0.0f) {
      sigma_up = eta_ * std::sqrt(next * next * (sigma * sigma - next * next) / (sigma * sigma));
      if (!(sigma_up < next)) sigma_up = next;
    }
    const float sigma_down = std::sqrt(next * next - sigma_up * sigma_up);
    const auto derivative = (sample - x0) / sigma;
    const float dt = sigma_down - sigma;
    pred_original_sample_ = x0;
    ++next_call_;
    return sample + derivative * dt + noise * sigma_up;
  }

 private:
  float eta_;
};

}  // namespace

std::unique_ptr<Scheduler> make_euler_ancestral(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                                double eta) {
  return std::make_unique<EulerAncestral>(config, steps, schedule, eta);
}

}  // namespace txt2img::detail
