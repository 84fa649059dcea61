// DPM-Solver++(2M) (diffusers DPMSolverMultistepScheduler: algorithm_type "dpmsolver++", solver_order 2,
// solver_type "midpoint", lower_order_final, final_sigmas_type "zero"), on diffusers' default schedule (training
// sigmas at linspace-spaced timesteps: dpmpp_2m) or with use_karras_sigmas (dpmpp_2m_karras); and its SDE variant
// (algorithm_type "sde-dpmsolver++": dpmpp_2m_sde, dpmpp_2m_sde_karras), which at every step keeps only exp(-h) of
// the sample's share, doubles the x0 terms' weight and adds fresh noise to make up the variance.
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

class DpmSolverPP2M final : public Scheduler {
 public:
  DpmSolverPP2M(const SchedulerConfig& config, int steps, bool karras, bool sde)
      : prediction_type_(config.prediction_type), sde_(sde) {
    const std::string name = std::string(sde ? "dpmpp_2m_sde" : "dpmpp_2m") + (karras ? "_karras" : "");
    require_prediction_type(config, name.c_str(), {"epsilon", "sample", "v_prediction"});
    const std::string spacing = resolve_spacing(config, "linspace");
    const auto train = training_sigmas(alphas_cumprod_values(config));
    if (karras)
      karras_schedule(train, steps);  // the Karras sigmas replace the spaced timesteps: the spacing has no effect
    else if (spacing == "linspace")
      training_schedule(train, config.num_train_timesteps, steps);
    else
      throw Error(ErrorKind::Bundle, "timestep_spacing \"" + spacing + "\" is not supported by the " + name +
                                         " scheduler (supported: linspace)");
    sigmas_.push_back(0.0f);
  }

  // The solver's samples are variance-preserving (a whole run starts from noise at init_noise_sigma 1, and the
  // U-Net takes them unscaled): alpha * x0 + sigma * noise, diffusers' DPMSolverMultistepScheduler.add_noise.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    const Vp at(sigmas_[call]);
    return at.alpha * x0 + at.sigma * noise;
  }

  // diffusers draws the SDE's noise at every step, the last (whose noise has weight 0) included.
  bool needs_noise(size_t) const override { return sde_; }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override;

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

  // The Karras sigmas between the smallest and the largest training sigma, each at its training timestep rounded
  // as NumPy rounds (half to even).
  void karras_schedule(const std::vector<float>& train, int steps) {
    const auto logs = log_sigmas(train);
    for (double sigma : karras_sigmas(train.front(), train.back(), steps)) {
      timesteps_.push_back(std::nearbyint(sigma_to_t(sigma, logs)));
      sigmas_.push_back(static_cast<float>(sigma));
    }
  }

  std::string prediction_type_;
  bool sde_;
  std::vector<float> sigmas_;  // one per call, then 0
  torch::Tensor previous_x0_;
};

torch::Tensor DpmSolverPP2M::step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                                  const torch::Tensor& noise) {
  check_call(call, next_call_, timesteps_.size());
  if (sde_) check_noise(noise, sample);
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
  // Second order needs a previous x0 of this run (none at its first call, also where start_at entered the
  // schedule); the final step (to sigma 0) is always first order.
  const bool second_order = call > first_call_ && call + 1 < timesteps_.size();
  torch::Tensor d1;
  if (second_order) {
    const Vp s1(sigmas_[call - 1]);
    const float r0 = (s0.lambda - s1.lambda) / h;
    d1 = (1.0f / r0) * (x0 - previous_x0_);
  }
  torch::Tensor prev;
  if (!sde_) {
    const float coeff = t.alpha * (tensor_exp(-h) - 1.0f);
    prev = (t.sigma / s0.sigma) * sample - coeff * x0;
    if (second_order) prev = prev - (0.5f * coeff) * d1;
  } else {
    const float decay = tensor_exp(-2.0f * h);
    const float coeff = t.alpha * (1.0f - decay);
    prev = (t.sigma / s0.sigma * tensor_exp(-h)) * sample + coeff * x0;
    if (second_order) prev = prev + (0.5f * coeff) * d1;
    prev = prev + (t.sigma * std::sqrt(1.0f - decay)) * noise;
  }
  previous_x0_ = x0;
  pred_original_sample_ = x0;
  ++next_call_;
  return prev;
}

}  // namespace

std::unique_ptr<Scheduler> make_dpmpp_2m(const SchedulerConfig& config, int steps, bool karras, bool sde) {
  return std::make_unique<DpmSolverPP2M>(config, steps, karras, sde);
}

}  // namespace txt2img::detail
