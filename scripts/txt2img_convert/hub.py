"""Sources given as Hugging Face hub ids (`owner/name`), downloaded into the hub cache where huggingface_hub is
installed and the hub is reachable; local paths as they are."""

import os
import re
from typing import Callable, List, Optional, Tuple

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


def _from_hub(source: str, what: str, patterns_for: Callable[[str, Optional[List[str]]], List[str]],
              lacking: Callable[[str], List[str]]) -> str:
    """Download `source`, a Hugging Face hub id, into the hub cache: the files that patterns_for(".safetensors", None)
    allows, then for the model folders that lacking(folder) names (those without safetensors weights) the .bin
    weights that patterns_for(".bin", those folders) allows, which is what diffusers reads for such a model."""
    advice = (f"if it is a Hugging Face hub {what}, download it yourself (e.g. `huggingface-cli download {source} "
              "--exclude '*.ckpt'`) and pass the folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConversionError(f"{source}: no such file or directory, and huggingface_hub (to download hub "
                              f"models) is not installed: {advice}") from None
    missing = None
    try:
        for ext in WEIGHT_FORMATS:
            folder = snapshot_download(repo_id=source, allow_patterns=patterns_for(ext, missing))
            missing = lacking(folder)
            if not missing:
                return folder
    except Exception as e:  # network, authentication, unknown repository: all mean "do it by hand"
        raise ConversionError(f"cannot download {source} ({type(e).__name__}: {e}): {advice}") from None
    where = "" if missing == [""] else " for " + ", ".join(f"{part}/" for part in missing)
    raise ConversionError(f"{source}: the repository has no diffusers {what} weights{where}: {advice}")


def _lacking_weights(folder: str, parts: List[str], stems: Tuple[str, ...]) -> List[str]:
    """Those of the model folders `parts` of `folder` that hold no float32 weights of one of `stems`."""
    missing = []
    for part in parts:
        try:
            folder_weights(os.path.join(folder, part), stems, variants=("",))
        except ConversionError:
            missing.append(part)
    return missing


# The weights' names of a diffusers pipeline's models (diffusers': unet/, vae/; transformers': text_encoder/,
# safety_checker/).
_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")


def resolve_source(source: str, safety_checker: bool = True) -> str:
    """A local path as given; a Hugging Face hub id (`owner/name`) downloaded into the hub cache: the weights of the
    models a bundle is made of, and of the safety checker only where `safety_checker` (the conversion uses the
    repository's own)."""
    if os.path.exists(source):
        return source
    if not _is_hub_id(source):
        raise ConversionError(f"{source}: no such file or directory")
    # Only what the bundle needs: the configs, the tokenizer and one weights file (or the index and shards of
    # one sharded checkpoint) per model, not the several-GB .ckpt / fp16 / flax / onnx copies that model
    # repositories also carry.
    common = ["model_index.json", "*/config.json", "scheduler/*.json", "feature_extractor/*.json",
              "tokenizer/*"]

    models = ["unet", "vae", "text_encoder"] + (["safety_checker"] if safety_checker else [])

    def patterns(ext: str, parts: Optional[List[str]]) -> List[str]:
        return (common if parts is None else []) + [pattern for part in (parts or models)
                                                    for pattern in _hub_weights(_STEMS, f"{part}/", ext)]

    def lacking(folder: str) -> List[str]:
        # Each of those models the repository has (a config.json in its folder), and the U-Net in any case.
        parts = {"unet"} | {p for p in models if os.path.isfile(os.path.join(folder, p, "config.json"))}
        return _lacking_weights(folder, sorted(parts), _STEMS)

    return _from_hub(source, "model", patterns, lacking)


def resolve_component(source: str, flag: str) -> str:
    """The path of a --vae or --taesd argument: a local file or folder as given; a hub id of a diffusers model
    repository (stabilityai/sd-vae-ft-mse, madebyollin/taesd) downloaded into the hub cache (config.json and one
    weights file)."""
    if os.path.exists(source):
        return source
    if not _is_hub_id(source):
        raise ConversionError(f"{flag} {source}: no such file or folder")
    stems = ("diffusion_pytorch_model",)
    return _from_hub(source, flag[2:].upper(),
                     lambda ext, parts: (["config.json"] if parts is None else []) + _hub_weights(stems, "", ext),
                     lambda folder: _lacking_weights(folder, [""], stems))
