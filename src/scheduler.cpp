// What every sampler stands on: the training noise schedule (betas, alphas, zero terminal SNR), timestep spacings,
// sigma schedules (Karras, exponential), sigma-timestep conversion, and the two bases SigmaScheduler and
// LogSnrScheduler. Which samplers exist and how one is made by name: sampler_registry.cpp.
#include "txt2img/scheduler.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img {
namespace {

// betas_for_alpha_bar with the cosine transform, in Python float (double) arithmetic.
std::vector<double> cosine_betas(int n) {
  const auto alpha_bar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2.0); };
  std::vector<double> betas;
  for (int i = 0; i < n; ++i) {
    const double t1 = static_cast<double>(i) / n, t2 = static_cast<double>(i + 1) / n;
    betas.push_back(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999));
  }
  return betas;
}

// Lin et al. (2023), Algorithm 1, in diffusers' float32 tensor operations: sqrt(alphas_cumprod) shifted so that the
// last is 0 and scaled so that the first is unchanged, turned back into betas (the last becomes 1).
torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas) {
  auto sqrt_bar = torch::cumprod(1.0 - betas, 0).sqrt();
  const auto first = sqrt_bar[0].clone();
  const auto last = sqrt_bar[-1].clone();
  sqrt_bar -= last;
  sqrt_bar *= first / (first - last);
  const auto bar = sqrt_bar.pow(2);
  const auto alphas = torch::cat({bar.slice(0, 0, 1), bar.slice(0, 1) / bar.slice(0, 0, -1)});
  return 1 - alphas;
}

// Descending timesteps of a spacing as diffusers computes them. "linspace" values are rounded (half to even, as
// NumPy's round) when `whole`, else kept as float32 (the sigma samplers' fractional timesteps).
std::vector<double> spaced_timesteps(const SchedulerConfig& config, const std::string& spacing, int steps,
                                     bool whole) {
  const int total = config.num_train_timesteps;
  std::vector<double> out;
  if (spacing == "linspace") {
    // np.linspace(0, total - 1, steps): i * step for all but the last, which is the end point itself.
    const double step = steps > 1 ? static_cast<double>(total - 1) / (steps - 1) : 0.0;
    for (int i = steps - 1; i >= 0; --i) {
      const double y = i == steps - 1 && steps > 1 ? total - 1 : i * step;
      out.push_back(whole ? std::nearbyint(y) : static_cast<float>(y));
    }
  } else if (spacing == "leading") {
    const int ratio = total / steps;
    for (int i = steps - 1; i >= 0; --i) out.push_back(static_cast<double>(i) * ratio + config.steps_offset);
  } else {  // trailing: np.round(np.arange(total, 0, -total / steps)) - 1, with arange's length and fill rules
    const double delta = -static_cast<double>(total) / steps;
    const auto length = static_cast<int64_t>(std::ceil((0.0 - total) / delta));
    const double start = total, increment = (start + delta) - start;
    for (int64_t i = 0; i < length; ++i) {
      const double value = i == 0 ? start : i == 1 ? start + delta : start + i * increment;
      out.push_back(std::nearbyint(value) - 1);
    }
  }
  if (out.size() != static_cast<size_t>(steps)) {
    std::ostringstream msg;
    msg << "steps=" << steps << " with \"" << spacing << "\" timestep spacing gives " << out.size()
        << " timesteps in diffusers (a rounding artefact); choose another step count";
    throw Error(ErrorKind::Usage, msg.str());
  }
  return out;
}

// DPMSolverMultistepScheduler's and UniPCMultistepScheduler's whole timesteps: their own linspace and leading
// rules (steps + 1 points, the last dropped), the common trailing one.
std::vector<double> log_snr_timesteps(const SchedulerConfig& config, const std::string& spacing, int steps) {
  const int total = config.num_train_timesteps;
  std::vector<double> out;
  if (spacing == "linspace") {
    const double stride = static_cast<double>(total - 1) / steps;
    for (int i = steps; i > 0; --i) out.push_back(std::nearbyint(i == steps ? total - 1 : i * stride));
  } else if (spacing == "leading") {
    const int ratio = total / (steps + 1);
    for (int i = steps; i > 0; --i) out.push_back(static_cast<double>(i) * ratio + config.steps_offset);
  } else {
    out = spaced_timesteps(config, spacing, steps, true);
  }
  return out;
}

// np.interp(x, arange(n), fp) in double, including its treatment of the ends and of exact grid points.
double interp(double x, const std::vector<float>& fp) {
  const auto n = static_cast<int64_t>(fp.size());
  if (x < 0) return fp.front();
  if (x > static_cast<double>(n - 1)) return fp.back();
  const auto j = static_cast<int64_t>(std::floor(x));
  if (j == n - 1 || x == static_cast<double>(j)) return fp[j];
  // The grid spacing is 1, so NumPy's slope is just the difference.
  const double slope = static_cast<double>(fp[j + 1]) - static_cast<double>(fp[j]);
  return slope * (x - static_cast<double>(j)) + static_cast<double>(fp[j]);
}

}  // namespace

torch::Tensor alphas_cumprod(const SchedulerConfig& config) {
  const int n = config.num_train_timesteps;
  if (n < 1) throw Error(ErrorKind::Bundle, "scheduler num_train_timesteps must be positive, got " + std::to_string(n));
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  torch::Tensor betas;
  if (config.beta_schedule == "scaled_linear") {
    // Python's beta ** 0.5 is pow(); the float32 linspace is then squared in float32.
    betas = torch::linspace(std::pow(config.beta_start, 0.5), std::pow(config.beta_end, 0.5), n, f32).pow(2);
  } else if (config.beta_schedule == "linear") {
    betas = torch::linspace(config.beta_start, config.beta_end, n, f32);
  } else if (config.beta_schedule == "squaredcos_cap_v2") {
    auto values = cosine_betas(n);
    betas = torch::from_blob(values.data(), {n}, torch::TensorOptions().dtype(torch::kFloat64)).to(torch::kFloat32);
  } else {
    throw Error(ErrorKind::Bundle, "unsupported scheduler beta_schedule \"" + config.beta_schedule +
                                       "\" (supported: scaled_linear, linear, squaredcos_cap_v2)");
  }
  if (config.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  // cumprod on the CPU accumulates in double and rounds each prefix to float32, as it did for the references.
  return torch::cumprod(1.0 - betas, 0);
}

void Scheduler::start_at(size_t step) {
  if (step > 0) {
    const std::string why = why_it_cannot_start_later();
    if (!why.empty()) throw Error(ErrorKind::Usage, why);
  }
  if (next_call_ != first_call_)
    throw Error(ErrorKind::Runtime, "scheduler start_at(" + std::to_string(step) +
                                        ") after a step: a run's start is "
                                        "set before its first step");
  const size_t call = enter(step);
  if (call >= timesteps_.size())
    throw Error(ErrorKind::Runtime, "scheduler start_at(" + std::to_string(step) + ") is call " + std::to_string(call) +
                                        " but the schedule has " + std::to_string(timesteps_.size()) + " U-Net calls");
  first_call_ = next_call_ = call;
}

namespace detail {

std::vector<float> alphas_cumprod_values(const SchedulerConfig& config) {
  const auto a = alphas_cumprod(config).contiguous();
  return {a.data_ptr<float>(), a.data_ptr<float>() + a.numel()};
}

std::vector<float> sigma_alphas_cumprod_values(const SchedulerConfig& config) {
  auto values = alphas_cumprod_values(config);
  if (config.rescale_betas_zero_snr) values.back() = std::ldexp(1.0f, -24);
  return values;
}

std::string resolve_spacing(const SchedulerConfig& config, const char* class_default) {
  const std::string spacing = config.timestep_spacing.empty() ? class_default : config.timestep_spacing;
  if (spacing != "leading" && spacing != "linspace" && spacing != "trailing")
    throw Error(ErrorKind::Bundle, "unsupported scheduler timestep_spacing \"" + spacing +
                                       "\" (supported: leading, linspace, trailing)");
  return spacing;
}

void require_prediction_type(const SchedulerConfig& config, const std::string& sampler,
                             std::initializer_list<const char*> supported) {
  std::string list;
  for (const char* p : supported) {
    if (config.prediction_type == p) return;
    list += (list.empty() ? "" : ", ") + std::string(p);
  }
  throw Error(ErrorKind::Bundle, "prediction_type \"" + config.prediction_type + "\" is not supported by the " +
                                     sampler + " scheduler (supported: " + list + ")");
}

std::vector<int64_t> discrete_timesteps(const SchedulerConfig& config, const std::string& spacing, int steps) {
  std::vector<int64_t> out;
  for (double t : spaced_timesteps(config, spacing, steps, true)) {
    // DDIM and PNDM index alphas_cumprod with the timestep; diffusers would fail (or wrap around) here.
    if (t < 0 || t >= config.num_train_timesteps) {
      std::ostringstream msg;
      msg << "steps=" << steps << " with \"" << spacing << "\" timestep spacing and steps_offset "
          << config.steps_offset << " gives timestep " << t << ", outside [0, " << config.num_train_timesteps - 1
          << "]; choose fewer steps";
      throw Error(ErrorKind::Usage, msg.str());
    }
    out.push_back(static_cast<int64_t>(t));
  }
  return out;
}

std::vector<float> training_sigmas(const std::vector<float>& alphas_cumprod) {
  std::vector<float> out;
  for (float a : alphas_cumprod) out.push_back(std::sqrt((1.0f - a) / a));
  return out;
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int steps) {
  const double rho = 7.0;
  const double min_inv_rho = std::pow(sigma_min, 1 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> out;
  for (int i = 0; i < steps; ++i) {
    // np.linspace(0, 1, steps): i * (1 / (steps - 1)), the last exactly 1.
    const double ramp = i == steps - 1 && steps > 1 ? 1.0 : i * (steps > 1 ? 1.0 / (steps - 1) : 0.0);
    out.push_back(std::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho));
  }
  return out;
}

std::vector<float> exponential_sigmas(double sigma_min, double sigma_max, int steps) {
  const auto sigmas = torch::linspace(std::log(sigma_max), std::log(sigma_min), steps).exp().contiguous();
  return {sigmas.data_ptr<float>(), sigmas.data_ptr<float>() + sigmas.numel()};
}

std::vector<float> log_sigmas(const std::vector<float>& training_sigmas) {
  std::vector<float> out;
  // NumPy's float32 log (SIMD on some CPUs) may differ by an ulp from this; it only moves the timesteps by a
  // fraction of that ulp's share of one training step.
  for (float s : training_sigmas) out.push_back(static_cast<float>(std::log(static_cast<double>(s))));
  return out;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas, SigmaToT types) {
  // NumPy 1.x (the goldens': 1.24) mixes a float64 scalar into float32 arrays here, so the comparison and the weight
  // are float32; NumPy 2 would compute them in float64.
  const auto log_sigma = static_cast<float>(std::log(std::max(sigma, 1e-10)));
  const auto n = static_cast<int64_t>(log_sigmas.size());
  int64_t low = 0;  // the last index whose log-sigma is <= log_sigma (0 when there is none)
  for (int64_t i = 0; i < n; ++i)
    if (log_sigma - log_sigmas[i] >= 0.0f) low = i;
  low = std::min(low, n - 2);
  const float lo = log_sigmas[low], hi = log_sigmas[low + 1];
  if (types == SigmaToT::kTensorSigma) {
    // The log-sigmas are NumPy float32 scalars here: their difference stays float32, the rest is float64.
    const double w = std::clamp((lo - std::log(std::max(sigma, 1e-10))) / static_cast<double>(lo - hi), 0.0, 1.0);
    return (1 - w) * static_cast<double>(low) + w * static_cast<double>(low + 1);
  }
  const float w = std::clamp((lo - log_sigma) / (lo - hi), 0.0f, 1.0f);
  if (types == SigmaToT::kTensorSigmaTensorLogs)
    return (1.0f - w) * static_cast<float>(low) + w * static_cast<float>(low + 1);
  return static_cast<double>(1.0f - w) * low + static_cast<double>(w) * (low + 1);
}

void check_step(size_t call, size_t next, size_t total, const torch::Tensor& model_output,
                const torch::Tensor& sample) {
  if (call >= total)
    throw Error(ErrorKind::Runtime, "scheduler step " + std::to_string(call) + " requested but the schedule has " +
                                        std::to_string(total) + " U-Net calls");
  if (call != next)
    throw Error(ErrorKind::Runtime, "scheduler steps must be taken in order: expected call " + std::to_string(next) +
                                        ", got " + std::to_string(call));
  const auto described = [](const torch::Tensor& t) {
    if (!t.defined()) return std::string("undefined");
    std::ostringstream text;
    text << t.scalar_type() << " " << t.sizes();
    return text.str();
  };
  if (!model_output.defined() || !sample.defined() || model_output.sizes() != sample.sizes() ||
      model_output.scalar_type() != torch::kFloat32 || sample.scalar_type() != torch::kFloat32)
    throw Error(ErrorKind::Runtime, "scheduler step " + std::to_string(call) +
                                        " takes a float32 model output and sample of one shape, not " +
                                        described(model_output) + " and " + described(sample));
}

void check_add_noise_call(size_t call, size_t total) {
  if (call >= total)
    throw Error(ErrorKind::Runtime, "add_noise for call " + std::to_string(call) + " but the schedule has " +
                                        std::to_string(total) + " U-Net calls");
}

torch::Tensor add_noise_vp(const torch::Tensor& x0, const torch::Tensor& noise, float alpha_cumprod) {
  // diffusers: sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise, float32 square roots.
  return std::sqrt(alpha_cumprod) * x0 + std::sqrt(1.0f - alpha_cumprod) * noise;
}

torch::Tensor vp_predict_x0(const std::string& prediction_type, const torch::Tensor& model_output,
                            const torch::Tensor& sample, float alpha_t) {
  const float beta_t = 1.0f - alpha_t;
  if (prediction_type == "epsilon") return (sample - std::sqrt(beta_t) * model_output) / std::sqrt(alpha_t);
  if (prediction_type == "sample") return model_output;
  return std::sqrt(alpha_t) * sample - std::sqrt(beta_t) * model_output;  // v_prediction
}

torch::Tensor vp_predict_eps(const std::string& prediction_type, const torch::Tensor& model_output,
                             const torch::Tensor& sample, const torch::Tensor& x0, float alpha_t) {
  const float beta_t = 1.0f - alpha_t;
  if (prediction_type == "epsilon") return model_output;
  if (prediction_type == "sample") return (sample - std::sqrt(alpha_t) * x0) / std::sqrt(beta_t);
  return std::sqrt(alpha_t) * model_output + std::sqrt(beta_t) * sample;  // v_prediction
}

void check_noise(const torch::Tensor& noise, const torch::Tensor& sample) {
  if (!noise.defined() || noise.sizes() != sample.sizes())
    throw Error(ErrorKind::Runtime, "this scheduler step needs a standard-normal noise tensor shaped like the sample");
}

SigmaScheduler::SigmaScheduler(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                               bool discard_next_to_last_sigma)
    : prediction_type_(config.prediction_type) {
  if (is_a1111_schedule(schedule)) {
    // A1111 starts from noise * sigmas[0].
    resolve_spacing(config, "linspace");  // checked, though A1111's schedules do not space timesteps
    auto a1111 = a1111_schedule(schedule, config, steps, discard_next_to_last_sigma);
    sigmas_ = std::move(a1111.sigmas);
    timesteps_ = std::move(a1111.timesteps);
    log_sigmas_ = std::move(a1111.log_sigmas);
    init_noise_sigma_ = sigmas_.front();
    return;
  }
  const std::string spacing = resolve_spacing(config, "linspace");
  const auto train = training_sigmas(sigma_alphas_cumprod_values(config));
  log_sigmas_ = log_sigmas(train);
  // A1111 discards by computing the schedule of one step more and dropping its last sigma before 0.
  const int computed = discard_next_to_last_sigma ? steps + 1 : steps;
  timesteps_ = spaced_timesteps(config, spacing, computed, false);
  std::vector<double> sigmas;
  for (double t : timesteps_) sigmas.push_back(interp(t, train));
  if (schedule != SigmaSchedule::kSpaced) {
    // Either schedule runs between the spaced timesteps' extreme sigmas (the training extremes for linspace
    // spacing): Karras sigmas as float64 NumPy values, exponential ones as a float32 tensor.
    if (schedule == SigmaSchedule::kKarras) {
      sigmas = karras_sigmas(sigmas.back(), sigmas.front(), computed);
    } else {
      const auto exponential = exponential_sigmas(sigmas.back(), sigmas.front(), computed);
      sigmas.assign(exponential.begin(), exponential.end());
    }
    const auto types = schedule == SigmaSchedule::kKarras ? SigmaToT::kNumpySigma : SigmaToT::kTensorSigma;
    for (size_t i = 0; i < sigmas.size(); ++i) timesteps_[i] = sigma_to_t(sigmas[i], log_sigmas_, types);
  }
  if (discard_next_to_last_sigma) {
    sigmas.pop_back();
    timesteps_.pop_back();
  }
  for (double s : sigmas) sigmas_.push_back(static_cast<float>(s));
  sigmas_.push_back(0.0f);
  const float max_sigma = *std::max_element(sigmas_.begin(), sigmas_.end());
  // diffusers: the largest sigma for linspace/trailing spacing, sqrt(max^2 + 1) for leading.
  init_noise_sigma_ = spacing == "leading" ? std::sqrt(max_sigma * max_sigma + 1.0f) : max_sigma;
}

torch::Tensor SigmaScheduler::scale_model_input(const torch::Tensor& sample, size_t call) const {
  if (call >= timesteps_.size())
    throw Error(ErrorKind::Runtime, "scale_model_input for call " + std::to_string(call) + " of " +
                                        std::to_string(timesteps_.size()));
  const float sigma = sigmas_[call];
  return sample / std::sqrt(sigma * sigma + 1.0f);
}

torch::Tensor SigmaScheduler::add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const {
  check_add_noise_call(call, timesteps_.size());
  // diffusers' original_samples + noise * sigma; A1111's x + noise * sigma_sched[0].
  return x0 + noise * sigmas_[call];
}

torch::Tensor SigmaScheduler::predict_x0(const torch::Tensor& model_output, const torch::Tensor& sample,
                                         float sigma) const {
  if (prediction_type_ == "epsilon") return sample - sigma * model_output;
  if (prediction_type_ == "v_prediction")
    return model_output * (-sigma / std::sqrt(sigma * sigma + 1.0f)) + sample / (sigma * sigma + 1.0f);
  return model_output;
}

float tensor_log(float x) { return torch::log(torch::scalar_tensor(x, torch::kFloat32)).item<float>(); }
float tensor_exp(float x) { return torch::exp(torch::scalar_tensor(x, torch::kFloat32)).item<float>(); }

Vp::Vp(float karras_sigma) {
  alpha = 1.0f / std::sqrt(karras_sigma * karras_sigma + 1.0f);
  sigma = karras_sigma * alpha;
  lambda = tensor_log(alpha) - tensor_log(sigma);
}

LogSnrScheduler::LogSnrScheduler(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                 const std::string& name)
    : prediction_type_(config.prediction_type) {
  require_prediction_type(config, name, {"epsilon", "sample", "v_prediction"});
  if (is_a1111_schedule(schedule)) {
    resolve_spacing(config, "linspace");  // checked, though A1111's schedules do not space timesteps
    auto a1111 = a1111_schedule(schedule, config, steps);
    sigmas_ = std::move(a1111.sigmas);
    timesteps_ = std::move(a1111.timesteps);
    // A1111 starts from noise * sigmas[0]: in these samplers' variance-preserving space, that noise times alpha.
    init_noise_sigma_ = Vp(sigmas_.front()).sigma;
    return;
  }
  const std::string spacing = resolve_spacing(config, "linspace");
  const auto train = training_sigmas(sigma_alphas_cumprod_values(config));
  if (schedule == SigmaSchedule::kKarras) {
    // The Karras sigmas replace the spaced timesteps: the spacing has no effect. NumPy rounds half to even.
    const auto logs = log_sigmas(train);
    for (double sigma : karras_sigmas(train.front(), train.back(), steps)) {
      timesteps_.push_back(std::nearbyint(sigma_to_t(sigma, logs)));
      sigmas_.push_back(static_cast<float>(sigma));
    }
    // diffusers finds its first step by the timestep and, where that repeats, takes the second, running off the end
    // of the schedule. It happens where Karras sigmas crowd below a zero-terminal-SNR schedule's 4096.
    if (timesteps_.size() > 1 && timesteps_[0] == timesteps_[1])
      throw Error(ErrorKind::Usage, "steps=" + std::to_string(steps) + " repeats the first timestep of the " + name +
                                        " schedule, where diffusers' scheduler fails (Karras sigmas crowd at the "
                                        "top of this model's noise schedule); use fewer steps, or the sampler "
                                        "without _karras");

  } else {
    // The sigmas are np.interp's of the whole timesteps, as diffusers': the training sigmas themselves
    // (DPM-Solver's lambda_min_clipped = -inf keeps every timestep), but for "leading" spacing's timestep 1000
    // (999 steps, steps offset 1), past the schedule, where np.interp takes the last one.
    const int total = config.num_train_timesteps;
    for (double t : log_snr_timesteps(config, spacing, steps)) {
      // Closer than one training step apart, rounding repeats a timestep: a step of zero log-SNR, which the
      // solver divides by (diffusers makes NaNs there).
      if (!timesteps_.empty() && t == timesteps_.back())
        throw Error(ErrorKind::Usage, "steps=" + std::to_string(steps) + " repeats timestep " +
                                          std::to_string(static_cast<int>(t)) + " in the " + name +
                                          " schedule, where the solver would divide by zero; use at most " +
                                          std::to_string(total - 1) + " steps");
      timesteps_.push_back(t);
      sigmas_.push_back(static_cast<float>(interp(t, train)));
    }
  }
  sigmas_.push_back(0.0f);
}

torch::Tensor LogSnrScheduler::add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const {
  check_add_noise_call(call, timesteps_.size());
  const Vp at(sigmas_[call]);
  return at.alpha * x0 + at.sigma * noise;
}

torch::Tensor LogSnrScheduler::predict_x0(const torch::Tensor& model_output, const torch::Tensor& sample,
                                          size_t call) const {
  const Vp at(sigmas_[call]);
  if (prediction_type_ == "epsilon") return (sample - at.sigma * model_output) / at.alpha;
  if (prediction_type_ == "sample") return model_output;
  return at.alpha * sample - at.sigma * model_output;  // v_prediction
}

}  // namespace detail
}  // namespace txt2img
