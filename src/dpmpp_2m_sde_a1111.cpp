// AUTOMATIC1111's DPM++ 2M SDE and DPM++ 2M SDE Heun: k-diffusion's sample_dpmpp_2m_sde (eta 1, s_noise 1) with its
// midpoint or Heun solver, in sigma space, with the noise A1111 gives it, increments of Brownian motions on one tree
// per image seed (NoiseSource::brownian). diffusers' DPMSolverMultistepScheduler with algorithm_type
// "sde-dpmsolver++" (txt2img's dpmpp_2m_sde) is the midpoint solver in the variance-preserving space, with fresh noise
// drawn from the seed instead. Each step from sigma s to n (h = log(s / n)) takes the first-order SDE step, adds the
// second-order correction from the previous step's denoised sample (not in the first step, nor the first after
// start_at, as k-diffusion starts afresh on a cut schedule), and the increment from s to n scaled by
// n * sqrt(1 - exp(-2h)); the last step returns the denoised sample. The solvers differ in the correction's factor
// of the difference of the denoised samples over the ratio of the step lengths: half the first-order factor
// -expm1(-2h) (midpoint), or that factor over -2h, plus 1 (Heun).
#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class A1111DpmPP2MSde final : public KDiffusionMultistepSde {
 public:
  A1111DpmPP2MSde(const SchedulerConfig& config, int steps, SigmaSchedule schedule, bool heun)
      : KDiffusionMultistepSde(config, steps, schedule, heun ? "dpmpp_2m_sde_heun" : "dpmpp_2m_sde_a1111") {
    // k-diffusion's arithmetic on float32 0-dim tensors, by the same ATen kernels in the same order (eta * h is h).
    const auto f32 = [](float v) { return torch::scalar_tensor(v, torch::kFloat32); };
    for (size_t j = 0; j + 1 < sigmas_.size(); ++j) {
      Step step{};
      if (sigmas_[j + 1] != 0.0f) {
        const auto sigma = f32(sigmas_[j]), next = f32(sigmas_[j + 1]);
        const auto h = next.log().neg() - sigma.log().neg();
        const auto first_order = (h.neg() - h).expm1().neg();
        step.h = h;
        step.to_next = (next / sigma * h.neg().exp()).item<float>();
        step.to_next_x0 = first_order.item<float>();
        step.correction = heun ? first_order / (h.neg() - h) + 1 : first_order * 0.5;
        step.noise_scale = (h * -2).expm1().neg().sqrt().item<float>();
      }
      steps_.push_back(step);
    }
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    const Step& step = steps_[call];
    const auto denoised_now = denoised(model_output, sample, sigmas_[call]);
    torch::Tensor prev;
    if (sigmas_[call + 1] == 0.0f) {
      prev = denoised_now;
    } else {
      check_noise(noise, sample);
      prev = sample * step.to_next + denoised_now * step.to_next_x0;
      if (old_denoised_.defined()) {
        // The solver's factor times 1 / r with r = h_last / h, then times the difference.
        const float correction = (step.correction * (steps_[call - 1].h / step.h).reciprocal()).item<float>();
        prev = prev + (denoised_now - old_denoised_) * correction;
      }
      prev = prev + noise * sigmas_[call + 1] * step.noise_scale;
    }
    old_denoised_ = denoised_now;
    pred_original_sample_ = denoised_now;
    ++next_call_;
    return prev;
  }

 private:
  struct Step {
    torch::Tensor h;  // log(sigma / next): the step's length in log sigma (undefined in the last)
    float to_next;    // next / sigma * exp(-h) and -expm1(-2h): the first-order step
    float to_next_x0;
    torch::Tensor correction;        // the solver's factor of the second-order correction (before 1 / r)
    float noise_scale;               // sqrt(-expm1(-2h)), the noise's scale after the next sigma's
  };

  std::vector<Step> steps_;
  torch::Tensor old_denoised_;  // the previous call's denoised sample; none at a (late) start
};

}  // namespace

std::unique_ptr<Scheduler> make_a1111_dpmpp_2m_sde(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                                   bool heun) {
  return std::make_unique<A1111DpmPP2MSde>(config, steps, schedule, heun);
}

}  // namespace txt2img::detail
