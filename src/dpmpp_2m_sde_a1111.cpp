// AUTOMATIC1111's DPM++ 2M SDE and DPM++ 2M SDE Heun: k-diffusion's sample_dpmpp_2m_sde (s_noise 1) with its
// midpoint or Heun solver, in sigma space, with the noise A1111 gives it, increments of Brownian motions on one tree
// per image seed (NoiseSource::brownian). diffusers' DPMSolverMultistepScheduler with algorithm_type
// "sde-dpmsolver++" (txt2img's dpmpp_2m_sde) is the midpoint solver in the variance-preserving space at eta 1, with
// fresh noise drawn from the seed instead. Each step from sigma s to n (h = log(s / n)) takes the first-order SDE step,
// adds the second-order correction from the previous step's denoised sample (not in the first step, nor the first
// after start_at, as k-diffusion starts afresh on a cut schedule), and the increment from s to n scaled by
// n * sqrt(1 - exp(-2 eta h)) (none at eta 0); a step to sigma 0 returns the denoised sample. The solvers differ in the
// correction's factor of the difference of the denoised samples over the ratio of the step lengths: half the
// first-order factor -expm1(-(1 + eta) h) (midpoint), or that factor over -(1 + eta) h, plus 1 (Heun).
#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class A1111DpmPP2MSde final : public KDiffusionMultistepSde {
 public:
  A1111DpmPP2MSde(const SchedulerConfig& config, int steps, SigmaSchedule schedule, bool heun, double eta)
      : KDiffusionMultistepSde(config, steps, schedule, heun ? "dpmpp_2m_sde_heun" : "dpmpp_2m_sde_a1111", eta) {
    // k-diffusion's arithmetic on float32 0-dim tensors, by the same ATen kernels in the same order.
    for (size_t j = 0; j < steps_.size(); ++j) {
      Step& step = steps_[j];
      torch::Tensor correction;
      if (step.h.defined()) {
        const auto& h = step.h;
        const auto eta_h = h * eta;
        const auto first_order = (h.neg() - eta_h).expm1().neg();
        const auto ratio =
            torch::scalar_tensor(sigmas_[j + 1], torch::kFloat32) / torch::scalar_tensor(sigmas_[j], torch::kFloat32);
        step.to_next = (ratio * eta_h.neg().exp()).item<float>();
        step.to_next_x0 = first_order.item<float>();
        step.noise_scale = (eta_h * -2).expm1().neg().sqrt().item<float>();
        correction = heun ? first_order / (h.neg() - eta_h) + 1 : first_order * 0.5;
      }
      correction_.push_back(correction);
    }
  }

 private:
  torch::Tensor corrected(const torch::Tensor& first_order, const torch::Tensor& denoised, size_t call) const override {
    if (!denoised_1_.defined()) return first_order;
    // The solver's factor times 1 / r with r = h_last / h, then times the difference.
    const float factor = (correction_[call] * (steps_[call - 1].h / steps_[call].h).reciprocal()).item<float>();
    return first_order + (denoised - denoised_1_) * factor;
  }

  std::vector<torch::Tensor> correction_;  // per step, the solver's factor of the correction (before 1 / r)
};

}  // namespace

std::unique_ptr<Scheduler> make_a1111_dpmpp_2m_sde(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                                   bool heun, double eta) {
  return std::make_unique<A1111DpmPP2MSde>(config, steps, schedule, heun, eta);
}

}  // namespace txt2img::detail
