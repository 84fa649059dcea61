// Pieces the samplers share. Coefficients are computed on the host in float (or double where diffusers uses NumPy
// float64) with the same operation order as diffusers' float32 0-dim tensor arithmetic, so that the tensor updates
// see bit-identical scalars; the tensor updates themselves use the same ATen ops in the same order.
#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "txt2img/scheduler.hpp"

namespace txt2img::detail {

// One factory per sampler, each in its own source file. `steps` is already validated against the config.
std::unique_ptr<Scheduler> make_ddim(const SchedulerConfig& config, int steps, double eta);
// AUTOMATIC1111's DDIM (its timesteps, alphas and img2img entry) and PLMS (see a1111_timesteps.cpp).
std::unique_ptr<Scheduler> make_a1111_ddim(const SchedulerConfig& config, int steps, double eta);
std::unique_ptr<Scheduler> make_a1111_plms(const SchedulerConfig& config, int steps);
// The eps A1111's timestep samplers take from a model output for the sample it was given, at a timestep whose model
// roots (float64 square roots of alphas_cumprod and 1 - alphas_cumprod, stored in float32) are these: the output
// itself, or for v-prediction CompVisTimestepsVDenoiser's sqrt_alpha * v + sqrt_one_minus_alpha * sample.
torch::Tensor a1111_eps_of(const torch::Tensor& model_output, const torch::Tensor& sample, float sqrt_alpha,
                           float sqrt_one_minus_alpha, bool v_prediction);
// The training sigmas ((1 - a) / a) ** 0.5 in float32 of the alphas_cumprod A1111's model holds (k-diffusion's
// CompVisDenoiser's).
std::vector<float> training_sigmas_of_a1111(const SchedulerConfig& config);
// AUTOMATIC1111's LCM (its k-diffusion sampler over its own LCM denoiser: see a1111_lcm.cpp).
std::unique_ptr<Scheduler> make_a1111_lcm(const SchedulerConfig& config, int steps);
// AUTOMATIC1111's DPM fast (k-diffusion's sample_dpm_fast over the model's sigmas: see a1111_dpm_fast.cpp) at
// k-diffusion's `eta`.
std::unique_ptr<Scheduler> make_a1111_dpm_fast(const SchedulerConfig& config, int steps, double eta);
// AUTOMATIC1111's UniPC (bh1, order 3, time-uniform: see a1111_unipc.cpp).
std::unique_ptr<Scheduler> make_a1111_unipc(const SchedulerConfig& config, int steps);
std::unique_ptr<Scheduler> make_pndm(const SchedulerConfig& config, int steps);
// DDPM's ancestral sampling (fresh noise at every call whose timestep is above 0).
std::unique_ptr<Scheduler> make_ddpm(const SchedulerConfig& config, int steps);
// Where a sigma sampler's sigmas come from: the spaced timesteps' own, or a schedule between their extremes, Karras
// et al.'s or exponential (diffusers' use_karras_sigmas, use_exponential_sigmas); or one of AUTOMATIC1111's schedule
// types that diffusers lacks (a1111_sigmas).
enum class SigmaSchedule {
  kSpaced,
  kKarras,
  kExponential,
  kUniform,
  kSgmUniform,
  kAlignYourSteps,
  kSimple,
  kNormal,
  kPolyexponential,
  kBeta,
  kDdim,
  kKlOptimal
};
// The schedule a sampler name's suffix names ("karras", "sgm_uniform", ...; "" for kSpaced), and back. Throws
// Error(Runtime) for a suffix that names none.
const char* schedule_name(SigmaSchedule schedule);
SigmaSchedule schedule_named(const std::string& name);
// The sampler name's suffix for a schedule: "", "_karras", "_sgm_uniform", ...
std::string schedule_suffix(SigmaSchedule schedule);
// Whether `schedule` is one of A1111's own kinds (a1111_schedule computes it), not one of diffusers'.
bool is_a1111_schedule(SigmaSchedule schedule);

// The training schedule as AUTOMATIC1111's model holds it: the original Stable Diffusion code's betas (its "linear"
// schedule is diffusers' scaled_linear, its "sqrt_linear" diffusers' linear) and their cumulative product in float64,
// which the model stores in float32 (its alphas_cumprod) and takes square roots of in float64 (sqrt_alphas_cumprod,
// sqrt_one_minus_alphas_cumprod). Throws Error(Bundle) for another beta schedule.
std::vector<double> a1111_alphas_cumprod(const SchedulerConfig& config);

// k-diffusion's DiscreteSchedule of a model's sigmas (A1111's CompVisDenoiser's, or its LCM denoiser's 50): sigma_to_t
// (fractional timesteps, or with quantize the nearest one) and t_to_sigma, for float32 tensors.
class DiscreteSchedule {
 public:
  explicit DiscreteSchedule(const std::vector<float>& training_sigmas)
      : sigmas_(torch::tensor(training_sigmas, torch::kFloat32)), log_sigmas_(sigmas_.log()) {}

  float sigma_min() const { return sigmas_[0].item<float>(); }
  float sigma_max() const { return sigmas_[-1].item<float>(); }
  float sigma(int64_t t) const { return sigmas_[t].item<float>(); }
  std::vector<float> log_sigmas() const {
    const auto logs = log_sigmas_.contiguous();
    return {logs.data_ptr<float>(), logs.data_ptr<float>() + logs.numel()};
  }
  int64_t size() const { return sigmas_.size(0); }

  torch::Tensor sigma_to_t(const torch::Tensor& sigma) const {
    const auto log_sigma = sigma.log();
    const auto dists = log_sigma - log_sigmas_.unsqueeze(1);
    const auto low = dists.ge(0).cumsum(0).argmax(0).clamp_max(size() - 2);
    const auto high = low + 1;
    const auto w =
        ((log_sigmas_.index({low}) - log_sigma) / (log_sigmas_.index({low}) - log_sigmas_.index({high}))).clamp(0, 1);
    return ((1 - w) * low + w * high).view(sigma.sizes());
  }

  // sigma_to_t with quantize: the index of the sigma nearest in log sigma.
  torch::Tensor nearest_t(const torch::Tensor& sigma) const {
    return (sigma.log() - log_sigmas_.unsqueeze(1)).abs().argmin(0).view(sigma.sizes());
  }

  torch::Tensor t_to_sigma(const torch::Tensor& t) const {
    const auto low = t.floor().to(torch::kLong), high = t.ceil().to(torch::kLong);
    const auto w = t.frac();
    return ((1 - w) * log_sigmas_.index({low}) + w * log_sigmas_.index({high})).exp();
  }

 private:
  torch::Tensor sigmas_, log_sigmas_;
};

// AUTOMATIC1111's schedule of one of its own kinds, as its modules/sd_schedulers.py computes it on k-diffusion's
// discrete schedule of the model's training sigmas, which A1111's model holds as the original Stable Diffusion code
// makes them (computed in float64, stored in float32; diffusers computes them in float32): the sigmas of `steps`
// steps (on DDIM's, of as many as its stride 1000 // steps fits: 31 for 30) then 0 (KL Optimal's end at the smallest
// training sigma instead), and the timestep k-diffusion hands the U-Net for each but the last. `discard_next_to_last`:
// the schedule of steps + 1 without its next-to-last sigma, as A1111 gives its DPM2, DPM2 a and DPM++ 3M SDE.
struct A1111Schedule {
  std::vector<float> sigmas;
  std::vector<double> timesteps;
  std::vector<float> log_sigmas;  // of A1111's training sigmas, for the timesteps of other sigmas (sigma_to_t)
};
A1111Schedule a1111_schedule(SigmaSchedule schedule, const SchedulerConfig& config, int steps,
                             bool discard_next_to_last = false);

std::unique_ptr<Scheduler> make_euler(const SchedulerConfig& config, int steps, SigmaSchedule schedule);
// Euler ancestral on the spaced timesteps' sigmas or one of A1111's own schedules. `eta` (k-diffusion's, here and
// below) scales the ancestral noise: 1 is the sampler as diffusers and A1111 run it by default, 0 a deterministic
// solver.
std::unique_ptr<Scheduler> make_euler_ancestral(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                                double eta);
std::unique_ptr<Scheduler> make_heun(const SchedulerConfig& config, int steps, SigmaSchedule schedule);
// DPM2, or its ancestral variant (fresh noise at every midpoint call); on A1111's own schedules without their
// next-to-last sigma, as A1111 runs them.
std::unique_ptr<Scheduler> make_dpm2(const SchedulerConfig& config, int steps, SigmaSchedule schedule);
std::unique_ptr<Scheduler> make_dpm2_ancestral(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                               double eta);
// k-diffusion's DPM-Solver++(2S) ancestral (A1111's DPM++ 2S a), on spaced, Karras or exponential sigmas or one of
// A1111's own schedules.
std::unique_ptr<Scheduler> make_dpmpp_2s_ancestral(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                                   double eta);
// k-diffusion's DPM-Solver++ SDE (A1111's DPM++ SDE), with Brownian-tree noise at both calls of a step, on the same
// sigmas.
std::unique_ptr<Scheduler> make_dpmpp_sde(const SchedulerConfig& config, int steps, SigmaSchedule schedule, double eta);
// AUTOMATIC1111's DPM++ 2M SDE and DPM++ 2M SDE Heun: k-diffusion's DPM-Solver++(2M) SDE in sigma space with
// Brownian-tree noise, its midpoint or (`heun`) its Heun solver.
std::unique_ptr<Scheduler> make_a1111_dpmpp_2m_sde(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                                   bool heun, double eta);
// k-diffusion's DPM-Solver++(3M) SDE (A1111's DPM++ 3M SDE) with Brownian-tree noise, on a schedule without its
// next-to-last sigma as A1111 runs it.
std::unique_ptr<Scheduler> make_dpmpp_3m_sde(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                             double eta);
// DPM-Solver++(2M), deterministic or its SDE variant (fresh noise at every step), on diffusers' sigmas, Karras
// sigmas or one of A1111's own schedules (diffusers v0.31's exponential sigmas fail in these two classes).
std::unique_ptr<Scheduler> make_dpmpp_2m(const SchedulerConfig& config, int steps, SigmaSchedule schedule, bool sde);
// AUTOMATIC1111's Restart: Heun steps with, from 20 steps on, a stretch of the schedule run again after noise.
std::unique_ptr<Scheduler> make_restart(const SchedulerConfig& config, int steps, SigmaSchedule schedule);
std::unique_ptr<Scheduler> make_unipc(const SchedulerConfig& config, int steps, bool karras);
std::unique_ptr<Scheduler> make_deis(const SchedulerConfig& config, int steps, bool karras);
std::unique_ptr<Scheduler> make_lms(const SchedulerConfig& config, int steps, SigmaSchedule schedule);
std::unique_ptr<Scheduler> make_lcm(const SchedulerConfig& config, int steps);
// TCD (diffusers' TCDScheduler, for TCD-LoRA) with its gamma `eta`: 0 is deterministic, 1 fully stochastic.
std::unique_ptr<Scheduler> make_tcd(const SchedulerConfig& config, int steps, double eta);

// "every sampler but pndm, plms_a1111, lcm and tcd": the samplers whose start_at takes any step, for the others'
// refusals.
std::string samplers_that_start_late();

// alphas_cumprod(config) as host floats, for the scalar coefficient arithmetic.
std::vector<float> alphas_cumprod_values(const SchedulerConfig& config);
// The same for the samplers that work with sigma = sqrt((1 - a) / a): a zero-terminal-SNR schedule's last value, 0,
// becomes 2^-24 (fp16's smallest subnormal, as diffusers sets it), so that the first sigma is finite (4096).
std::vector<float> sigma_alphas_cumprod_values(const SchedulerConfig& config);

// The configured timestep spacing, or `class_default` when the config leaves it empty (diffusers' from_config keeps
// a class's own default for keys the source config did not set). Throws Error(Bundle) for an unknown spacing.
std::string resolve_spacing(const SchedulerConfig& config, const char* class_default);

// Throws Error(Bundle) unless config.prediction_type is one of `supported`.
void require_prediction_type(const SchedulerConfig& config, const std::string& sampler,
                             std::initializer_list<const char*> supported);

// Whole-number timesteps of DDIM and PNDM in descending order, as DDIMScheduler.set_timesteps computes them.
// Throws Error(Usage) where diffusers would produce a list of another length or an index outside the training
// range (e.g. leading spacing with steps_offset 1 and steps = num_train_timesteps).
std::vector<int64_t> discrete_timesteps(const SchedulerConfig& config, const std::string& spacing, int steps);

// sqrt((1 - a) / a) per training timestep, in float32 like diffusers' tensor expression.
std::vector<float> training_sigmas(const std::vector<float>& alphas_cumprod);

// The Karras et al. (2022) schedule (rho 7) of `steps` sigmas from sigma_max down to sigma_min, in float64 as
// diffusers' _convert_to_karras computes it.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int steps);

// The Karras et al. (2022) schedule's exponential sibling: `steps` sigmas evenly spaced in log sigma from sigma_max
// down to sigma_min, float32 as diffusers' _convert_to_exponential computes them with torch.linspace.
std::vector<float> exponential_sigmas(double sigma_min, double sigma_max, int steps);

// The argument types diffusers' _sigma_to_t is called with, which decide the precision of its arithmetic.
enum class SigmaToT {
  kNumpySigma,              // a float64 NumPy sigma (Karras sigmas): float32 weight, float64 result
  kTensorSigma,             // a float32 tensor element with NumPy log-sigmas (exponential sigmas): float64 weight
  kTensorSigmaTensorLogs,   // a float32 tensor element with tensor log-sigmas (KDPM2's midpoints): float32 throughout
};
// The fractional training timestep (unrounded) whose log-sigma this sigma's log interpolates linearly, as
// diffusers' _sigma_to_t computes it from `log_sigmas`, the float32 logs of the training sigmas.
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas, SigmaToT types = SigmaToT::kNumpySigma);
std::vector<float> log_sigmas(const std::vector<float>& training_sigmas);

// Throws Error(Runtime) unless `call` is the `next` U-Net call (the run's first, then one more per step) and
// `total` calls exist (the multistep samplers keep history, so calls must come in order, once each), and unless
// `model_output` and `sample` are float32 tensors of one shape.
void check_step(size_t call, size_t next, size_t total, const torch::Tensor& model_output, const torch::Tensor& sample);

// Throws Error(Runtime) unless add_noise's `call` is one of the `total` U-Net calls.
void check_add_noise_call(size_t call, size_t total);

// add_noise of the samplers that index alphas_cumprod with their timestep (DDIM, PNDM, LCM), as diffusers'
// DDIMScheduler.add_noise computes it: sqrt(a) * x0 + sqrt(1 - a) * noise.
torch::Tensor add_noise_vp(const torch::Tensor& x0, const torch::Tensor& noise, float alpha_cumprod);
// The clean sample that the samplers indexing alphas_cumprod with their timestep (DDIM, DDPM, LCM) predict from a
// model output at alphas_cumprod alpha_t, by prediction type ("epsilon", "sample" or "v_prediction"), in diffusers'
// float32 order: (x - sqrt(1 - a) * eps) / sqrt(a), the output itself, or sqrt(a) * x - sqrt(1 - a) * v.
torch::Tensor vp_predict_x0(const std::string& prediction_type, const torch::Tensor& model_output,
                            const torch::Tensor& sample, float alpha_t);
// The noise the same model output implies, given its x0 (vp_predict_x0's), in diffusers' float32 order: the output
// itself, (x - sqrt(a) * x0) / sqrt(1 - a), or sqrt(a) * v + sqrt(1 - a) * x.
torch::Tensor vp_predict_eps(const std::string& prediction_type, const torch::Tensor& model_output,
                             const torch::Tensor& sample, const torch::Tensor& x0, float alpha_t);

// Throws Error(Runtime) unless `noise` is defined and shaped like `sample`.
void check_noise(const torch::Tensor& noise, const torch::Tensor& sample);

// Shared part of the samplers that work in sigma space and scale the U-Net input (Euler, Euler ancestral, LMS,
// Heun, DPM2, DPM++ 2S a): float32 timesteps from the spacing, sigmas interpolated from the training sigmas as
// np.interp does, plus a final 0. With Karras or exponential sigmas, that schedule between the first and the last of
// those sigmas replaces them, and each timestep is that sigma's fractional training timestep (float64: samplers that
// keep float32 round them). On one of A1111's own schedules, its sigmas and timesteps (a1111_schedule).
class SigmaScheduler : public Scheduler {
 public:
  double init_noise_sigma() const override { return init_noise_sigma_; }
  // sample / sqrt(sigma^2 + 1) for the sigma of this call.
  torch::Tensor scale_model_input(const torch::Tensor& sample, size_t call) const override;
  // x0 + noise * sigma for the sigma of this call.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override;
  double a1111_sigma(size_t call) const override { return sigmas_.at(call); }

 protected:
  // `discard_next_to_last_sigma`: the schedule of steps + 1 without its next-to-last sigma, as A1111 gives its DPM2
  // (txt2img's dpm2 on A1111's own schedules) and DPM++ 3M SDE.
  SigmaScheduler(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                 bool discard_next_to_last_sigma = false);

  // The denoised sample the model output implies at `sigma`, by the config's prediction type ("sample" and
  // "original_sample": the output itself).
  torch::Tensor predict_x0(const torch::Tensor& model_output, const torch::Tensor& sample, float sigma) const;

  std::vector<float> sigmas_;  // one per call, then the final sigma: 0 but on A1111's KL Optimal schedule
  // The float32 logs of the training sigmas that timesteps interpolate (sigma_to_t): diffusers' or, on A1111's own
  // schedules, A1111's.
  std::vector<float> log_sigmas_;

 private:
  float init_noise_sigma_ = 1.0f;
  std::string prediction_type_;
};

// k-diffusion's CompVisDenoiser's c_in at `sigma`, 1 / (sigma^2 + 1) ** 0.5 in its float32 order, the factor of a
// sample in sigma space for the U-Net's input.
float compvis_c_in(float sigma);

// Shared part of the samplers txt2img takes from k-diffusion as A1111 runs them (DPM++ 2S a, DPM++ SDE, A1111's DPM++
// 2M SDE and 2M SDE Heun, DPM++ 3M SDE): the start, input scaling and denoisers of its CompVisDenoiser and
// CompVisVDenoiser, and pieces of its sampling loop. Derived classes set timesteps_ and sigmas_ to one entry per call.
class KDiffusionScheduler : public SigmaScheduler {
 public:
  // A run starts from noise * sigmas[0], whatever the spacing (diffusers' sqrt(sigma^2 + 1) for leading is its own).
  double init_noise_sigma() const override { return sigmas_[0]; }
  // CompVisDenoiser's c_in, 1 / (sigma^2 + 1) ** 0.5, as a factor (diffusers divides by the root instead).
  torch::Tensor scale_model_input(const torch::Tensor& sample, size_t call) const override;

 protected:
  // `name`: the sampler's, for the prediction types it refuses (it takes epsilon and v_prediction).
  KDiffusionScheduler(const SchedulerConfig& config, int steps, SigmaSchedule schedule, const std::string& name,
                      bool discard_next_to_last_sigma = false);

  // What k-diffusion's CompVisDenoiser (epsilon: x - sigma * eps, the same as predict_x0's) or CompVisVDenoiser
  // (v * c_out + x * c_skip, its scalings in its float32 order) makes of a model output at `sigma`.
  torch::Tensor denoised(const torch::Tensor& model_output, const torch::Tensor& sample, float sigma) const;
  // k-diffusion's get_ancestral_step(from, to, eta) on float32 0-dim tensors: {sigma_down, sigma_up}.
  static std::pair<torch::Tensor, torch::Tensor> ancestral_step(const torch::Tensor& from, const torch::Tensor& to,
                                                                double eta);
  // The Brownian increment from `sigma` to `sigma_next` on trees spanning the schedule, as A1111's
  // create_noise_sampler spans them: sigmas[sigmas > 0].min() to sigmas.max() (of the schedule, not of a part).
  BrownianIncrement brownian(float sigma, float sigma_next) const;

 private:
  bool v_prediction_;
  float span_min_, span_max_;
};

// What LCM and TCD share (src/consistency_timesteps.cpp): the timesteps of the 50-step distillation schedule that
// suit the step count, A1111's sigma of each, add_noise at them and the refusal to start part-way. `name`: the
// sampler's, for its errors. Throws Error(Bundle) for another prediction type than epsilon, v_prediction or sample,
// or fewer than 50 training timesteps, and Error(Usage) for more than 50 steps.
class ConsistencyScheduler : public Scheduler {
 public:
  // A1111's LCM samples on k-diffusion's sigmas of its timesteps, in float32.
  double a1111_sigma(size_t call) const override;
  // As diffusers' add_noise; with start_at limited to call 0 it serves a run entered there.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override;
  std::string why_it_cannot_start_later() const override;

 protected:
  ConsistencyScheduler(const SchedulerConfig& config, int steps, const std::string& name);
  // alphas_cumprod at a call's timestep, and at a training timestep.
  float alpha(size_t call) const { return alphas_cumprod_[static_cast<int64_t>(timesteps_.at(call))]; }
  float alpha_at(int64_t timestep) const { return alphas_cumprod_.at(static_cast<size_t>(timestep)); }

  std::vector<float> alphas_cumprod_;
  std::string prediction_type_;

 private:
  std::string name_;
};

// k-diffusion's multistep SDE samplers as A1111 runs them (its DPM++ 2M SDE, 2M SDE Heun and 3M SDE): one call per
// step, at the timestep CompVisDenoiser gives the step's sigma. A step to sigma 0 returns the denoised sample; any
// other takes the sampler's first-order SDE step, corrects it with the denoised samples of the run's earlier calls
// (the sampler's order) and adds the Brownian increment from the step's sigma to the next, scaled (with eta 0, none).
class KDiffusionMultistepSde : public KDiffusionScheduler {
 public:
  bool needs_noise(size_t call) const override {
    return eta_ != 0 && call < timesteps_.size() && sigmas_[call + 1] != 0.0f;
  }
  std::optional<BrownianIncrement> brownian_increment(size_t call) const override;
  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) final;

 protected:
  // Sets each step's h; the sampler sets its first-order factors and noise scale for its `eta`.
  KDiffusionMultistepSde(const SchedulerConfig& config, int steps, SigmaSchedule schedule, const std::string& name,
                         double eta, bool discard_next_to_last_sigma = false);

  // `first_order` (step `call`'s first-order step) with the sampler's correction from `denoised` and the run's
  // earlier denoised samples (denoised_1_, denoised_2_: undefined where the run has none), in k-diffusion's order of
  // operations.
  virtual torch::Tensor corrected(const torch::Tensor& first_order, const torch::Tensor& denoised,
                                  size_t call) const = 0;

  struct Step {
    torch::Tensor h;  // log(sigma / next) on float32 0-dim tensors: the step's length (undefined in a step to 0)
    float to_next;    // the first-order step's factors of the sample and of the denoised sample
    float to_next_x0;
    float noise_scale;  // sqrt(-expm1(-2 eta h)), the noise's scale after the next sigma's
  };
  std::vector<Step> steps_;
  double eta_;
  torch::Tensor denoised_1_, denoised_2_;  // the previous two calls' denoised samples; none at a (late) start
};

// k-diffusion's samplers that call the model twice a step, at the step's sigma and at a midpoint, but once in the last
// step to sigma 0, an Euler step (DPM++ 2S a, DPM++ SDE): the first call takes a first-order step toward the midpoint
// (adding noise where needs_noise says so), the second carries the step's start to the step's end with the midpoint's
// denoised sample and adds noise.
class KDiffusionTwoCallScheduler : public KDiffusionScheduler {
 public:
  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override;

 protected:
  using KDiffusionScheduler::KDiffusionScheduler;

  struct Step {
    float sigma;   // where the step starts (its first call's input)
    float mid;     // the midpoint call's sigma; 0 for the last step, which is one Euler call
    float to_mid;  // the first call's factors of its sample and of its denoised sample, and its noise's scale
    float to_mid_x0;
    float mid_up;
    float to_down;  // the second call's factors of the step's start and of the midpoint's denoised sample
    float to_down_x0;
    float up;  // its noise's scale
  };
  // The steps, then the calls' timesteps and sigmas from their sigmas and midpoints.
  void set_steps(std::vector<Step> steps);
  size_t first_call_of_step(size_t step) const override { return 2 * step; }

  std::vector<Step> steps_;

 private:
  torch::Tensor step_start_;  // the first call's sample, until the midpoint call
};

// diffusers takes log and exp of float32 0-dim tensors; ATen's vectorised kernels round differently from libm, so
// the same kernels are used here.
float tensor_log(float x);
float tensor_exp(float x);

// A variance-preserving sample's scales at a Karras-space sigma s (alpha = 1 / sqrt(s^2 + 1), sigma = s * alpha,
// diffusers' _sigma_to_alpha_sigma_t) and its log-SNR lambda = log(alpha) - log(sigma).
struct Vp {
  float alpha, sigma, lambda;
  explicit Vp(float karras_sigma);
};

// Shared part of the solvers that step in log-SNR time on variance-preserving samples (DPM-Solver++, UniPC, DEIS):
// whole timesteps np.linspace(0, num_train_timesteps - 1, steps + 1).round()[::-1][:-1] with their training sigmas, or
// Karras sigmas between the training extremes at their rounded training timesteps; then a final sigma 0;
// init_noise_sigma 1. Or one of A1111's own schedules at A1111's fractional timesteps, starting from A1111's
// noise * sigmas[0] in this space (and on KL Optimal's, which ends above sigma 0, ending in A1111's space). The U-Net
// input is unscaled.
class LogSnrScheduler : public Scheduler {
 public:
  double init_noise_sigma() const override { return init_noise_sigma_; }
  // alpha * x0 + sigma * noise at this call's sigma, diffusers' add_noise of these schedulers.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override;

 protected:
  // `name`: the sampler's, for errors. Throws Error(Bundle) for an unknown timestep spacing or an unsupported
  // prediction type, Error(Usage) for steps whose timesteps repeat (where the solver would divide by zero).
  LogSnrScheduler(const SchedulerConfig& config, int steps, SigmaSchedule schedule, const std::string& name);

  // The x0 prediction of a model output for the sample at call `call`'s sigma (convert_model_output).
  torch::Tensor predict_x0(const torch::Tensor& model_output, const torch::Tensor& sample, size_t call) const;

  std::vector<float> sigmas_;  // one per call, then the final sigma: 0 but on A1111's KL Optimal schedule

 private:
  std::string prediction_type_;
  float init_noise_sigma_ = 1.0f;
};

}  // namespace txt2img::detail
