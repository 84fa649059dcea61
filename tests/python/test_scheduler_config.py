"""The bundle's scheduler description from a source's scheduler config, and the sampler --sampler model runs."""

import pytest
import torch

from txt2img_convert import presets, scheduler_config
from txt2img_convert.checkpoints import ConversionError


def test_scheduler_fields():
    # Configs of early diffusers releases lack timestep_spacing / prediction_type.
    fields = scheduler_config.scheduler_fields({"beta_end": 0.02, "steps_offset": 0, "set_alpha_to_one": True})
    assert fields == {**presets.SD1_SCHEDULER, "beta_end": 0.02, "steps_offset": 0, "set_alpha_to_one": True,
                      "class": None, "sampler": None}
    assert scheduler_config.scheduler_fields(None) == {**presets.SD1_SCHEDULER, "class": None, "sampler": None}
    assert scheduler_config.scheduler_fields({"trained_betas": None})["beta_schedule"] == "scaled_linear"
    with pytest.raises(ConversionError, match="trained_betas, a noise schedule of its own"):
        scheduler_config.scheduler_fields({"beta_schedule": "scaled_linear", "trained_betas": [0.001] * 1000})


@pytest.mark.parametrize("config, sampler", [
    ({"_class_name": "PNDMScheduler", "skip_prk_steps": True}, "pndm"),
    ({"_class_name": "PNDMScheduler", "skip_prk_steps": False}, None),  # PRK warm-up steps
    ({"_class_name": "DDIMScheduler", "clip_sample": False}, "ddim"),
    # The class clips x0 by default, but StableDiffusionPipeline turns that off when it loads the scheduler.
    ({"_class_name": "DDIMScheduler"}, "ddim"),
    ({"_class_name": "DDIMScheduler", "clip_sample": True, "steps_offset": 0}, "ddim"),
    ({"_class_name": "DDIMScheduler", "clip_sample": False, "timestep_spacing": "trailing"}, None),
    ({"_class_name": "PNDMScheduler", "skip_prk_steps": True, "timestep_spacing": "leading"}, "pndm"),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading"}, None),
    ({"_class_name": "EulerDiscreteScheduler", "final_sigmas_type": "sigma_min"}, None),
    ({"_class_name": "EulerAncestralDiscreteScheduler", "use_karras_sigmas": True}, None),
    # Order 2 with a final sigma of zero takes a first-order last step whatever these two say.
    ({"_class_name": "DPMSolverMultistepScheduler", "euler_at_final": True}, "dpmpp_2m"),
    ({"_class_name": "DPMSolverMultistepScheduler", "lower_order_final": False}, "dpmpp_2m"),
    ({"_class_name": "DPMSolverMultistepScheduler", "lower_order_final": False, "final_sigmas_type": "sigma_min"},
     None),
    ({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3, "lower_order_final": False}, None),
    ({"_class_name": "UniPCMultistepScheduler", "lower_order_final": False}, None),
    # Karras sigmas make the multistep solvers' spacing irrelevant, not the Euler family's (spaced, then Karras).
    ({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True, "timestep_spacing": "leading"},
     "dpmpp_2m_karras"),
    ({"_class_name": "UniPCMultistepScheduler", "use_karras_sigmas": True, "timestep_spacing": "trailing"},
     "unipc_karras"),
    ({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True, "timestep_spacing": "leading"}, None),
    ({"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -float("inf"),
      "thresholding": False}, "dpmpp_2m"),
    ({"_class_name": "UniPCMultistepScheduler", "disable_corrector": [0]}, None),
    ({"_class_name": "LCMScheduler", "timestep_scaling": 5.0}, None),
    ({"_class_name": "LCMScheduler"}, "lcm"),
    ({"_class_name": "EulerAncestralDiscreteScheduler"}, "euler_a"),
    ({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": False}, "euler"),
    ({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True}, "euler_karras"),
    ({"_class_name": "HeunDiscreteScheduler"}, "heun"),
    ({"_class_name": "KDPM2DiscreteScheduler"}, "dpm2"),
    ({"_class_name": "KDPM2AncestralDiscreteScheduler", "use_karras_sigmas": True}, "dpm2_a_karras"),
    ({"_class_name": "KDPM2DiscreteScheduler", "use_exponential_sigmas": True}, "dpm2_exponential"),
    ({"_class_name": "EulerDiscreteScheduler", "use_exponential_sigmas": True}, "euler_exponential"),
    ({"_class_name": "DPMSolverMultistepScheduler", "use_exponential_sigmas": True}, None),
    ({"_class_name": "EulerAncestralDiscreteScheduler", "use_exponential_sigmas": True}, None),
    ({"_class_name": "HeunDiscreteScheduler", "use_exponential_sigmas": True, "use_karras_sigmas": True}, None),
    ({"_class_name": "LMSDiscreteScheduler", "use_karras_sigmas": True}, "lms_karras"),
    ({"_class_name": "DPMSolverMultistepScheduler"}, "dpmpp_2m"),
    ({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}, "dpmpp_2m_karras"),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
     "dpmpp_2m_sde_karras"),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver"}, None),
    ({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}, None),
    ({"_class_name": "DPMSolverMultistepScheduler", "solver_type": "heun"}, None),
    ({"_class_name": "UniPCMultistepScheduler"}, "unipc"),
    ({"_class_name": "UniPCMultistepScheduler", "use_karras_sigmas": True}, "unipc_karras"),
    ({"_class_name": "UniPCMultistepScheduler", "solver_type": "bh1"}, None),
    ({"_class_name": "DPMSolverSinglestepScheduler"}, None),
    # DDPM with SD's configuration: the class clips x0 by default, which StableDiffusionPipeline turns off.
    ({"_class_name": "DDPMScheduler"}, "ddpm"),
    ({"_class_name": "DDPMScheduler", "clip_sample": True, "variance_type": "fixed_small"}, "ddpm"),
    ({"_class_name": "DDPMScheduler", "variance_type": "fixed_large"}, None),
    ({"_class_name": "DDPMScheduler", "variance_type": "learned_range"}, None),
    ({"_class_name": "DDPMScheduler", "timestep_spacing": "trailing"}, None),
    ({"_class_name": "DDPMScheduler", "use_karras_sigmas": True}, None),  # the class has no such option
    ({"_class_name": "DDPMScheduler", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, "ddpm"),
    ({"_class_name": "DEISMultistepScheduler"}, "deis"),
    ({"_class_name": "DEISMultistepScheduler", "use_karras_sigmas": True, "timestep_spacing": "leading"},
     "deis_karras"),
    # The class reads DPM-Solver's algorithm and solver types as its own.
    ({"_class_name": "DEISMultistepScheduler", "algorithm_type": "dpmsolver++", "solver_type": "midpoint"}, "deis"),
    ({"_class_name": "DEISMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}, None),
    ({"_class_name": "DEISMultistepScheduler", "solver_order": 3}, None),
    ({"_class_name": "DEISMultistepScheduler", "lower_order_final": False}, None),
    ({"_class_name": "DEISMultistepScheduler", "timestep_spacing": "trailing"}, None),
    ({"_class_name": "DEISMultistepScheduler", "use_exponential_sigmas": True}, None),
    ({"_class_name": "DEISMultistepScheduler", "rescale_betas_zero_snr": True}, None),
    # Zero terminal SNR: the classes that have the option, on the model's own spacing, which txt2img then keeps.
    ({"_class_name": "DDIMScheduler", "clip_sample": False, "rescale_betas_zero_snr": True,
      "timestep_spacing": "trailing"}, "ddim"),
    ({"_class_name": "EulerDiscreteScheduler", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
     "euler"),
    ({"_class_name": "DPMSolverMultistepScheduler", "rescale_betas_zero_snr": True}, "dpmpp_2m"),
    ({"_class_name": "HeunDiscreteScheduler", "rescale_betas_zero_snr": True}, None),  # diffusers' Heun ignores it
    ({"_class_name": "PNDMScheduler", "skip_prk_steps": True, "rescale_betas_zero_snr": True}, None),
    ({}, None),
])
def test_the_source_scheduler_names_a_sampler(config, sampler):
    fields = scheduler_config.scheduler_fields(config)
    assert (fields["class"], fields["sampler"]) == (config.get("_class_name"), sampler)


def test_training_schedule():
    """What the source's scheduler config says, then an LDM config's schedule, then the command line's."""
    source = {"_class_name": "PNDMScheduler", "timestep_spacing": "leading", "prediction_type": "epsilon"}
    assert scheduler_config.training_schedule(source, None, None, False) is source
    assert scheduler_config.training_schedule(source, {"prediction_type": "v_prediction"}, None, False)["prediction_type"] == \
        "v_prediction"
    assert scheduler_config.training_schedule(source, {"prediction_type": "v_prediction"}, "epsilon", False)["prediction_type"] == \
        "epsilon"
    # Zero terminal SNR newly set brings trailing spacing; a source that already rescales keeps its own.
    fields = scheduler_config.scheduler_fields(scheduler_config.training_schedule(source, None, "v_prediction", True))
    assert (fields["rescale_betas_zero_snr"], fields["timestep_spacing"], fields["prediction_type"]) == \
        (True, "trailing", "v_prediction")
    assert fields["sampler"] is None  # PNDM has no zero-terminal-SNR option
    own = {"_class_name": "DDIMScheduler", "clip_sample": False, "rescale_betas_zero_snr": True,
           "timestep_spacing": "linspace", "prediction_type": "v_prediction"}
    assert scheduler_config.training_schedule(own, None, None, True)["timestep_spacing"] == "linspace"
    with pytest.raises(ConversionError, match="--zero-terminal-snr needs a v-prediction model"):
        scheduler_config.training_schedule(source, None, None, True)
    assert scheduler_config.scheduler_fields(None)["rescale_betas_zero_snr"] is False


def ldm_alphas_cumprod(linear_start, linear_end, dtype, steps=1000, compute=torch.float64):
    """The alphas_cumprod buffer LDM saves in a single file: its "linear" schedule (diffusers' scaled_linear)."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, steps, dtype=compute) ** 2
    return torch.cumprod(1.0 - betas, 0).to(dtype)


def test_a_single_files_schedule_is_compared_with_the_bundles():
    fields = scheduler_config.scheduler_fields(None)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):  # as saved, in any precision
        assert not scheduler_config.differs_from_file(ldm_alphas_cumprod(0.00085, 0.012, dtype), fields)
    assert not scheduler_config.differs_from_file(ldm_alphas_cumprod(0.00085, 0.012, torch.float32,
                                                                     compute=torch.float32), fields)
    assert scheduler_config.differs_from_file(ldm_alphas_cumprod(0.0001, 0.02, torch.float32), fields)
    assert scheduler_config.differs_from_file(ldm_alphas_cumprod(0.00085, 0.012, torch.float32, steps=999), fields)
    assert scheduler_config.differs_from_file(ldm_alphas_cumprod(0.00085, 0.0121, torch.float16), fields)
    linear = {**fields, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
    betas = torch.linspace(0.0001, 0.02, 1000, dtype=torch.float64)
    assert not scheduler_config.differs_from_file(torch.cumprod(1.0 - betas, 0).float(), linear)
    assert scheduler_config.differs_from_file(ldm_alphas_cumprod(0.00085, 0.012, torch.float32), linear)
