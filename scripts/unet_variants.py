#!/usr/bin/env python3
"""Rewrites of the U-Net that keep its values, timed before the converter adopts any: the converter's modules with
a bundle's weights, each variant called as txt2img's loop calls the U-Net (on CUDA one captured CUDA graph of the
call, replayed; on the CPU plain calls), its output compared with the unchanged module's.

  unet_variants.py --model DIR [--device cuda] [--dtype fp16] [--width W --height H] [--batch B]
                   [--channels-last] [--replays 20] [--rounds 5] [--only NAME,NAME]

Variants (each a candidate for the gap to 110 U-Net it/s, docs/PERFORMANCE.md):
  baseline                   the converter's modules as exported
  group_norm_nhwc            GroupNorm (and the SiLU after it) on the NHWC tensor itself: statistics by std_mean
                             over each group's view, the affine as one addcmul; ATen's CUDA GroupNorm copies a
                             channels_last input to NCHW and the next convolution copies its output back
  fused_qkv                  self-attention's q, k and v as one projection, cross-attention's k and v as one
  batched_temb               every resnet's time-embedding projection as one matrix product per call
  all_rewrites               the three above together
  attention_flash, attention_memory_efficient, attention_cudnn, attention_math
                             scaled_dot_product_attention restricted to one kernel (CUDA, PyTorch >= 2.3)

Prints one JSON object: per variant the milliseconds per call (the median round), the speed against the baseline,
the largest difference of its output from the baseline's, absolute and relative to the baseline's largest
magnitude, and how many places ran rewritten; a variant that cannot run says why.
"""

import argparse
import contextlib
import copy
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_eager import DTYPES, configs_for  # noqa: E402
from unet_calls import add_call_arguments, capture, median_ms, unet_inputs  # noqa: E402
from txt2img_convert.unet import (  # noqa: E402
    Attention, BasicTransformerBlock, ResnetBlock2D, Transformer2DModel, UNet2DConditionModel, attention)

REWRITES = ("group_norm_nhwc", "fused_qkv", "batched_temb")
KERNELS = ("flash", "memory_efficient", "cudnn", "math")
VARIANTS = ("baseline",) + REWRITES + ("all_rewrites",) + tuple("attention_" + k for k in KERNELS)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="unet_variants.py", description=__doc__.split("\n\n")[0])
    add_call_arguments(p, "txt2img model bundle (its unet.pt's weights)")
    p.add_argument("--replays", type=int, default=20, help="calls per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", metavar="NAMES", help="comma-separated variants (baseline always runs)")
    args = p.parse_args(argv)
    args.variants = ["baseline"] + [v for v in (args.only or ",".join(VARIANTS)).split(",") if v != "baseline"]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
    return args


def casts_as_it_writes(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether an addcmul of float32 operands can write `dtype` directly on `device` (CUDA's kernels cast as they
    store; PyTorch 1.13's CPU kernels refuse mixed dtypes)."""
    try:
        operand = torch.ones(1, 2, device=device)
        torch.addcmul(operand, torch.ones(1, 2, device=device, dtype=dtype), operand,
                      out=torch.empty(1, 2, device=device, dtype=dtype))
        return True
    except RuntimeError:
        return False


class NHWCGroupNorm(nn.Module):
    """GroupNorm, then SiLU where `silu`, computed on a channels_last tensor as it lies (other layouts go to ATen's
    group_norm). The statistics are reduced with float accumulation; std rather than variance comes back in the
    input's dtype, because fp16's range holds a standard deviation up to 65504 but a variance only up to 256². The
    per-group scale and shift stay in float32, as ATen keeps them, where the device can apply them in one pass that
    writes the input's dtype (`mixed`); else they are rounded to it first, which costs precision where a group's
    mean is far from 0 against its deviation."""

    def __init__(self, norm: nn.GroupNorm, silu: bool, mixed: bool):
        super().__init__()
        self.norm, self.silu, self.mixed = norm, silu, mixed
        shape = (1, 1, norm.num_groups, norm.num_channels // norm.num_groups)
        self.register_buffer("weight", norm.weight.detach().float().reshape(shape))
        self.register_buffer("bias", norm.bias.detach().float().reshape(shape))

    def forward(self, x: Tensor) -> Tensor:
        # A tensor contiguous both ways (1x1 pixels) keeps ATen's kernel, whose output layout is the one callers expect.
        if not (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
            y = self.norm(x)
            return F.silu(y) if self.silu else y
        self.ran_on_nhwc = True
        n, c, h, w = x.shape
        groups = x.permute(0, 2, 3, 1).reshape(n, h * w, self.norm.num_groups, c // self.norm.num_groups)
        std, mean = torch.std_mean(groups, dim=(1, 3), keepdim=True, unbiased=False)
        scale = torch.rsqrt(std.float().square().add_(self.norm.eps)) * self.weight
        shift = torch.addcmul(self.bias, mean.float(), scale, value=-1.0)
        if self.mixed or x.dtype == torch.float32:
            y = torch.addcmul(shift, groups, scale, out=torch.empty_like(groups))
        else:
            y = torch.addcmul(shift.to(x.dtype), groups, scale.to(x.dtype))
        if self.silu:
            y = F.silu(y, inplace=True)
        return y.view(n, h, w, c).permute(0, 3, 1, 2)


class RewrittenResnet(ResnetBlock2D):
    """ResnetBlock2D with its GroupNorm+SiLU pairs as NHWCGroupNorm (where it has `nhwc_norm1` and `nhwc_norm2`),
    and its time-embedding projection taken from `temb_out` (where set: a slice of the call's one projection for
    every resnet, which a hook on the time embedding computes before the blocks run)."""

    def forward(self, x: Tensor, temb_silu) -> Tensor:
        norm1 = self.nhwc_norm1 if hasattr(self, "nhwc_norm1") else lambda t: F.silu(self.norm1(t))
        norm2 = self.nhwc_norm2 if hasattr(self, "nhwc_norm2") else lambda t: F.silu(self.norm2(t))
        h = self.conv1(norm1(x))
        if self.time_emb_proj is not None and temb_silu is not None:
            temb = self.temb_out if hasattr(self, "temb_out") else self.time_emb_proj(temb_silu)
            h = h + temb[:, :, None, None]
        h = self.conv2(norm2(h))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h if self.output_scale_factor == 1.0 else (x + h) / self.output_scale_factor


class FusedAttention(Attention):
    """Attention with q, k and v (self-attention: `qkv_weight`) or k and v (cross-attention: `kv_weight`) projected
    by one matrix product."""

    def forward(self, x: Tensor, context) -> Tensor:
        batch, length, _ = x.shape
        if context is None:
            qkv = F.linear(x, self.qkv_weight).view(batch, length, 3, self.heads, -1)
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        else:
            q = self.to_q(x).view(batch, length, self.heads, -1).transpose(1, 2)
            kv = F.linear(context, self.kv_weight).view(batch, context.size(1), 2, self.heads, -1)
            k, v = (t.transpose(1, 2) for t in kv.unbind(2))
        out = attention(q, k, v, self.use_sdpa).transpose(1, 2).reshape(batch, length, -1)
        return self.to_out[0](out)


def rewrite(unet: UNet2DConditionModel, rewrites) -> nn.Module:
    """A copy of `unet` with `rewrites` (names from REWRITES) applied; the weights keep their values."""
    unet = copy.deepcopy(unet)
    resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    for resnet in resnets:
        resnet.__class__ = RewrittenResnet
    if "group_norm_nhwc" in rewrites:
        weight = unet.conv_norm_out.weight
        mixed = casts_as_it_writes(weight.device, weight.dtype)
        for resnet in resnets:
            resnet.nhwc_norm1 = NHWCGroupNorm(resnet.norm1, silu=True, mixed=mixed)
            resnet.nhwc_norm2 = NHWCGroupNorm(resnet.norm2, silu=True, mixed=mixed)
        for module in list(unet.modules()):
            if isinstance(module, Transformer2DModel):
                module.norm = NHWCGroupNorm(module.norm, silu=False, mixed=mixed)
        unet.conv_norm_out = NHWCGroupNorm(unet.conv_norm_out, silu=False, mixed=mixed)
    if "fused_qkv" in rewrites:
        for block in unet.modules():
            if isinstance(block, BasicTransformerBlock):
                block.attn1.__class__ = block.attn2.__class__ = FusedAttention
                a1, a2 = block.attn1, block.attn2
                a1.register_buffer("qkv_weight", torch.cat([a1.to_q.weight, a1.to_k.weight, a1.to_v.weight]))
                a2.register_buffer("kv_weight", torch.cat([a2.to_k.weight, a2.to_v.weight]))
    if "batched_temb" in rewrites:
        projected = [r for r in resnets if r.time_emb_proj is not None]
        weight = torch.cat([r.time_emb_proj.weight for r in projected])
        bias = torch.cat([r.time_emb_proj.bias for r in projected])

        def project_for_every_resnet(module, inputs, temb):
            everything = F.linear(F.silu(temb), weight, bias)
            for resnet, part in zip(projected, everything.split([r.time_emb_proj.out_features for r in projected], 1)):
                resnet.temb_out = part

        unet.time_embedding.register_forward_hook(project_for_every_resnet)
    return unet


def rewritten(module: nn.Module) -> dict:
    """How many places a call of `module` ran rewritten: GroupNorms on NHWC, attentions with fused projections,
    resnets with their time-embedding projection from the batched one."""
    counts = {
        "nhwc_group_norms": sum(getattr(m, "ran_on_nhwc", False) for m in module.modules()),
        "fused_attentions": sum(isinstance(m, FusedAttention) for m in module.modules()),
        "batched_temb_resnets": sum(hasattr(m, "temb_out") for m in module.modules()),
    }
    return {key: count for key, count in counts.items() if count}


def attention_kernel(name: str):
    """A context that lets scaled_dot_product_attention use only kernel `name`."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        raise RuntimeError(f"PyTorch {torch.__version__} has no torch.nn.attention.sdpa_kernel (2.3+)") from e
    backend = {"flash": "FLASH_ATTENTION", "memory_efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
               "math": "MATH"}[name]
    if not hasattr(SDPBackend, backend):
        raise RuntimeError(f"PyTorch {torch.__version__} has no {backend} kernel")
    return sdpa_kernel([getattr(SDPBackend, backend)])


def measure(module, inputs, args, device, context):
    """(output, milliseconds per call) of the module called as txt2img's loop calls the U-Net: on CUDA a captured
    graph, replayed."""
    with context:
        if device.type != "cuda":
            out = module(*inputs)
            return out, median_ms(lambda: module(*inputs), args.replays, args.rounds, device)
        graph, out = capture(lambda: module(*inputs), device)
    ms = median_ms(graph.replay, args.replays, args.rounds, device)
    return out.clone(), ms  # a capture only records the call: its output holds values once the graph has replayed


@torch.inference_mode()
def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    with open(os.path.join(args.model, "model.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    state = torch.jit.load(os.path.join(args.model, "unet.pt"), map_location="cpu").state_dict()
    unet = UNet2DConditionModel(configs_for(manifest, {"unet": state})["unet"]).eval().requires_grad_(False)
    unet.load_state_dict(state, strict=True)
    del state
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    unet.to(device=device, dtype=dtype, memory_format=memory_format)
    inputs = unet_inputs(manifest, args.width, args.height, args.batch, device, dtype, memory_format)

    record = {"device": str(device), "dtype": args.dtype, "input_shape": list(inputs[0].shape),
              "channels_last": args.channels_last, "replays": args.replays, "rounds": args.rounds,
              "torch": torch.__version__, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "variants": []}
    reference, baseline_ms = None, None
    for name in args.variants:
        entry = {"name": name}
        record["variants"].append(entry)
        try:
            context_manager = contextlib.nullcontext()
            module = unet
            if name.startswith("attention_"):
                if device.type != "cuda":
                    raise RuntimeError("attention kernels are chosen on CUDA only")
                context_manager = attention_kernel(name[len("attention_"):])
            elif name != "baseline":
                module = rewrite(unet, REWRITES if name == "all_rewrites" else (name,))
            out, ms = measure(module, inputs, args, device, context_manager)
            counts = rewritten(module)
        except Exception as e:  # a variant this PyTorch or card cannot run is a finding, not the end of the run
            if name == "baseline":
                raise
            entry["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
            continue
        finally:
            module = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        out = out.float()
        if reference is None:
            reference, baseline_ms = out, ms
        difference = (out - reference).abs().max().item()
        entry.update({"ms_per_call": ms, "speed_vs_baseline": baseline_ms / ms, "max_abs_diff": difference,
                      "max_rel_diff": difference / max(reference.abs().max().item(), 1e-30), "rewritten": counts})
    # Timed again last, so that a clock that drifted over the run shows.
    record["baseline_again_ms_per_call"] = measure(unet, inputs, args, device, contextlib.nullcontext())[1]
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
