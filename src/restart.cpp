// AUTOMATIC1111's Restart sampler (restart_sampler in its modules/sd_samplers_extra.py, after Xu et al. 2023,
// "Restart Sampling for Improving Generative Processes"): Heun steps down a schedule that, from 20 steps on, runs
// one stretch of it again. A1111 plans the run from the sigmas it is given: below 20 steps it takes their Heun steps
// as they are; from 20 it takes k-diffusion's Karras sigmas of steps - R * K steps between their ends (the sigma
// before the last and the first), and after the step that ends nearest sigma 0.1 adds noise back up to the sigma
// nearest 2 and takes R Heun steps down again on Karras sigmas, K times (R = 9 and K = 1 below 36 steps, R = steps /
// 4 and K = 2 from 36). Either way N steps make 2N - 1 U-Net calls, as Heun's do. A run entered part-way (A1111's
// img2img and hires pass) is planned the same way from the schedule's rest.
#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img::detail {
namespace {

// k-diffusion's get_sigmas_karras(n, sigma_min, sigma_max) in its float32 tensor arithmetic, with its final 0.
std::vector<float> kdiffusion_karras(int n, float sigma_min, float sigma_max) {
  constexpr double rho = 7.0;
  const double min_inv_rho = std::pow(static_cast<double>(sigma_min), 1 / rho);
  const double max_inv_rho = std::pow(static_cast<double>(sigma_max), 1 / rho);
  const auto sigmas = (torch::linspace(0, 1, n, torch::kFloat32) * (min_inv_rho - max_inv_rho) + max_inv_rho).pow(rho);
  std::vector<float> out(sigmas.data_ptr<float>(), sigmas.data_ptr<float>() + n);
  out.push_back(0.0f);
  return out;
}

// The index of the sigma nearest `target`, the first of equals, as torch.argmin(abs(sigmas - target)) finds it.
int64_t nearest(const std::vector<float>& sigmas, double target) {
  return (torch::tensor(sigmas, torch::kFloat32) - target).abs().argmin(0).item<int64_t>();
}

float f32_sqrt_of_difference_of_squares(float a, float b) {
  const auto s = [](float v) { return torch::scalar_tensor(v, torch::kFloat32); };
  return (s(a).pow(2) - s(b).pow(2)).pow(0.5).item<float>();
}

class Restart final : public KDiffusionScheduler {
 public:
  Restart(const SchedulerConfig& config, int steps, SigmaSchedule schedule)
      : KDiffusionScheduler(config, steps, schedule, "restart"), schedule_(sigmas_) {
    plan(0);
  }

  // A1111 starts from noise times the schedule's first sigma, which its plan may round otherwise.
  double init_noise_sigma() const override { return entry_sigma_; }
  bool needs_noise(size_t call) const override { return call < calls_.size() && calls_[call].noise_after > 0.0f; }

  // As A1111 noises a run it enters part-way: to the schedule's sigma there (sigma_sched[0]), not its plan's.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    return x0 + noise * (call == 0 ? entry_sigma_ : sigmas_[call]);
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    const Call& c = calls_[call];
    if (c.noise_after > 0.0f) check_noise(noise, sample);
    pred_original_sample_ = denoised(model_output, sample, sigmas_[call]);
    const auto derivative = (sample - pred_original_sample_) / sigmas_[call];
    torch::Tensor prev;
    if (c.role == Role::kCorrector) {
      prev = pair_start_ + (pair_derivative_ + derivative) / 2 * c.dt;
      pair_start_ = pair_derivative_ = torch::Tensor();
    } else {
      prev = sample + derivative * c.dt;
      if (c.role == Role::kPredictor) {
        pair_start_ = sample;
        pair_derivative_ = derivative;
      }
    }
    // k-diffusion's s_noise, 1, changes nothing.
    if (c.noise_after > 0.0f) prev = prev + noise * c.noise_after;
    ++next_call_;
    return prev;
  }

 private:
  // A Heun pair's predictor call (an Euler step to the pair's end), its corrector there, or a lone Euler call to 0.
  enum class Role { kPredictor, kCorrector, kEuler };
  struct Call {
    Role role;
    float dt;           // the pair's step in sigma: its end minus its start
    float noise_after;  // the scale of noise added after the call, where the next pair starts higher; else 0
  };

  size_t first_call_of_step(size_t step) const override { return 2 * step; }

  size_t enter(size_t step) override {
    if (step + 1 >= schedule_.size()) return timesteps_.size();  // past the schedule: start_at refuses it
    plan(step);
    return 0;
  }

  // restart_sampler's step list for the schedule from its sigma `from` on, as U-Net calls.
  void plan(size_t from) {
    std::vector<float> sigmas(schedule_.begin() + static_cast<std::ptrdiff_t>(from), schedule_.end());
    entry_sigma_ = sigmas.front();
    const int steps = static_cast<int>(sigmas.size()) - 1;
    std::vector<std::pair<float, float>> pairs;
    if (steps < 20) {
      for (size_t i = 0; i + 1 < sigmas.size(); ++i) pairs.emplace_back(sigmas[i], sigmas[i + 1]);
    } else {
      const int restart_steps = steps >= 36 ? steps / 4 : 9;
      const int restarts = steps >= 36 ? 2 : 1;
      sigmas = kdiffusion_karras(steps - restart_steps * restarts, sigmas[sigmas.size() - 2], sigmas.front());
      const auto low = static_cast<size_t>(nearest(sigmas, 0.1));
      const auto high = static_cast<size_t>(nearest(sigmas, 2.0));
      for (size_t i = 0; i + 1 < sigmas.size(); ++i) {
        pairs.emplace_back(sigmas[i], sigmas[i + 1]);
        if (i + 1 != low || high >= low) continue;
        auto again = kdiffusion_karras(restart_steps + 1, sigmas[low], sigmas[high]);
        again.pop_back();
        for (int k = 0; k < restarts; ++k)
          for (size_t j = 0; j + 1 < again.size(); ++j) pairs.emplace_back(again[j], again[j + 1]);
      }
    }
    calls_.clear();
    sigmas_.clear();
    timesteps_.clear();
    const auto add_call = [&](Role role, float sigma, float dt) {
      calls_.push_back({role, dt, 0.0f});
      sigmas_.push_back(sigma);
      timesteps_.push_back(sigma_to_t(sigma, log_sigmas_, SigmaToT::kTensorSigmaTensorLogs));
    };
    for (size_t p = 0; p < pairs.size(); ++p) {
      const auto [start, end] = pairs[p];
      if (p > 0 && pairs[p - 1].second < start)
        calls_.back().noise_after = f32_sqrt_of_difference_of_squares(start, pairs[p - 1].second);
      const float dt = end - start;
      add_call(end == 0.0f ? Role::kEuler : Role::kPredictor, start, dt);
      if (end != 0.0f) add_call(Role::kCorrector, end, dt);
    }
    sigmas_.push_back(pairs.back().second);
  }

  std::vector<float> schedule_;  // the sigmas A1111 hands the sampler, ending in 0 (KL Optimal's above it)
  float entry_sigma_ = 0.0f;     // the schedule's sigma where the run starts
  std::vector<Call> calls_;
  torch::Tensor pair_start_, pair_derivative_;  // the predictor call's sample and derivative, until its corrector
};

}  // namespace

std::unique_ptr<Scheduler> make_restart(const SchedulerConfig& config, int steps, SigmaSchedule schedule) {
  return std::make_unique<Restart>(config, steps, schedule);
}

}  // namespace txt2img::detail
