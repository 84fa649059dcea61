// AUTOMATIC1111's UniPC (1.6 and later: unipc in its modules/sd_samplers_timesteps_impl.py over the UniPC of its
// modules/models/diffusion/uni_pc/uni_pc.py, Zhao et al. 2023), with A1111's default options: variant bh1 (B(h) =
// h), order 3 with lower orders in the first and last steps, and time-uniform steps. It is not diffusers'
// UniPCMultistepScheduler (txt2img's unipc*: bh2 of order 2 on timesteps): its steps are evenly spaced in a continuous
// time t from 1 down to 1/1000, as many as A1111's DDIM has timesteps (range(0, 1000, 1000 // steps): 31 for 30), the
// U-Net's input time being (t - 1/1000) * 1000, a fractional timestep; log alpha is interpolated linearly in t between
// the training timesteps of A1111's alphas. Each call but the first corrects the step it ends with the data
// prediction there (UniPC's corrector), and each call takes the next step's predictor; the last step has no corrector,
// so N steps make N calls. A hires pass (A1111's img2img) is a run of its own from t = the timestep below its noise
// level / 1000 + 1/1000, as A1111 computes it. The arithmetic is uni_pc.py's in the same ATen operations.
#include <algorithm>

#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"

namespace txt2img::detail {
namespace {

constexpr int kOrder = 3;                  // A1111's option uni_pc_order
constexpr double kFirstTime = 1.0 / 1000;  // t_0 = 1 / total_N, the time of training timestep 0

// uni_pc.py's interpolate_fn: y at x of the piecewise linear function through (xp, yp), extended beyond its ends.
torch::Tensor interpolate(const torch::Tensor& x, const torch::Tensor& xp, const torch::Tensor& yp) {
  const int64_t n = x.size(0), k = xp.size(1);
  const auto all_x = torch::cat({x.unsqueeze(2), xp.unsqueeze(0).repeat({n, 1, 1})}, 2);
  const auto [sorted_all_x, x_indices] = torch::sort(all_x, 2);
  const auto x_idx = torch::argmin(x_indices, 2);
  const auto cand_start_idx = x_idx - 1;
  const auto index = [](int64_t i) { return torch::scalar_tensor(i, torch::kLong); };
  const auto start_idx =
      torch::where(torch::eq(x_idx, 0), index(1), torch::where(torch::eq(x_idx, k), index(k - 2), cand_start_idx));
  const auto end_idx = torch::where(torch::eq(start_idx, cand_start_idx), start_idx + 2, start_idx + 1);
  const auto start_x = torch::gather(sorted_all_x, 2, start_idx.unsqueeze(2)).squeeze(2);
  const auto end_x = torch::gather(sorted_all_x, 2, end_idx.unsqueeze(2)).squeeze(2);
  const auto start_idx2 =
      torch::where(torch::eq(x_idx, 0), index(0), torch::where(torch::eq(x_idx, k), index(k - 2), cand_start_idx));
  const auto y_positions_expanded = yp.unsqueeze(0).expand({n, -1, -1});
  const auto start_y = torch::gather(y_positions_expanded, 2, start_idx2.unsqueeze(2)).squeeze(2);
  const auto end_y = torch::gather(y_positions_expanded, 2, (start_idx2 + 1).unsqueeze(2)).squeeze(2);
  return start_y + (x - start_x) * (end_y - start_y) / (end_x - start_x);
}

// uni_pc.py's expand_dims of a [1] tensor for a sample of 4 dimensions.
torch::Tensor expand(const torch::Tensor& v) { return v.view({1, 1, 1, 1}); }

class A1111UniPc final : public Scheduler {
 public:
  A1111UniPc(const SchedulerConfig& config, int steps) : v_prediction_(config.prediction_type == "v_prediction") {
    require_prediction_type(config, "unipc_a1111", {"epsilon", "v_prediction"});
    if (config.num_train_timesteps != 1000)
      throw Error(ErrorKind::Bundle, "unipc_a1111 (A1111's) spaces 1000 training timesteps; this model has " +
                                         std::to_string(config.num_train_timesteps));
    for (const double a : a1111_alphas_cumprod(config)) {
      alphas_cumprod_.push_back(static_cast<float>(a));
      sqrt_alphas_cumprod_.push_back(static_cast<float>(std::sqrt(a)));
      sqrt_one_minus_alphas_cumprod_.push_back(static_cast<float>(std::sqrt(1.0 - a)));
    }
    // NoiseScheduleVP('discrete'): log alpha_t = 0.5 log(alphas_cumprod) at t = (n + 1) / 1000.
    log_alpha_array_ = (0.5 * torch::tensor(alphas_cumprod_, torch::kFloat32).log()).reshape({1, -1});
    t_array_ = torch::linspace(0., 1., 1001, torch::kFloat32).slice(0, 1).reshape({1, -1});
    for (int t = 0; t < 1000; t += 1000 / steps) spaced_.push_back(std::min(t + 1, 999));
    steps_ = steps;
    plan(1.0, static_cast<int>(spaced_.size()), alphas_cumprod_.back());
  }

  // At call 0 the noise level a run starts from, A1111's: a hires pass's is its schedule's timestep at t_enc, below
  // the run's first time; at a later call, alpha_t x0 + sigma_t noise at its time.
  torch::Tensor add_noise(const torch::Tensor& x0, const torch::Tensor& noise, size_t call) const override {
    check_add_noise_call(call, timesteps_.size());
    if (call == 0) return add_noise_vp(x0, noise, entry_alpha_);
    const auto t = time(call);
    return expand(alpha(t)) * x0 + expand(std_dev(t)) * noise;
  }

  torch::Tensor step(const torch::Tensor& model_output, size_t call, const torch::Tensor& sample,
                     const torch::Tensor&) override {
    check_step(call, next_call_, timesteps_.size(), model_output, sample);
    const auto t = time(call);
    const auto model_x = data_prediction(sample, noise_of(model_output, sample, call), t);
    torch::Tensor x = sample;
    if (call > 0) {
      // The corrector of the step this call ends, from its data prediction here.
      const auto correction = pending_.rhos_c[-1] * (model_x - pending_.model_prev_0);
      x = pending_.base -
          pending_.coefficient *
              (pending_.d1s.defined()
                   ? torch::einsum("k,bkchw->bchw", {pending_.rhos_c.slice(0, 0, -1), pending_.d1s}) + correction
                   : correction);
    }
    if (models_.size() == kOrder) {
      models_.erase(models_.begin());
      model_times_.erase(model_times_.begin());
    }
    models_.push_back(model_x);
    model_times_.push_back(t);
    pred_original_sample_ = model_x;
    ++next_call_;
    // The next step: the first ones of rising order, the last ones of falling order, the last without corrector.
    const int step = static_cast<int>(call) + 1, steps = static_cast<int>(timesteps_.size());
    const int order = step < kOrder ? step : std::min(kOrder, steps + 1 - step);
    return predict(x, order, time(static_cast<size_t>(step)), step != steps);
  }

 protected:
  // A1111's img2img: the schedule of the run's steps, entered at t_enc = the pass's steps - 1, is a UniPC run of
  // t_enc steps from the time just above the timestep below t_enc's (every entry, step 0's too).
  size_t enter(size_t step) override {
    const int t_enc = steps_ - static_cast<int>(step) - 1;
    if (t_enc < kOrder)
      throw Error(ErrorKind::Usage,
                  "unipc_a1111 (A1111's UniPC, of order 3) makes one step fewer than a hires pass "
                  "has, and at least 3; give it 4 or more steps");
    const auto t_start = (torch::scalar_tensor(spaced_[t_enc - 1], torch::kLong) / 1000 + kFirstTime).item<float>();
    plan(t_start, t_enc, alphas_cumprod_[static_cast<size_t>(spaced_[t_enc])]);
    return 0;
  }

 private:
  // A run of `steps` steps from time t_start, its start noised to alphas_cumprod `entry_alpha`.
  void plan(double t_start, int steps, float entry_alpha) {
    if (steps < kOrder)
      throw Error(ErrorKind::Usage,
                  "unipc_a1111 (A1111's UniPC, of order 3) needs 3 or more steps (A1111 stops with "
                  "\"UniPC order must be < sampling steps\")");
    times_ = torch::linspace(t_start, kFirstTime, steps + 1, torch::kFloat32);
    const auto model_times = (times_.slice(0, 0, steps) - kFirstTime) * 1000.;
    timesteps_.clear();
    for (int64_t i = 0; i < steps; ++i) timesteps_.push_back(model_times[i].item<float>());
    entry_alpha_ = entry_alpha;
  }

  // Call i's input time, where step i ends, as a [1] tensor.
  torch::Tensor time(size_t i) const { return times_.slice(0, static_cast<int64_t>(i), static_cast<int64_t>(i) + 1); }

  torch::Tensor log_mean_coeff(const torch::Tensor& t) const {
    return interpolate(t.reshape({-1, 1}), t_array_, log_alpha_array_).reshape({-1});
  }
  torch::Tensor alpha(const torch::Tensor& t) const { return torch::exp(log_mean_coeff(t)); }
  torch::Tensor std_dev(const torch::Tensor& t) const { return torch::sqrt(1. - torch::exp(2. * log_mean_coeff(t))); }
  torch::Tensor lambda(const torch::Tensor& t) const {
    const auto log_mean = log_mean_coeff(t);
    return log_mean - 0.5 * torch::log(1. - torch::exp(2. * log_mean));
  }

  // The noise A1111's timestep denoiser returns: the output itself, or for v-prediction the noise implied at the
  // call's timestep rounded down (CompVisTimestepsVDenoiser).
  torch::Tensor noise_of(const torch::Tensor& model_output, const torch::Tensor& sample, size_t call) const {
    const auto t = static_cast<size_t>(timesteps_[call]);
    return a1111_eps_of(model_output, sample, sqrt_alphas_cumprod_[t], sqrt_one_minus_alphas_cumprod_[t],
                        v_prediction_);
  }

  torch::Tensor data_prediction(const torch::Tensor& x, const torch::Tensor& noise, const torch::Tensor& t) const {
    return (x - expand(std_dev(t)) * noise) / expand(alpha(t));
  }

  // multistep_uni_pc_bh_update's predictor to time t of order `order` from x and the kept data predictions; with
  // `corrector`, what the call at t needs to correct it (pending_).
  torch::Tensor predict(const torch::Tensor& x, int order, const torch::Tensor& t, bool corrector) {
    const auto& t_prev_0 = model_times_.back();
    const auto& model_prev_0 = models_.back();
    const auto lambda_prev_0 = lambda(t_prev_0), lambda_t = lambda(t);
    const auto sigma_prev_0 = std_dev(t_prev_0), sigma_t = std_dev(t);
    const auto alpha_t = alpha(t);
    const auto h = lambda_t - lambda_prev_0;

    std::vector<float> rks;
    std::vector<torch::Tensor> d1s;
    for (int i = 1; i < order; ++i) {
      const size_t back = models_.size() - 1 - static_cast<size_t>(i);
      const auto rk = ((lambda(model_times_[back]) - lambda_prev_0) / h)[0];
      rks.push_back(rk.item<float>());
      d1s.push_back((models_[back] - model_prev_0) / rk);
    }
    rks.push_back(1.0f);
    const auto rks_tensor = torch::tensor(rks, torch::kFloat32);

    const auto hh = -h[0];
    const auto h_phi_1 = torch::expm1(hh);
    auto h_phi_k = h_phi_1 / hh - 1;
    const auto& b_h = hh;  // bh1
    std::vector<torch::Tensor> r;
    std::vector<float> b;
    int64_t factorial_i = 1;
    for (int i = 1; i <= order; ++i) {
      r.push_back(torch::pow(rks_tensor, i - 1));
      b.push_back((h_phi_k * factorial_i / b_h).item<float>());
      factorial_i *= i + 1;
      h_phi_k = h_phi_k / hh - 1.0 / static_cast<double>(factorial_i);
    }
    const auto r_matrix = torch::stack(r);
    const auto b_vector = torch::tensor(b, torch::kFloat32);

    const auto stacked = d1s.empty() ? torch::Tensor() : torch::stack(d1s, 1);
    const auto base = expand(sigma_t / sigma_prev_0) * x - expand(alpha_t * h_phi_1) * model_prev_0;
    const auto coefficient = expand(alpha_t * b_h);
    torch::Tensor x_t = base;
    if (stacked.defined()) {
      const auto rhos_p = order == 2
                              ? torch::tensor({0.5f}, torch::kFloat32)
                              : torch::linalg_solve(r_matrix.slice(0, 0, -1).slice(1, 0, -1), b_vector.slice(0, 0, -1));
      x_t = base - coefficient * torch::einsum("k,bkchw->bchw", {rhos_p, stacked});
    }
    if (corrector) {
      const auto rhos_c = order == 1 ? torch::tensor({0.5f}, torch::kFloat32) : torch::linalg_solve(r_matrix, b_vector);
      pending_ = {base, coefficient, rhos_c, stacked, model_prev_0};
    }
    return x_t;
  }

  bool v_prediction_;
  int steps_ = 0;  // the steps asked for, whose schedule a hires pass enters
  std::vector<float> alphas_cumprod_, sqrt_alphas_cumprod_, sqrt_one_minus_alphas_cumprod_;
  std::vector<int64_t> spaced_;  // A1111's DDIM timesteps, ascending
  torch::Tensor t_array_, log_alpha_array_;
  torch::Tensor times_;  // the run's continuous times, one per step and the end
  float entry_alpha_ = 1.0f;
  // The last kOrder calls' data predictions and times, oldest first.
  std::vector<torch::Tensor> models_, model_times_;
  // The step the next call ends: its predictor's base and scale, corrector weights, differences and last model.
  struct Pending {
    torch::Tensor base, coefficient, rhos_c, d1s, model_prev_0;
  } pending_;
};

}  // namespace

std::unique_ptr<Scheduler> make_a1111_unipc(const SchedulerConfig& config, int steps) {
  return std::make_unique<A1111UniPc>(config, steps);
}

}  // namespace txt2img::detail
