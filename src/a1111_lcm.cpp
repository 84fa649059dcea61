// AUTOMATIC1111's LCM sampler (its modules/sd_samplers_lcm.py: sample_lcm over LCMCompVisDenoiser), which is not
// diffusers' LCMScheduler (txt2img's lcm): its denoiser knows the 50 timesteps LCM was distilled on (999, 979, ..., 19)
// as k-diffusion's discrete schedule of their sigmas, spaces N steps evenly between the first and the last in
// timestep, interpolating their sigmas in log sigma, gives the U-Net the distillation timestep nearest each sigma, and
// applies LCM's consistency boundary condition with that timestep times 10 to k-diffusion's denoised sample and the
// sample in sigma space (where diffusers applies it in the variance-preserving space). Each step returns the boundary
// output plus the next sigma times fresh noise from the image's generator (none after the last), so a run may start at
// any step (A1111's img2img and hires pass enter the schedule there, noised to its sigma).
#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img::detail {
namespace {

constexpr int64_t kDistilled = 50;  // LCM's original timesteps
constexpr int64_t kSkip = 1000 / kDistilled;

class A1111Lcm final : public Scheduler {
 public:
  A1111Lcm(const SchedulerConfig& config, int steps) {
    // A1111's LCM denoiser is an eps one (DiscreteEpsDDPMDenoiser).
    require_prediction_type(config, "lcm_a1111", {"epsilon"});
    if (config.num_train_timesteps != 1000)
      throw Error(ErrorKind::Bundle, "lcm_a1111 (A1111's LCM) takes 50 of 1000 training timesteps; this model has " +
                                         std::to_string(config.num_train_timesteps));
    // The sigmas of the distillation timesteps, lowest first.
    const auto training = training_sigmas_of_a1111(config);
    std::vector<float> distilled(kDistilled);
    for (int64_t x = 0; x < kDistilled; ++x) distilled[kDistilled - 1 - x] = training[999 - x * kSkip];
    schedule_ = std::make_unique<DiscreteSchedule>(distilled);

    // get_sigmas(n): timesteps evenly spaced from the largest sigma's to the smallest's, as sigmas, then 0.
    const auto first = timestep_of(schedule_->sigma_max()), last = timestep_of(schedule_->sigma_min());
    const auto t = torch::linspace(static_cast<double>(first), static_cast<double>(last), steps, torch::kFloat32);
    const auto spaced = schedule_->t_to_sigma(((t - (kSkip - 1)) / kSkip).clamp(0, kDistilled - 1)).contiguous();
    sigmas_.assign(spaced.data_ptr<float>(), spaced.data_ptr<float>() + steps);
    for (const float sigma : sigmas_) timesteps_.push_back(static_cast<double>(timestep_of(sigma)));
    sigmas_.push_back(0.0f);
  }

  double init_noise_sigma() const override { return sigmas_[0]; }
  double a1111_sigma(size_t call) const override { return sigmas_.at(call); }
  bool needs_noise(size_t call) const override { return call + 1 < sigmas_.size() && sigmas_[call + 1] > 0.0f; }

  torch::Tensor scale_model_input(const torch::Tensor& sample, size_t call) const override {
    if (call >= timesteps_.size())
      throw Error(ErrorKind::Runtime,
                  "scale_model_input for call " + std::to_string(call) + " of " + std::to_string(timesteps_.size()));
    return sample * compvis_c_in(sigmas_[call]);
  }

  // A1111's img2img: x + noise * sigma_sched[0].
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    return x0 + noise * sigmas_[call];
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    if (needs_noise(call)) check_noise(noise, sample);
    // k-diffusion's denoised sample (input + eps * c_out, c_out = -sigma), then the boundary condition with sigma_data
    // 0.5 at the timestep times 10, in the denoiser's float32 tensor order (0.25 / y is y's reciprocal times 0.25).
    const auto denoised = sample + model_output * (-sigmas_[call]);
    const auto scaled = torch::scalar_tensor(static_cast<int64_t>(timesteps_[call]), torch::kLong) * 10.0;
    const auto c_skip = (scaled.pow(2) + 0.25).reciprocal() * 0.25;
    const auto c_out = scaled / (scaled.pow(2) + 0.25).pow(0.5);
    pred_original_sample_ = c_out.item<float>() * denoised + c_skip.item<float>() * sample;
    auto prev = pred_original_sample_;
    if (needs_noise(call)) prev = prev + sigmas_[call + 1] * noise;
    ++next_call_;
    return prev;
  }

 private:
  // LCMCompVisDenoiser.sigma_to_t: the distillation timestep of the sigma nearest in log sigma.
  int64_t timestep_of(float sigma) const {
    return schedule_->nearest_t(torch::scalar_tensor(sigma, torch::kFloat32)).item<int64_t>() * kSkip + (kSkip - 1);
  }

  std::unique_ptr<DiscreteSchedule> schedule_;
  std::vector<float> sigmas_;  // one per call, then 0
};

}  // namespace

std::unique_ptr<Scheduler> make_a1111_lcm(const SchedulerConfig& config, int steps) {
  return std::make_unique<A1111Lcm>(config, steps);
}

}  // namespace txt2img::detail
