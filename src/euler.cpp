// Euler (diffusers EulerDiscreteScheduler with s_churn = 0, linear sigma interpolation, final sigma 0; euler_karras
// with use_karras_sigmas, euler_exponential with use_exponential_sigmas): one explicit Euler step of the
// probability-flow ODE per U-Net call, in sigma space.
#include <cmath>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class Euler final : public SigmaScheduler {
 public:
  Euler(const SchedulerConfig& config, int steps, SigmaSchedule schedule) : SigmaScheduler(config, steps, schedule) {
    require_prediction_type(config, std::string("euler") + schedule_suffix(schedule),
                            {"epsilon", "v_prediction", "sample", "original_sample"});
    // EulerDiscreteScheduler keeps its timesteps as float32, Karras and exponential ones included.
    for (double& t : timesteps_) t = static_cast<float>(t);
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor&) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    // Without churn sigma_hat = sigma * (0 + 1) = sigma.
    const float sigma = sigmas_[call];
    const torch::Tensor x0 = predict_x0(model_output, sample, sigma);
    const auto derivative = (sample - x0) / sigma;
    const float dt = sigmas_[call + 1] - sigma;
    pred_original_sample_ = x0;
    ++next_call_;
    return sample + derivative * dt;
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_euler(const SchedulerConfig& config, int steps, SigmaSchedule schedule) {
  return std::make_unique<Euler>(config, steps, schedule);
}

}  // namespace txt2img::detail
