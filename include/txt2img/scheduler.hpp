// Noise schedulers, exactly as diffusers v0.31 computes them for SD v1 (float32 tensor arithmetic).
#pragma once

#include <torch/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "txt2img/noise.hpp"

namespace txt2img {

struct SchedulerConfig {
  int num_train_timesteps = 1000;
  double beta_start = 0.00085;
  double beta_end = 0.012;
  std::string beta_schedule = "scaled_linear";
  int steps_offset = 1;
  // "leading", "linspace" or "trailing"; empty = the sampler's diffusers default ("leading" for ddim/pndm,
  // "linspace" for the sigma samplers), as diffusers' from_config does when the source config does not set it.
  std::string timestep_spacing;
  std::string prediction_type = "epsilon";
  bool set_alpha_to_one = false;
  // Betas rescaled to zero terminal SNR (Lin et al. 2023: the last timestep is pure noise), for models trained so;
  // ddim, ddpm, euler*, euler_a, dpmpp_2m*, unipc* and lcm support it, as their diffusers classes do.
  bool rescale_betas_zero_snr = false;
};

// cumprod(1 - betas), float32 [num_train_timesteps] on the CPU. Throws Error(Bundle) for an unsupported
// beta_schedule ("scaled_linear", "linear" and "squaredcos_cap_v2" are supported).
torch::Tensor alphas_cumprod(const SchedulerConfig& config);

class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // Timestep of each U-Net call, in order (PNDM makes N+1 calls for N steps, Heun 2N-1: a predictor and a corrector
  // call per step but the last). Whole numbers for DDIM, DDPM, PNDM, LCM (A1111's too), DPM-Solver++, UniPC and DEIS
  // (which may repeat one); fractional values for the sigma samplers (float32, or float64 on Karras sigmas where
  // diffusers keeps those) and A1111's UniPC.
  const std::vector<double>& timesteps() const { return timesteps_; }
  // What AUTOMATIC1111's sampler of this kind hands its CFG denoiser as the noise level of U-Net call `call`, which
  // A1111's NGMS compares with its threshold: the sigma of the call's input where A1111 samples on k-diffusion's
  // sigmas (euler*, euler_a, heun*, dpm2*, dpmpp_2s_a*, dpmpp_sde*, lms*, dpmpp_2m*, dpmpp_3m_sde*, restart*,
  // dpm_fast, lcm_a1111, and lcm: sqrt((1 - a) / a) at its timestep), the timestep where A1111 samples on timesteps
  // (ddim*, pndm as A1111's PLMS, plms_a1111, unipc*) and for the samplers A1111 lacks (ddpm, deis*).
  virtual double a1111_sigma(size_t call) const { return timesteps_.at(call); }
  // Factor for the initial standard-normal latents (a float32 value).
  virtual double init_noise_sigma() const { return 1.0; }
  // The U-Net input for call `call` (sample / sqrt(sigma^2 + 1) for the sigma samplers).
  virtual torch::Tensor scale_model_input(const torch::Tensor& sample, size_t /*call*/) const { return sample; }
  // Whether step(…, call, …) needs a fresh standard-normal tensor shaped like the sample, drawn from the caller's
  // generator exactly where diffusers draws one: DDIM with eta > 0, Euler ancestral and DPM++ 2M SDE at every
  // call, the last included; DDPM at every call whose timestep is above 0; LCM (A1111's too) at every call but the
  // last; DPM2 ancestral at each step's midpoint call, and DPM++ 2S a there too, where k-diffusion draws it; and DPM++
  // SDE at both calls of a step but the last and A1111's DPM++ 2M SDE (Heun) and DPM++ 3M SDE at every call but the
  // last, whose noise is brownian_increment's; Restart after the call before each stretch it runs again; and DPM fast
  // after each of its solver steps' last call.
  virtual bool needs_noise(size_t /*call*/) const { return false; }
  // Where that noise is no fresh draw but a Brownian motion's increment (dpmpp_sde*, dpmpp_2m_sde_a1111*,
  // dpmpp_2m_sde_heun* and dpmpp_3m_sde*, as
  // A1111 draws theirs: the caller passes NoiseSource::brownian of it), the increment; nullopt at the other calls and
  // for the other samplers. The span is the whole schedule's, also for a run entered part-way, as A1111 builds its
  // trees.
  virtual std::optional<BrownianIncrement> brownian_increment(size_t /*call*/) const { return std::nullopt; }

  // Makes step `step` the next one (step = U-Net call but for heun*, dpm2*, dpmpp_2s_a* and dpmpp_sde*, whose steps
  // make two calls but the last): its calls and those after it then run as a fresh run (multistep samplers start
  // without history, as k-diffusion does on a sub-schedule and as img2img does), for A1111's hires fix and img2img,
  // which build the schedule of a longer run and enter it part-way. The single-step samplers (ddim, ddpm, euler*,
  // euler_a, heun*, dpm2*, dpmpp_2s_a*, dpmpp_sde*, lcm_a1111) then compute exactly what a whole run computes from
  // the same sample; lms* ramps its order up from 1 again and dpmpp_2m* (A1111's 2M SDE too), dpmpp_3m_sde*, unipc,
  // unipc_karras and deis* take a first-order step first. ddim_a1111 enters as A1111's DDIM does, a call later (its
  // enter), and restart*, unipc_a1111 and dpm_fast plan a run of their own over the schedule's rest as A1111's
  // img2img runs them (the calls then count from 0). Call before any step (start_at(0) changes nothing but on
  // ddim_a1111 and unipc_a1111). Throws Error(Usage) for step > 0 on a sampler that cannot start anywhere but the
  // beginning (pndm, plms_a1111, lcm) or an entry that leaves ddim_a1111 no call or unipc_a1111 fewer than 3 steps, and
  // Error(Runtime) for a step past the schedule or after a step.
  void start_at(size_t step);
  // The U-Net call this run starts at: 0, or start_at's entry (the first call of its step; for ddim_a1111 later, for
  // restart* and unipc_a1111 0).
  size_t first_call() const { return first_call_; }
  // The U-Net calls of a step: 2 for Heun, DPM2, DPM++ 2S a, DPM++ SDE and Restart (whose last step makes one, two
  // on KL Optimal's schedule), 1 for the others.
  size_t calls_per_step() const { return first_call_of_step(1); }
  // Why this sampler cannot start at a later call (start_at's error); empty where it can.
  virtual std::string why_it_cannot_start_later() const { return {}; }
  // The sample at the noise level of call `call`'s input, from a clean sample x0 and standard-normal noise of its
  // shape, in the space step(…, call, …) takes samples in: x0 + sigma * noise for the sigma samplers (euler*,
  // euler_a, heun*, dpm2*, dpmpp_2s_a*, dpmpp_sde*, dpmpp_2m_sde_a1111*, dpmpp_2m_sde_heun*, dpmpp_3m_sde*, lms*,
  // restart*, dpm_fast: the sigma of that call's input, but for restart*'s and dpm_fast's call 0 the schedule's sigma
  // where the run starts, as A1111 noises it, which their plans may round), alpha * x0 + sigma * noise in the
  // variance-preserving space of diffusers' dpmpp_2m*, unipc* and deis* (alpha = 1 / sqrt(s^2 + 1) and sigma = s *
  // alpha for that call's sigma s: A1111's x0 + s * noise scaled as the solver's samples are),
  // sqrt(a) * x0 + sqrt(1 - a) * noise with a = alphas_cumprod at timesteps()[call] for ddim, ddpm, pndm and lcm. A
  // whole run of those variance-preserving samplers starts from noise * init_noise_sigma() = noise as diffusers' does,
  // which add_noise(0, noise, 0) only approaches (sqrt(1 - a) is 0.9977 at t = 999, 0.993 at ddim's 10-step t = 901);
  // the sigma samplers' add_noise(0, noise, 0) is noise * init_noise_sigma() except with "leading" spacing, where
  // diffusers' init_noise_sigma is sqrt(sigma^2 + 1). Throws Error(Runtime) for a call outside the schedule.
  virtual torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const = 0;

  // Advances the float32 sample by U-Net call `call` (0, 1, 2, ..., or from start_at's call on, in order, once
  // each: the multistep samplers keep history; make a new scheduler per generation) and returns the new sample.
  // `model_output` is the (guided) U-Net output for scale_model_input(sample, call) at timesteps()[call]. `noise`
  // is used only when needs_noise(call). Throws Error(Runtime) for a call out of order, missing noise, or a model
  // output and sample that are not float32 tensors of one shape.
  virtual torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                             const torch::Tensor& noise = {}) = 0;
  // The x0 prediction of the last step, where the sampler makes one (all but PNDM; undefined otherwise). LCM's is
  // its denoised sample, the prediction after the consistency boundary condition.
  const torch::Tensor& pred_original_sample() const { return pred_original_sample_; }

 protected:
  // The first U-Net call of step `step`.
  virtual size_t first_call_of_step(size_t step) const { return step; }
  // Readies a run that start_at(step) enters and returns its first U-Net call (past the schedule where `step` is).
  // Most samplers keep their schedule and return first_call_of_step(step); restart* plans a run of the schedule's
  // rest, its calls counted from 0.
  virtual size_t enter(size_t step) { return first_call_of_step(step); }

  std::vector<double> timesteps_;
  torch::Tensor pred_original_sample_;
  size_t first_call_ = 0;  // the call this run starts at: 0, or start_at's
  size_t next_call_ = 0;   // the call step() takes next; steps advance it from first_call_
};

// Names accepted by make_scheduler, for help texts and validation.
const std::vector<std::string>& scheduler_names();
// scheduler_names() as help texts list them: those on A1111's own schedule types summed up by schedule and sampler.
std::string sampler_names_text();
// Whether the sampler `name` (or an alias of one) takes DDIM's eta: ddim and ddim_a1111 (and tcd, as its gamma).
bool sampler_takes_eta(const std::string& name);
// Whether it takes k-diffusion's eta, which scales the noise its ancestral and SDE steps add (A1111's option "Eta for
// k-diffusion samplers", eta_ancestral, 1 by default): euler_a, dpm2_a, dpmpp_2s_a, dpmpp_sde, dpmpp_2m_sde_a1111,
// dpmpp_2m_sde_heun and dpmpp_3m_sde, on every schedule, and dpm_fast. 0 makes each a deterministic solver; the ones
// that draw noise from the seed still draw it, as k-diffusion does.
bool sampler_takes_eta_ancestral(const std::string& name);
// Whether `name` is one of scheduler_names() exactly (an alias is not: see canonical_scheduler_name).
bool is_scheduler_name(const std::string& name);

// The scheduler_names() entry another tool's name for the same sampler stands for, else `name` unchanged:
// AUTOMATIC1111's ("Euler a", "DPM++ 2M Karras", "PLMS", "LCM"; k-diffusion's "k_euler_a") and diffusers' class
// names ("EulerAncestralDiscreteScheduler"; "DPMSolverMultistepScheduler" is dpmpp_2m, its default configuration),
// matched ignoring case, spaces and punctuation ("++" reads "pp").
std::string canonical_scheduler_name(const std::string& name);

// A sampler name split into the sampler and its sigma schedule: "dpm2_a_karras" is {"dpm2_a", "karras"},
// "euler_exponential" {"euler", "exponential"}, "dpmpp_2m_sgm_uniform" {"dpmpp_2m", "sgm_uniform"}, "euler"
// {"euler", ""}.
struct SamplerName {
  std::string base;
  // "karras", "exponential" (diffusers' use_karras_sigmas, use_exponential_sigmas), A1111's own schedule types
  // "uniform", "sgm_uniform", "align_your_steps", "simple", "normal", "polyexponential", "beta", "ddim",
  // "kl_optimal" (as A1111 computes them), or "".
  std::string schedule;
};
SamplerName split_sampler_name(const std::string& name);
// A sampler name's schedule as AUTOMATIC1111's "Schedule type" field labels it ("sgm_uniform": "SGM Uniform"); a name
// it has no label for unchanged.
std::string a1111_schedule_label(const std::string& schedule);
// The schedule an A1111 "Schedule type" names by its label or by our name ("SGM Uniform", "sgm_uniform" and
// "SGMUniform" are "sgm_uniform"); "" for one txt2img has no sampler on.
std::string schedule_from_a1111_label(const std::string& label);

// The alpha and beta of the beta distribution whose quantiles space the `_beta` samplers' sigmas: A1111's defaults
// (its options beta_dist_alpha and beta_dist_beta), which its infotext records as "Beta schedule alpha" and "Beta
// schedule beta".
constexpr double kBetaScheduleShape = 0.6;
// Whether a sampler name's schedule is one of A1111's own ("euler_sgm_uniform"), computed as A1111 computes it.
bool on_a1111_schedule(const std::string& name);

// Throws Error(Usage) for an eta or eta_ancestral outside [0, 1], a non-zero eta that none of `samplers` (the passes
// of one run, which share both) takes, or an eta_ancestral other than 1 that none takes.
void check_etas_taken(const std::vector<std::string>& samplers, double eta, double eta_ancestral);

// Throws Error(Usage) for an unknown name (canonical_scheduler_name's aliases are known), steps outside
// [1, num_train_timesteps] (or a step count whose diffusers timesteps are unusable with the spacing, or above LCM's
// 50 distillation steps), an eta or eta_ancestral outside [0, 1], a non-zero eta for a sampler that takes none (see
// sampler_takes_eta) or an eta_ancestral other than 1 for one that takes none (sampler_takes_eta_ancestral). Throws
// Error(Bundle) for config values the sampler does not support (beta_schedule, timestep_spacing, prediction_type).
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const SchedulerConfig& config, int steps,
                                          double eta = 0.0, double eta_ancestral = 1.0);

}  // namespace txt2img
