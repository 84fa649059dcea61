// AUTOMATIC1111's DPM fast: k-diffusion's sample_dpm_fast (DPMSolver.dpm_solver_fast, Lu et al. 2022's fixed-step
// DPM-Solver) as A1111 runs it. The run spans the model's own sigmas, its smallest to its largest (A1111 hands it
// model_wrap.sigmas[0] and [-1], whatever the schedule type), in m = N // 3 + 1 steps evenly spaced in t = -log sigma,
// of order 3 but the last one or two (N % 3 == 0: orders 2 then 1; else N % 3), so that N steps make exactly N U-Net
// calls, each step's at its start and, for orders 2 and 3, at the intermediate times t + h / 2, or t + h / 3 and
// t + 2h / 3. Each call's noise prediction is k-diffusion's (x - denoised) / sigma. k-diffusion's eta (A1111's
// eta_ancestral, 1 by default) makes each step ancestral: it ends at the down sigma (no lower than the run's end) and
// adds noise from the image's generator to the next time's sigma, as k-diffusion draws it after every step (scaled
// by 0 at eta 0). The run ends at the smallest sigma, not at 0. A run entered part-way (A1111's hires pass) spans the
// rest of its schedule instead (A1111's uniform one), from the entry's sigma to the last one above 0, in as many
// calls as the rest has steps.
#include <cstdio>

#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img::detail {
namespace {

// require_prediction_type under this sampler's own name, before the base class checks it under its schedule's.
const SchedulerConfig& checked(const SchedulerConfig& config) {
  require_prediction_type(config, "dpm_fast", {"epsilon", "v_prediction"});
  return config;
}

class A1111DpmFast final : public KDiffusionScheduler {
 public:
  A1111DpmFast(const SchedulerConfig& config, int steps, double eta)
      : KDiffusionScheduler(checked(config), steps, SigmaSchedule::kUniform, "dpm_fast"),
        eta_(eta),
        schedule_(sigmas_) {
    const auto training = training_sigmas_of_a1111(config);
    plan(training.front(), training.back(), steps);
  }

  // A1111 starts a whole run from noise times its schedule's first sigma, an entered one from its sigma there.
  double init_noise_sigma() const override { return entry_sigma_; }
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    return x0 + noise * (call == 0 ? entry_sigma_ : sigmas_[call]);
  }

  // After each step's last call, where k-diffusion draws it.
  bool needs_noise(size_t call) const override {
    return call < calls_.size() && calls_[call].stage + 1 == steps_[calls_[call].step].order;
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor& noise) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    const Call& c = calls_[call];
    const Step& s = steps_[c.step];
    const bool last = c.stage + 1 == s.order;
    if (last) check_noise(noise, sample);
    pred_original_sample_ = denoised(model_output, sample, sigmas_[call]);
    const auto eps = (sample - pred_original_sample_) / sigmas_[call];
    torch::Tensor next;
    if (c.stage == 0) {
      step_start_ = sample;
      eps_start_ = eps;
      next = sample - eps * (s.order == 1 ? s.to_end : s.to_first);
    } else if (c.stage == 1 && s.order == 3) {
      next = step_start_ - eps_start_ * s.to_second - (eps - eps_start_) * s.to_second_d;
    } else {
      next = step_start_ - eps_start_ * s.to_end - (eps - eps_start_) * s.to_end_d;
    }
    if (last) {
      next = next + noise * s.up;
      step_start_ = eps_start_ = torch::Tensor();
    }
    ++next_call_;
    return next;
  }

 private:
  struct Step {
    int order;
    // dpm_solver_N_step's factors, k-diffusion's products of 0-dim float32 tensors: of the start's noise prediction
    // for the first intermediate sample, for the second (order 3) and for the end, and of the difference of the
    // predictions (the last call's minus the start's) for the second intermediate sample and for the end.
    float to_first, to_second, to_end, to_second_d, to_end_d;
    float up;  // the ancestral noise's scale
  };
  struct Call {
    size_t step;
    int stage;  // 0 at the step's start, then 1 and 2 at its intermediate times
  };

  size_t enter(size_t step) override {
    if (step + 1 >= schedule_.size()) return timesteps_.size();  // past the schedule: start_at refuses it
    // A1111's sample_img2img: sigma_max sigma_sched[0], sigma_min sigma_sched[-2], n len(sigma_sched) - 1.
    plan(schedule_[schedule_.size() - 2], schedule_[step], static_cast<int>(schedule_.size() - 1 - step));
    entry_sigma_ = schedule_[step];
    return 0;
  }

  // dpm_solver_fast's steps and calls for `nfe` calls from sigma_max down to sigma_min.
  void plan(float sigma_min, float sigma_max, int nfe) {
    const auto sigma_of = [](const torch::Tensor& t) { return t.neg().exp(); };
    const auto t_of = [](const torch::Tensor& sigma) { return sigma.log().neg(); };
    const auto t_start = t_of(torch::scalar_tensor(sigma_max, torch::kFloat32));
    const auto t_end = t_of(torch::scalar_tensor(sigma_min, torch::kFloat32));
    // Only a run entered at the schedule's last sigma spans none.
    if (eta_ != 0 && !(t_end > t_start).item<bool>()) {
      char eta[32];
      std::snprintf(eta, sizeof eta, "%g", eta_);
      throw Error(ErrorKind::Usage,
                  "dpm_fast cannot run a single step from the schedule's last sigma with eta "
                  "ancestral " +
                      std::string(eta) +
                      ": k-diffusion refuses a run that ends where it starts; give it 2 steps or more, "
                      "or eta ancestral 0");
    }
    const int m = nfe / 3 + 1;
    const auto ts = torch::linspace(t_start.item<double>(), t_end.item<double>(), m + 1, torch::kFloat32);
    std::vector<int> orders(static_cast<size_t>(nfe % 3 == 0 ? m - 2 : m - 1), 3);
    if (nfe % 3 == 0) {
      orders.insert(orders.end(), {2, 1});
    } else {
      orders.push_back(nfe % 3);
    }
    steps_.clear();
    calls_.clear();
    timesteps_.clear();
    std::vector<float> sigmas;
    for (size_t i = 0; i < orders.size(); ++i) {
      const auto t = ts[static_cast<int64_t>(i)], t_next = ts[static_cast<int64_t>(i) + 1];
      torch::Tensor t_to = t_next, up = torch::zeros({}, torch::kFloat32);
      if (eta_ != 0) {
        const auto down = ancestral_step(sigma_of(t), sigma_of(t_next), eta_).first;
        t_to = torch::minimum(t_end, t_of(down));
        up = (sigma_of(t_next).pow(2) - sigma_of(t_to).pow(2)).pow(0.5);
      }
      const auto h = t_to - t;
      Step s{};
      s.order = orders[i];
      s.up = up.item<float>();
      torch::Tensor times[3] = {t, {}, {}};  // of the step's calls
      if (s.order == 1) {
        s.to_end = (sigma_of(t_to) * h.expm1()).item<float>();
      } else if (s.order == 2) {
        const double r1 = 1.0 / 2;
        const auto s1 = t + h * r1;
        s.to_first = (sigma_of(s1) * (h * r1).expm1()).item<float>();
        s.to_end = (sigma_of(t_to) * h.expm1()).item<float>();
        s.to_end_d = (sigma_of(t_to) / (2 * r1) * h.expm1()).item<float>();
        times[1] = s1;
      } else {
        const double r1 = 1.0 / 3, r2 = 2.0 / 3;
        const auto s1 = t + h * r1, s2 = t + h * r2;
        s.to_first = (sigma_of(s1) * (h * r1).expm1()).item<float>();
        s.to_second = (sigma_of(s2) * (h * r2).expm1()).item<float>();
        s.to_second_d = (sigma_of(s2) * (r2 / r1) * ((h * r2).expm1() / (h * r2) - 1)).item<float>();
        s.to_end = (sigma_of(t_to) * h.expm1()).item<float>();
        s.to_end_d = (sigma_of(t_to) / r2 * (h.expm1() / h - 1)).item<float>();
        times[1] = s1;
        times[2] = s2;
      }
      for (int stage = 0; stage < s.order; ++stage) {
        const float sigma = sigma_of(times[stage]).item<float>();
        sigmas.push_back(sigma);
        timesteps_.push_back(sigma_to_t(sigma, log_sigmas_, SigmaToT::kTensorSigmaTensorLogs));
        calls_.push_back({i, stage});
      }
      steps_.push_back(s);
    }
    sigmas.push_back(sigma_of(ts[m]).item<float>());  // where the run ends
    sigmas_ = std::move(sigmas);
  }

  double eta_;
  std::vector<float> schedule_;  // A1111's uniform schedule of the steps, then 0: what a run entered part-way spans
  float entry_sigma_ = schedule_.front();
  std::vector<Step> steps_;
  std::vector<Call> calls_;
  torch::Tensor step_start_, eps_start_;  // the step's start sample and its noise prediction, until its last call
};

}  // namespace

std::unique_ptr<Scheduler> make_a1111_dpm_fast(const SchedulerConfig& config, int steps, double eta) {
  return std::make_unique<A1111DpmFast>(config, steps, eta);
}

}  // namespace txt2img::detail
