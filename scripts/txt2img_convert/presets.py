"""Model configurations: SD v1.5 defaults (for what a checkpoint's tensors do not reveal) and the two presets for
bundles with random weights (`--tiny`, `--random-full`).

Configs are the diffusers / transformers config.json dicts that the model modules of this package take.
"""

import copy
from typing import Dict, List

# SD v1 noise schedule (CompVis v1-inference.yaml: linear_start 0.00085, linear_end 0.012, 1000 steps, with
# diffusers' naming). Used when the source has no scheduler_config.json.
SD1_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "rescale_betas_zero_snr": False,
}

# CLIPImageProcessor defaults (the values of openai/clip-vit-large-patch14, which SD v1 uses).
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
DEFAULT_PREPROCESSOR = {
    "size": {"shortest_edge": 224},
    "crop_size": {"height": 224, "width": 224},
    "rescale_factor": 1 / 255,
    "image_mean": CLIP_IMAGE_MEAN,
    "image_std": CLIP_IMAGE_STD,
}


def _unet_config(block_out_channels: List[int], layers_per_block: int, cross_attention_dim: int,
                 attention_head_dim: int, sample_size: int, down_block_types: List[str],
                 up_block_types: List[str]) -> Dict:
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": attention_head_dim,
        "block_out_channels": list(block_out_channels),
        "center_input_sample": False,
        "cross_attention_dim": cross_attention_dim,
        "down_block_types": list(down_block_types),
        "downsample_padding": 1,
        "dropout": 0.0,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": layers_per_block,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "sample_size": sample_size,
        "transformer_layers_per_block": 1,
        "up_block_types": list(up_block_types),
        "upcast_attention": False,
        "use_linear_projection": False,
    }


def _vae_config(block_out_channels: List[int], layers_per_block: int, sample_size: int) -> Dict:
    n = len(block_out_channels)
    return {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": list(block_out_channels),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": layers_per_block,
        "mid_block_add_attention": True,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": sample_size,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "use_post_quant_conv": True,
        "use_quant_conv": True,
    }


def _text_config(hidden: int, intermediate: int, heads: int, layers: int) -> Dict:
    return {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "hidden_act": "quick_gelu",
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": hidden,
        "vocab_size": 49408,
    }


def _safety_config(hidden: int, intermediate: int, heads: int, layers: int, image_size: int, patch_size: int,
                   projection_dim: int) -> Dict:
    return {
        "architectures": ["StableDiffusionSafetyChecker"],
        "model_type": "clip",
        "projection_dim": projection_dim,
        "vision_config": {
            "attention_dropout": 0.0,
            "hidden_act": "quick_gelu",
            "hidden_size": hidden,
            "image_size": image_size,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": intermediate,
            "layer_norm_eps": 1e-05,
            "model_type": "clip_vision_model",
            "num_attention_heads": heads,
            "num_channels": 3,
            "num_hidden_layers": layers,
            "patch_size": patch_size,
            "projection_dim": projection_dim,
        },
    }


def _taesd_config(width: int, blocks: List[int]) -> Dict:
    return {
        "_class_name": "AutoencoderTiny",
        "latent_channels": 4,
        "out_channels": 3,
        "decoder_block_out_channels": [width] * len(blocks),
        "num_decoder_blocks": list(blocks),
        "upsampling_scaling_factor": 2,
    }


def _preprocessor(size: int) -> Dict:
    return {
        "size": {"shortest_edge": size},
        "crop_size": {"height": size, "width": size},
        "rescale_factor": 1 / 255,
        "image_mean": CLIP_IMAGE_MEAN,
        "image_std": CLIP_IMAGE_STD,
    }


_SD1_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
_SD1_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3

# Full SD v1.5 (runwayml/stable-diffusion-v1-5; text encoder = CLIP ViT-L/14's text tower; safety checker =
# CompVis/stable-diffusion-safety-checker).
_FULL = {
    "unet": _unet_config([320, 640, 1280, 1280], 2, 768, 8, 64, _SD1_DOWN, _SD1_UP),
    "vae": _vae_config([128, 256, 512, 512], 2, 512),
    "text_encoder": _text_config(768, 3072, 12, 12),
    "safety_checker": _safety_config(1024, 4096, 16, 24, 224, 14, 768),
    "preprocessor": _preprocessor(224),
    "taesd": _taesd_config(64, [3, 3, 3, 1]),  # madebyollin/taesd
}

# Tiny widths for fast tests. The UNet is the reference `tiny` preset; the VAE keeps four levels so that its
# scale factor is 8 like real SD (latent 8x8 -> image 64x64).
_TINY = {
    "unet": _unet_config([32, 64], 1, 32, 8, 8, ["DownBlock2D", "CrossAttnDownBlock2D"],
                         ["CrossAttnUpBlock2D", "UpBlock2D"]),
    "vae": _vae_config([32, 32, 32, 32], 1, 64),
    "text_encoder": _text_config(32, 37, 4, 5),
    "safety_checker": _safety_config(32, 37, 4, 2, 32, 4, 32),
    "preprocessor": _preprocessor(32),
    "taesd": _taesd_config(8, [1, 1, 1, 1]),
}

PRESETS = {"tiny": _TINY, "full": _FULL}


def sd1_defaults() -> Dict[str, Dict]:
    """Fresh copies of the full SD v1.5 configs (callers overwrite what the weights reveal)."""
    return copy.deepcopy(_FULL)


def preset(name: str) -> Dict[str, Dict]:
    """Fresh copies of the configs of preset `name` ("tiny" or "full")."""
    return copy.deepcopy(PRESETS[name])
