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
  std::string timestep_spacing = "leading";
  std::string prediction_type = "epsilon";
  bool set_alpha_to_one = false;
};

// cumprod(1 - betas), float32 [num_train_timesteps].
torch::Tensor alphas_cumprod(const SchedulerConfig& config);

class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // Timestep of each U-Net call, in order (PNDM makes N+1 calls for N steps). Whole numbers for DDIM and PNDM;
  // sigma samplers interpolate fractional ones.
  const std::vector<double>& timesteps() const { return timesteps_; }
  virtual double init_noise_sigma() const { return 1.0; }
  virtual torch::Tensor scale_model_input(const torch::Tensor& sample, size_t call) const { return sample; }
  // Whether step() needs a fresh standard-normal tensor of the sample's shape (DDIM with eta > 0).
  virtual bool needs_noise() const { return false; }

  // Advances the float32 sample by the U-Net call `call`; returns the new sample. `noise` is used only when
  // needs_noise().
  virtual torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                             const torch::Tensor& noise = {}) = 0;
  // The x0 prediction of the last step, where the sampler makes one (undefined otherwise).
  const torch::Tensor& pred_original_sample() const { return pred_original_sample_; }

 protected:
  std::vector<double> timesteps_;
  torch::Tensor pred_original_sample_;
};

// Names accepted by make_scheduler, for help texts and validation.
const std::vector<std::string>& scheduler_names();

// Throws Error(Usage) for an unknown name or steps outside [1, num_train_timesteps].
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const SchedulerConfig& config, int steps,
                                          double eta = 0.0);

}  // namespace txt2img
