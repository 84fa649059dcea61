// What the samplers taken from k-diffusion share: CompVisDenoiser's scalings and the pieces of k-diffusion's sampling
// loop they are written with, in its float32 0-dim tensor arithmetic.
#include "scheduler_impl.hpp"

namespace txt2img::detail {

KDiffusionScheduler::KDiffusionScheduler(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                         const std::string& name)
    : SigmaScheduler(config, steps, schedule), v_prediction_(config.prediction_type == "v_prediction") {
  require_prediction_type(config, name + std::string(schedule_suffix(schedule)), {"epsilon", "v_prediction"});
}

torch::Tensor KDiffusionScheduler::scale_model_input(const torch::Tensor& sample, size_t call) const {
  if (call >= timesteps_.size()) return SigmaScheduler::scale_model_input(sample, call);  // which refuses it
  const auto sigma = torch::scalar_tensor(sigmas_[call], torch::kFloat32);
  return sample * (sigma.pow(2) + 1).pow(0.5).reciprocal().item<float>();
}

torch::Tensor KDiffusionScheduler::denoised(const torch::Tensor& model_output, const torch::Tensor& sample,
                                            float sigma) const {
  if (!v_prediction_) return predict_x0(model_output, sample, sigma);
  const auto s = torch::scalar_tensor(sigma, torch::kFloat32);
  const auto c_skip = (s.pow(2) + 1).reciprocal().item<float>();
  const auto c_out = (s.neg() / (s.pow(2) + 1).pow(0.5)).item<float>();
  return model_output * c_out + sample * c_skip;
}

std::pair<torch::Tensor, torch::Tensor> KDiffusionScheduler::ancestral_step(const torch::Tensor& from,
                                                                            const torch::Tensor& to) {
  // Python's min keeps `to` unless the other is smaller.
  auto up = (to.pow(2) * (from.pow(2) - to.pow(2)) / from.pow(2)).pow(0.5);
  if (!(up < to).item<bool>()) up = to;
  return {(to.pow(2) - up.pow(2)).pow(0.5), up};
}

torch::Tensor KDiffusionScheduler::euler_to_zero(const torch::Tensor& sample, const torch::Tensor& denoised,
                                                 float sigma) {
  const auto derivative = (sample - denoised) / sigma;
  return sample + derivative * (0.0f - sigma);
}

}  // namespace txt2img::detail
