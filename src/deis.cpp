// DEIS (diffusers DEISMultistepScheduler with its defaults: algorithm_type "deis", solver_type "logrho",
// solver_order 2, lower_order_final; deis_karras with use_karras_sigmas): Zhang & Chen's exponential integrator on
// the noise prediction, in rho = sigma / alpha. The first step of a run is first order (DDIM's step); the others
// integrate the linear interpolation in log rho of the last two noise predictions, but for the last step of a run
// under 15 steps, first order again. Unlike DPM-Solver++ and UniPC, the run stops at the smallest training sigma (on
// Karras sigmas, the last one again, so that the last step leaves the sample as it is up to rounding), not at 0.
#include <cmath>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

// The antiderivative in rho, at t, of the Lagrange basis polynomial in log rho that is 1 at b and 0 at c: the noise
// predictions' weights over a step from rho_s0 to rho_t are its differences, in diffusers' float32 operations.
// diffusers takes these logs with np.log of float32 tensors, whose SIMD approximation (on x86-64 with AVX2 or
// AVX-512) is an ulp off libm's for about one value in eight: diffusers' own weights differ between machines by
// that much, and txt2img's from those of the goldens' machine by as much.
float log_rho_integral(float t, float b, float c) {
  return t * (-std::log(c) + std::log(t) - 1.0f) / (std::log(b) - std::log(c));
}

class Deis final : public LogSnrScheduler {
 public:
  Deis(const SchedulerConfig& config, int steps, bool karras)
      : LogSnrScheduler(config, steps, karras ? SigmaSchedule::kKarras : SigmaSchedule::kSpaced,
                        karras ? "deis_karras" : "deis") {
    sigmas_.back() =
        karras ? sigmas_[sigmas_.size() - 2] : training_sigmas(sigma_alphas_cumprod_values(config)).front();
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor&) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    const Vp s0(sigmas_[call]), t(sigmas_[call + 1]);
    const auto x0 = predict_x0(model_output, sample, call);
    // DEIS integrates a noise prediction: the one the x0 prediction implies (the model's own, up to rounding, for an
    // epsilon model).
    const auto eps = (sample - s0.alpha * x0) / s0.sigma;
    // diffusers counts the 15 steps over the whole schedule, also where start_at entered it.
    const size_t calls = timesteps_.size();
    const bool first_order = call == first_call_ || (call + 1 == calls && calls < 15);
    torch::Tensor prev;
    if (first_order) {
      const float h = t.lambda - s0.lambda;
      prev = (t.alpha / s0.alpha) * sample - (t.sigma * (tensor_exp(h) - 1.0f)) * eps;
    } else {
      const Vp s1(sigmas_[call - 1]);
      const float rho_t = t.sigma / t.alpha, rho_s0 = s0.sigma / s0.alpha, rho_s1 = s1.sigma / s1.alpha;
      const float coeff0 = log_rho_integral(rho_t, rho_s0, rho_s1) - log_rho_integral(rho_s0, rho_s0, rho_s1);
      const float coeff1 = log_rho_integral(rho_t, rho_s1, rho_s0) - log_rho_integral(rho_s0, rho_s1, rho_s0);
      prev = t.alpha * (sample / s0.alpha + coeff0 * eps + coeff1 * previous_eps_);
    }
    previous_eps_ = eps;
    pred_original_sample_ = x0;
    ++next_call_;
    return prev;
  }

 private:
  torch::Tensor previous_eps_;
};

}  // namespace

std::unique_ptr<Scheduler> make_deis(const SchedulerConfig& config, int steps, bool karras) {
  return std::make_unique<Deis>(config, steps, karras);
}

}  // namespace txt2img::detail
