// LMS (diffusers LMSDiscreteScheduler, order 4; lms_karras with use_karras_sigmas, lms_exponential with
// use_exponential_sigmas): linear multistep in sigma
// space. The coefficient of each stored derivative is the integral, over this step's sigma interval, of its
// Lagrange basis polynomial through the last (up to) four sigmas.
#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>

#include "scheduler_impl.hpp"

namespace txt2img::detail {
namespace {

constexpr size_t kOrder = 4;

// diffusers and k-diffusion integrate with scipy.integrate.quad (QUADPACK QAGS, epsrel 1e-4); for these polynomials
// its first 21-point Gauss–Kronrod estimate already meets the tolerance, so that single rule is evaluated here, in
// QUADPACK's summation order, on the same integrand.
double gauss_kronrod_21(const std::function<double(double)>& f, double a, double b) {
  // Kronrod abscissae on [-1, 1] (positive half; xgk[1], xgk[3], ... are also the 10-point Gauss nodes) and the
  // Kronrod weights, from QUADPACK's dqk21.
  static constexpr double xgk[11] = {
      0.995657163025808080735527280689003, 0.973906528517171720077964012084452, 0.930157491355708226001207180059508,
      0.865063366688984510732096688423493, 0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
      0.562757134668604683339000099272694, 0.433395394129247190799265943165784, 0.294392862701460198131126603103866,
      0.148874338981631210884826001129720, 0.0};
  static constexpr double wgk[11] = {
      0.011694638867371874278064396062192, 0.032558162307964727478818972459390, 0.054755896574351996031381300244580,
      0.075039674810919952767043140916190, 0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
      0.123491976262065851077958109831074, 0.134709217311473325928054001771707, 0.142775938577060080797094273138717,
      0.147739104901338491374841515972068, 0.149445554002916905664936468389821};
  const double centre = 0.5 * (a + b), half_length = 0.5 * (b - a);
  double sum = wgk[10] * f(centre);
  // QUADPACK adds the Gauss-node pairs first, then the Kronrod-only ones.
  for (size_t first : {size_t{1}, size_t{0}}) {
    for (size_t j = first; j < 10; j += 2) {
      const double offset = half_length * xgk[j];
      sum = sum + wgk[j] * (f(centre - offset) + f(centre + offset));
    }
  }
  return sum * half_length;
}

class Lms final : public SigmaScheduler {
 public:
  Lms(const SchedulerConfig& config, int steps, SigmaSchedule schedule)
      : SigmaScheduler(config, steps, schedule), float64_integrand_(is_a1111_schedule(schedule)) {
    require_prediction_type(config, std::string("lms") + schedule_suffix(schedule),
                            {"epsilon", "v_prediction", "sample"});
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor&) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    const float sigma = sigmas_[call];
    const torch::Tensor x0 = predict_x0(model_output, sample, sigma);
    derivatives_.push_front((sample - x0) / sigma);
    if (derivatives_.size() > kOrder) derivatives_.pop_back();

    // The order ramps up from 1 at the run's first call (a run entered by start_at has no earlier derivatives).
    const size_t order = std::min(call - first_call_ + 1, kOrder);
    // Python's sum() starts from 0 and adds the newest derivative's term first.
    torch::Tensor update;
    for (size_t j = 0; j < order; ++j) {
      const auto term = coefficient(order, call, j) * derivatives_[j];
      update = j == 0 ? term : update + term;
    }
    pred_original_sample_ = x0;
    ++next_call_;
    return sample + update;
  }

 private:
  // Integral over [sigma_t, sigma_{t+1}] of the Lagrange basis polynomial that is 1 at sigma_{t - current} and 0
  // at the other sigma_{t - k}, k < order. diffusers' integrand multiplies float32 tensors; k-diffusion's (A1111's,
  // on its own schedules) takes quad's float64 tau minus NumPy float32 sigmas, which NumPy 1.x computes in float64,
  // over differences of two float32 sigmas, which stay float32.
  double coefficient(size_t order, size_t t, size_t current) const {
    const auto float32_basis = [&](double tau) {
      float product = 1.0f;
      for (size_t k = 0; k < order; ++k) {
        if (k == current) continue;
        product *= (static_cast<float>(tau) - sigmas_[t - k]) / (sigmas_[t - current] - sigmas_[t - k]);
      }
      return static_cast<double>(product);
    };
    const auto float64_basis = [&](double tau) {
      double product = 1.0;
      for (size_t k = 0; k < order; ++k) {
        if (k == current) continue;
        product *=
            (tau - static_cast<double>(sigmas_[t - k])) / static_cast<double>(sigmas_[t - current] - sigmas_[t - k]);
      }
      return product;
    };
    if (float64_integrand_) return gauss_kronrod_21(float64_basis, sigmas_[t], sigmas_[t + 1]);
    return gauss_kronrod_21(float32_basis, sigmas_[t], sigmas_[t + 1]);
  }

  bool float64_integrand_;
  std::deque<torch::Tensor> derivatives_;  // newest first
};

}  // namespace

std::unique_ptr<Scheduler> make_lms(const SchedulerConfig& config, int steps, SigmaSchedule schedule) {
  return std::make_unique<Lms>(config, steps, schedule);
}

}  // namespace txt2img::detail
