// DPM++ 2S a: k-diffusion's sample_dpmpp_2s_ancestral (A1111's "DPM++ 2S a"), which diffusers has no class for, on
// the sigmas of txt2img's other sigma samplers (spaced as diffusers spaces them, Karras', exponential or A1111's own),
// with the input scaling and start of k-diffusion's CompVisDenoiser and sampling loop. Each step from sigma s goes down
// to the ancestral "down" sigma with DPM-Solver++(2S): a first-order step in log sigma to the midpoint (the geometric
// mean of s and the down sigma), a call there, and its denoised sample carries the step's start the whole way; fresh
// noise scaled by the "up" sigma completes it. The last step is one Euler call to sigma 0. N steps make 2N - 1 U-Net
// calls, the midpoints' at fractional timesteps.
#include <cmath>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class DpmPP2SAncestral final : public KDiffusionScheduler {
 public:
  DpmPP2SAncestral(const SchedulerConfig& config, int steps, SigmaSchedule schedule)
      : KDiffusionScheduler(config, steps, schedule, "dpmpp_2s_a") {
    // k-diffusion's arithmetic on float32 0-dim tensors, by the same ATen kernels in the same order.
    const auto f32 = [](float v) { return torch::scalar_tensor(v, torch::kFloat32); };
    std::vector<double> timesteps;
    std::vector<float> sigmas;
    for (int j = 0; j < steps; ++j) {
      const auto from = f32(sigmas_[j]);
      const auto [down, up] = ancestral_step(from, f32(sigmas_[j + 1]));
      Step step{};
      step.sigma = sigmas_[j];
      step.up = up.item<float>();
      timesteps.push_back(sigma_to_t(sigmas_[j], log_sigmas_, SigmaToT::kTensorSigmaTensorLogs));
      sigmas.push_back(sigmas_[j]);
      if (down.item<float>() != 0.0f) {
        const auto t = from.log().neg(), t_next = down.log().neg();
        const auto h = t_next - t;
        const auto s = t + h * 0.5;
        const auto sigma_t = t.neg().exp();
        step.mid = s.neg().exp().item<float>();
        step.to_mid = (s.neg().exp() / sigma_t).item<float>();
        step.to_mid_x0 = (h.neg() * 0.5).expm1().item<float>();
        step.to_down = (t_next.neg().exp() / sigma_t).item<float>();
        step.to_down_x0 = h.neg().expm1().item<float>();
        timesteps.push_back(sigma_to_t(step.mid, log_sigmas_, SigmaToT::kTensorSigmaTensorLogs));
        sigmas.push_back(step.mid);
      }
      steps_.push_back(step);
    }
    sigmas.push_back(0.0f);
    timesteps_ = std::move(timesteps);
    sigmas_ = std::move(sigmas);
  }

  bool needs_noise(size_t call) const override { return call % 2 == 1; }

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
        step_start_ = sample;
        prev = sample * step.to_mid - pred_original_sample_ * step.to_mid_x0;
      }
    } else {
      check_noise(noise, sample);
      pred_original_sample_ = denoised(model_output, sample, step.mid);
      prev = step_start_ * step.to_down - pred_original_sample_ * step.to_down_x0;
      prev = prev + noise * step.up;
      step_start_ = torch::Tensor();
    }
    ++next_call_;
    return prev;
  }

 private:
  struct Step {
    float sigma;   // where the step starts (its first call's input)
    float mid;     // the midpoint call's sigma; 0 for the last step, which is one Euler call
    float to_mid;  // sigma(mid) / sigma(start) and expm1(-h / 2): the first-order step to the midpoint
    float to_mid_x0;
    float to_down;  // sigma(down) / sigma(start) and expm1(-h): the step's start to the down sigma
    float to_down_x0;
    float up;  // the ancestral noise's scale
  };

  // Two calls a step but the last.
  size_t first_call_of_step(size_t step) const override { return 2 * step; }

  std::vector<Step> steps_;
  torch::Tensor step_start_;  // the first call's sample, until the midpoint call
};

}  // namespace

std::unique_ptr<Scheduler> make_dpmpp_2s_ancestral(const SchedulerConfig& config, int steps, SigmaSchedule schedule) {
  return std::make_unique<DpmPP2SAncestral>(config, steps, schedule);
}

}  // namespace txt2img::detail
