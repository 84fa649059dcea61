// Noise schedulers, exactly as diffusers v0.31 computes them for SD v1 (float32 tensor arithmetic).
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

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
};

// cumprod(1 - betas), float32 [num_train_timesteps] on the CPU. Throws Error(Bundle) for an unsupported
// beta_schedule ("scaled_linear", "linear" and "squaredcos_cap_v2" are supported).
torch::Tensor alphas_cumprod(const SchedulerConfig& config);

class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // Timestep of each U-Net call, in order (PNDM makes N+1 calls for N steps). Whole numbers for DDIM, PNDM, LCM and
  // DPM-Solver++ (which may repeat one); fractional float32 values for Euler, Euler ancestral and LMS.
  const std::vector<double>& timesteps() const { return timesteps_; }
  // Factor for the initial standard-normal latents (a float32 value).
  virtual double init_noise_sigma() const { return 1.0; }
  // The U-Net input for call `call` (sample / sqrt(sigma^2 + 1) for the sigma samplers).
  virtual torch::Tensor scale_model_input(const torch::Tensor& sample, size_t /*call*/) const { return sample; }
  // Whether step(…, call, …) needs a fresh standard-normal tensor shaped like the sample, drawn from the caller's
  // generator exactly where diffusers draws one: DDIM with eta > 0 and Euler ancestral at every call, the last
  // included; LCM at every call but the last.
  virtual bool needs_noise(size_t /*call*/) const { return false; }

  // Advances the float32 sample by U-Net call `call` (0, 1, 2, ... in order, once each: the multistep samplers
  // keep history; make a new scheduler per generation) and returns the new sample. `model_output` is the
  // (guided) U-Net output for scale_model_input(sample, call) at timesteps()[call]. `noise` is used only when
  // needs_noise(call). Throws Error(Runtime) for a call out of order or missing noise.
  virtual torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                             const torch::Tensor& noise = {}) = 0;
  // The x0 prediction of the last step, where the sampler makes one (all but PNDM; undefined otherwise). LCM's is
  // its denoised sample, the prediction after the consistency boundary condition.
  const torch::Tensor& pred_original_sample() const { return pred_original_sample_; }

 protected:
  std::vector<double> timesteps_;
  torch::Tensor pred_original_sample_;
};

// Names accepted by make_scheduler, for help texts and validation.
const std::vector<std::string>& scheduler_names();

// The scheduler_names() entry another tool's name for the same sampler stands for, else `name` unchanged:
// AUTOMATIC1111's ("Euler a", "DPM++ 2M Karras", "PLMS", "LCM"; k-diffusion's "k_euler_a") and diffusers' class
// names ("EulerAncestralDiscreteScheduler"; "DPMSolverMultistepScheduler" is dpmpp_2m, its default configuration),
// matched ignoring case, spaces and punctuation ("++" reads "pp").
std::string canonical_scheduler_name(const std::string& name);

// Throws Error(Usage) for an unknown name (canonical_scheduler_name's aliases are known), steps outside
// [1, num_train_timesteps] (or a step count whose diffusers timesteps are unusable with the spacing, or above LCM's
// 50 distillation steps), a negative eta, or a non-zero eta for a sampler other than ddim.
// Throws Error(Bundle) for config values the sampler does not support (beta_schedule, timestep_spacing,
// prediction_type).
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const SchedulerConfig& config, int steps,
                                          double eta = 0.0);

}  // namespace txt2img
