// DPM-Solver++(2M) (diffusers DPMSolverMultistepScheduler: algorithm_type "dpmsolver++", solver_order 2,
// solver_type "midpoint", lower_order_final, final_sigmas_type "zero"), on diffusers' default schedule (training
// sigmas at linspace-spaced timesteps: dpmpp_2m) or with use_karras_sigmas (dpmpp_2m_karras).
// The model output is turned into an x0 prediction; the first and the last step are first order, the others
// extrapolate from the last two x0 predictions in log-SNR time.
#include <algorithm>
#include <cmath>

#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img::detail {
namespace {

// diffusers takes log and exp of float32 0-dim tensors; ATen's vectorised kernels round differently from libm, so
// the same kernels are used here.
float tensor_log(float x) { return torch::log(torch::scalar_tensor(x, torch::kFloat32)).item<float>(); }
float tensor_exp(float x) { return torch::exp(torch::scalar_tensor(x, torch::kFloat32)).item<float>(); }

// Log-SNR lambda = log(alpha) - log(sigma) of the VP process with this Karras-space sigma, with alpha and sigma.
struct Vp {
  float alpha, sigma, lambda;
  explicit Vp(float karras_sigma) {
    alpha = 1.0f / std::sqrt(karras_sigma * karras_sigma + 1.0f);
    sigma = karras_sigma * alpha;
    lambda = tensor_log(alpha) - tensor_log(sigma);
  }
};

// NumPy's round (half to even) of _sigma_to_t: the fractional training timestep whose log-sigma this sigma's log
// interpolates linearly. NumPy mixes a float64 scalar into float32 arrays here, so the comparison and the weight
// are float32 computations.
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const auto log_sigma = static_cast<float>(std::log(std::max(sigma, 1e-10)));
  const auto n = static_cast<int64_t>(log_sigmas.size());
  int64_t low = 0;  // the last index whose log-sigma is <= log_sigma (0 when there is none)
  for (int64_t i = 0; i < n; ++i)
    if (log_sigma - log_sigmas[i] >= 0.0f) low = i;
  low = std::min(low, n - 2);
  const float lo = log_sigmas[low], hi = log_sigmas[low + 1];
  const float w = std::clamp((lo - log_sigma) / (lo - hi), 0.0f, 1.0f);
  return std::nearbyint(static_cast<double>(1.0f - w) * low + static_cast<double>(w) * (low + 1));
}

class DpmSolverPP2M final : public Scheduler {
 public:
  DpmSolverPP2M(const SchedulerConfig& config, int steps, bool karras) : prediction_type_(config.prediction_type) {
    const char* name = karras ? "dpmpp_2m_karras" : "dpmpp_2m";
    require_prediction_type(config, name, {"epsilon", "sample", "v_prediction"});
    const std::string spacing = resolve_spacing(config, "linspace");
    const auto train = training_sigmas(alphas_cumprod_values(config));
    if (karras)
      karras_schedule(train, steps);  // the Karras sigmas replace the spaced timesteps: the spacing has no effect
    else if (spacing == "linspace")
      training_schedule(train, config.num_train_timesteps, steps);
    else
      throw Error(ErrorKind::Bundle, "timestep_spacing \"" + spacing + "\" is not supported by the dpmpp_2m scheduler "
                                     "(supported: linspace)");
    sigmas_.push_back(0.0f);
  }

  // The solver's samples are variance-preserving (a whole run starts from noise at init_noise_sigma 1, and the
  // U-Net takes them unscaled): alpha * x0 + sigma * noise, diffusers' DPMSolverMultistepScheduler.add_noise.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    const Vp at(sigmas_[call]);
    return at.alpha * x0 + at.sigma * noise;
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor&) override;

 private:
  // np.linspace(0, num_train_timesteps - 1, steps + 1).round()[::-1][:-1] (lambda_min_clipped = -inf keeps every
  // training timestep), each with its training sigma (np.interp at whole timesteps is the value itself).
  void training_schedule(const std::vector<float>& train, int total, int steps) {
    const double stride = static_cast<double>(total - 1) / steps;
    for (int i = steps; i > 0; --i) {
      const double t = std::nearbyint(i == steps ? total - 1 : i * stride);
      timesteps_.push_back(t);
      sigmas_.push_back(train[static_cast<size_t>(t)]);
    }
  }

  void karras_schedule(const std::vector<float>& train, int steps) {
    std::vector<float> log_sigmas;
    // NumPy's float32 log (SIMD on some CPUs) may differ by an ulp from this; it only moves the rounded
    // timesteps at exact .5 ties.
    for (float s : train) log_sigmas.push_back(static_cast<float>(std::log(static_cast<double>(s))));

    // Karras et al. (2022) schedule, rho = 7, between the smallest and largest training sigma, in float64.
    const double rho = 7.0;
    const double min_inv_rho = std::pow(static_cast<double>(train.front()), 1 / rho);
    const double max_inv_rho = std::pow(static_cast<double>(train.back()), 1 / rho);
    for (int i = 0; i < steps; ++i) {
      const double ramp = i == steps - 1 && steps > 1 ? 1.0 : i * (steps > 1 ? 1.0 / (steps - 1) : 0.0);
      const double sigma = std::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho);
      timesteps_.push_back(sigma_to_t(sigma, log_sigmas));
      sigmas_.push_back(static_cast<float>(sigma));
    }
  }

  std::string prediction_type_;
  std::vector<float> sigmas_;  // one per call, then 0
  torch::Tensor previous_x0_;
};

torch::Tensor DpmSolverPP2M::step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                                  const torch::Tensor&) {
  check_call(call, next_call_, timesteps_.size());
  const Vp s0(sigmas_[call]), t(sigmas_[call + 1]);
  torch::Tensor x0;
  if (prediction_type_ == "epsilon") {
    x0 = (sample - s0.sigma * model_output) / s0.alpha;
  } else if (prediction_type_ == "sample") {
    x0 = model_output;
  } else {  // v_prediction
    x0 = s0.alpha * sample - s0.sigma * model_output;
  }

  const float h = t.lambda - s0.lambda;
  const float coeff = t.alpha * (tensor_exp(-h) - 1.0f);
  auto prev = (t.sigma / s0.sigma) * sample - coeff * x0;
  // Second order needs a previous x0 of this run (none at its first call, also where start_at entered the
  // schedule); the final step (to sigma 0) is always first order.
  if (call > first_call_ && call + 1 < timesteps_.size()) {
    const Vp s1(sigmas_[call - 1]);
    const float r0 = (s0.lambda - s1.lambda) / h;
    const auto d1 = (1.0f / r0) * (x0 - previous_x0_);
    prev = prev - (0.5f * coeff) * d1;
  }
  previous_x0_ = x0;
  pred_original_sample_ = x0;
  ++next_call_;
  return prev;
}

}  // namespace

std::unique_ptr<Scheduler> make_dpmpp_2m(const SchedulerConfig& config, int steps, bool karras) {
  return std::make_unique<DpmSolverPP2M>(config, steps, karras);
}

}  // namespace txt2img::detail
