// What the samplers taken from k-diffusion share: CompVisDenoiser's scalings and the pieces of k-diffusion's sampling
// loop they are written with, in its float32 0-dim tensor arithmetic.
#include <algorithm>

#include "scheduler_impl.hpp"

namespace txt2img::detail {

KDiffusionScheduler::KDiffusionScheduler(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                         const std::string& name, bool discard_next_to_last_sigma)
    : SigmaScheduler(config, steps, schedule, discard_next_to_last_sigma),
      v_prediction_(config.prediction_type == "v_prediction") {
  require_prediction_type(config, name + std::string(schedule_suffix(schedule)), {"epsilon", "v_prediction"});
  span_min_ = span_max_ = sigmas_[0];
  for (float sigma : sigmas_) {
    if (sigma > 0) span_min_ = std::min(span_min_, sigma);
    span_max_ = std::max(span_max_, sigma);
  }
}

BrownianIncrement KDiffusionScheduler::brownian(float sigma, float sigma_next) const {
  return {span_min_, span_max_, sigma, sigma_next};
}

float compvis_c_in(float sigma) {
  const auto s = torch::scalar_tensor(sigma, torch::kFloat32);
  return (s.pow(2) + 1).pow(0.5).reciprocal().item<float>();
}

torch::Tensor KDiffusionScheduler::scale_model_input(const torch::Tensor& sample, size_t call) const {
  if (call >= timesteps_.size()) return SigmaScheduler::scale_model_input(sample, call);  // which refuses it
  return sample * compvis_c_in(sigmas_[call]);
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
                                                                            const torch::Tensor& to, double eta) {
  if (eta == 0) return {to, torch::zeros_like(to)};
  // Python's min keeps `to` unless the other is smaller.
  auto up = (to.pow(2) * (from.pow(2) - to.pow(2)) / from.pow(2)).pow(0.5) * eta;
  if (!(up < to).item<bool>()) up = to;
  return {(to.pow(2) - up.pow(2)).pow(0.5), up};
}

KDiffusionMultistepSde::KDiffusionMultistepSde(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                               const std::string& name, double eta, bool discard_next_to_last_sigma)
    : KDiffusionScheduler(config, steps, schedule, name, discard_next_to_last_sigma), eta_(eta) {
  timesteps_.clear();
  // k-diffusion's arithmetic on float32 0-dim tensors, by the same ATen kernels in the same order.
  const auto f32 = [](float v) { return torch::scalar_tensor(v, torch::kFloat32); };
  for (size_t j = 0; j + 1 < sigmas_.size(); ++j) {
    timesteps_.push_back(sigma_to_t(sigmas_[j], log_sigmas_, SigmaToT::kTensorSigmaTensorLogs));
    Step step{};
    if (sigmas_[j + 1] != 0.0f) step.h = f32(sigmas_[j + 1]).log().neg() - f32(sigmas_[j]).log().neg();
    steps_.push_back(step);
  }
}

torch::Tensor KDiffusionMultistepSde::step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                                           const torch::Tensor& noise) {
  check_step(call, next_call_, timesteps_.size(), model_output, sample);
  const Step& step = steps_[call];
  const auto denoised_now = denoised(model_output, sample, sigmas_[call]);
  torch::Tensor prev;
  if (sigmas_[call + 1] == 0.0f) {
    prev = denoised_now;
  } else {
    prev = corrected(sample * step.to_next + denoised_now * step.to_next_x0, denoised_now, call);
    if (needs_noise(call)) {
      check_noise(noise, sample);
      prev = prev + noise * sigmas_[call + 1] * step.noise_scale;
    }
  }
  denoised_2_ = denoised_1_;
  denoised_1_ = denoised_now;
  pred_original_sample_ = denoised_now;
  ++next_call_;
  return prev;
}

std::optional<BrownianIncrement> KDiffusionMultistepSde::brownian_increment(size_t call) const {
  if (!needs_noise(call)) return std::nullopt;
  return brownian(sigmas_[call], sigmas_[call + 1]);
}

void KDiffusionTwoCallScheduler::set_steps(std::vector<Step> steps) {
  std::vector<double> timesteps;
  std::vector<float> sigmas;
  for (const Step& step : steps) {
    for (float sigma : {step.sigma, step.mid}) {
      if (sigma == 0.0f) continue;
      timesteps.push_back(sigma_to_t(sigma, log_sigmas_, SigmaToT::kTensorSigmaTensorLogs));
      sigmas.push_back(sigma);
    }
  }
  sigmas.push_back(sigmas_.back());
  steps_ = std::move(steps);
  timesteps_ = std::move(timesteps);
  sigmas_ = std::move(sigmas);
}

torch::Tensor KDiffusionTwoCallScheduler::step(const torch::Tensor& model_output, size_t call,
                                               const torch::Tensor& sample, const torch::Tensor& noise) {
  check_step(call, next_call_, timesteps_.size(), model_output, sample);
  if (needs_noise(call)) check_noise(noise, sample);
  const Step& step = steps_[call / 2];
  torch::Tensor prev;
  if (call % 2 == 0) {
    pred_original_sample_ = denoised(model_output, sample, step.sigma);
    if (step.mid == 0.0f) {  // a step to sigma 0: Euler
      const auto derivative = (sample - pred_original_sample_) / step.sigma;
      prev = sample + derivative * (0.0f - step.sigma);
    } else {
      step_start_ = sample;
      prev = sample * step.to_mid - pred_original_sample_ * step.to_mid_x0;
      if (needs_noise(call)) prev = prev + noise * step.mid_up;  // k-diffusion's s_noise factor, 1, changes nothing
    }
  } else {
    pred_original_sample_ = denoised(model_output, sample, step.mid);
    prev = step_start_ * step.to_down - pred_original_sample_ * step.to_down_x0;
    prev = prev + noise * step.up;
    step_start_ = torch::Tensor();
  }
  ++next_call_;
  return prev;
}

}  // namespace txt2img::detail
