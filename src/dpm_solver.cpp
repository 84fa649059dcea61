// DPM-Solver++(2M) (diffusers DPMSolverMultistepScheduler: algorithm_type "dpmsolver++", solver_order 2,
// solver_type "midpoint", lower_order_final, final_sigmas_type "zero"), on diffusers' default schedule (training
// sigmas at linspace-spaced timesteps: dpmpp_2m) or with use_karras_sigmas (dpmpp_2m_karras); and its SDE variant
// (algorithm_type "sde-dpmsolver++": dpmpp_2m_sde, dpmpp_2m_sde_karras), which at every step keeps only exp(-h) of
// the sample's share, doubles the x0 terms' weight and adds fresh noise to make up the variance. Both also run on
// A1111's own schedules (dpmpp_2m_sgm_uniform, ...), which diffusers lacks.
// The model output is turned into an x0 prediction; the first and the last step are first order, the others
// extrapolate from the last two x0 predictions in log-SNR time.
#include <cmath>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class DpmSolverPP2M final : public LogSnrScheduler {
 public:
  DpmSolverPP2M(const SchedulerConfig& config, int steps, SigmaSchedule schedule, bool sde)
      : LogSnrScheduler(config, steps, schedule, (sde ? "dpmpp_2m_sde" : "dpmpp_2m") + schedule_suffix(schedule)),
        sde_(sde) {}

  // diffusers draws the SDE's noise at every step, the last (whose noise has weight 0) included.
  bool needs_noise(size_t) const override { return sde_; }
  // A1111 runs DPM++ 2M on k-diffusion's sigmas (UniPC, the other log-SNR solver, on timesteps).
  double a1111_sigma(size_t call) const override { return sigmas_.at(call); }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override;

 private:
  bool sde_;
  torch::Tensor previous_x0_;
};

torch::Tensor DpmSolverPP2M::step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                                  const torch::Tensor& noise) {
  check_step(call, next_call_, timesteps_.size(), model_output, sample);
  if (sde_) check_noise(noise, sample);
  const Vp s0(sigmas_[call]), t(sigmas_[call + 1]);
  const auto x0 = predict_x0(model_output, sample, call);
  const float h = t.lambda - s0.lambda;
  // Second order needs a previous x0 of this run (none at its first call, also where start_at entered the
  // schedule); a step to sigma 0 (the final one but on A1111's KL Optimal schedule) is first order.
  const bool second_order = call > first_call_ && sigmas_[call + 1] != 0.0f;
  torch::Tensor d1;
  if (second_order) {
    const Vp s1(sigmas_[call - 1]);
    const float r0 = (s0.lambda - s1.lambda) / h;
    d1 = (1.0f / r0) * (x0 - previous_x0_);
  }
  torch::Tensor prev;
  if (!sde_) {
    const float coeff = t.alpha * (tensor_exp(-h) - 1.0f);
    prev = (t.sigma / s0.sigma) * sample - coeff * x0;
    if (second_order) prev = prev - (0.5f * coeff) * d1;
  } else {
    const float decay = tensor_exp(-2.0f * h);
    const float coeff = t.alpha * (1.0f - decay);
    prev = (t.sigma / s0.sigma * tensor_exp(-h)) * sample + coeff * x0;
    if (second_order) prev = prev + (0.5f * coeff) * d1;
    prev = prev + (t.sigma * std::sqrt(1.0f - decay)) * noise;
  }
  // A1111's samples are x0 + sigma * noise: where its schedule ends above sigma 0 (KL Optimal), the result leaves this
  // space (alpha is 1 at sigma 0).
  if (call + 1 == timesteps_.size()) prev = prev / t.alpha;
  previous_x0_ = x0;
  pred_original_sample_ = x0;
  ++next_call_;
  return prev;
}

}  // namespace

std::unique_ptr<Scheduler> make_dpmpp_2m(const SchedulerConfig& config, int steps, SigmaSchedule schedule, bool sde) {
  return std::make_unique<DpmSolverPP2M>(config, steps, schedule, sde);
}

}  // namespace txt2img::detail
