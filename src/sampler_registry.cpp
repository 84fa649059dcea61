// The samplers by name: which exist (diffusers', k-diffusion's and A1111's, each on its sigma schedules), the names
// other tools give them, what each can do besides stepping through a whole schedule, and make_scheduler, which
// builds one.
#include <algorithm>
#include <cctype>
#include <map>

#include "join.hpp"
#include "scheduler_impl.hpp"
#include "txt2img/error.hpp"
#include "txt2img/scheduler.hpp"

namespace txt2img {
namespace {

// What a sampler does besides stepping through a whole schedule.
enum Capability : unsigned {
  kEta = 1,           // takes DDIM's eta
  kStartsLate = 2,    // start_at takes any step (see why_it_cannot_start_later)
  kZeroSnr = 4,       // its diffusers class has rescale_betas_zero_snr (the others would run another noise schedule)
  kEtaAncestral = 8,  // takes k-diffusion's eta, the scale of its ancestral or SDE noise
};

struct Sampler {
  std::string name;
  unsigned capabilities;
};

// In the order help texts list them.
const Sampler kSamplers[] = {
    {"ddim", kEta | kStartsLate | kZeroSnr},
    {"ddim_a1111", kEta | kStartsLate},
    {"pndm", 0},
    {"plms_a1111", 0},
    {"ddpm", kStartsLate | kZeroSnr},
    {"euler", kStartsLate | kZeroSnr},
    {"euler_karras", kStartsLate | kZeroSnr},
    {"euler_exponential", kStartsLate | kZeroSnr},
    {"euler_a", kStartsLate | kZeroSnr | kEtaAncestral},
    {"euler_a_karras", kStartsLate | kZeroSnr | kEtaAncestral},
    {"euler_a_exponential", kStartsLate | kZeroSnr | kEtaAncestral},
    {"heun", kStartsLate},
    {"heun_karras", kStartsLate},
    {"heun_exponential", kStartsLate},
    {"dpm2", kStartsLate},
    {"dpm2_karras", kStartsLate},
    {"dpm2_exponential", kStartsLate},
    {"dpm2_a", kStartsLate | kEtaAncestral},
    {"dpm2_a_karras", kStartsLate | kEtaAncestral},
    {"dpm2_a_exponential", kStartsLate | kEtaAncestral},
    {"dpmpp_2s_a", kStartsLate | kEtaAncestral},
    {"dpmpp_2s_a_karras", kStartsLate | kEtaAncestral},
    {"dpmpp_2s_a_exponential", kStartsLate | kEtaAncestral},
    {"dpmpp_sde", kStartsLate | kEtaAncestral},
    {"dpmpp_sde_karras", kStartsLate | kEtaAncestral},
    {"dpmpp_sde_exponential", kStartsLate | kEtaAncestral},
    {"dpmpp_2m", kStartsLate | kZeroSnr},
    {"dpmpp_2m_karras", kStartsLate | kZeroSnr},
    {"dpmpp_2m_sde", kStartsLate | kZeroSnr},
    {"dpmpp_2m_sde_karras", kStartsLate | kZeroSnr},
    {"dpmpp_2m_sde_a1111", kStartsLate | kEtaAncestral},
    {"dpmpp_2m_sde_a1111_karras", kStartsLate | kEtaAncestral},
    {"dpmpp_2m_sde_a1111_exponential", kStartsLate | kEtaAncestral},
    {"dpmpp_2m_sde_heun", kStartsLate | kEtaAncestral},
    {"dpmpp_2m_sde_heun_karras", kStartsLate | kEtaAncestral},
    {"dpmpp_2m_sde_heun_exponential", kStartsLate | kEtaAncestral},
    {"dpmpp_3m_sde", kStartsLate | kEtaAncestral},
    {"dpmpp_3m_sde_karras", kStartsLate | kEtaAncestral},
    {"dpmpp_3m_sde_exponential", kStartsLate | kEtaAncestral},
    {"restart", kStartsLate},
    {"restart_karras", kStartsLate},
    {"restart_exponential", kStartsLate},
    {"dpm_fast", kStartsLate | kEtaAncestral},
    {"lms", kStartsLate},
    {"lms_karras", kStartsLate},
    {"lms_exponential", kStartsLate},
    {"unipc", kStartsLate | kZeroSnr},
    {"unipc_karras", kStartsLate | kZeroSnr},
    {"unipc_a1111", kStartsLate},
    {"deis", kStartsLate},
    {"deis_karras", kStartsLate},
    {"lcm", kZeroSnr},
    {"lcm_a1111", kStartsLate},
    {"tcd", kEta | kZeroSnr},
};

// The sigma schedules by the suffix that names them in a sampler's name ("" for the spaced timesteps' own), and by
// the label AUTOMATIC1111's "Schedule type" field gives them.
struct ScheduleName {
  detail::SigmaSchedule kind;
  const char* name;
  const char* a1111_label;
  bool a1111;  // one of AUTOMATIC1111's own schedule types, which diffusers has no option for
};
constexpr ScheduleName kScheduleNames[] = {
    {detail::SigmaSchedule::kSpaced, "", "", false},
    {detail::SigmaSchedule::kKarras, "karras", "Karras", false},
    {detail::SigmaSchedule::kExponential, "exponential", "Exponential", false},
    {detail::SigmaSchedule::kUniform, "uniform", "Uniform", true},
    {detail::SigmaSchedule::kSgmUniform, "sgm_uniform", "SGM Uniform", true},
    {detail::SigmaSchedule::kAlignYourSteps, "align_your_steps", "Align Your Steps", true},
    {detail::SigmaSchedule::kSimple, "simple", "Simple", true},
    {detail::SigmaSchedule::kNormal, "normal", "Normal", true},
    {detail::SigmaSchedule::kPolyexponential, "polyexponential", "Polyexponential", true},
    {detail::SigmaSchedule::kBeta, "beta", "Beta", true},
    {detail::SigmaSchedule::kDdim, "ddim", "DDIM", true},
    {detail::SigmaSchedule::kKlOptimal, "kl_optimal", "KL Optimal", true},
};

// The names of A1111's own schedule types, in table order.
const std::vector<std::string>& a1111_schedule_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& schedule : kScheduleNames)
      if (schedule.a1111) out.emplace_back(schedule.name);
    return out;
  }();
  return names;
}

// The samplers here that run on A1111's own schedule types, as A1111 runs its k-diffusion samplers on any schedule:
// each pair is a sampler, named "euler_sgm_uniform".
constexpr const char* kA1111ScheduleSamplers[] = {"euler",
                                                  "euler_a",
                                                  "heun",
                                                  "dpm2",
                                                  "dpm2_a",
                                                  "dpmpp_2s_a",
                                                  "dpmpp_sde",
                                                  "lms",
                                                  "dpmpp_2m",
                                                  "dpmpp_2m_sde",
                                                  "dpmpp_2m_sde_a1111",
                                                  "dpmpp_2m_sde_heun",
                                                  "dpmpp_3m_sde",
                                                  "restart"};

// kSamplers, then the samplers on A1111's schedules (which start late but run no zero-terminal-SNR model).
const std::vector<Sampler>& all_samplers() {
  static const std::vector<Sampler> samplers = [] {
    std::vector<Sampler> out(std::begin(kSamplers), std::end(kSamplers));
    for (const auto& schedule : a1111_schedule_names())
      for (const char* sampler : kA1111ScheduleSamplers) {
        const auto base = std::find_if(out.begin(), out.end(), [&](const Sampler& s) { return s.name == sampler; });
        out.push_back({std::string(sampler) + "_" + schedule, kStartsLate | (base->capabilities & kEtaAncestral)});
      }
    return out;
  }();
  return samplers;
}

// The sampler `name` (or an alias of one, canonical_scheduler_name's) stands for, or nullptr.
const Sampler* find_sampler(const std::string& name) {
  const std::string canonical = canonical_scheduler_name(name);
  for (const auto& s : all_samplers())
    if (s.name == canonical) return &s;
  return nullptr;
}

// The names of kSamplers that have (or, `with` false, lack) every capability in `capabilities`, in table order,
// joined.
std::string sampler_list(unsigned capabilities, bool with = true, const char* last = ", ") {
  std::vector<std::string> found;
  for (const auto& s : kSamplers)
    if (((s.capabilities & capabilities) == capabilities) == with) found.push_back(s.name);
  return join(found, ", ", last);
}

// A name as the aliases are keyed: lower case letters and digits only, "++" read as "pp" ("DPM++ 2M Karras" is
// "dpmpp2mkarras", and so is "dpmpp_2m_karras").
std::string alias_key(const std::string& name) {
  std::string key;
  for (size_t i = 0; i < name.size(); ++i) {
    if (name.compare(i, 2, "++") == 0) {
      key += "pp";
      ++i;
    } else if (std::isalnum(static_cast<unsigned char>(name[i]))) {
      key += static_cast<char>(std::tolower(static_cast<unsigned char>(name[i])));
    }
  }
  return key;
}

}  // namespace

const std::vector<std::string>& scheduler_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& s : all_samplers()) out.emplace_back(s.name);
    return out;
  }();
  return names;
}

std::string sampler_names_text() {
  return sampler_list(0) + "; and on AUTOMATIC1111's schedule types " + join(a1111_schedule_names(), ", ", " and ") +
         ": " + join({std::begin(kA1111ScheduleSamplers), std::end(kA1111ScheduleSamplers)}, ", ", " and ") +
         " with the schedule after the name (euler_sgm_uniform, dpmpp_2m_align_your_steps)";
}

bool sampler_takes_eta(const std::string& name) {
  const Sampler* sampler = find_sampler(name);
  return sampler && (sampler->capabilities & kEta);
}

bool sampler_takes_eta_ancestral(const std::string& name) {
  const Sampler* sampler = find_sampler(name);
  return sampler && (sampler->capabilities & kEtaAncestral);
}

bool is_scheduler_name(const std::string& name) {
  const auto& names = scheduler_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string canonical_scheduler_name(const std::string& name) {
  static const std::map<std::string, std::string> aliases = [] {
    // Other tools' names that are not ours spelt otherwise: k-diffusion's, A1111's PLMS, diffusers' classes.
    std::map<std::string, std::string> out = {
        {"plms", "pndm"},
        {"ddimscheduler", "ddim"},
        {"pndmscheduler", "pndm"},
        {"keuler", "euler"},
        {"eulerdiscretescheduler", "euler"},
        {"keulera", "euler_a"},
        {"eulerancestral", "euler_a"},
        {"eulerancestraldiscretescheduler", "euler_a"},
        {"klms", "lms"},
        {"lmsdiscretescheduler", "lms"},
        {"kdpmpp2m", "dpmpp_2m"},
        {"dpmsolvermultistepscheduler", "dpmpp_2m"},
        {"kdpmpp2mkarras", "dpmpp_2m_karras"},
        {"lcmscheduler", "lcm"},
        {"tcdscheduler", "tcd"},
        {"keulerkarras", "euler_karras"},
        {"kheun", "heun"},
        {"heundiscretescheduler", "heun"},
        {"kheunkarras", "heun_karras"},
        {"kdpmpp2msde", "dpmpp_2m_sde"},
        {"kdpmpp2msdekarras", "dpmpp_2m_sde_karras"},
        {"klmskarras", "lms_karras"},
        {"unipcmultistepscheduler", "unipc"},
        {"ddpmscheduler", "ddpm"},
        {"deismultistepscheduler", "deis"},
        {"kdpm2", "dpm2"},
        {"kdpm2discretescheduler", "dpm2"},
        {"kdpm2karras", "dpm2_karras"},
        {"kdpm2a", "dpm2_a"},
        {"kdpm2ancestraldiscretescheduler", "dpm2_a"},
        {"kdpm2akarras", "dpm2_a_karras"},
        {"kdpmpp2sa", "dpmpp_2s_a"},
        {"kdpmppsde", "dpmpp_sde"},
        {"kdpmpp2msdeheun", "dpmpp_2m_sde_heun"},
        {"kdpmpp3msde", "dpmpp_3m_sde"},
        {"kdpmfast", "dpm_fast"},
        // A1111's own aliases of its Karras samplers
        {"klmska", "lms_karras"},
        {"kdpm2ka", "dpm2_karras"},
        {"kdpm2aka", "dpm2_a_karras"},
        {"kdpmpp2saka", "dpmpp_2s_a_karras"},
        {"kdpmppsdeka", "dpmpp_sde_karras"},
        {"kdpmpp2mka", "dpmpp_2m_karras"},
    };
    // Each of ours in any case and punctuation: A1111's "Euler a", "DPM++ 2M SDE Karras", "DPM2 a Exponential".
    for (const auto& s : all_samplers()) out.emplace(alias_key(s.name), s.name);
    return out;
  }();
  const auto it = aliases.find(alias_key(name));
  return it == aliases.end() ? name : it->second;
}

SamplerName split_sampler_name(const std::string& name) {
  // The longest schedule the name ends in: "euler_sgm_uniform" is euler on sgm_uniform, not euler_sgm on uniform.
  SamplerName split = {name, ""};
  for (const auto& listed : kScheduleNames) {
    const std::string schedule = listed.name;
    if (schedule.empty()) continue;
    const std::string suffix = "_" + schedule;
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        schedule.size() > split.schedule.size())
      split = {name.substr(0, name.size() - suffix.size()), schedule};
  }
  return split;
}

std::string a1111_schedule_label(const std::string& schedule) {
  for (const auto& listed : kScheduleNames)
    if (schedule == listed.name) return listed.a1111_label;
  return schedule;
}

std::string schedule_from_a1111_label(const std::string& label) {
  for (const auto& listed : kScheduleNames)
    if (label == listed.a1111_label || label == listed.name) return listed.name;
  return label == "SGMUniform" ? "sgm_uniform" : "";  // an alias A1111 reads
}

bool on_a1111_schedule(const std::string& name) {
  return detail::is_a1111_schedule(detail::schedule_named(split_sampler_name(name).schedule));
}

void check_etas_taken(const std::vector<std::string>& samplers, double eta, double eta_ancestral) {
  // Above 1, DDIM's noise can exceed the variance a step leaves for it: the square root of a negative number; A1111's
  // k-diffusion eta goes to 1 too.
  if (!(eta >= 0.0 && eta <= 1.0)) throw Error(ErrorKind::Usage, "eta must be from 0 to 1, got " + std::to_string(eta));
  if (!(eta_ancestral >= 0.0 && eta_ancestral <= 1.0))
    throw Error(ErrorKind::Usage, "eta ancestral must be from 0 to 1, got " + std::to_string(eta_ancestral));
  const auto taken = [&](unsigned capability) {
    return std::any_of(samplers.begin(), samplers.end(), [&](const std::string& name) {
      const Sampler* sampler = find_sampler(name);
      return sampler && (sampler->capabilities & capability);
    });
  };
  // Refused rather than silently ignored (diffusers drops an eta its scheduler lacks), so that a user never believes
  // it had an effect.
  const std::string which = join(samplers, ", ", " or ");
  if (eta != 0.0 && !taken(kEta))
    throw Error(ErrorKind::Usage,
                "eta applies only to the " + sampler_list(kEta, true, " and ") + " samplers, not to " + which);
  if (eta_ancestral != 1.0 && !taken(kEtaAncestral)) {
    std::vector<std::string> bases;
    for (const auto& s : kSamplers)
      if ((s.capabilities & kEtaAncestral) && split_sampler_name(s.name).schedule.empty()) bases.push_back(s.name);
    throw Error(ErrorKind::Usage, "eta ancestral applies only to the " + join(bases, ", ", " and ") +
                                      " samplers (on any schedule), not to " + which);
  }
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const SchedulerConfig& config, int steps, double eta,
                                          double eta_ancestral) {
  const Sampler* it = find_sampler(name);
  if (!it) throw Error(ErrorKind::Usage, "unknown sampler \"" + name + "\" (known: " + sampler_names_text() + ")");
  if (steps < 1 || steps > config.num_train_timesteps)
    throw Error(ErrorKind::Usage, "steps must be between 1 and " + std::to_string(config.num_train_timesteps) +
                                      ", got " + std::to_string(steps));
  check_etas_taken({name}, eta, eta_ancestral);

  using detail::SigmaSchedule;
  const std::string sampler = it->name;
  const auto [base, schedule_name] = split_sampler_name(sampler);
  const SigmaSchedule schedule = detail::schedule_named(schedule_name);
  if (config.rescale_betas_zero_snr && !(it->capabilities & kZeroSnr))
    throw Error(ErrorKind::Usage,
                "the " + sampler + " sampler cannot run a zero-terminal-SNR model (" +
                    (detail::is_a1111_schedule(schedule)
                         ? "A1111's schedules start at the model's largest training sigma, infinite for such a model"
                     : sampler == "ddim_a1111" || sampler == "plms_a1111" || sampler == "unipc_a1111" ||
                             sampler == "lcm_a1111" || sampler == "dpm_fast"
                         ? "it runs on SD's training schedule as A1111's model holds it"
                         : "diffusers' scheduler for it has no rescale_betas_zero_snr") +
                    "); use " + sampler_list(kZeroSnr));

  if (sampler == "ddim") return detail::make_ddim(config, steps, eta);
  if (sampler == "ddim_a1111") return detail::make_a1111_ddim(config, steps, eta);
  if (sampler == "plms_a1111") return detail::make_a1111_plms(config, steps);
  if (sampler == "unipc_a1111") return detail::make_a1111_unipc(config, steps);
  if (sampler == "lcm_a1111") return detail::make_a1111_lcm(config, steps);
  if (sampler == "dpm_fast") return detail::make_a1111_dpm_fast(config, steps, eta_ancestral);
  if (sampler == "pndm") return detail::make_pndm(config, steps);
  if (sampler == "ddpm") return detail::make_ddpm(config, steps);
  if (sampler == "lcm") return detail::make_lcm(config, steps);
  if (sampler == "tcd") return detail::make_tcd(config, steps, eta);
  if (base == "euler_a") return detail::make_euler_ancestral(config, steps, schedule, eta_ancestral);
  if (base == "euler") return detail::make_euler(config, steps, schedule);
  if (base == "heun") return detail::make_heun(config, steps, schedule);
  if (base == "dpm2") return detail::make_dpm2(config, steps, schedule);
  if (base == "dpm2_a") return detail::make_dpm2_ancestral(config, steps, schedule, eta_ancestral);
  if (base == "dpmpp_2s_a") return detail::make_dpmpp_2s_ancestral(config, steps, schedule, eta_ancestral);
  if (base == "dpmpp_sde") return detail::make_dpmpp_sde(config, steps, schedule, eta_ancestral);
  if (base == "dpmpp_2m_sde_a1111" || base == "dpmpp_2m_sde_heun")
    return detail::make_a1111_dpmpp_2m_sde(config, steps, schedule, base == "dpmpp_2m_sde_heun", eta_ancestral);
  if (base == "dpmpp_3m_sde") return detail::make_dpmpp_3m_sde(config, steps, schedule, eta_ancestral);
  if (base == "restart") return detail::make_restart(config, steps, schedule);
  if (base == "lms") return detail::make_lms(config, steps, schedule);
  if (base == "unipc") return detail::make_unipc(config, steps, schedule == SigmaSchedule::kKarras);
  if (base == "deis") return detail::make_deis(config, steps, schedule == SigmaSchedule::kKarras);
  if (base == "dpmpp_2m" || base == "dpmpp_2m_sde")
    return detail::make_dpmpp_2m(config, steps, schedule, base == "dpmpp_2m_sde");
  throw Error(ErrorKind::Usage, "scheduler \"" + sampler + "\" is listed but not built");
}

namespace detail {

std::string samplers_that_start_late() { return "every sampler but " + sampler_list(kStartsLate, false, " and "); }

const char* schedule_name(SigmaSchedule schedule) {
  for (const auto& [kind, name, label, a1111] : kScheduleNames)
    if (kind == schedule) return name;
  throw Error(ErrorKind::Runtime, "schedule_name: unlisted schedule");
}

SigmaSchedule schedule_named(const std::string& name) {
  for (const auto& [kind, listed, label, a1111] : kScheduleNames)
    if (name == listed) return kind;
  throw Error(ErrorKind::Runtime, "no sigma schedule is named \"" + name + "\"");
}

std::string schedule_suffix(SigmaSchedule schedule) {
  const std::string name = schedule_name(schedule);
  return name.empty() ? name : "_" + name;
}

bool is_a1111_schedule(SigmaSchedule schedule) {
  for (const auto& [kind, name, label, a1111] : kScheduleNames)
    if (kind == schedule) return a1111;
  return false;
}

}  // namespace detail
}  // namespace txt2img
