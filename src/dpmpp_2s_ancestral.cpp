// DPM++ 2S a: k-diffusion's sample_dpmpp_2s_ancestral (A1111's "DPM++ 2S a"), which diffusers has no class for, on
// the sigmas of txt2img's other sigma samplers (spaced as diffusers spaces them, Karras', exponential or A1111's own),
// with the input scaling and start of k-diffusion's CompVisDenoiser and sampling loop. Each step from sigma s goes down
// to the ancestral "down" sigma with DPM-Solver++(2S): a first-order step in log sigma to the midpoint (the geometric
// mean of s and the down sigma), a call there, and its denoised sample carries the step's start the whole way; fresh
// noise scaled by the "up" sigma completes it. The last step is one Euler call to sigma 0 (but on A1111's KL Optimal
// schedule, which ends above it). N steps make 2N - 1 U-Net calls, the midpoints' at fractional timesteps.
#include <cmath>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class DpmPP2SAncestral final : public KDiffusionTwoCallScheduler {
 public:
  DpmPP2SAncestral(const SchedulerConfig& config, int steps, SigmaSchedule schedule, double eta)
      : KDiffusionTwoCallScheduler(config, steps, schedule, "dpmpp_2s_a") {
    // k-diffusion's arithmetic on float32 0-dim tensors, by the same ATen kernels in the same order.
    const auto f32 = [](float v) { return torch::scalar_tensor(v, torch::kFloat32); };
    std::vector<Step> two_call_steps;
    for (size_t j = 0; j + 1 < sigmas_.size(); ++j) {
      const auto from = f32(sigmas_[j]);
      const auto [down, up] = ancestral_step(from, f32(sigmas_[j + 1]), eta);
      Step step{};
      step.sigma = sigmas_[j];
      step.up = up.item<float>();
      if (down.item<float>() != 0.0f) {
        // To the midpoint (the geometric mean of the start and the down sigma) without noise, then from the start to
        // the down sigma.
        const auto t = from.log().neg(), t_next = down.log().neg();
        const auto h = t_next - t;
        const auto s = t + h * 0.5;
        const auto sigma_t = t.neg().exp();
        step.mid = s.neg().exp().item<float>();
        step.to_mid = (s.neg().exp() / sigma_t).item<float>();
        step.to_mid_x0 = (h.neg() * 0.5).expm1().item<float>();
        step.to_down = (t_next.neg().exp() / sigma_t).item<float>();
        step.to_down_x0 = h.neg().expm1().item<float>();
      }
      two_call_steps.push_back(step);
    }
    set_steps(std::move(two_call_steps));
  }

  // At each midpoint call, where k-diffusion draws it.
  bool needs_noise(size_t call) const override { return call % 2 == 1; }
};

}  // namespace

std::unique_ptr<Scheduler> make_dpmpp_2s_ancestral(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                                   double eta) {
  return std::make_unique<DpmPP2SAncestral>(config, steps, schedule, eta);
}

}  // namespace txt2img::detail
