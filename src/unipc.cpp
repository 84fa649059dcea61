// UniPC (diffusers UniPCMultistepScheduler with its defaults: solver_order 2, solver_type "bh2", predict_x0,
// lower_order_final, final_sigmas_type "zero"; unipc_karras with use_karras_sigmas): a multistep predictor in
// log-SNR time on the x0 predictions (UniP), and at each call after the first a corrector (UniC) that first
// redoes the previous step with the x0 prediction of the sample it reached. The predictor is first order at the
// run's first and last step; the corrector is one order above the predictor step it corrects.
#include <deque>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

// float32 0-dim tensors: the order-2 corrector solves a 2x2 system with torch.linalg.solve, and the coefficients
// are computed with the same ATen operations in the same order, so that they round as diffusers' do.
torch::Tensor scalar(float x) { return torch::scalar_tensor(x, torch::kFloat32); }

// B(h) = expm1(-h) ("bh2") and the UniC weights rho of an order-`order` corrector whose extra history point has
// log-SNR ratio `rk` (order 2 only): solve(R, b) with R's rows rks^(i-1), rks = [rk, 1], and
// b_i = h_phi_i * i! / B(h), or [0.5] for order 1.
torch::Tensor corrector_weights(int order, const torch::Tensor& hh, const torch::Tensor& rk) {
  if (order == 1) return torch::tensor({0.5f});
  const auto b_h = torch::expm1(hh);
  auto h_phi_k = torch::expm1(hh) / hh - 1;
  const auto b1 = h_phi_k * 1 / b_h;
  h_phi_k = h_phi_k / hh - 1.0 / 2;
  const auto b2 = h_phi_k * 2 / b_h;
  const auto rks = torch::stack({rk, scalar(1.0f)});
  const auto r = torch::stack({torch::pow(rks, 0), torch::pow(rks, 1)});
  return torch::linalg_solve(r, torch::stack({b1, b2}));
}

class UniPC final : public LogSnrScheduler {
 public:
  UniPC(const SchedulerConfig& config, int steps, bool karras)
      : LogSnrScheduler(config, steps, karras ? SigmaSchedule::kKarras : SigmaSchedule::kSpaced,
                        karras ? "unipc_karras" : "unipc") {}

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor&) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    // The x0 prediction of the sample as the U-Net saw it, before the corrector moves that sample.
    const auto x0 = predict_x0(model_output, sample, call);
    const auto corrected = call > first_call_ ? correct(x0, call) : sample;

    x0s_.push_back(x0);
    if (x0s_.size() > 2) x0s_.pop_front();
    // Warm-up from the run's first call, and a first-order last step.
    const size_t done = call - first_call_;
    order_ = static_cast<int>(std::min({size_t{2}, timesteps_.size() - call, done + 1}));
    last_sample_ = corrected;
    pred_original_sample_ = x0;
    ++next_call_;
    return predict(corrected, call);
  }

 private:
  // UniP-order_ from call `call`'s sample to the next call's sigma.
  torch::Tensor predict(const torch::Tensor& x, size_t call) const {
    const Vp s0(sigmas_[call]), t(sigmas_[call + 1]);
    const auto h = scalar(t.lambda) - scalar(s0.lambda);
    const auto hh = -h;
    const auto h_phi_1 = torch::expm1(hh);
    const auto b_h = torch::expm1(hh);
    const auto& m0 = x0s_.back();
    const auto base = (scalar(t.sigma) / scalar(s0.sigma)) * x - (scalar(t.alpha) * h_phi_1) * m0;
    // diffusers subtracts alpha * B(h) * 0 (its pred_res = 0) here, which turns a -0 of the sample into +0.
    if (order_ == 1) return base - scalar(t.alpha) * b_h * 0;
    // Order 2 uses the fixed rho 0.5 on D1 = (m1 - m0) / rk.
    const Vp s1(sigmas_[call - 1]);
    const auto rk = (scalar(s1.lambda) - scalar(s0.lambda)) / h;
    const auto d1 = (x0s_.front() - m0) / rk;
    return base - (scalar(t.alpha) * b_h) * (0.5f * d1);
  }

  // UniC-order_ of the previous step (from last_sample_ at call - 1's sigma to this call's), with x0, the model's
  // prediction at the sample that step's predictor reached.
  torch::Tensor correct(const torch::Tensor& x0, size_t call) const {
    const Vp s0(sigmas_[call - 1]), t(sigmas_[call]);
    const auto h = scalar(t.lambda) - scalar(s0.lambda);
    const auto hh = -h;
    const auto h_phi_1 = torch::expm1(hh);
    const auto b_h = torch::expm1(hh);
    const auto& m0 = x0s_.back();
    torch::Tensor rk, d1;
    if (order_ == 2) {
      const Vp s1(sigmas_[call - 2]);
      rk = (scalar(s1.lambda) - scalar(s0.lambda)) / h;
      d1 = (x0s_.front() - m0) / rk;
    }
    const auto rhos = corrector_weights(order_, hh, rk);
    const auto base = (scalar(t.sigma) / scalar(s0.sigma)) * last_sample_ - (scalar(t.alpha) * h_phi_1) * m0;
    const auto d1_t = x0 - m0;
    const auto last_term = rhos[-1] * d1_t;
    const auto residual = order_ == 2 ? rhos[0] * d1 + last_term : last_term;
    return base - (scalar(t.alpha) * b_h) * residual;
  }

  std::deque<torch::Tensor> x0s_;  // the last two calls' x0 predictions, oldest first
  torch::Tensor last_sample_;      // the sample the last predictor step started from
  int order_ = 1;                  // the last predictor step's order
};

}  // namespace

std::unique_ptr<Scheduler> make_unipc(const SchedulerConfig& config, int steps, bool karras) {
  return std::make_unique<UniPC>(config, steps, karras);
}

}  // namespace txt2img::detail
