// AUTOMATIC1111's samplers on timesteps (1.6 and later, modules/sd_samplers_timesteps_impl.py): its DDIM and PLMS,
// which take other steps than diffusers' DDIMScheduler and PNDMScheduler:
// - their timesteps are range(0, 1000, 1000 // steps) + 1, the last clipped to 999 (more than `steps` where they do
//   not divide 1000: 62 for 60 steps), and each step goes to the timestep below it, so a run takes one step fewer
//   than there are timesteps and ends at timestep 1's noise level, where diffusers' steps on to alphas_cumprod[0];
// - the alphas are those A1111's model holds (a1111_alphas_cumprod);
// - a v-prediction model's output becomes eps before the step, from the model's float64 square roots.
// DDIM computes eta's variance in float64, and enters a schedule part-way (A1111's hires fix and img2img) with the
// sample noised to one timestep above its first call's, so a pass of N steps makes N - 2 calls. PLMS makes two calls
// in its first step (a pseudo improved Euler step), then one a step as a linear multistep method of up to 4th order.
#include <algorithm>
#include <cmath>
#include <deque>

#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img::detail {
namespace {

// One step of A1111's timestep samplers, from timestep `t` to `t_prev` (the spaced timesteps, highest first).
struct A1111Step {
  int64_t t, t_prev;
  float alpha, alpha_prev;  // alphas_cumprod at t and t_prev, float32 as the model holds them
  // The model's float64 square roots of alphas_cumprod and 1 - alphas_cumprod at t and at t_prev, stored in float32.
  float sqrt_alpha, sqrt_one_minus_alpha, sqrt_alpha_prev, sqrt_one_minus_alpha_prev;
};

// The steps for `steps` requested ones: one fewer than the timesteps they step between, which may be more than
// `steps`. `name`: the sampler's, for errors.
std::vector<A1111Step> a1111_steps(const SchedulerConfig& config, int steps, const std::string& name) {
  require_prediction_type(config, name, {"epsilon", "v_prediction"});
  if (config.num_train_timesteps != 1000)
    throw Error(ErrorKind::Bundle, name + " (A1111's) spaces 1000 training timesteps; this model has " +
                                       std::to_string(config.num_train_timesteps));
  const auto alphas_cumprod = a1111_alphas_cumprod(config);
  std::vector<int64_t> spaced;
  for (int t = 0; t < 1000; t += 1000 / steps) spaced.push_back(std::min(t + 1, 999));
  if (spaced.size() < 2)
    throw Error(ErrorKind::Usage, name + " (A1111's) takes one step fewer than it has timesteps, so " +
                                      std::to_string(steps) + " step makes none; use 2 or more steps");
  std::vector<A1111Step> out;
  const auto root = [&](int64_t t) { return static_cast<float>(std::sqrt(alphas_cumprod[t])); };
  const auto root_of_rest = [&](int64_t t) { return static_cast<float>(std::sqrt(1.0 - alphas_cumprod[t])); };
  for (size_t index = spaced.size() - 1; index >= 1; --index) {
    const int64_t t = spaced[index], t_prev = spaced[index - 1];
    const auto alpha = static_cast<float>(alphas_cumprod[t]);
    const auto alpha_prev = static_cast<float>(alphas_cumprod[t_prev]);
    out.push_back({t, t_prev, alpha, alpha_prev, root(t), root_of_rest(t), root(t_prev), root_of_rest(t_prev)});
  }
  return out;
}

// At a step's start.
torch::Tensor eps_of(const torch::Tensor& model_output, const torch::Tensor& sample, const A1111Step& s,
                     bool v_prediction) {
  return a1111_eps_of(model_output, sample, s.sqrt_alpha, s.sqrt_one_minus_alpha, v_prediction);
}

// x0 = (x - sqrt(1 - a) * eps) / sqrt(a), in float32 as A1111's samplers compute it.
torch::Tensor predicted_x0(const torch::Tensor& sample, const torch::Tensor& eps, const A1111Step& s) {
  return (sample - std::sqrt(1.0f - s.alpha) * eps) / std::sqrt(s.alpha);
}

class A1111Ddim final : public Scheduler {
 public:
  A1111Ddim(const SchedulerConfig& config, int steps, double eta)
      : v_prediction_(config.prediction_type == "v_prediction"), eta_(eta) {
    steps_ = a1111_steps(config, steps, "ddim_a1111");
    // How many more timesteps (steps_.size() + 1) there are than requested steps, and one more: A1111 enters a call
    // late (enter).
    entry_offset_ = steps_.size() + 1 - static_cast<size_t>(steps) + 1;
    for (const auto& s : steps_) {
      timesteps_.push_back(static_cast<double>(s.t));
      // ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5 in float64 but for 1 - a, a float32 tensor, by which a
      // float64 NumPy array is divided as Tensor.__rtruediv__ divides: times its float32 reciprocal.
      const double a = s.alpha, a_prev = s.alpha_prev;
      const double variance = (1.0 - a_prev) * static_cast<double>(1.0f / (1.0f - s.alpha)) * (1.0 - a / a_prev);
      sigmas_.push_back(static_cast<float>(eta * std::sqrt(variance)));
    }
  }

  // A1111 draws a noise tensor at every call, scaled by 0 without eta; only those eta scales are drawn here.
  bool needs_noise(size_t) const override { return eta_ > 0; }

  // At the noise level of the call before `call` (A1111's img2img noises to timesteps[t_enc] and calls from
  // timesteps[t_enc - 1]); call 0's own for call 0.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    return add_noise_vp(x0, noise, steps_[call == 0 ? 0 : call - 1].alpha);
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    if (needs_noise(call)) check_noise(noise, sample);
    const A1111Step& s = steps_[call];
    const auto eps = eps_of(model_output, sample, s, v_prediction_);
    const float sigma_t = sigmas_[call];
    const auto x0 = predicted_x0(sample, eps, s);
    auto prev = std::sqrt(s.alpha_prev) * x0 + std::sqrt(1.0f - s.alpha_prev - sigma_t * sigma_t) * eps;
    if (needs_noise(call)) prev = prev + sigma_t * noise;
    pred_original_sample_ = x0;
    ++next_call_;
    return prev;
  }

 protected:
  // A1111 enters a schedule of `steps` steps at t_enc = its pass's steps - 1 counted from the lowest timestep, and
  // calls from the one below: for start_at(steps - pass steps), start_at(0) included, one call later than the step,
  // and later still where the schedule has more timesteps than steps.
  size_t enter(size_t step) override {
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
  std::vector<A1111Step> steps_;
  std::vector<float> sigmas_;
};

// A1111's PLMS: call 0 takes an Euler step to the next timestep, call 1 predicts there, and the first step is taken
// again from call 0's sample with the two predictions' mean; each later call takes one step with the Adams-Bashforth
// combination of its prediction and up to the three before it (the first step's is call 0's).
class A1111Plms final : public Scheduler {
 public:
  A1111Plms(const SchedulerConfig& config, int steps) : v_prediction_(config.prediction_type == "v_prediction") {
    steps_ = a1111_steps(config, steps, "plms_a1111");
    // Call 0 at the first step's start, call 1 at its end, then one call at each later step's start.
    timesteps_.push_back(static_cast<double>(steps_[0].t));
    call_alphas_.push_back(steps_[0].alpha);
    timesteps_.push_back(static_cast<double>(steps_[0].t_prev));
    call_alphas_.push_back(steps_[0].alpha_prev);
    for (size_t i = 1; i < steps_.size(); ++i) {
      timesteps_.push_back(static_cast<double>(steps_[i].t));
      call_alphas_.push_back(steps_[i].alpha);
    }
  }

  std::string why_it_cannot_start_later() const override {
    return "the plms_a1111 scheduler cannot start part-way through its schedule: its linear multistep steps "
           "extrapolate from the model outputs of the steps before, which its first step, of two U-Net calls, begins "
           "(A1111 offers no PLMS for img2img); " +
           samplers_that_start_late() + " can start part-way";
  }

  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    return add_noise_vp(x0, noise, call_alphas_[call]);
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor&) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    ++next_call_;
    if (call == 0) {
      first_sample_ = sample;
      first_eps_ = eps_of(model_output, sample, steps_[0], v_prediction_);
      return step_with(first_eps_, steps_[0], sample);
    }
    if (call == 1) {
      // The prediction at the first step's end, for the sample there (v converted with that timestep's roots).
      const auto& s = steps_[0];
      const auto eps_next =
          a1111_eps_of(model_output, sample, s.sqrt_alpha_prev, s.sqrt_one_minus_alpha_prev, v_prediction_);
      const auto prev = step_with((first_eps_ + eps_next) / 2, s, first_sample_);
      old_eps_.push_back(first_eps_);
      first_sample_ = first_eps_ = torch::Tensor();
      return prev;
    }
    const A1111Step& s = steps_[call - 1];
    const auto eps = eps_of(model_output, sample, s, v_prediction_);
    torch::Tensor combined;
    const auto n = old_eps_.size();
    if (n == 1)
      combined = (3 * eps - old_eps_[0]) / 2;
    else if (n == 2)
      combined = (23 * eps - 16 * old_eps_[1] + 5 * old_eps_[0]) / 12;
    else
      combined = (55 * eps - 59 * old_eps_[2] + 37 * old_eps_[1] - 9 * old_eps_[0]) / 24;
    const auto prev = step_with(combined, s, sample);
    old_eps_.push_back(eps);
    if (old_eps_.size() > 3) old_eps_.pop_front();
    return prev;
  }

 private:
  // get_x_prev_and_pred_x0: the deterministic step from `sample` at s.t to s's previous timestep with `eps`.
  torch::Tensor step_with(const torch::Tensor& eps, const A1111Step& s, const torch::Tensor& sample) {
    pred_original_sample_ = predicted_x0(sample, eps, s);
    return std::sqrt(s.alpha_prev) * pred_original_sample_ + std::sqrt(1.0f - s.alpha_prev) * eps;
  }

  bool v_prediction_;
  std::vector<A1111Step> steps_;
  std::vector<float> call_alphas_;          // alphas_cumprod at each call's timestep
  torch::Tensor first_sample_, first_eps_;  // call 0's, until call 1 takes the first step again
  std::deque<torch::Tensor> old_eps_;       // the last three steps' predictions, oldest first
};

}  // namespace

torch::Tensor a1111_eps_of(const torch::Tensor& model_output, const torch::Tensor& sample, float sqrt_alpha,
                           float sqrt_one_minus_alpha, bool v_prediction) {
  return v_prediction ? sqrt_alpha * model_output + sqrt_one_minus_alpha * sample : model_output;
}

std::unique_ptr<Scheduler> make_a1111_ddim(const SchedulerConfig& config, int steps, double eta) {
  return std::make_unique<A1111Ddim>(config, steps, eta);
}

std::unique_ptr<Scheduler> make_a1111_plms(const SchedulerConfig& config, int steps) {
  return std::make_unique<A1111Plms>(config, steps);
}

}  // namespace txt2img::detail
