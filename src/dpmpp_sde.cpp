// DPM++ SDE: k-diffusion's sample_dpmpp_sde (A1111's "DPM++ SDE"; s_noise 1, r = 1/2), which diffusers has no
// class for, on the sigmas of txt2img's other sigma samplers. Each step from sigma s to the next sigma n is
// DPM-Solver++(2S) made stochastic: an ancestral first-order step in log sigma toward the midpoint m (the geometric
// mean of s and n), a call there, and from the step's start an ancestral step toward n that takes the midpoint's
// denoised sample. Both ancestral steps add the Brownian motion's normalised increment, from s to m and from s to n,
// scaled by their "up" sigmas: the noise A1111 takes from one Brownian tree per image seed (NoiseSource::brownian).
// The last step is one Euler call to sigma 0 (but on A1111's KL Optimal schedule, which ends above it). N steps make 2N
// - 1 U-Net calls, the midpoints' at fractional timesteps.
#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class DpmPPSde final : public KDiffusionTwoCallScheduler {
 public:
  DpmPPSde(const SchedulerConfig& config, int steps, SigmaSchedule schedule, double eta)
      : KDiffusionTwoCallScheduler(config, steps, schedule, "dpmpp_sde") {
    // k-diffusion's arithmetic on float32 0-dim tensors, by the same ATen kernels in the same order: sigma_fn(t) is
    // t.neg().exp() and t_fn(sigma) sigma.log().neg().
    const auto f32 = [](float v) { return torch::scalar_tensor(v, torch::kFloat32); };
    std::vector<Step> two_call_steps;
    for (size_t j = 0; j + 1 < sigmas_.size(); ++j) {
      Step step{};
      step.sigma = sigmas_[j];
      Ends ends{};
      if (sigmas_[j + 1] != 0.0f) {
        const auto t = f32(sigmas_[j]).log().neg(), t_next = f32(sigmas_[j + 1]).log().neg();
        const auto h = t_next - t;
        const auto s = t + h * 0.5;
        const auto sigma_t = t.neg().exp(), sigma_s = s.neg().exp(), sigma_next = t_next.neg().exp();
        const auto [mid_down, mid_up] = ancestral_step(sigma_t, sigma_s, eta);
        const auto s_ = mid_down.log().neg();
        step.to_mid = (s_.neg().exp() / sigma_t).item<float>();
        step.to_mid_x0 = (t - s_).expm1().item<float>();
        step.mid_up = mid_up.item<float>();
        // k-diffusion's (1 - fac) * denoised + fac * denoised_2 with fac = 1 / (2r) = 1 is the midpoint's denoised
        // sample (up to the sign of a zero), which the second call takes.
        const auto [down, up] = ancestral_step(sigma_t, sigma_next, eta);
        const auto t_next_ = down.log().neg();
        step.to_down = (t_next_.neg().exp() / sigma_t).item<float>();
        step.to_down_x0 = (t - t_next_).expm1().item<float>();
        step.up = up.item<float>();
        step.mid = sigma_s.item<float>();
        ends = {sigma_t.item<float>(), sigma_next.item<float>()};
      }
      two_call_steps.push_back(step);
      ends_.push_back(ends);
    }
    set_steps(std::move(two_call_steps));
  }

  // Both calls of a step but the last, which is one Euler call.
  bool needs_noise(size_t call) const override { return call < timesteps_.size() && steps_[call / 2].mid != 0.0f; }

  // From the step's start to the midpoint, then to the next sigma.
  std::optional<BrownianIncrement> brownian_increment(size_t call) const override {
    if (!needs_noise(call)) return std::nullopt;
    const Ends& ends = ends_[call / 2];
    return brownian(ends.from, call % 2 == 0 ? steps_[call / 2].mid : ends.to);
  }

 private:
  struct Ends {
    float from, to;  // sigma_fn(t) and sigma_fn(t_next): the step's sigmas as k-diffusion recomputes them
  };
  std::vector<Ends> ends_;
};

}  // namespace

std::unique_ptr<Scheduler> make_dpmpp_sde(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                          double eta) {
  return std::make_unique<DpmPPSde>(config, steps, schedule, eta);
}

}  // namespace txt2img::detail
