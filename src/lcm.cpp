// LCM (diffusers LCMScheduler, the multistep consistency sampler of Latent Consistency Models, for LCM-LoRA and
// models merged with it; U-Nets distilled with a guidance embedding, such as LCM_Dreamshaper_v7, are not
// supported): each call maps the sample straight to a denoised estimate through the consistency
// boundary condition, then noises that estimate back to the next timestep with fresh noise, except after the
// last call, whose denoised estimate is the result. Its timesteps are ConsistencyScheduler's; timestep_scaling = 10
// is diffusers' default, which from_config of any SD v1 scheduler configuration gives.
#include <cmath>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

constexpr float kTimestepScaling = 10.0f;
constexpr float kSigmaData = 0.5f;

class Lcm final : public ConsistencyScheduler {
 public:
  Lcm(const SchedulerConfig& config, int steps) : ConsistencyScheduler(config, steps, "lcm") {}

  bool needs_noise(size_t call) const override { return call + 1 < timesteps_.size(); }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    if (needs_noise(call)) check_noise(noise, sample);
    const auto t = static_cast<int64_t>(timesteps_[call]);

    // The consistency model's boundary condition in diffusers' float32 order: c_skip -> 1 and c_out -> 0 at t = 0.
    const float scaled = static_cast<float>(t) * kTimestepScaling;
    const float denominator = scaled * scaled + kSigmaData * kSigmaData;
    const float c_skip = kSigmaData * kSigmaData / denominator;
    const float c_out = scaled / std::sqrt(denominator);

    const auto x0 = vp_predict_x0(prediction_type_, model_output, sample, alpha(call));
    auto denoised = c_out * x0 + c_skip * sample;

    pred_original_sample_ = denoised;
    ++next_call_;
    if (!needs_noise(call)) return denoised;
    const float alpha_next = alpha(call + 1);
    return std::sqrt(alpha_next) * denoised + std::sqrt(1.0f - alpha_next) * noise;
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_lcm(const SchedulerConfig& config, int steps) {
  return std::make_unique<Lcm>(config, steps);
}

}  // namespace txt2img::detail
