// What LCM and TCD share: the timesteps of the 50-step schedule the models were distilled on ([19, 39, ..., 999],
// every 1000 / 50 = 20th training timestep) that suit the step count, so a run takes 1 to 50 steps, and their entry
// into it. original_inference_steps = 50 is diffusers' default for both classes, which is what from_config of any SD
// v1 scheduler configuration gives (none sets it); the bundle's timestep_spacing, steps_offset and set_alpha_to_one
// do not apply (the next timestep is never below 0).
#include <cmath>
#include <string>

#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img::detail {
namespace {

constexpr int kOriginalSteps = 50;

}  // namespace

ConsistencyScheduler::ConsistencyScheduler(const SchedulerConfig& config, int steps, const std::string& name)
    : alphas_cumprod_(alphas_cumprod_values(config)), prediction_type_(config.prediction_type), name_(name) {
  require_prediction_type(config, name, {"epsilon", "v_prediction", "sample"});
  if (config.num_train_timesteps < kOriginalSteps)
    throw Error(ErrorKind::Bundle, "the " + name + " scheduler needs at least " + std::to_string(kOriginalSteps) +
                                       " training timesteps, the model has " +
                                       std::to_string(config.num_train_timesteps));
  if (steps > kOriginalSteps)
    throw Error(ErrorKind::Usage, "the " + name + " scheduler takes at most " + std::to_string(kOriginalSteps) +
                                      " steps (the schedule its models were distilled on), got " +
                                      std::to_string(steps) + "; 2 to 8 are usual");
  const int k = config.num_train_timesteps / kOriginalSteps;
  // np.floor(np.linspace(0, 50, steps, endpoint=False)) indexes the descending distillation schedule.
  for (int i = 0; i < steps; ++i) {
    const auto index = static_cast<int>(std::floor(static_cast<double>(kOriginalSteps) / steps * i));
    timesteps_.push_back(static_cast<double>((kOriginalSteps - index) * k - 1));
  }
}

double ConsistencyScheduler::a1111_sigma(size_t call) const {
  const float a = alpha(call);
  return std::sqrt((1.0f - a) / a);
}

torch::Tensor ConsistencyScheduler::add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const {
  check_add_noise_call(call, timesteps_.size());
  return add_noise_vp(x0, noise, alpha(call));
}

std::string ConsistencyScheduler::why_it_cannot_start_later() const {
  return "the " + name_ +
         " scheduler cannot start part-way through its schedule: its timesteps are those of the 50 it was "
         "distilled on that suit the step count, and its own img2img (diffusers' scheduler given a strength) "
         "chooses its steps among the distillation timesteps below the strength instead of entering a longer "
         "schedule, so a late start would match neither; " +
         samplers_that_start_late() + " can start part-way";
}

}  // namespace txt2img::detail
