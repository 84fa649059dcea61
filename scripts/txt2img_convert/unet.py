"""diffusers' UNet2DConditionModel (Stable Diffusion v1 layout) in plain, scriptable PyTorch.

Parameter names equal diffusers v0.31's, so a diffusers `unet/` folder loads with `load_state_dict(strict=True)`.
The building blocks shared with the VAE decoder (attention kernel, ResnetBlock2D, Upsample2D) live here too.
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def script(module: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript of `module` in eval mode (any batch size and spatial size stay valid)."""
    return torch.jit.script(module.eval())


def resolve_sdpa(use_sdpa: Optional[bool]) -> bool:
    """`None` means: the fused kernel whenever this torch has it (>= 2.0)."""
    if use_sdpa is None:
        return HAS_SDPA
    if use_sdpa and not HAS_SDPA:
        raise ValueError(f"torch {torch.__version__} has no scaled_dot_product_attention")
    return use_sdpa


def math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over the last two dims, softmax in float32.

    Deliberately bmm-based: diffusers' torch<2 path uses baddbmm(beta=0), which on torch 1.13 CPU reads its
    uninitialised input and can produce NaN. The scale goes on q, before the product, and a float32 softmax is asked
    for only where the scores are not float32 already: each saves a pass over the [L, L] scores, together a fifth of
    a 4096-token self-attention's time on the CPU (docs/PERFORMANCE.md).
    """
    scores = torch.matmul(q * (1.0 / math.sqrt(q.size(-1))), k.transpose(-1, -2))
    if scores.dtype == torch.float32:
        return torch.matmul(scores.softmax(dim=-1), v)
    return torch.matmul(scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype), v)


if HAS_SDPA:

    def fused_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # The default scale 1/sqrt(d) is the one every caller wants; the `scale` argument needs torch >= 2.1.
        return F.scaled_dot_product_attention(q, k, v)

else:
    # Scripting compiles both branches of `if self.use_sdpa`, so the name must exist and compile on torch 1.x;
    # resolve_sdpa() guarantees this branch is never taken there.
    fused_attention = math_attention


def attention(q: Tensor, k: Tensor, v: Tensor, use_sdpa: bool) -> Tensor:
    """Multi-head attention core on [B, heads, L, d] tensors."""
    if use_sdpa:
        return fused_attention(q, k, v)
    return math_attention(q, k, v)


def _per_block(value: Any, count: int, name: str) -> List[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries for {count} blocks")
        return list(value)
    return [value] * count


# What a refused config value usually means, where users meet it with SD 1.x-based files.
_CONFIG_HINTS = {
    "upcast_attention": "an SD 2.1 model; only SD 1.x models are supported",
}


def check_config(config: Dict[str, Any], supported: Dict[str, Any], what: str) -> None:
    """Reject configs that need features this implementation leaves out, instead of silently ignoring them."""
    for key, allowed in supported.items():
        value = config.get(key, allowed)
        if value != allowed:
            hint = f": {_CONFIG_HINTS[key]}" if key in _CONFIG_HINTS else ""
            raise NotImplementedError(f"{what}: {key}={value!r} is not supported (only {allowed!r}){hint}")


class Conv2d(nn.Conv2d):
    """nn.Conv2d whose zero padding becomes circular while `tiling` is set, for images that tile seamlessly.

    AUTOMATIC1111's Tiling sets the padding_mode of every Conv2d of its model (U-Net and VAE) to "circular"; a
    scripted padding_mode is a constant of the graph, so the switch is an attribute that txt2img sets at load time
    (--tiling). Its parameters are nn.Conv2d's, under the same names.
    """

    tiling: bool

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tiling = False

    def forward(self, x: Tensor) -> Tensor:
        if self.tiling:
            # nn.Conv2d's own circular path: pad, then convolve without padding.
            x = F.pad(x, self._reversed_padding_repeated_twice, mode="circular")
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ResnetBlock2D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: Optional[int],
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = float(output_scale_factor)

    def forward(self, x: Tensor, temb_silu: Optional[Tensor]) -> Tensor:
        """`temb_silu`: the time embedding after SiLU, which diffusers applies in every resnet."""
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb_silu is not None:
            h = h + self.time_emb_proj(temb_silu)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        # SD's factor is 1: dividing by it would cost a pass over the output for the same values.
        if self.output_scale_factor == 1.0:
            return x + h
        return (x + h) / self.output_scale_factor


class Downsample2D(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=padding)
        # diffusers' asymmetric padding when downsample_padding is 0 (as in the original LDM code).
        self.pad_bottom_right = padding == 0

    def forward(self, x: Tensor) -> Tensor:
        if self.pad_bottom_right:
            x = F.pad(x, [0, 1, 0, 1])
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: List[int]) -> Tensor:
        # Nearest interpolation to an explicit size equals scale_factor=2 when size is exactly double (same
        # source-index arithmetic), and also covers odd skip-connection sizes (diffusers' upsample_size).
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class Attention(nn.Module):
    """diffusers' Attention as used inside BasicTransformerBlock (no biases on q/k/v)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: Optional[int], use_sdpa: bool):
        super().__init__()
        inner_dim = heads * dim_head
        kv_dim = context_dim if context_dim is not None else query_dim
        self.heads = heads
        self.use_sdpa = use_sdpa
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(kv_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(kv_dim, inner_dim, bias=False)
        # A list so that the projection is named to_out.0, as in diffusers (whose to_out.1 is a dropout).
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim)])

    def forward(self, x: Tensor, context: Optional[Tensor]) -> Tensor:
        if context is None:
            context = x
        batch, length, _ = x.shape
        q = self.to_q(x).view(batch, length, self.heads, -1).transpose(1, 2)
        k = self.to_k(context).view(batch, context.size(1), self.heads, -1).transpose(1, 2)
        v = self.to_v(context).view(batch, context.size(1), self.heads, -1).transpose(1, 2)
        out = attention(q, k, v, self.use_sdpa).transpose(1, 2).reshape(batch, length, -1)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner_dim * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner_dim = dim * mult
        # The Identity holds diffusers' dropout slot so the output projection keeps the name net.2.
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Identity(), nn.Linear(inner_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int, use_sdpa: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, dim_head, None, use_sdpa)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim, use_sdpa)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.attn1(self.norm1(x), None) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """diffusers' Transformer2DModel for continuous (image-like) input with one transformer block."""

    def __init__(
        self,
        channels: int,
        heads: int,
        cross_attention_dim: int,
        groups: int,
        use_linear_projection: bool,
        use_sdpa: bool,
    ):
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"{channels} channels do not split into {heads} attention heads")
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim, use_sdpa)]
        )
        if use_linear_projection:
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.permute(0, 2, 3, 1).reshape(batch, height * width, channels))
        else:
            h = self.proj_in(h).permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        else:
            h = h.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
            # The permuted view is NHWC already: a channels_last input (the CUDA default) convolves it as it is,
            # where a copy to NCHW would cost one pass, and the convolution another to undo it.
            if not x.is_contiguous(memory_format=torch.channels_last):
                h = h.contiguous()
            h = self.proj_out(h)
        return h + x


class TimestepEmbedding(nn.Module):
    """With `cond_proj_dim` (LCM models' time_cond_proj_dim) a condition, projected, is added to the input."""

    def __init__(self, in_channels: int, time_embed_dim: int, cond_proj_dim: Optional[int] = None):
        super().__init__()
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim else None
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: Tensor, condition: Optional[Tensor]) -> Tensor:
        if self.cond_proj is not None and condition is not None:
            x = x + self.cond_proj(condition)
        return self.linear_2(F.silu(self.linear_1(x)))


def guidance_scale_embedding(w: Tensor, dim: int) -> Tensor:
    """LatentConsistencyModelPipeline's embedding [N, dim] of 1-D guidance values w (its guidance scale minus 1),
    in float32 and its operation order."""
    w = w.float() * 1000.0
    half = dim // 2
    step = math.log(10000.0) / (half - 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -step)
    angles = w[:, None] * frequencies[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, [0, 1])
    return emb


def timestep_embedding(timesteps: Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> Tensor:
    """Sinusoidal embedding [N, dim] of 1-D timesteps, with diffusers' operation order (bit-exact)."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(0, half, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(exponent / (half - freq_shift))
    angles = timesteps[:, None].float() * frequencies[None, :]
    if flip_sin_to_cos:
        emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    else:
        emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, [0, 1])
    return emb


class CrossAttnDownBlock2D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_downsample: bool,
        eps: float,
        groups: int,
        heads: int,
        cross_attention_dim: int,
        downsample_padding: int,
        use_linear_projection: bool,
        use_sdpa: bool,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps)
                for i in range(num_layers)
            ]
        )
        self.attentions = nn.ModuleList(
            [
                Transformer2DModel(out_channels, heads, cross_attention_dim, groups, use_linear_projection, use_sdpa)
                for _ in range(num_layers)
            ]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, downsample_padding)] if add_downsample else [])

    def forward(self, x: Tensor, temb_silu: Tensor, context: Tensor) -> Tuple[Tensor, List[Tensor]]:
        states: List[Tensor] = []
        for resnet, attn in zip(self.resnets, self.attentions):
            x = attn(resnet(x, temb_silu), context)
            states.append(x)
        for downsampler in self.downsamplers:
            x = downsampler(x)
            states.append(x)
        return x, states


class DownBlock2D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_downsample: bool,
        eps: float,
        groups: int,
        downsample_padding: int,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps)
                for i in range(num_layers)
            ]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, downsample_padding)] if add_downsample else [])

    def forward(self, x: Tensor, temb_silu: Tensor, context: Tensor) -> Tuple[Tensor, List[Tensor]]:
        # `context` is unused; the signature matches CrossAttnDownBlock2D so scripted loops can mix both.
        states: List[Tensor] = []
        for resnet in self.resnets:
            x = resnet(x, temb_silu)
            states.append(x)
        for downsampler in self.downsamplers:
            x = downsampler(x)
            states.append(x)
        return x, states


def _up_resnets(
    in_channels: int,
    prev_output_channels: int,
    out_channels: int,
    temb_channels: int,
    num_layers: int,
    eps: float,
    groups: int,
) -> nn.ModuleList:
    # Resnet i concatenates the skip connection popped from the matching down block: the last one of a level
    # comes from the level below (in_channels), the others from this level (out_channels).
    resnets = []
    for i in range(num_layers):
        skip_channels = in_channels if i == num_layers - 1 else out_channels
        resnet_in = prev_output_channels if i == 0 else out_channels
        resnets.append(ResnetBlock2D(resnet_in + skip_channels, out_channels, temb_channels, groups, eps))
    return nn.ModuleList(resnets)


class CrossAttnUpBlock2D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_upsample: bool,
        eps: float,
        groups: int,
        heads: int,
        cross_attention_dim: int,
        use_linear_projection: bool,
        use_sdpa: bool,
    ):
        super().__init__()
        self.num_layers = num_layers
        self.resnets = _up_resnets(
            in_channels, prev_output_channels, out_channels, temb_channels, num_layers, eps, groups
        )
        self.attentions = nn.ModuleList(
            [
                Transformer2DModel(out_channels, heads, cross_attention_dim, groups, use_linear_projection, use_sdpa)
                for _ in range(num_layers)
            ]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)] if add_upsample else [])

    def forward(
        self, x: Tensor, skips: List[Tensor], temb_silu: Tensor, context: Tensor, upsample_size: List[int]
    ) -> Tensor:
        for i, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
            x = torch.cat([x, skips[len(skips) - 1 - i]], dim=1)
            x = attn(resnet(x, temb_silu), context)
        for upsampler in self.upsamplers:
            x = upsampler(x, upsample_size)
        return x


class UpBlock2D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_upsample: bool,
        eps: float,
        groups: int,
    ):
        super().__init__()
        self.num_layers = num_layers
        self.resnets = _up_resnets(
            in_channels, prev_output_channels, out_channels, temb_channels, num_layers, eps, groups
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)] if add_upsample else [])

    def forward(
        self, x: Tensor, skips: List[Tensor], temb_silu: Tensor, context: Tensor, upsample_size: List[int]
    ) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[len(skips) - 1 - i]], dim=1), temb_silu)
        for upsampler in self.upsamplers:
            x = upsampler(x, upsample_size)
        return x


class UNetMidBlock2DCrossAttn(nn.Module):
    def __init__(
        self,
        channels: int,
        temb_channels: int,
        eps: float,
        groups: int,
        heads: int,
        cross_attention_dim: int,
        output_scale_factor: float,
        use_linear_projection: bool,
        use_sdpa: bool,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(channels, channels, temb_channels, groups, eps, output_scale_factor) for _ in range(2)]
        )
        self.attentions = nn.ModuleList(
            [Transformer2DModel(channels, heads, cross_attention_dim, groups, use_linear_projection, use_sdpa)]
        )

    def forward(self, x: Tensor, temb_silu: Tensor, context: Tensor) -> Tensor:
        x = self.resnets[0](x, temb_silu)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb_silu)


# Config values this implementation supports (SD v1); anything else raises instead of being ignored.
_SUPPORTED_UNET_CONFIG: Dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": None,
    "attention_type": "default",
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_norm": None,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "mid_block_only_cross_attention": None,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "num_class_embeds": None,
    "only_cross_attention": False,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "reverse_transformer_layers_per_block": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 1,
    "upcast_attention": False,
}


class UNet2DConditionModel(nn.Module):
    """Noise predictor: forward(sample [B,C,h,w], timestep, encoder_hidden_states [B,L,D][, guidance]) ->
    [B,C_out,h,w]. LCM-distilled models (time_cond_proj_dim) take the guidance scale as an input instead of
    classifier-free guidance: `guidance` is LatentConsistencyModelPipeline's w, the guidance scale minus 1."""

    def __init__(self, config: Dict[str, Any], use_sdpa: Optional[bool] = None):
        super().__init__()
        check_config(config, _SUPPORTED_UNET_CONFIG, "UNet2DConditionModel")
        use_sdpa = resolve_sdpa(use_sdpa)
        block_out: Sequence[int] = config["block_out_channels"]
        down_types: Sequence[str] = config["down_block_types"]
        up_types: Sequence[str] = config["up_block_types"]
        levels = len(block_out)
        if len(down_types) != levels or len(up_types) != levels:
            raise ValueError("down_block_types, up_block_types and block_out_channels differ in length")
        layers = _per_block(config.get("layers_per_block", 2), levels, "layers_per_block")
        # diffusers' naming quirk: SD v1 configs give the head count as attention_head_dim.
        heads_value = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
        heads = _per_block(heads_value, levels, "num_attention_heads")
        cross_dims = _per_block(config.get("cross_attention_dim", 1280), levels, "cross_attention_dim")
        groups = int(config.get("norm_num_groups", 32))
        eps = float(config.get("norm_eps", 1e-5))
        padding = int(config.get("downsample_padding", 1))
        linear_proj = bool(config.get("use_linear_projection", False))
        temb_channels = block_out[0] * 4

        self.time_proj_dim = block_out[0]
        self.flip_sin_to_cos = bool(config.get("flip_sin_to_cos", True))
        self.freq_shift = float(config.get("freq_shift", 0))
        self.conv_in = Conv2d(config.get("in_channels", 4), block_out[0], 3, padding=1)
        self.time_cond_proj_dim = int(config.get("time_cond_proj_dim") or 0)
        self.time_embedding = TimestepEmbedding(block_out[0], temb_channels, self.time_cond_proj_dim)

        down_blocks: List[nn.Module] = []
        out_ch = block_out[0]
        for i, kind in enumerate(down_types):
            in_ch, out_ch = out_ch, block_out[i]
            add_down = i < levels - 1
            if kind == "CrossAttnDownBlock2D":
                down_blocks.append(
                    CrossAttnDownBlock2D(
                        in_ch, out_ch, temb_channels, layers[i], add_down, eps, groups, heads[i], cross_dims[i],
                        padding, linear_proj, use_sdpa,
                    )
                )
            elif kind == "DownBlock2D":
                down_blocks.append(DownBlock2D(in_ch, out_ch, temb_channels, layers[i], add_down, eps, groups, padding))
            else:
                raise NotImplementedError(f"down block type {kind!r}")
        self.down_blocks = nn.ModuleList(down_blocks)

        self.mid_block = UNetMidBlock2DCrossAttn(
            block_out[-1], temb_channels, eps, groups, heads[-1], cross_dims[-1],
            float(config.get("mid_block_scale_factor", 1.0)), linear_proj, use_sdpa,
        )

        up_blocks: List[nn.Module] = []
        rev_out = list(reversed(block_out))
        rev_layers = list(reversed(layers))
        rev_heads = list(reversed(heads))
        rev_cross = list(reversed(cross_dims))
        out_ch = rev_out[0]
        for i, kind in enumerate(up_types):
            prev_ch, out_ch = out_ch, rev_out[i]
            in_ch = rev_out[min(i + 1, levels - 1)]
            add_up = i < levels - 1
            if kind == "CrossAttnUpBlock2D":
                up_blocks.append(
                    CrossAttnUpBlock2D(
                        in_ch, prev_ch, out_ch, temb_channels, rev_layers[i] + 1, add_up, eps, groups, rev_heads[i],
                        rev_cross[i], linear_proj, use_sdpa,
                    )
                )
            elif kind == "UpBlock2D":
                up_blocks.append(
                    UpBlock2D(in_ch, prev_ch, out_ch, temb_channels, rev_layers[i] + 1, add_up, eps, groups)
                )
            else:
                raise NotImplementedError(f"up block type {kind!r}")
        self.up_blocks = nn.ModuleList(up_blocks)

        self.conv_norm_out = nn.GroupNorm(groups, block_out[0], eps=eps)
        self.conv_out = Conv2d(block_out[0], config.get("out_channels", 4), 3, padding=1)

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor,
                guidance: Optional[Tensor] = None) -> Tensor:
        """`timestep` and `guidance`: 0-dim, [1] or [B], integer or float; a single value applies to the whole batch.
        A model with a guidance embedding needs `guidance`; others ignore it."""
        timesteps = timestep.reshape(-1).to(sample.device).expand(sample.size(0))
        t_emb = timestep_embedding(timesteps, self.time_proj_dim, self.flip_sin_to_cos, self.freq_shift)
        condition: Optional[Tensor] = None
        if self.time_cond_proj_dim > 0:
            if guidance is None:
                raise ValueError("this U-Net has a guidance embedding (an LCM model): pass the guidance")
            w = guidance.reshape(-1).to(sample.device).expand(sample.size(0))
            condition = guidance_scale_embedding(w, self.time_cond_proj_dim).to(sample.dtype)
        # Once for all resnets, where diffusers applies it in each (SD v1: 21 kernels fewer a call, the same values).
        temb_silu = F.silu(self.time_embedding(t_emb.to(sample.dtype), condition))

        x = self.conv_in(sample)
        skips: List[Tensor] = [x]
        for block in self.down_blocks:
            x, states = block(x, temb_silu, encoder_hidden_states)
            skips.extend(states)

        x = self.mid_block(x, temb_silu, encoder_hidden_states)

        for block in self.up_blocks:
            n = block.num_layers
            block_skips = skips[len(skips) - n :]
            skips = skips[: len(skips) - n]
            # Upsample to the next skip connection's size: exactly 2x unless a down step rounded up an odd size.
            size = skips[-1].shape[2:] if len(skips) > 0 else x.shape[2:]
            x = block(x, block_skips, temb_silu, encoder_hidden_states, size)

        return self.conv_out(F.silu(self.conv_norm_out(x)))
