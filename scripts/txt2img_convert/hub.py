"""Sources given as Hugging Face hub ids (`owner/name`), downloaded into the hub cache where huggingface_hub is
installed and the hub is reachable; local paths as they are."""

import os
import re
from typing import Callable, List, Tuple

from .checkpoints import WEIGHT_FORMATS, ConversionError, folder_weights


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A missing local file, never a hub id (whose names do not end so): "models/v1-5.safetensors" is a typo, not a
# repository to ask the network for.
_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".json", ".yaml")


def _is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not source.lower().endswith(_FILE_SUFFIXES)


def _hub_weights(stems: Tuple[str, ...], folder: str, ext: str) -> List[str]:
    """allow_patterns of one weights file, or one sharded checkpoint, per stem under `folder` ("" or "*/")."""
    patterns = []
    for stem in stems:
        patterns += [f"{folder}{stem}{ext}", f"{folder}{stem}{ext}.index.json", f"{folder}{stem}-*-of-*{ext}"]
    return patterns


def _from_hub(source: str, what: str, patterns_for: Callable[[str], List[str]], found: Callable[[str], bool]) -> str:
    """Download `source`, a Hugging Face hub id, into the hub cache: for each weights format in turn (safetensors
    first) the files that patterns_for(ext) allows, until found(folder) says the weights are there."""
    advice = (f"if it is a Hugging Face hub {what}, download it yourself (e.g. `huggingface-cli download {source} "
              "--exclude '*.ckpt'`) and pass the folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConversionError(f"{source}: no such file or directory, and huggingface_hub (to download hub "
                              f"models) is not installed: {advice}") from None
    try:
        for ext in WEIGHT_FORMATS:
            folder = snapshot_download(repo_id=source, allow_patterns=patterns_for(ext))
            if found(folder):
                return folder
    except Exception as e:  # network, authentication, unknown repository: all mean "do it by hand"
        raise ConversionError(f"cannot download {source} ({type(e).__name__}: {e}): {advice}") from None
    raise ConversionError(f"{source}: the repository has no diffusers {what} weights: {advice}")


def _has_weights(folder: str, stem: str) -> bool:
    try:
        folder_weights(folder, (stem,))
    except ConversionError:
        return False
    return True


def resolve_source(source: str) -> str:
    """A local path as given; a Hugging Face hub id (`owner/name`) downloaded into the hub cache."""
    if os.path.exists(source):
        return source
    if not _is_hub_id(source):
        raise ConversionError(f"{source}: no such file or directory")
    # Only what the bundle needs: the configs, the tokenizer and one weights file (or the index and shards of
    # one sharded checkpoint) per model, not the several-GB .ckpt / fp16 / flax / onnx copies that model
    # repositories also carry.
    common = ["model_index.json", "*/config.json", "scheduler/*.json", "feature_extractor/*.json",
              "tokenizer/*"]
    return _from_hub(source, "model",
                     lambda ext: common + _hub_weights(("diffusion_pytorch_model", "model", "pytorch_model"), "*/", ext),
                     lambda folder: _has_weights(os.path.join(folder, "unet"), "diffusion_pytorch_model"))


def resolve_component(source: str, flag: str) -> str:
    """The path of a --vae or --taesd argument: a local file or folder as given; a hub id of a diffusers model
    repository (stabilityai/sd-vae-ft-mse, madebyollin/taesd) downloaded into the hub cache (config.json and one
    weights file)."""
    if os.path.exists(source):
        return source
    if not _is_hub_id(source):
        raise ConversionError(f"{flag} {source}: no such file or folder")
    return _from_hub(source, flag[2:].upper(),
                     lambda ext: ["config.json"] + _hub_weights(("diffusion_pytorch_model",), "", ext),
                     lambda folder: _has_weights(folder, "diffusion_pytorch_model"))
