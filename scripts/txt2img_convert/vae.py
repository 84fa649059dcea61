"""diffusers' AutoencoderKL in plain, scriptable PyTorch: its decoding half (post_quant_conv + decoder), and
its encoding half (encoder + quant_conv), which only inpainting models need.

Parameter names equal diffusers v0.31's AutoencoderKL names, so the decoder (or encoder) subset of a diffusers
`vae/` state dict loads with `load_state_dict(strict=True)`.
"""

from typing import Any, Dict, List, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .unet import Conv2d, Downsample2D, ResnetBlock2D, Upsample2D, attention, check_config, resolve_sdpa

# diffusers builds the VAE's resnets, mid-block attention and output norms with this eps, whatever the config
# says.
_EPS = 1e-6

_SUPPORTED_VAE_CONFIG: Dict[str, Any] = {
    "act_fn": "silu",
    "shift_factor": None,
}

_DECODER_PREFIXES = ("post_quant_conv.", "decoder.")
_ENCODER_PREFIXES = ("encoder.", "quant_conv.")


class SpatialSelfAttention(nn.Module):
    """diffusers' single-head Attention of the VAE mid block (group norm in, residual out, biased q/k/v)."""

    def __init__(self, channels: int, groups: int, use_sdpa: bool):
        super().__init__()
        self.use_sdpa = use_sdpa
        self.group_norm = nn.GroupNorm(groups, channels, eps=_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        h = self.group_norm(x).view(batch, channels, height * width).transpose(1, 2)
        q = self.to_q(h).unsqueeze(1)
        k = self.to_k(h).unsqueeze(1)
        v = self.to_v(h).unsqueeze(1)
        h = self.to_out[0](attention(q, k, v, self.use_sdpa).squeeze(1))
        return h.transpose(1, 2).reshape(batch, channels, height, width) + x


class UNetMidBlock2D(nn.Module):
    def __init__(self, channels: int, groups: int, add_attention: bool, use_sdpa: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, None, groups, _EPS) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups, use_sdpa)] if add_attention else [])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x, None)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x, None)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_downsample: bool, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, _EPS)
                for i in range(num_layers)
            ]
        )
        # The encoder's downsamplers pad bottom and right only (diffusers' downsample_padding=0).
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, 0)] if add_downsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, None)
        for downsampler in self.downsamplers:
            x = downsampler(x)
        return x


class Encoder(nn.Module):
    def __init__(self, config: Dict[str, Any], use_sdpa: bool):
        super().__init__()
        block_out: List[int] = list(config["block_out_channels"])
        down_types = config.get("down_block_types", ["DownEncoderBlock2D"] * len(block_out))
        if len(down_types) != len(block_out) or any(t != "DownEncoderBlock2D" for t in down_types):
            raise NotImplementedError(f"VAE down_block_types {down_types!r}: only DownEncoderBlock2D per level")
        groups = int(config.get("norm_num_groups", 32))
        num_layers = int(config.get("layers_per_block", 1))
        self.conv_in = Conv2d(config.get("in_channels", 3), block_out[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [
                DownEncoderBlock2D(block_out[max(i - 1, 0)], block_out[i], num_layers, i < len(block_out) - 1, groups)
                for i in range(len(block_out))
            ]
        )
        self.mid_block = UNetMidBlock2D(
            block_out[-1], groups, bool(config.get("mid_block_add_attention", True)), use_sdpa
        )
        self.conv_norm_out = nn.GroupNorm(groups, block_out[-1], eps=_EPS)
        # The mean and the log-variance of each latent channel.
        self.conv_out = Conv2d(block_out[-1], 2 * config.get("latent_channels", 4), 3, padding=1)

    def forward(self, image: Tensor) -> Tensor:
        x = self.conv_in(image)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_upsample: bool, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, _EPS)
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)] if add_upsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, None)
        for upsampler in self.upsamplers:
            x = upsampler(x, [x.size(2) * 2, x.size(3) * 2])
        return x


class Decoder(nn.Module):
    def __init__(self, config: Dict[str, Any], use_sdpa: bool):
        super().__init__()
        block_out: List[int] = list(config["block_out_channels"])
        up_types = config.get("up_block_types", ["UpDecoderBlock2D"] * len(block_out))
        if len(up_types) != len(block_out) or any(t != "UpDecoderBlock2D" for t in up_types):
            raise NotImplementedError(f"VAE up_block_types {up_types!r}: only UpDecoderBlock2D per level")
        groups = int(config.get("norm_num_groups", 32))
        num_layers = int(config.get("layers_per_block", 1)) + 1
        self.conv_in = Conv2d(config.get("latent_channels", 4), block_out[-1], 3, padding=1)
        self.mid_block = UNetMidBlock2D(
            block_out[-1], groups, bool(config.get("mid_block_add_attention", True)), use_sdpa
        )
        rev_out = list(reversed(block_out))
        self.up_blocks = nn.ModuleList(
            [
                UpDecoderBlock2D(rev_out[max(i - 1, 0)], rev_out[i], num_layers, i < len(rev_out) - 1, groups)
                for i in range(len(rev_out))
            ]
        )
        self.conv_norm_out = nn.GroupNorm(groups, block_out[0], eps=_EPS)
        self.conv_out = Conv2d(block_out[0], config.get("out_channels", 3), 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VAEDecoder(nn.Module):
    """forward(z [B,latent,h,w]) -> image [B,3,h*f,w*f] in about [-1,1]; z is already divided by scaling_factor."""

    def __init__(self, config: Dict[str, Any], use_sdpa: Optional[bool] = None):
        super().__init__()
        check_config(config, _SUPPORTED_VAE_CONFIG, "AutoencoderKL")
        latent = config.get("latent_channels", 4)
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if config.get("use_post_quant_conv", True) else None
        self.decoder = Decoder(config, resolve_sdpa(use_sdpa))

    @staticmethod
    def select_state_dict(autoencoder_state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The decoder's entries of a full diffusers AutoencoderKL state dict (encoder/quant_conv dropped)."""
        return {k: v for k, v in autoencoder_state_dict.items() if k.startswith(_DECODER_PREFIXES)}

    def forward(self, z: Tensor) -> Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class VAEEncoder(nn.Module):
    """forward(image [B,3,H,W] in [-1,1]) -> the mean of its latent distribution [B,latent,H/f,W/f] (diffusers'
    `latent_dist.mode()`), not yet multiplied by scaling_factor."""

    def __init__(self, config: Dict[str, Any], use_sdpa: Optional[bool] = None):
        super().__init__()
        check_config(config, _SUPPORTED_VAE_CONFIG, "AutoencoderKL")
        self.latent_channels = int(config.get("latent_channels", 4))
        moments = 2 * self.latent_channels
        self.encoder = Encoder(config, resolve_sdpa(use_sdpa))
        self.quant_conv = nn.Conv2d(moments, moments, 1) if config.get("use_quant_conv", True) else None

    @staticmethod
    def select_state_dict(autoencoder_state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The encoder's entries of a full diffusers AutoencoderKL state dict (decoder/post_quant_conv dropped)."""
        return {k: v for k, v in autoencoder_state_dict.items() if k.startswith(_ENCODER_PREFIXES)}

    def forward(self, image: Tensor) -> Tensor:
        moments = self.encoder(image)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments[:, : self.latent_channels]
