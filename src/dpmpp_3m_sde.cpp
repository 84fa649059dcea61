// DPM++ 3M SDE: k-diffusion's sample_dpmpp_3m_sde (A1111's "DPM++ 3M SDE"; s_noise 1), which diffusers has no SDE
// class for, with the noise A1111 gives it, increments of Brownian motions on one tree per image seed
// (NoiseSource::brownian), on a schedule of one step more without its next-to-last sigma, as A1111 runs it. Each
// step from sigma s to n (h = log(s / n)) takes the first-order SDE step of (1 + eta) h (eta 1 doubles it), adds the
// third-order correction from the two previous steps' denoised samples (second-order where there is one; none in the
// first step or the first after start_at, as k-diffusion starts afresh on a cut schedule), and the increment from s to
// n scaled by n * sqrt(1 - exp(-2 eta h)) (none at eta 0); a step to sigma 0 returns the denoised sample.
#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class DpmPP3MSde final : public KDiffusionMultistepSde {
 public:
  DpmPP3MSde(const SchedulerConfig& config, int steps, SigmaSchedule schedule, double eta)
      : KDiffusionMultistepSde(config, steps, schedule, "dpmpp_3m_sde", eta, /*discard_next_to_last_sigma=*/true) {
    // k-diffusion's arithmetic on float32 0-dim tensors, by the same ATen kernels in the same order (it scales the
    // noise by -2 * h * eta, where 2M SDE takes -2 * (eta * h)).
    for (Step& step : steps_) {
      Phi phi;
      if (step.h.defined()) {
        const auto h_eta = step.h * (eta + 1);
        step.to_next = h_eta.neg().exp().item<float>();
        step.to_next_x0 = h_eta.neg().expm1().neg().item<float>();
        step.noise_scale = (step.h * -2 * eta).expm1().neg().sqrt().item<float>();
        phi.two = h_eta.neg().expm1() / h_eta + 1;
        phi.three = phi.two / h_eta - 0.5;
      }
      phi_.push_back(phi);
    }
  }

 private:
  torch::Tensor corrected(const torch::Tensor& first_order, const torch::Tensor& denoised, size_t call) const override {
    const Phi& phi = phi_[call];
    if (denoised_2_.defined()) {
      const auto r0 = steps_[call - 1].h / steps_[call].h, r1 = steps_[call - 2].h / steps_[call].h;
      const auto d1_0 = (denoised - denoised_1_) / r0;
      const auto d1_1 = (denoised_1_ - denoised_2_) / r1;
      const auto d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1);
      const auto d2 = (d1_0 - d1_1) / (r0 + r1);
      return first_order + phi.two * d1 - phi.three * d2;
    }
    if (denoised_1_.defined()) {
      const auto r = steps_[call - 1].h / steps_[call].h;
      return first_order + phi.two * ((denoised - denoised_1_) / r);
    }
    return first_order;
  }

  struct Phi {
    torch::Tensor two;  // expm1(-H) / H + 1 and phi_2 / H - 1/2 with H = (1 + eta) h: the corrections' factors
    torch::Tensor three;
  };
  std::vector<Phi> phi_;
};

}  // namespace

std::unique_ptr<Scheduler> make_dpmpp_3m_sde(const SchedulerConfig& config, int steps, SigmaSchedule schedule,
                                             double eta) {
  return std::make_unique<DpmPP3MSde>(config, steps, schedule, eta);
}

}  // namespace txt2img::detail
