// DPM2 (diffusers KDPM2DiscreteScheduler) and DPM2 ancestral (KDPM2AncestralDiscreteScheduler), each also on
// Karras or exponential sigmas: k-diffusion's second-order DPM-Solver-2 in sigma space. Each step from sigma s to the
// next makes an Euler call at s to a midpoint sigma (the geometric mean of s and the step's target) and a call there,
// whose derivative then carries the step's start sample the whole way. The ancestral variant's target is its "down"
// sigma, and fresh noise scaled by its "up" sigma completes the step; k-diffusion's eta (1 in diffusers) scales the up
// sigma, at most to the next sigma (at 0 the step is DPM2's, with noise still drawn and scaled by 0). The last step is
// the Euler call alone, to sigma 0. N steps thus make 2N - 1 U-Net calls, the midpoints' at fractional timesteps (2N on
// A1111's KL Optimal schedule, which ends above 0).
#include <cmath>
#include <optional>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class Dpm2 final : public SigmaScheduler {
 public:
  // `eta`: the ancestral variant's; none for DPM2.
  Dpm2(const SchedulerConfig& config, int steps, SigmaSchedule schedule, std::optional<double> eta)
      : SigmaScheduler(config, steps, schedule, is_a1111_schedule(schedule)), ancestral_(eta.has_value()) {
    require_prediction_type(config, (ancestral_ ? "dpm2_a" : "dpm2") + std::string(schedule_suffix(schedule)),
                            {"epsilon", "v_prediction"});
    // The step sigmas' arithmetic is diffusers' float32 tensor expressions, run by the same ATen kernels.
    const auto s = torch::tensor(sigmas_, torch::kFloat32);  // s0 ... s(N-1), 0
    torch::Tensor mid, end, up;                                // per step
    if (ancestral_) {
      auto next = s.roll(-1);
      next[-1] = 0.0f;
      up = *eta == 0 ? torch::zeros_like(s)
                     : torch::minimum(next, torch::pow(next.pow(2) * (s.pow(2) - next.pow(2)) / s.pow(2), 0.5) * *eta);
      end = torch::pow(next.pow(2) - up.pow(2), 0.5);
      end[-1] = 0.0f;
      mid = s.log().lerp(end.log(), 0.5).exp();
      mid.masked_fill_(end.eq(0), 0);  // as diffusers sets them: a step to sigma 0 is one Euler call
    } else {
      end = s.slice(0, 1);
      mid = s.log().lerp(s.roll(1).log(), 0.5).exp().slice(0, 1);
      up = torch::zeros_like(s);
    }
    std::vector<double> timesteps;
    std::vector<float> sigmas;
    for (size_t j = 0; j + 1 < sigmas_.size(); ++j) {
      steps_.push_back({sigmas_[j], mid[j].item<float>(), end[j].item<float>(), up[j].item<float>()});
      // Karras timesteps are rounded here, as KDPM2 rounds them, unlike Euler's (and unlike exponential ones).
      timesteps.push_back(schedule == SigmaSchedule::kKarras ? std::nearbyint(timesteps_[j]) : timesteps_[j]);
      sigmas.push_back(sigmas_[j]);
      if (steps_.back().mid != 0.0f) {  // a step to sigma 0 makes no midpoint call
        timesteps.push_back(sigma_to_t(steps_.back().mid, log_sigmas_, SigmaToT::kTensorSigmaTensorLogs));
        sigmas.push_back(steps_.back().mid);
      }
    }
    sigmas.push_back(sigmas_.back());
    timesteps_ = std::move(timesteps);
    sigmas_ = std::move(sigmas);
  }

  bool needs_noise(size_t call) const override { return ancestral_ && call % 2 == 1; }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    const Step& step = steps_[call / 2];
    torch::Tensor prev;
    if (call % 2 == 0) {
      pred_original_sample_ = predict_x0(model_output, sample, step.sigma);
      const auto derivative = (sample - pred_original_sample_) / step.sigma;
      step_start_ = sample;
      prev = sample + derivative * (step.mid - step.sigma);
    } else {
      if (ancestral_) check_noise(noise, sample);
      pred_original_sample_ = predict_x0(model_output, sample, step.mid);
      const auto derivative = (sample - pred_original_sample_) / step.mid;
      prev = step_start_ + derivative * (step.end - step.sigma);
      if (ancestral_) prev = prev + noise * step.up;
      step_start_ = torch::Tensor();
    }
    ++next_call_;
    return prev;
  }

 private:
  struct Step {
    float sigma;   // where the step starts (its Euler call's input)
    float mid;     // the midpoint call's input; 0 for the last step, which ends at its Euler call
    float end;     // where the step ends before ancestral noise: the next sigma, or the ancestral down sigma
    float up;      // the ancestral noise's scale
  };

  size_t first_call_of_step(size_t step) const override { return 2 * step; }

  bool ancestral_;
  std::vector<Step> steps_;
  torch::Tensor step_start_;  // the Euler call's sample, until the midpoint call
};

}  // namespace

std::unique_ptr<Scheduler> make_dpm2(const SchedulerConfig& config, int steps, SigmaSchedule schedule) {
  return std::make_unique<Dpm2>(config, steps, schedule, std::nullopt);
}

std::unique_ptr<Scheduler> make_dpm2_ancestral(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                               double eta) {
  return std::make_unique<Dpm2>(config, steps, schedule, eta);
}

}  // namespace txt2img::detail
