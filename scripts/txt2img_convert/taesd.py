"""TAESD, the tiny autoencoder for SD latents (github.com/madebyollin/taesd): its decoder, as diffusers'
AutoencoderTiny builds it, in plain, scriptable PyTorch.

Parameter names equal diffusers v0.31's AutoencoderTiny names (`decoder.layers.<i>...`), so the decoder subset of
a diffusers AutoencoderTiny state dict loads with `load_state_dict(strict=True)`. The original release's
`taesd_decoder.pth` / `.safetensors` is the same nn.Sequential with a parameterless Clamp in front, so its indices
are one higher (`load_taesd` renames them).

It decodes the latents the U-Net denoises as they are: TAESD was trained on latents already multiplied by the
VAE's scaling factor, which is why diffusers' AutoencoderTiny config has scaling_factor 1.0.
"""

import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .checkpoints import (Component, ConversionError, as_float32, folder_weights, listing, read_json, read_tensors,
                          sha256_file, sha256_weights)

# TAESD's own decoder (madebyollin/taesd config.json): a 3x3 conv in, then levels of blocks, each but the last
# followed by a 2x nearest upsample and a bias-free conv; the last level ends in a conv to RGB.
TAESD_CONFIG: Dict[str, Any] = {
    "latent_channels": 4,
    "out_channels": 3,
    "decoder_block_out_channels": [64, 64, 64, 64],
    "num_decoder_blocks": [3, 3, 3, 1],
    "upsampling_scaling_factor": 2,
}

# What the decoder supports of an AutoencoderTiny config.json beyond the fields above.
_SUPPORTED = {"act_fn": "relu", "upsample_fn": "nearest", "scaling_factor": 1.0}

# The TAESD variants of other model families have the same layout; their names are the only way to tell them apart.
_OTHER_FAMILIES = re.compile(r"taesdxl|taesd3|taef1|taef2|taesana|taeqi", re.IGNORECASE)


class AutoencoderTinyBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class DecoderTiny(nn.Module):
    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        channels: List[int] = list(config["decoder_block_out_channels"])
        blocks: List[int] = list(config["num_decoder_blocks"])
        if len(channels) != len(blocks) or len(set(channels)) != 1:
            # diffusers' conv after each upsample keeps a level's width, so only equal widths form a working net.
            raise ValueError(f"decoder_block_out_channels {channels} with num_decoder_blocks {blocks}")
        layers: List[nn.Module] = [nn.Conv2d(config["latent_channels"], channels[0], 3, padding=1), nn.ReLU()]
        for level, (width, count) in enumerate(zip(channels, blocks)):
            last = level == len(blocks) - 1
            layers += [AutoencoderTinyBlock(width, width) for _ in range(count)]
            if not last:
                layers.append(nn.Upsample(scale_factor=float(config["upsampling_scaling_factor"]), mode="nearest"))
            layers.append(nn.Conv2d(width, config["out_channels"] if last else width, 3, padding=1, bias=last))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # A soft clamp of the latents to (-3, 3), then [0, 1] images moved to diffusers' [-1, 1].
        return self.layers(torch.tanh(x / 3) * 3).mul(2).sub(1)


class TAESDDecoder(nn.Module):
    """forward(latents [B,4,h,w] as the U-Net gives them) -> image [B,3,h*8,w*8] in about [-1,1]."""

    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        self.decoder = DecoderTiny({**TAESD_CONFIG, **config})

    @staticmethod
    def scale_factor(config: Dict[str, Any]) -> int:
        """Pixels per latent: the upsampling factor once per level after the first."""
        full = {**TAESD_CONFIG, **config}
        return int(full["upsampling_scaling_factor"]) ** (len(full["num_decoder_blocks"]) - 1)

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(z)


def _decoder_tensors(tensors: Dict[str, Tensor], source: str) -> Tuple[Dict[str, Tensor], Callable[[str], str]]:
    """The decoder's tensors under diffusers' names, from either release's layout, and the source's name of each."""
    if any(k.startswith("decoder.layers.") for k in tensors):  # diffusers' AutoencoderTiny (encoder.* dropped)
        return {k: v for k, v in tensors.items() if k.startswith("decoder.layers.")}, str
    # ComfyUI keeps both halves in one file under these prefixes, beside its own scale/shift parameters.
    prefix = "taesd_decoder." if any(k.startswith("taesd_decoder.") for k in tensors) else ""
    tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    numbered = {k: v for k, v in tensors.items() if re.match(r"\d+\.", k)}
    if not numbered:
        raise ConversionError(f"--taesd {source}: no TAESD decoder tensors in it (decoder.layers.* or 1.weight, "
                              f"3.conv.0.weight, ...; found e.g. {listing(sorted(tensors), 3)})")
    first = numbered.get("0.weight")
    if first is not None:
        raise ConversionError(f"--taesd {source}: this is a TAESD encoder (its first layer takes "
                              f"{first.shape[1]} image channels); pass the decoder, taesd_decoder.pth or "
                              ".safetensors")
    renamed = {}
    for key, value in numbered.items():
        index, rest = key.split(".", 1)
        renamed[f"decoder.layers.{int(index) - 1}.{rest}"] = value  # without the leading Clamp

    def source_name(name: str) -> str:
        index, rest = name[len("decoder.layers."):].split(".", 1)
        return f"{prefix}{int(index) + 1}.{rest}"

    return renamed, source_name


def decoder_layout(tensors: Dict[str, Tensor]) -> Dict[str, Any]:
    """The decoder config the tensors describe: blocks between the bias-free convs that follow each upsample."""
    indices = sorted({int(k.split(".")[2]) for k in tensors})
    blocks: List[int] = []
    count = 0
    convs = [i for i in indices if f"decoder.layers.{i}.weight" in tensors]
    for i in indices:
        if f"decoder.layers.{i}.conv.0.weight" in tensors:
            count += 1
        elif i in convs[1:]:
            blocks.append(count)
            count = 0
    if not convs or not blocks:
        raise ConversionError("not a TAESD decoder layout")
    conv_in, conv_out = tensors[f"decoder.layers.{convs[0]}.weight"], tensors[f"decoder.layers.{convs[-1]}.weight"]
    return {
        "latent_channels": int(conv_in.shape[1]),
        "out_channels": int(conv_out.shape[0]),
        "decoder_block_out_channels": [int(conv_in.shape[0])] * len(blocks),
        "num_decoder_blocks": blocks,
    }


def load_taesd(path: str, label: Optional[str] = None) -> Tuple[Component, str]:
    """A TAESD decoder (convert.py --taesd): a diffusers AutoencoderTiny folder (madebyollin/taesd: config.json and
    diffusion_pytorch_model.safetensors), that weights file alone (what stable-diffusion.cpp's --taesd takes), or
    the original taesd_decoder.pth / .safetensors (A1111's models/VAE-approx, ComfyUI's models/vae_approx).
    Returns the component and the sha256 users know it by (the file's, or a folder's weights'). The variants for
    SDXL, SD 3 and FLUX decode other latent spaces and are refused. `label`: what the user named it by (a hub id,
    where `path` is the downloaded folder), for messages; the path itself by default."""
    source = label or path
    if _OTHER_FAMILIES.search(os.path.basename(os.path.normpath(source))):
        raise ConversionError(f"--taesd {source}: a TAESD for another model family (SDXL, SD 3, FLUX); SD 1.x needs "
                              "taesd (madebyollin/taesd)")
    config: Dict[str, Any] = {}
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise ConversionError(f"--taesd {source}: not an AutoencoderTiny folder (config.json and weights)")
        config = read_json(config_path)
        if config.get("_class_name", "AutoencoderTiny") != "AutoencoderTiny":
            raise ConversionError(f"--taesd {source}: its config.json is a {config['_class_name']}, not an "
                                  "AutoencoderTiny")
        path = folder_weights(path, ("diffusion_pytorch_model",))
        digest = sha256_weights(path)
    elif os.path.isfile(path):
        digest = sha256_file(path)
    else:
        raise ConversionError(f"--taesd {source}: no such file or folder")
    for field, supported in _SUPPORTED.items():
        if config.get(field, supported) != supported:
            raise ConversionError(f"--taesd {source}: {field} {config[field]!r} is not supported (TAESD has "
                                  f"{supported!r})")
    tensors, source_name = _decoder_tensors(read_tensors(path), source)
    try:
        layout = decoder_layout(tensors)
    except ConversionError:
        raise ConversionError(f"--taesd {source}: its tensors do not form a TAESD decoder "
                              f"({listing(sorted(tensors), 3)})") from None
    layout["upsampling_scaling_factor"] = int(config.get("upsampling_scaling_factor", 2))
    return Component("TAESD decoder", as_float32(tensors), layout, path, source_name), digest
