// AUTOMATIC1111's schedule types that diffusers has no scheduler option for (its modules/sd_schedulers.py): sigma
// schedules between the ends of the training sigmas, on k-diffusion's discrete schedule of those sigmas (A1111's
// CompVisDenoiser). The arithmetic is A1111's on the CPU: float32 tensors, element by element where it loops over
// 0-dim tensors (ATen's vectorised log and exp can round otherwise than its scalar ones), NumPy's float64 for
// Align Your Steps' interpolation, and for Beta SciPy's beta.ppf, which is Boost.Math's ibeta_inv in double.
#include <algorithm>
#include <boost/math/special_functions/beta.hpp>
#include <cmath>

#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img::detail {

std::vector<float> training_sigmas_of_a1111(const SchedulerConfig& config) {
  std::vector<float> sigmas;
  for (const double alpha_cumprod : a1111_alphas_cumprod(config)) {
    const auto a = static_cast<float>(alpha_cumprod);
    sigmas.push_back(std::sqrt((1.0f - a) / a));
  }
  return sigmas;
}

namespace {

// A1111's sgm_uniform (the last of steps + 1 evenly spaced timesteps dropped) and normal_scheduler (steps of them,
// from the highest timestep to the lowest).
std::vector<float> sigmas_at_even_timesteps(const DiscreteSchedule& schedule, int steps, bool sgm) {
  const auto start = schedule.sigma_to_t(torch::scalar_tensor(schedule.sigma_max(), torch::kFloat32));
  const auto end = schedule.sigma_to_t(torch::scalar_tensor(schedule.sigma_min(), torch::kFloat32));
  auto timesteps = torch::linspace(start.item<double>(), end.item<double>(), sgm ? steps + 1 : steps, torch::kFloat32);
  if (sgm) timesteps = timesteps.slice(0, 0, steps);
  std::vector<float> out;
  for (int64_t i = 0; i < timesteps.size(0); ++i) out.push_back(schedule.t_to_sigma(timesteps[i]).item<float>());
  return out;
}

// NVIDIA's Align Your Steps schedule for SD 1.5 (its 10-step sigmas), as A1111 lists it.
constexpr double kAlignYourSteps[] = {14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029};

// np.linspace(0, 1, n) at i.
double unit_linspace(int64_t i, int64_t n) {
  if (n == 1) return 0.0;
  return i == n - 1 ? 1.0 : static_cast<double>(i) * (1.0 / static_cast<double>(n - 1));
}

// A1111's loglinear_interp: `steps` sigmas log-linearly interpolated along the listed ones, in float64.
std::vector<float> align_your_steps(int steps) {
  const auto listed = static_cast<int64_t>(std::size(kAlignYourSteps));
  if (steps == listed) return {std::begin(kAlignYourSteps), std::end(kAlignYourSteps)};
  // ys = log of the sigmas in ascending order over xs = linspace(0, 1, 11); np.interp at linspace(0, 1, steps),
  // then reversed.
  std::vector<double> xs, ys;
  for (int64_t i = 0; i < listed; ++i) {
    xs.push_back(unit_linspace(i, listed));
    ys.push_back(std::log(kAlignYourSteps[listed - 1 - i]));
  }
  std::vector<float> out(static_cast<size_t>(steps));
  for (int64_t i = 0; i < steps; ++i) {
    const double x = unit_linspace(i, steps);
    int64_t j = 0;
    while (j + 2 < listed && x >= xs[j + 1]) ++j;
    double y;
    if (x >= xs[listed - 1]) {
      y = ys[listed - 1];
    } else if (x == xs[j]) {
      y = ys[j];
    } else {
      const double slope = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]);
      y = slope * (x - xs[j]) + ys[j];
    }
    out[static_cast<size_t>(steps - 1 - i)] = static_cast<float>(std::exp(y));
  }
  return out;
}

// A1111's beta_scheduler with its default shape (kBetaScheduleShape): for t in 1 - np.linspace(0, 1, steps),
// sigma_min + beta.ppf(t, alpha, beta) * (sigma_max - sigma_min) in float64, stored in float32. SciPy's ppf is Boost's
// ibeta_inv under its policy (no promotion to long double, at most 400 root iterations), 0 and 1 at the ends.
std::vector<float> beta_sigmas(const DiscreteSchedule& schedule, int steps) {
  using Policy = boost::math::policies::policy<boost::math::policies::promote_float<false>,
                                               boost::math::policies::promote_double<false>,
                                               boost::math::policies::max_root_iterations<400>>;
  const double sigma_min = schedule.sigma_min(), sigma_max = schedule.sigma_max();
  std::vector<float> out;
  for (int64_t i = 0; i < steps; ++i) {
    const double t = 1.0 - unit_linspace(i, steps);
    const double ppf = t <= 0.0   ? 0.0
                       : t >= 1.0 ? 1.0
                                  : boost::math::ibeta_inv(kBetaScheduleShape, kBetaScheduleShape, t, Policy());
    out.push_back(static_cast<float>(sigma_min + ppf * (sigma_max - sigma_min)));
  }
  return out;
}

// A1111's kl_optimal: steps + 1 sigmas from the largest training sigma to the smallest, evenly spaced in arctan sigma
// (float32 tensors: the step indices over steps, arctan of each end, tan of their blend). No 0 ends it.
std::vector<float> kl_optimal_sigmas(const DiscreteSchedule& schedule, int steps) {
  const auto alpha_min = torch::scalar_tensor(schedule.sigma_min(), torch::kFloat32).arctan();
  const auto alpha_max = torch::scalar_tensor(schedule.sigma_max(), torch::kFloat32).arctan();
  const auto fraction = torch::arange(steps + 1, torch::kLong) / steps;
  const auto values = torch::tan(fraction * alpha_min + (1.0 - fraction) * alpha_max).contiguous();
  return {values.data_ptr<float>(), values.data_ptr<float>() + values.numel()};
}

// A1111's sigmas of `steps` steps (DDIM's: of about as many) then 0; KL Optimal's end at the smallest training sigma.
std::vector<float> a1111_sigmas(SigmaSchedule kind, const DiscreteSchedule& schedule, int steps) {
  if (kind == SigmaSchedule::kKlOptimal) return kl_optimal_sigmas(schedule, steps);
  std::vector<float> sigmas;
  switch (kind) {
    case SigmaSchedule::kUniform: {
      // k-diffusion's DiscreteSchedule.get_sigmas, A1111's schedule where a sampler names none of its own: evenly
      // spaced timesteps from the highest to 0, their sigmas computed together.
      const auto timesteps = torch::linspace(static_cast<double>(schedule.size() - 1), 0, steps, torch::kFloat32);
      const auto values = schedule.t_to_sigma(timesteps).contiguous();
      sigmas.assign(values.data_ptr<float>(), values.data_ptr<float>() + steps);
      break;
    }
    case SigmaSchedule::kSgmUniform:
      sigmas = sigmas_at_even_timesteps(schedule, steps, true);
      break;
    case SigmaSchedule::kNormal:
      sigmas = sigmas_at_even_timesteps(schedule, steps, false);
      break;
    case SigmaSchedule::kAlignYourSteps:
      sigmas = align_your_steps(steps);
      break;
    case SigmaSchedule::kSimple: {
      // Every (1000 / steps)-th training sigma from the top, the index truncated from a Python float.
      const double stride = static_cast<double>(schedule.size()) / steps;
      for (int x = 0; x < steps; ++x)
        sigmas.push_back(schedule.sigma(schedule.size() - 1 - static_cast<int64_t>(x * stride)));
      break;
    }
    case SigmaSchedule::kPolyexponential: {
      // k-diffusion's get_sigmas_polyexponential with A1111's default rho 1 (ramp ** 1 is the ramp).
      const double log_min = std::log(static_cast<double>(schedule.sigma_min()));
      const double log_max = std::log(static_cast<double>(schedule.sigma_max()));
      const auto ramp = torch::linspace(1, 0, steps, torch::kFloat32);
      const auto values = torch::exp(ramp * (log_max - log_min) + log_min).contiguous();
      sigmas.assign(values.data_ptr<float>(), values.data_ptr<float>() + steps);
      break;
    }
    case SigmaSchedule::kBeta:
      sigmas = beta_sigmas(schedule, steps);
      break;
    case SigmaSchedule::kDdim: {
      // Every (1000 // steps)-th training sigma from timestep 1 up, highest first: as many as fit, so more steps than
      // asked for where the stride does not divide 999 (30 steps make 31).
      const int64_t stride = std::max<int64_t>(schedule.size() / steps, 1);
      for (int64_t t = 1; t < schedule.size(); t += stride) sigmas.push_back(schedule.sigma(t));
      std::reverse(sigmas.begin(), sigmas.end());
      break;
    }
    default:
      throw Error(ErrorKind::Runtime, "a1111_sigmas: not one of A1111's own schedules");
  }
  sigmas.push_back(0.0f);
  return sigmas;
}

}  // namespace

std::vector<double> a1111_alphas_cumprod(const SchedulerConfig& config) {
  const int n = config.num_train_timesteps;
  torch::Tensor betas;
  if (config.beta_schedule == "scaled_linear")
    betas =
        torch::linspace(std::pow(config.beta_start, 0.5), std::pow(config.beta_end, 0.5), n, torch::kFloat64).pow(2);
  else if (config.beta_schedule == "linear")
    betas = torch::linspace(config.beta_start, config.beta_end, n, torch::kFloat64);
  else
    throw Error(ErrorKind::Bundle,
                "A1111's schedules run on the scaled_linear or linear beta schedule of SD models; "
                "this model's is \"" +
                    config.beta_schedule + "\" (use a sampler without one)");
  const auto b = betas.contiguous();
  std::vector<double> out;
  double alpha_cumprod = 1.0;  // np.cumprod: a running product, in order
  for (int t = 0; t < n; ++t) {
    alpha_cumprod *= 1.0 - b.data_ptr<double>()[t];
    out.push_back(alpha_cumprod);
  }
  return out;
}

A1111Schedule a1111_schedule(SigmaSchedule kind, const SchedulerConfig& config, int steps, bool discard_next_to_last) {
  const DiscreteSchedule schedule(training_sigmas_of_a1111(config));
  A1111Schedule out;
  out.sigmas = a1111_sigmas(kind, schedule, discard_next_to_last ? steps + 1 : steps);
  if (discard_next_to_last) out.sigmas.erase(out.sigmas.end() - 2);
  // k-diffusion's CompVisDenoiser takes each call's timestep from its sigma, a float32 tensor of the batch's rows.
  for (size_t i = 0; i + 1 < out.sigmas.size(); ++i)
    out.timesteps.push_back(schedule.sigma_to_t(torch::scalar_tensor(out.sigmas[i], torch::kFloat32)).item<float>());
  out.log_sigmas = schedule.log_sigmas();
  return out;
}

}  // namespace txt2img::detail
