"""The bundle's scheduler description from a source's diffusers scheduler config (and what else is known of its
training), and the txt2img sampler that computes what that config describes (`txt2img --sampler model`)."""

from typing import Optional

import torch

from .checkpoints import ConversionError
from .presets import SD1_SCHEDULER


def training_schedule(config: Optional[dict], ldm: Optional[dict], prediction_type: Optional[str],
                      zero_terminal_snr: bool) -> Optional[dict]:
    """The source's scheduler config with what else is known of its training: an LDM config's schedule, then the
    command line's prediction type and zero terminal SNR. Zero terminal SNR newly set brings trailing timestep
    spacing, under which a run starts from pure noise (Lin et al. 2023, as diffusers recommends)."""
    if not ldm and prediction_type is None and not zero_terminal_snr:
        return config
    out = {**(config or {}), **(ldm or {})}
    if prediction_type is not None:
        out["prediction_type"] = prediction_type
    if zero_terminal_snr and out.get("prediction_type", "epsilon") == "epsilon":
        # At the last timestep the sample is pure noise, and a noise prediction says nothing of the image.
        raise ConversionError("--zero-terminal-snr needs a v-prediction model (zero terminal SNR leaves an epsilon "
                              "prediction nothing to predict at the last timestep): add --prediction-type "
                              "v_prediction if the model is one")
    if zero_terminal_snr and not out.get("rescale_betas_zero_snr"):
        out.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return out


def scheduler_fields(config: Optional[dict]) -> dict:
    """The bundle's scheduler description: the source's values where it states them, SD v1's otherwise; and the
    source's scheduler class ("class", None without one) with the txt2img sampler that computes it ("sampler", None
    where txt2img has none), which `txt2img --sampler model` runs."""
    config = config or {}
    if config.get("trained_betas") is not None:
        # diffusers runs these betas in place of beta_start, beta_end and beta_schedule, which txt2img would run.
        raise ConversionError("the scheduler config gives trained_betas, a noise schedule of its own, which txt2img "
                              "does not run; if the model was trained on the schedule its beta_start, beta_end and "
                              "beta_schedule describe, remove trained_betas from scheduler/scheduler_config.json")
    fields = {k: v if config.get(k) is None else config[k] for k, v in SD1_SCHEDULER.items()}
    return {**fields, "class": config.get("_class_name"), "sampler": source_sampler(config)}


def differs_from_file(file_alphas_cumprod: torch.Tensor, fields: dict) -> bool:
    """Whether a single file's alphas_cumprod buffer is another noise schedule than the linear or scaled_linear one of
    the bundle's scheduler `fields` (before any zero-terminal-SNR rescaling, which A1111 too makes on top of the
    file's). LDM computed the buffer in float64 and saved it in float32 or the file's precision; float32 computations
    of one schedule differ by about 1e-6 of its values."""
    n, start, end = fields["num_train_timesteps"], fields["beta_start"], fields["beta_end"]
    if fields["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
    elif fields["beta_schedule"] == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    else:
        return False  # no schedule of LDM's
    ours = torch.cumprod(1.0 - betas, 0)
    theirs = file_alphas_cumprod.detach().to("cpu", torch.float64).reshape(-1)
    if theirs.shape != ours.shape:
        return True
    dtype = file_alphas_cumprod.dtype
    rounding = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return not torch.allclose(theirs, ours, rtol=max(1e-5, rounding), atol=0)


# What each sampler of txt2img computes, as diffusers v0.31 scheduler options: (the values it needs, the class's
# defaults for them). A config that sets one of them otherwise describes a computation txt2img does not make. The
# spacing is each class's default because txt2img runs every sampler with its own default spacing. DDIM's and DDPM's
# clip_sample is not among them: StableDiffusionPipeline turns it off on loading (as it sets steps_offset to 1).
_NOT_SET = {"thresholding": False, "rescale_betas_zero_snr": False, "use_beta_sigmas": False}
_SIGMA_SAMPLER = {"timestep_spacing": "linspace", "interpolation_type": "linear", "timestep_type": "discrete",
                  "final_sigmas_type": "zero", "sigma_min": None, "sigma_max": None, "clip_sample": False}
_MULTISTEP = {"timestep_spacing": "linspace", "solver_order": 2, "lower_order_final": True,
              "final_sigmas_type": "zero"}
_COMPUTED = {
    "DDIMScheduler": ({"timestep_spacing": "leading"}, {}),
    # The other variance types add noise of another scale (the learned ones need a U-Net that predicts a variance).
    "DDPMScheduler": ({"timestep_spacing": "leading", "variance_type": "fixed_small"}, {}),
    "PNDMScheduler": ({"timestep_spacing": "leading", "skip_prk_steps": True}, {"skip_prk_steps": False}),
    "LCMScheduler": ({"timestep_spacing": "leading", "clip_sample": False, "original_inference_steps": 50,
                      "timestep_scaling": 10.0}, {}),
    "EulerAncestralDiscreteScheduler": ({"timestep_spacing": "linspace"}, {}),
    "EulerDiscreteScheduler": (_SIGMA_SAMPLER, {}),
    "HeunDiscreteScheduler": (_SIGMA_SAMPLER, {}),
    "KDPM2DiscreteScheduler": (_SIGMA_SAMPLER, {}),
    "KDPM2AncestralDiscreteScheduler": (_SIGMA_SAMPLER, {}),
    "LMSDiscreteScheduler": (_SIGMA_SAMPLER, {}),
    "DPMSolverMultistepScheduler": ({**_MULTISTEP, "solver_type": "midpoint", "euler_at_final": False,
                                     "use_lu_lambdas": False, "lambda_min_clipped": -float("inf"),
                                     "variance_type": None}, {}),
    "UniPCMultistepScheduler": ({**_MULTISTEP, "solver_type": "bh2", "predict_x0": True, "disable_corrector": [],
                                 "solver_p": None}, {}),
    # No final_sigmas_type: DEIS ends at the smallest training sigma. The class reads algorithm_type "dpmsolver" and
    # "dpmsolver++" as "deis", and every other solver type it knows as "logrho" (source_sampler checks them).
    "DEISMultistepScheduler": ({"timestep_spacing": "linspace", "solver_order": 2, "lower_order_final": True}, {}),
}
# The classes whose use_karras_sigmas / use_exponential_sigmas txt2img computes (diffusers v0.31's multistep solvers
# fail on exponential sigmas).
_KARRAS = ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler",
           "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
           "DEISMultistepScheduler")
# The classes that have rescale_betas_zero_snr (the others ignore it, so a config setting it describes no one run).
_ZERO_SNR = ("DDIMScheduler", "DDPMScheduler", "LCMScheduler", "EulerDiscreteScheduler",
             "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
_EXPONENTIAL = ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler",
                "KDPM2AncestralDiscreteScheduler")
_SAMPLER_OF_CLASS = {"DDIMScheduler": "ddim", "PNDMScheduler": "pndm", "LCMScheduler": "lcm",
                     "EulerAncestralDiscreteScheduler": "euler_a", "EulerDiscreteScheduler": "euler",
                     "HeunDiscreteScheduler": "heun", "LMSDiscreteScheduler": "lms",
                     "KDPM2DiscreteScheduler": "dpm2", "KDPM2AncestralDiscreteScheduler": "dpm2_a",
                     "DPMSolverMultistepScheduler": "dpmpp_2m", "UniPCMultistepScheduler": "unipc",
                     "DDPMScheduler": "ddpm", "DEISMultistepScheduler": "deis"}


def source_sampler(config: dict) -> Optional[str]:
    """The txt2img sampler that computes what a diffusers scheduler config describes, or None: another class, or an
    option txt2img's samplers do not compute (another spacing than the class's default, except on a
    zero-terminal-SNR schedule or under DPM-Solver's, UniPC's and DEIS's Karras sigmas, PNDM's PRK steps, DPM-Solver
    of another order or algorithm, UniPC's bh1 variant, DEIS of another order, DDPM's other variance types,
    exponential sigmas on a multistep solver, zero terminal SNR on a class without it...). Options that change
    nothing are no refusal: DDIM's and DDPM's sample clipping (StableDiffusionPipeline turns it off), DPM-Solver order
    2's lower_order_final and euler_at_final with a final sigma of zero, the algorithm and solver types
    DEISMultistepScheduler reads as its own."""
    cls = config.get("_class_name")
    if cls not in _COMPUTED:
        return None
    needed, defaults = _COMPUTED[cls]
    zero_snr = cls in _ZERO_SNR and bool(config.get("rescale_betas_zero_snr"))
    karras, exponential = bool(config.get("use_karras_sigmas")), bool(config.get("use_exponential_sigmas"))
    not_set = {k: v for k, v in _NOT_SET.items() if k != "rescale_betas_zero_snr" or cls not in _ZERO_SNR}
    ignored = set()
    if zero_snr:  # txt2img keeps a zero-terminal-SNR model's spacing for every sampler
        ignored.add("timestep_spacing")
    if karras and cls in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"):
        ignored.add("timestep_spacing")  # their Karras sigmas span the whole training schedule, however spaced
    if (cls == "DPMSolverMultistepScheduler" and config.get("solver_order", 2) == 2
            and config.get("final_sigmas_type", "zero") == "zero"):
        ignored.update(("lower_order_final", "euler_at_final"))  # the last step is first order anyway
    needed = {k: v for k, v in needed.items() if k not in ignored}
    for key, value in {**not_set, **needed}.items():
        if config.get(key, defaults.get(key, value)) != value:
            return None
    sampler = _SAMPLER_OF_CLASS[cls]
    if cls == "DPMSolverMultistepScheduler":
        algorithm = config.get("algorithm_type", "dpmsolver++")
        if algorithm not in ("dpmsolver++", "sde-dpmsolver++"):
            return None
        sampler = "dpmpp_2m_sde" if algorithm == "sde-dpmsolver++" else "dpmpp_2m"
    if cls == "DEISMultistepScheduler" and (
            config.get("algorithm_type", "deis") not in ("deis", "dpmsolver", "dpmsolver++")
            or config.get("solver_type", "logrho") not in ("logrho", "midpoint", "heun", "bh1", "bh2")):
        return None  # diffusers' class refuses them
    if karras and exponential:
        return None
    if karras:
        return sampler + "_karras" if cls in _KARRAS else None
    if exponential:
        return sampler + "_exponential" if cls in _EXPONENTIAL else None
    return sampler
