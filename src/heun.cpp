// Heun (diffusers HeunDiscreteScheduler; heun_karras with use_karras_sigmas, heun_exponential with
// use_exponential_sigmas): Heun's second-order method on the
// probability-flow ODE in sigma space. Each step is an Euler predictor call to the next sigma and a corrector call
// there, which steps again from the predictor's start with the mean of both derivatives; the last step, to sigma 0,
// is the predictor alone. N steps thus make 2N - 1 U-Net calls, each sigma but the first and the last twice (2N on
// A1111's KL Optimal schedule, which ends above 0, so that k-diffusion corrects its last step too).
#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class Heun final : public SigmaScheduler {
 public:
  Heun(const SchedulerConfig& config, int steps, SigmaSchedule schedule) : SigmaScheduler(config, steps, schedule) {
    require_prediction_type(config, std::string("heun") + schedule_suffix(schedule),
                            {"epsilon", "v_prediction", "sample"});
    // diffusers: sigmas [s0, s1, s1, ..., s(N-1), s(N-1), 0] and timesteps [t0, t1, t1, ..., t(N-1), t(N-1)],
    // one sigma (the U-Net input's) per call plus the final 0, as SigmaScheduler keeps them. A final sigma above 0
    // takes a corrector call too, at the timestep k-diffusion gives that sigma.
    std::vector<double> timesteps = {timesteps_.front()};
    std::vector<float> sigmas = {sigmas_.front()};
    for (size_t i = 1; i < timesteps_.size(); ++i) {
      timesteps.insert(timesteps.end(), 2, timesteps_[i]);
      sigmas.insert(sigmas.end(), 2, sigmas_[i]);
    }
    const float final_sigma = sigmas_.back();
    if (final_sigma != 0.0f) {
      timesteps.push_back(sigma_to_t(final_sigma, log_sigmas_, SigmaToT::kTensorSigmaTensorLogs));
      sigmas.push_back(final_sigma);
    }
    sigmas.push_back(final_sigma);
    timesteps_ = std::move(timesteps);
    sigmas_ = std::move(sigmas);
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor&) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    // Both calls predict x0 at their own input's sigma: the predictor's sigma, the corrector's the next one.
    const float sigma = sigmas_[call];
    const auto x0 = predict_x0(model_output, sample, sigma);
    const auto derivative = (sample - x0) / sigma;
    torch::Tensor prev;
    if (!predictor_start_.defined()) {
      dt_ = sigmas_[call + 1] - sigma;
      predictor_derivative_ = derivative;
      predictor_start_ = sample;
      prev = sample + derivative * dt_;
    } else {
      prev = predictor_start_ + (predictor_derivative_ + derivative) / 2 * dt_;
      predictor_start_ = predictor_derivative_ = torch::Tensor();
    }
    pred_original_sample_ = x0;
    ++next_call_;
    return prev;
  }

 private:
  size_t first_call_of_step(size_t step) const override { return 2 * step; }

  // The predictor call's sample, derivative and sigma step, until its corrector call.
  torch::Tensor predictor_start_, predictor_derivative_;
  float dt_ = 0.0f;
};

}  // namespace

std::unique_ptr<Scheduler> make_heun(const SchedulerConfig& config, int steps, SigmaSchedule schedule) {
  return std::make_unique<Heun>(config, steps, schedule);
}

}  // namespace txt2img::detail
