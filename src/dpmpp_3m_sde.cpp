// DPM++ 3M SDE: k-diffusion's sample_dpmpp_3m_sde (A1111's "DPM++ 3M SDE"; eta 1, s_noise 1), which diffusers has no
// SDE class for, with the noise A1111 gives it, increments of Brownian motions on one tree per image seed
// (NoiseSource::brownian), on a schedule of one step more without its next-to-last sigma, as A1111 runs it. Each
// step from sigma s to n (h = log(s / n)) takes the first-order SDE step (of 2h: eta 1 doubles it), adds the
// third-order correction from the two previous steps' denoised samples (second-order where there is one; none in the
// first step or the first after start_at, as k-diffusion starts afresh on a cut schedule), and the increment from s to
// n scaled by n * sqrt(1 - exp(-2h)); the last step returns the denoised sample.
#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

class DpmPP3MSde final : public KDiffusionMultistepSde {
 public:
  DpmPP3MSde(const SchedulerConfig& config, int steps, SigmaSchedule schedule)
      : KDiffusionMultistepSde(config, steps, schedule, "dpmpp_3m_sde", /*discard_next_to_last_sigma=*/true) {
    // k-diffusion's arithmetic on float32 0-dim tensors, by the same ATen kernels in the same order.
    const auto f32 = [](float v) { return torch::scalar_tensor(v, torch::kFloat32); };
    for (size_t j = 0; j + 1 < sigmas_.size(); ++j) {
      Step step{};
      if (sigmas_[j + 1] != 0.0f) {
        const auto h = f32(sigmas_[j + 1]).log().neg() - f32(sigmas_[j]).log().neg();
        const auto h_eta = h * 2.0;  // h * (eta + 1)
        step.h = h;
        step.decay = h_eta.neg().exp().item<float>();
        step.to_x0 = h_eta.neg().expm1().neg().item<float>();
        step.phi_2 = h_eta.neg().expm1() / h_eta + 1;
        step.phi_3 = step.phi_2 / h_eta - 0.5;
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
      prev = sample * step.decay + denoised_now * step.to_x0;
      if (denoised_2_.defined()) {
        const auto r0 = steps_[call - 1].h / step.h, r1 = steps_[call - 2].h / step.h;
        const auto d1_0 = (denoised_now - denoised_1_) / r0;
        const auto d1_1 = (denoised_1_ - denoised_2_) / r1;
        const auto d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1);
        const auto d2 = (d1_0 - d1_1) / (r0 + r1);
        prev = prev + step.phi_2 * d1 - step.phi_3 * d2;
      } else if (denoised_1_.defined()) {
        const auto r = steps_[call - 1].h / step.h;
        prev = prev + step.phi_2 * ((denoised_now - denoised_1_) / r);
      }
      prev = prev + noise * sigmas_[call + 1] * step.noise_scale;
    }
    denoised_2_ = denoised_1_;
    denoised_1_ = denoised_now;
    pred_original_sample_ = denoised_now;
    ++next_call_;
    return prev;
  }

 private:
  struct Step {
    torch::Tensor h;  // log(sigma / next): the step's length in log sigma (undefined in the last)
    float decay;      // exp(-2h) and -expm1(-2h): the first-order step's factors of the sample and denoised sample
    float to_x0;
    torch::Tensor phi_2;  // expm1(-2h) / 2h + 1 and phi_2 / 2h - 1/2: the corrections' factors
    torch::Tensor phi_3;
    float noise_scale;  // sqrt(-expm1(-2h)), the noise's scale after the next sigma's
  };

  std::vector<Step> steps_;
  // The previous two calls' denoised samples; none at a (late) start.
  torch::Tensor denoised_1_, denoised_2_;
};

}  // namespace

std::unique_ptr<Scheduler> make_dpmpp_3m_sde(const SchedulerConfig& config, int steps, SigmaSchedule schedule) {
  return std::make_unique<DpmPP3MSde>(config, steps, schedule);
}

}  // namespace txt2img::detail
