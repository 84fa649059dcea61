"""The U-Net called as txt2img's loop calls it, for the scripts that time it (profile_unet.py, unet_variants.py):
its inputs for a bundle, a CUDA graph of the call, and timed rounds of calls."""

import statistics
import time

import torch

from bench_eager import DTYPES, sync


def add_call_arguments(parser, model_help: str) -> None:
    """The options that say which U-Net call to make: the bundle, device, dtype, size, batch and layout."""
    parser.add_argument("--model", required=True, metavar="DIR", help=model_help)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--width", type=int, default=0, help="0: the bundle's default size")
    parser.add_argument("--height", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1, help="images; the U-Net sees two rows each (guidance)")
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC weights and input, as txt2img's CUDA default")


def unet_inputs(manifest: dict, width: int, height: int, batch: int, device: torch.device, dtype: torch.dtype,
                memory_format=torch.contiguous_format) -> list:
    """Random latents and text context for `batch` images with guidance (two rows each), a late timestep, and an
    LCM model's guidance; `width` and `height` 0 take the bundle's default size."""
    factor, latent = manifest["vae_scale_factor"], manifest["latent_channels"]
    width, height = width or manifest["default_size"], height or manifest["default_size"]
    rows = 2 * batch
    channels = 2 * latent + 1 if manifest.get("inpainting") else latent  # an inpainting model's mask and masked image
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, channels, height // factor, width // factor, generator=generator)
    context = torch.randn(rows, manifest["context_length"], manifest["text_hidden_size"], generator=generator)
    inputs = [x.to(device, dtype).contiguous(memory_format=memory_format), torch.tensor(981.0, device=device),
              context.to(device, dtype)]
    if manifest.get("guidance_embedding_dim"):
        inputs.append(torch.full((rows,), 7.0, device=device))
    return inputs


def capture(call, device: torch.device, warmup: int = 3):
    """(graph, output) of `call` captured as a CUDA graph, after warm-up calls on a side stream as capture needs."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            call()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    return graph, out


def median_ms(run, calls: int, rounds: int, device: torch.device) -> float:
    """Milliseconds per call of `run`: the median over `rounds` rounds of `calls` calls, each waited for."""
    times = []
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            run()
        sync(device)
        times.append((time.perf_counter() - start) / calls * 1000)
    return statistics.median(times)
