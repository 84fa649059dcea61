#!/usr/bin/env python3
"""The PyTorch eager reference for txt2img's benchmarks: the same networks (this converter's modules) with the same
weights as a bundle, timed over the same work as txt2img-bench: text encoder (prompt and negative prompt), N U-Net
calls with classifier-free guidance and a DDIM step, VAE (or TAESD) decode to 8-bit pixels on the host.

  bench_eager.py --model DIR [--device cuda] [--dtype fp16] [--threads N] [--width W --height H] [--steps N]
                 [--cfg S] [--batch B] [--warmup N] [--runs N] [--decoder full|taesd] [--compile MODE]

Prints one JSON object (the same keys as txt2img-bench's where they mean the same). The weights are the state
dicts of the bundle's TorchScript files, loaded strictly into freshly built eager modules; on PyTorch >= 2.0 those
use scaled_dot_product_attention, as the bundle's modules do when exported there. No safety checker: compare with
txt2img-bench --no-safety-checker.
"""

import argparse
import ctypes
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from txt2img_convert import checkpoints as ck  # noqa: E402
from txt2img_convert.clip import CLIPTextModel  # noqa: E402
from txt2img_convert.presets import preset, sd1_defaults  # noqa: E402
from txt2img_convert.taesd import TAESDDecoder, decoder_layout  # noqa: E402
from txt2img_convert.unet import UNet2DConditionModel  # noqa: E402
from txt2img_convert.vae import VAEDecoder  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BOS, EOS = 49406, 49407


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench_eager.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, metavar="DIR", help="txt2img model bundle")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: PyTorch's default)")
    p.add_argument("--width", type=int, default=0, help="0: the bundle's default size")
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--decoder", choices=["full", "taesd"], default="full", help="the VAE, or the bundle's TAESD")
    p.add_argument("--compile", metavar="MODE", choices=["default", "reduce-overhead", "max-autotune"],
                   help="wrap the U-Net in torch.compile with this mode (PyTorch >= 2.0; reduce-overhead replays CUDA "
                        "graphs, as txt2img does); the warm-up batches pay for the compilation")
    args = p.parse_args(argv)
    if args.compile and not hasattr(torch, "compile"):
        p.error(f"--compile needs torch.compile, which PyTorch {torch.__version__} lacks (it came with 2.0)")
    return args


def configs_for(manifest: dict, state_dicts: dict) -> dict:
    """The configs of the networks in `state_dicts`: a random bundle's preset, else SD v1 defaults with every shape
    the weights reveal (SD v1.x checkpoints all share v1's head counts)."""
    source = manifest.get("source") or {}
    if source.get("kind") == "random":
        return preset(source["preset"])
    base = sd1_defaults()

    def component(part):
        return ck.Component(part, state_dicts[part], base[part], part)

    configs = {}
    if "unet" in state_dicts:
        configs["unet"] = ck.infer_unet_config(component("unet"), base["unet"])
    if "text_encoder" in state_dicts:
        configs["text_encoder"] = ck.infer_text_config(component("text_encoder"), base["text_encoder"],
                                                       heads_known=True)
    if "vae" in state_dicts:
        configs["vae"] = ck.infer_vae_config(component("vae"), base["vae"])
    if "taesd" in state_dicts:
        configs["taesd"] = decoder_layout(state_dicts["taesd"])
    return configs


def load_modules(bundle: str, device: torch.device, dtype: torch.dtype, decoder: str):
    """The bundle's text encoder, U-Net and the decoder (`decoder` "full": the VAE, "taesd": TAESD), as eager
    modules under the names text_encoder, unet and decoder."""
    with open(os.path.join(bundle, "model.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    decoder_part = "taesd" if decoder == "taesd" else "vae"
    files = {"text_encoder": "text_encoder.pt", "unet": "unet.pt",
             decoder_part: "taesd_decoder.pt" if decoder == "taesd" else "vae_decoder.pt"}
    state_dicts = {part: torch.jit.load(os.path.join(bundle, name), map_location="cpu").state_dict()
                   for part, name in files.items()}
    configs = configs_for(manifest, state_dicts)
    classes = {"text_encoder": CLIPTextModel, "unet": UNet2DConditionModel, "vae": VAEDecoder, "taesd": TAESDDecoder}
    modules = {}
    for part in files:
        module = classes[part](configs[part]).eval().requires_grad_(False)
        module.load_state_dict(state_dicts[part], strict=True)
        modules["decoder" if part == decoder_part else part] = module.to(device=device, dtype=dtype)
    return manifest, modules


class DDIM:
    """diffusers' DDIMScheduler with eta 0 for the manifest's schedule (scaled_linear betas, leading spacing): the
    same few tensor operations per step as txt2img's sampler."""

    def __init__(self, scheduler: dict, steps: int, device: torch.device):
        n = scheduler["num_train_timesteps"]
        betas = torch.linspace(scheduler["beta_start"] ** 0.5, scheduler["beta_end"] ** 0.5, n,
                               dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0).float()
        self.final = 1.0 if scheduler["set_alpha_to_one"] else float(self.alphas_cumprod[0])
        ratio = n // steps
        self.timesteps = [i * ratio + scheduler["steps_offset"] for i in reversed(range(steps))]
        self.ratio = ratio
        self.device = device

    def step(self, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        a_t = float(self.alphas_cumprod[t])
        prev = t - self.ratio
        a_prev = float(self.alphas_cumprod[prev]) if prev >= 0 else self.final
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def allocator() -> str:
    """The process's malloc as txt2img --version names it: tcmalloc where preloaded (LD_PRELOAD), else glibc's."""
    process = ctypes.CDLL(None)
    if not hasattr(process, "tc_version"):
        return "glibc malloc"
    major, minor, patch = ctypes.c_int(), ctypes.c_int(), ctypes.c_char_p()
    process.tc_version.restype = ctypes.c_char_p
    process.tc_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
    return f"tcmalloc {major.value}.{minor.value}{(patch.value or b'').decode()}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(modules, manifest, args, device, dtype, generator):
    """One batch; returns the stage times in seconds."""
    batch, context_length = args.batch, manifest["context_length"]
    # An LCM-distilled U-Net takes the scale as an input instead of classifier-free guidance, as txt2img runs it.
    embedded = bool(manifest.get("guidance_embedding_dim"))
    guided = args.cfg > 1.0 and not embedded
    guidance = torch.full((batch,), args.cfg - 1.0, device=device) if embedded else None
    times = {}
    sync(device)
    start = last = time.perf_counter()

    def lap():
        nonlocal last
        sync(device)
        now = time.perf_counter()
        elapsed, last = now - last, now
        return elapsed

    # Token ids do not change the work: a short prompt padded to the context length, as the tokenizer makes it.
    prompt = torch.full((batch, context_length), EOS, dtype=torch.long)
    prompt[:, 0] = BOS
    prompt[:, 1:9] = torch.arange(320, 328)
    context = modules["text_encoder"](prompt.to(device))
    if guided:
        negative = torch.full((batch, context_length), EOS, dtype=torch.long)
        negative[:, 0] = BOS
        context = torch.cat([modules["text_encoder"](negative.to(device)), context])
    times["text_s"] = lap()

    factor = manifest["vae_scale_factor"]
    shape = (batch, manifest["latent_channels"], args.height // factor, args.width // factor)
    ddim = DDIM(manifest["scheduler"], args.steps, device)
    latents = torch.randn(shape, generator=generator).to(device)
    # The loop is timed as a whole, as txt2img-bench times it: no wait for the device between steps.
    timesteps = torch.tensor(ddim.timesteps, device=device)
    for i, t in enumerate(ddim.timesteps):
        model_input = torch.cat([latents, latents]) if guided else latents
        eps = modules["unet"](model_input.to(dtype), timesteps[i], context, guidance).float()
        if guided:
            uncond, cond = eps.chunk(2)
            eps = uncond + args.cfg * (cond - uncond)
        latents = ddim.step(eps, t, latents)
    times["unet_s"] = lap()

    # TAESD decodes the latents as they are; the VAE takes them divided by its scaling factor.
    z = latents if args.decoder == "taesd" else latents / manifest["scale_factor"]
    decoded = modules["decoder"](z.to(dtype)).float()
    times["decode_s"] = lap()
    ((decoded * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    times["other_s"] = lap()
    times["total_s"] = time.perf_counter() - start
    return times


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    load_start = time.perf_counter()
    manifest, modules = load_modules(args.model, device, dtype, args.decoder)
    if args.compile:
        modules["unet"] = torch.compile(modules["unet"], mode=args.compile)
    sync(device)
    load_s = time.perf_counter() - load_start
    args.width = args.width or manifest["default_size"]
    args.height = args.height or manifest["default_size"]

    generator = torch.Generator().manual_seed(0)
    timed = []
    for i in range(args.warmup + args.runs):
        times = generate(modules, manifest, args, device, dtype, generator)
        kind = "warm-up" if i < args.warmup else "timed"
        print(f"bench_eager.py: {kind} batch {i + 1}: {times['total_s']:.4g} s (text {times['text_s']:.4g}, U-Net "
              f"{times['unet_s']:.4g} for {args.steps} steps, decode {times['decode_s']:.4g})",
              file=sys.stderr, flush=True)
        if i >= args.warmup:
            timed.append(times)

    total_s = statistics.median(t["total_s"] for t in timed)
    unet_s = statistics.median(t["unet_s"] for t in timed)
    out = {
        "tool": "bench_eager.py",
        "torch": torch.__version__,
        "allocator": allocator(),
        "device": str(device),
        "dtype": args.dtype,
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "threads": torch.get_num_threads(),
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "cfg": args.cfg,
        "batch": args.batch,
        "decoder": args.decoder,
        "compile": args.compile,
        "safety_checker": False,
        "load_s": load_s,
        "seconds_per_batch": total_s,
        "seconds_per_image": total_s / args.batch,
        "images_per_s": args.batch / total_s,
        "unet_it_per_s": args.steps / unet_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "runs": timed,
    }
    if device.type == "cuda":
        out["peak_vram_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_vram_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
