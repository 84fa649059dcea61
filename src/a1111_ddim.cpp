// AUTOMATIC1111's DDIM (1.6 and later, modules/sd_samplers_timesteps_impl.py), which takes other steps than
// diffusers' DDIMScheduler:
// - its timesteps are range(0, 1000, 1000 // steps) + 1, the last clipped to 999 (more than `steps` where they do not
//   divide 1000: 62 for 60 steps), and each call steps to the timestep below it, so a run makes one call fewer than
//   there are timesteps and ends at timestep 1's noise level, where diffusers' DDIM steps on to alphas_cumprod[0];
// - the alphas are those A1111's model holds (a1111_alphas_cumprod), eta's variance is computed in float64;
// - a v-prediction model's output becomes eps before the step, from the model's float64 square roots;
// - entering the schedule part-way (A1111's hires fix and img2img) noises the sample to one timestep above the
//   first call's, so a pass of N steps makes N - 2 calls.
#include <algorithm>
#include <cmath>

#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img::detail {
namespace {

class A1111Ddim final : public Scheduler {
 public:
  A1111Ddim(const SchedulerConfig& config, int steps, double eta)
      : v_prediction_(config.prediction_type == "v_prediction"), eta_(eta) {
    require_prediction_type(config, "ddim_a1111", {"epsilon", "v_prediction"});
    if (config.num_train_timesteps != 1000)
      throw Error(ErrorKind::Bundle, "ddim_a1111 (A1111's DDIM) spaces 1000 training timesteps; this model has " +
                                         std::to_string(config.num_train_timesteps) + " (use ddim)");
    const auto alphas_cumprod = a1111_alphas_cumprod(config);
    std::vector<int64_t> spaced;
    for (int t = 0; t < 1000; t += 1000 / steps) spaced.push_back(std::min(t + 1, 999));
    if (spaced.size() < 2)
      throw Error(ErrorKind::Usage, "ddim_a1111 (A1111's DDIM) makes one U-Net call fewer than it has timesteps, so " +
                                        std::to_string(steps) + " step makes none; use 2 or more steps");
    entry_offset_ = spaced.size() - static_cast<size_t>(steps) + 1;
    for (size_t index = spaced.size() - 1; index >= 1; --index) {
      const int64_t t = spaced[index];
      const double a = static_cast<float>(alphas_cumprod[t]);
      const double a_prev = static_cast<float>(alphas_cumprod[spaced[index - 1]]);
      timesteps_.push_back(static_cast<double>(t));
      alphas_.push_back(static_cast<float>(a));
      alphas_prev_.push_back(static_cast<float>(a_prev));
      // ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5 in float64 but for 1 - a, a float32 tensor, by which a
      // float64 NumPy array is divided as Tensor.__rtruediv__ divides: times its float32 reciprocal.
      const double variance =
          (1.0 - a_prev) * static_cast<double>(1.0f / (1.0f - static_cast<float>(a))) * (1.0 - a / a_prev);
      sigmas_.push_back(static_cast<float>(eta * std::sqrt(variance)));
      sqrt_alphas_.push_back(static_cast<float>(std::sqrt(alphas_cumprod[t])));
      sqrt_one_minus_alphas_.push_back(static_cast<float>(std::sqrt(1.0 - alphas_cumprod[t])));
    }
  }

  // A1111 draws a noise tensor at every call, scaled by 0 without eta; only those eta scales are drawn here.
  bool needs_noise(size_t) const override { return eta_ > 0; }

  // At the noise level of the call before `call` (A1111's img2img noises to timesteps[t_enc] and calls from
  // timesteps[t_enc - 1]); call 0's own for call 0.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    return add_noise_vp(x0, noise, alphas_[call == 0 ? 0 : call - 1]);
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_call(call, next_call_, timesteps_.size());
    if (needs_noise(call)) check_noise(noise, sample);
    const auto eps =
        v_prediction_ ? sqrt_alphas_[call] * model_output + sqrt_one_minus_alphas_[call] * sample : model_output;
    const float a_t = alphas_[call], a_prev = alphas_prev_[call], sigma_t = sigmas_[call];
    const auto x0 = (sample - std::sqrt(1.0f - a_t) * eps) / std::sqrt(a_t);
    auto prev = std::sqrt(a_prev) * x0 + std::sqrt(1.0f - a_prev - sigma_t * sigma_t) * eps;
    if (needs_noise(call)) prev = prev + sigma_t * noise;
    pred_original_sample_ = x0;
    ++next_call_;
    return prev;
  }

 protected:
  // A1111 enters a schedule of `steps` steps at t_enc = its pass's steps - 1 counted from the lowest timestep, and
  // calls from the one below: for start_at(steps - pass steps), start_at(0) included, one call later than the step,
  // and later still where the schedule has more timesteps than steps.
  size_t entry_call(size_t step) const override {
    const size_t call = step + entry_offset_;
    if (call >= timesteps_.size())
      throw Error(ErrorKind::Usage,
                  "ddim_a1111 (A1111's DDIM) makes 2 U-Net calls fewer than a hires pass's steps, "
                  "so this one makes none; give it 3 or more steps");
    return call;
  }

 private:
  bool v_prediction_;
  double eta_;
  size_t entry_offset_ = 1;
  std::vector<float> alphas_, alphas_prev_, sigmas_, sqrt_alphas_, sqrt_one_minus_alphas_;
};

}  // namespace

std::unique_ptr<Scheduler> make_a1111_ddim(const SchedulerConfig& config, int steps, double eta) {
  return std::make_unique<A1111Ddim>(config, steps, eta);
}

}  // namespace txt2img::detail
