// DPM++ SDE: k-diffusion's sample_dpmpp_sde (A1111's "DPM++ SDE"; eta 1, s_noise 1, r = 1/2), which diffusers has no
// class for, on the sigmas of txt2img's other sigma samplers. Each step from sigma s to the next sigma n is
// DPM-Solver++(2S) made stochastic: an ancestral first-order step in log sigma toward the midpoint m (the geometric
// mean of s and n), a call there, and from the step's start an ancestral step toward n that takes the midpoint's
// denoised sample. Both ancestral steps add the Brownian motion's normalised increment, from s to m and from s to n,
// scaled by their "up" sigmas: the noise A1111 takes from one Brownian tree per image seed (NoiseSource::brownian).
// The last step is one Euler call to sigma 0. N steps make 2N - 1 U-Net calls, the midpoints' at fractional
// timesteps.
#include <algorithm>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class DpmPPSde final : public KDiffusionScheduler {
 public:
  DpmPPSde(const SchedulerConfig& config, int steps, SigmaSchedule schedule)
      : KDiffusionScheduler(config, steps, schedule, "dpmpp_sde") {
    // sigmas[sigmas > 0].min() and sigmas.max() of the schedule.
    span_min_ = sigmas_[0];
    span_max_ = sigmas_[0];
    for (float sigma : sigmas_) {
      if (sigma > 0) span_min_ = std::min(span_min_, sigma);
      span_max_ = std::max(span_max_, sigma);
    }
    // k-diffusion's arithmetic on float32 0-dim tensors, by the same ATen kernels in the same order: sigma_fn(t) is
    // t.neg().exp() and t_fn(sigma) sigma.log().neg().
    const auto f32 = [](float v) { return torch::scalar_tensor(v, torch::kFloat32); };
    std::vector<double> timesteps;
    std::vector<float> sigmas;
    for (int j = 0; j < steps; ++j) {
      Step step{};
      step.sigma = sigmas_[j];
      timesteps.push_back(sigma_to_t(sigmas_[j], log_sigmas_, SigmaToT::kTensorSigmaTensorLogs));
      sigmas.push_back(sigmas_[j]);
      if (sigmas_[j + 1] != 0.0f) {
        const auto t = f32(sigmas_[j]).log().neg(), t_next = f32(sigmas_[j + 1]).log().neg();
        const auto h = t_next - t;
        const auto s = t + h * 0.5;
        const auto sigma_t = t.neg().exp(), sigma_s = s.neg().exp(), sigma_next = t_next.neg().exp();
        const auto [mid_down, mid_up] = ancestral_step(sigma_t, sigma_s);
        const auto s_ = mid_down.log().neg();
        step.to_mid = (s_.neg().exp() / sigma_t).item<float>();
        step.to_mid_x0 = (t - s_).expm1().item<float>();
        step.mid_up = mid_up.item<float>();
        const auto [down, up] = ancestral_step(sigma_t, sigma_next);
        const auto t_next_ = down.log().neg();
        step.to_down = (t_next_.neg().exp() / sigma_t).item<float>();
        step.to_down_x0 = (t - t_next_).expm1().item<float>();
        step.up = up.item<float>();
        step.from = sigma_t.item<float>();
        step.mid = sigma_s.item<float>();
        step.to = sigma_next.item<float>();
        timesteps.push_back(sigma_to_t(step.mid, log_sigmas_, SigmaToT::kTensorSigmaTensorLogs));
        sigmas.push_back(step.mid);
      }
      steps_.push_back(step);
    }
    sigmas.push_back(0.0f);
    timesteps_ = std::move(timesteps);
    sigmas_ = std::move(sigmas);
  }

  // Both calls of a step but the last, which is one Euler call.
  bool needs_noise(size_t call) const override { return call < timesteps_.size() && steps_[call / 2].mid != 0.0f; }

  std::optional<BrownianIncrement> brownian_increment(size_t call) const override {
    if (!needs_noise(call)) return std::nullopt;
    const Step& step = steps_[call / 2];
    return BrownianIncrement{span_min_, span_max_, step.from, call % 2 == 0 ? step.mid : step.to};
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    const Step& step = steps_[call / 2];
    torch::Tensor prev;
    if (call % 2 == 0) {
      pred_original_sample_ = denoised(model_output, sample, step.sigma);
      if (step.mid == 0.0f) {
        prev = euler_to_zero(sample, pred_original_sample_, step.sigma);
      } else {
        check_noise(noise, sample);
        step_start_ = sample;
        prev = sample * step.to_mid - pred_original_sample_ * step.to_mid_x0;
        prev = prev + noise * step.mid_up;  // k-diffusion's s_noise factor, 1, changes no value
      }
    } else {
      check_noise(noise, sample);
      pred_original_sample_ = denoised(model_output, sample, step.mid);
      // k-diffusion's (1 - fac) * denoised + fac * denoised_2 with fac = 1 / (2r) = 1 is the midpoint's denoised
      // sample (up to the sign of a zero).
      prev = step_start_ * step.to_down - pred_original_sample_ * step.to_down_x0;
      prev = prev + noise * step.up;
      step_start_ = torch::Tensor();
    }
    ++next_call_;
    return prev;
  }

 private:
  struct Step {
    float sigma;  // where the step starts (its first call's input)
    float mid;    // the midpoint call's sigma, sigma_fn(s); 0 for the last step, which is one Euler call
    float from;   // sigma_fn(t) and sigma_fn(t_next): the step's ends as k-diffusion recomputes them
    float to;
    float to_mid;  // sigma(down toward mid) / sigma(start) and expm1(t - t(down)): the ancestral step to the midpoint
    float to_mid_x0;
    float mid_up;   // its noise's scale
    float to_down;  // the same toward the next sigma
    float to_down_x0;
    float up;
  };

  // Two calls a step but the last.
  size_t first_call_of_step(size_t step) const override { return 2 * step; }

  std::vector<Step> steps_;
  float span_min_, span_max_;
  torch::Tensor step_start_;  // the first call's sample, until the midpoint call
};

}  // namespace

std::unique_ptr<Scheduler> make_dpmpp_sde(const SchedulerConfig& config, int steps, SigmaSchedule schedule) {
  return std::make_unique<DpmPPSde>(config, steps, schedule);
}

}  // namespace txt2img::detail
