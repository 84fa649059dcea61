#!/usr/bin/env python3
"""Where a U-Net call's time goes: the bundle's own unet.pt (the TorchScript txt2img runs), called as txt2img calls it
(unprofiled TorchScript, channels_last where asked, a batch with classifier-free guidance's two rows per image), under
PyTorch's profiler.

  profile_unet.py --model DIR [--device cuda] [--dtype fp16] [--width W --height H] [--batch B] [--channels-last]
                  [--calls N] [--warmup N] [--threads N] [--top N]

Prints one JSON object: the call's time per call three ways (plain calls timed alone; on CUDA, replays of a CUDA
graph of the call, which is what txt2img's loop is; and the sum of the device's time in the profiled calls: the
kernels' durations on CUDA, the operators' own time on the CPU), that device time by the outermost ATen operator
that spent it (aten::group_norm, aten::conv2d, aten::linear, aten::scaled_dot_product_attention, aten::add,
aten::contiguous, ...), and the kernels (CUDA) or innermost operators (CPU) that took most of it. On CUDA the gap
between the graph's time and the kernels' is what the card spends between kernels.
"""

import argparse
import json
import os
import sys
from collections import defaultdict

import torch
from torch.autograd import DeviceType

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_eager import DTYPES, allocator, sync  # noqa: E402
from unet_calls import add_call_arguments, capture, median_ms, unet_inputs  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(prog="profile_unet.py", description=__doc__.split("\n\n")[0])
    add_call_arguments(p, "txt2img model bundle")
    p.add_argument("--calls", type=int, default=5, help="profiled calls (and timed calls of each kind)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: PyTorch's default)")
    p.add_argument("--top", type=int, default=25, help="kernels or operators listed")
    return p.parse_args(argv)


def outermost_op(event):
    """The ATen operator the module's code called, for an event inside it: the last aten:: ancestor before the
    TorchScript method that called it (aten::linear, not the aten::addmm inside it)."""
    while event.cpu_parent is not None and event.cpu_parent.name.startswith("aten::"):
        event = event.cpu_parent
    return event


def device_time(events, device_type):
    """(outermost operator event, name, microseconds) for everything that took the device's time: each CUDA kernel
    (and copy) with the outermost operator of the operator that launched it; on the CPU each operator's own time."""
    if device_type == "cuda":
        # Kernels only from operators: some PyTorch versions also hang an operator's kernels on runtime calls
        # (cudaLaunchKernel, the profiler's own synchronisation) whose ids collide with it.
        for event in events:
            if event.device_type == DeviceType.CPU and event.name.startswith("aten::"):
                for kernel in event.kernels:
                    yield outermost_op(event), kernel.name, kernel.duration
    else:
        for event in events:
            if event.device_type == DeviceType.CPU and event.name.startswith("aten::"):
                yield outermost_op(event), event.name, event.self_cpu_time_total


def summarise(spans, calls, top):
    """The device time per call, by operator (all of them, counted as the module's code called them) and by kernel
    (the `top` largest, counted as launched)."""
    op_us, op_calls = defaultdict(float), defaultdict(set)
    name_us, name_count = defaultdict(float), defaultdict(int)
    for op, name, us in spans:
        op_us[op.name] += us
        op_calls[op.name].add(op.id)
        name_us[name] += us
        name_count[name] += 1
    total_us = sum(op_us.values())

    def rows(us_of, count_of, key_name, limit=None):
        ordered = sorted((key for key in us_of if us_of[key] > 0), key=lambda key: -us_of[key])[:limit]
        return [{key_name: key, "ms_per_call": us_of[key] / calls / 1000,
                 "share": us_of[key] / total_us if total_us else 0.0, "count_per_call": count_of(key) / calls}
                for key in ordered]

    return {"device_ms_per_call": total_us / calls / 1000,
            "by_op": rows(op_us, lambda key: len(op_calls[key]), "op"),
            "by_kernel": rows(name_us, name_count.get, "kernel", top)}


@torch.inference_mode()
def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    with open(os.path.join(args.model, "model.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    unet = torch.jit.load(os.path.join(args.model, "unet.pt"), map_location="cpu").eval()
    unet.to(device=device, dtype=dtype)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
    inputs = unet_inputs(manifest, args.width, args.height, args.batch, device, dtype, memory_format)

    def call():
        return unet(*inputs)

    # txt2img runs the U-Net as unprofiled TorchScript (the graph executor's optimisations off).
    with torch.jit.optimized_execution(False):
        for _ in range(args.warmup):
            call()
        channels_last_convs = sum(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                                  and not p.is_contiguous() for p in unet.parameters())
        record = {"device": str(device), "dtype": args.dtype, "input_shape": list(inputs[0].shape),
                  "channels_last": args.channels_last,
                  # What the flag did: the sample's layout, and how many convolution weights are NHWC.
                  "input_channels_last": inputs[0].is_contiguous(memory_format=torch.channels_last)
                  and not inputs[0].is_contiguous(),
                  "channels_last_conv_weights": channels_last_convs, "calls": args.calls, "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "allocator": allocator(),
                  "plain_ms_per_call": median_ms(call, args.calls, 1, device)}
        if device.type == "cuda":
            record["gpu"] = torch.cuda.get_device_name(device)
            try:
                graph, _ = capture(call, device, args.warmup)
                graph.replay()  # the first replay uploads the graph: not part of the steady state
                record["graph_ms_per_call"] = median_ms(graph.replay, args.calls, 1, device)
                del graph, _  # its memory pool, before the profiled calls
            except RuntimeError as e:  # the profile below is still worth having
                record["graph_error"] = str(e).splitlines()[0]
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profile:
            for _ in range(args.calls):
                call()
            sync(device)
    events = profile.events()
    record.update(summarise(device_time(events, device.type), args.calls, args.top))
    if device.type == "cuda":
        # Every kernel the profiler saw, whichever event it hangs on: differs from device_ms_per_call only where
        # kernels were not attributed to an operator.
        kernel_us = sum(e.time_range.elapsed_us() for e in events if e.device_type == DeviceType.CUDA)
        record["all_kernels_ms_per_call"] = kernel_us / args.calls / 1000
        if not kernel_us:
            record["warning"] = "the profiler recorded no CUDA kernel (CUPTI unavailable?): device times are empty"
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
