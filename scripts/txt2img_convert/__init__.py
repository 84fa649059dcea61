"""Stable Diffusion v1 checkpoint conversion: model architectures in plain PyTorch and TorchScript export."""
