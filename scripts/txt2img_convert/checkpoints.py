"""Reading Stable Diffusion v1 weights from the two layouts they are published in.

* a diffusers folder (`unet/`, `vae/`, `text_encoder/`, ... each with config.json and weights), and
* a single CompVis/LDM checkpoint (`.safetensors` or `.ckpt`) with the keys of the original training code:
  `model.diffusion_model.*` (U-Net), `first_stage_model.*` (VAE), `cond_stage_model.transformer.*` (CLIP).

Both become `Component`s with diffusers / transformers tensor names and config dicts. For single files the
configs come from the tensor shapes, completed from an optional diffusers folder (`--config`) or SD v1.5
defaults. Pickled `.ckpt` / `.bin` files are read with a restricted unpickler (restricted_pickle) that never imports
or calls anything outside what tensors are built from, so a checkpoint can never run code.
"""

import hashlib
import json
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import restricted_pickle
from .launch import progress
from .presets import sd1_defaults
from .safetensors_io import is_safetensors, load_file, read_header

Tensors = Dict[str, torch.Tensor]


class ConversionError(Exception):
    """A problem with the user's input; reported as one line, without a traceback."""


@dataclass
class Component:
    """The weights of one model under diffusers / transformers names, with its config."""

    label: str  # name in messages, e.g. "U-Net"
    tensors: Tensors
    config: dict
    origin: str  # file the weights came from
    # Name in `origin` of a tensor named here (single files use other names); for messages only.
    source_name: Callable[[str], str] = str


@dataclass
class Model:
    unet: Component
    vae: Component
    text_encoder: Component
    scheduler: Optional[dict]  # scheduler_config.json of the source, if it has one
    kind: str  # "diffusers" | "single_file"
    path: str
    name: str
    sha256: str  # of the single file, or of a folder's U-Net weights (sha256_weights)
    # A single file's LDM schedule buffer, which A1111 samples with (diffusers ignores it), where the file has one.
    alphas_cumprod: Optional[torch.Tensor] = None


# ---------------------------------------------------------------------------------------------- files


def _hash_file(digest, path: str, start: int = 0) -> None:
    with open(path, "rb") as f:
        f.seek(start)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def sha256_file(path: str, start: int = 0) -> str:
    """sha256 of the file's bytes from `start` on."""
    digest = hashlib.sha256()
    _hash_file(digest, path, start)
    return digest.hexdigest()


def sha256_tensors(tensors: Tensors) -> str:
    """sha256 of tensors by name, dtype, shape and values alone, in name order: unlike that of a TorchScript file
    (whose debug records hold the converter's source paths), the same weights give the same digest wherever they
    are converted. Each tensor is a JSON line [name, dtype, shape] followed by its bytes in memory order
    (little-endian on the machines PyTorch runs SD on)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode("utf-8") + b"\n")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            # Python's json accepts the Infinity/NaN tokens that diffusers writes into some scheduler configs.
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _check_has_content(path: str) -> None:
    """What a download or clone can leave instead of the weights: an empty file, or a Git LFS pointer (a clone
    without git-lfs has a short text file in place of each large file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LFS_POINTER))
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e.strerror or e}") from None
    if not head:
        raise ConversionError(f"cannot read {path}: the file is empty (an interrupted download?)")
    if head == _LFS_POINTER:
        raise ConversionError(f"{path} is a Git LFS pointer (a {os.path.getsize(path)}-byte text file standing for "
                              "the weights), not the weights: fetch them with `git lfs pull` in the clone (git-lfs "
                              "installed), or download the file itself")


def read_pickle(path: str, before_reading: Optional[Callable[[Any], None]] = None):
    """What a pickled PyTorch file holds, read by the restricted unpickler, which runs none of its code (torch.load
    is never used: see restricted_pickle). `before_reading`: restricted_pickle.unpickle's."""
    ignored: Dict[str, type] = {}
    try:
        data = restricted_pickle.unpickle(path, ignored, before_reading)
    except restricted_pickle.Damaged as e:
        raise ConversionError(f"cannot read {path}: truncated or damaged (an interrupted download?): {e}") from None
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, RuntimeError, OverflowError, MemoryError, zipfile.BadZipFile, struct.error) as e:
        # Objects it does not trust become stand-ins that accept anything, so what stops it is the bytes.
        failure = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise ConversionError(f"cannot read {path}: damaged or truncated (an interrupted download?), or not a "
                              f"PyTorch checkpoint ({failure})") from None
    if ignored:
        # Lightning checkpoints (CompVis' sd-v1-4.ckpt, ...) pickle training state beside the weights.
        names = sorted(ignored)
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        progress(f"{path}: the restricted unpickler ignored these globals beside the weights, without importing or "
                 f"running them: {shown}")
    return data


def read_file(path: str, before_reading: Optional[Callable[[Any], None]] = None):
    """What a .safetensors file (a dict of tensors) or a pickled PyTorch file holds, told apart by content rather than
    by name. Pickles are read by the restricted unpickler, which runs none of their code. `before_reading`: for a
    pickle, restricted_pickle.unpickle's."""
    _check_has_content(path)
    named = path.lower().endswith(".safetensors")
    if not is_safetensors(path):
        if named:
            progress(f"{path} is a pickled PyTorch checkpoint despite its name; reading it as one")
        return read_pickle(path, before_reading)
    if not named:
        progress(f"{path} is a .safetensors file despite its name; reading it as one")
    try:
        return load_file(path)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from None


def _safetensors_names(path: str) -> Optional[List[str]]:
    """The tensor names in the header of a .safetensors file, read without its tensors; None for a pickle."""
    _check_has_content(path)
    if not is_safetensors(path):
        return None
    try:
        return [name for name in read_header(path) if name != "__metadata__"]
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from None


def _state_dict(data):
    # Lightning checkpoints keep the weights under "state_dict" beside training state (global_step, ...).
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    return data


def read_tensors(path: str, check_names: Optional[Callable[[List[str]], None]] = None) -> Tensors:
    """Every tensor of a .safetensors file or of a pickled PyTorch checkpoint (.ckpt, .bin, .pt): its state
    dict's, which Lightning checkpoints keep under "state_dict". `check_names` is called with the tensors' names
    before their bytes are read (a .safetensors file's header's, a pickle's state dict's), so that what it raises
    stops a file of the wrong kind at once."""
    if check_names is not None:
        names = _safetensors_names(path)
        if names is not None:
            check_names(names)

    def check_pickled(data) -> None:
        state = _state_dict(data)
        if check_names is not None and isinstance(state, dict):
            check_names([k for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)])

    data = _state_dict(read_file(path, check_pickled))
    if not isinstance(data, dict):
        found = restricted_pickle.ignored_name(data)
        raise ConversionError(f"{path}: expected a dict of tensors, found "
                              f"{type(data).__name__ if found is None else 'an object of ' + found + ' (not loaded)'}")
    for key, value in data.items():
        found = restricted_pickle.ignored_name(value)
        if found is not None:
            raise ConversionError(f"{path}: {key} is an object of {found}, not a tensor (not loaded: unpickling "
                                  "it could run arbitrary code)")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if data and not tensors:  # an empty file is left to the caller, which knows what it should have held
        keys = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(data.items())[:8])
        raise ConversionError(f"{path}: no tensors found (it holds {keys})")
    return tensors


def non_finite(tensors: Tensors) -> List[str]:
    """The names of the floating-point tensors holding a NaN or an infinity, sorted."""
    return sorted(k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())


def as_float32(tensors: Tensors) -> Tensors:
    """Half-precision checkpoints are common; the bundle is always float32."""
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def _ignorable(key: str) -> bool:
    # CLIP's position_ids is the constant arange(77); older transformers versions saved it. text_projection and
    # logit_scale belong to CLIP's image-text matching head, which SD does not use (ComfyUI saves SD 1's text encoder
    # with text_projection); diffusers and A1111 load past both.
    return key.endswith("position_ids") or key in ("text_projection.weight", "logit_scale")


# ------------------------------------------------------------------------------ LDM -> diffusers names


class _Renames:
    """Correspondence of module paths between two naming schemes.

    Each entry pairs a module path of one scheme with the path of the same module in the other, optionally
    with a table for the sub-modules inside it (LDM's ResBlock calls its first convolution `in_layers.2`,
    diffusers `conv1`). A key is renamed through its longest listed module path; the rest of the key is
    kept. Keys under no listed path have no counterpart (None). The inverse direction names missing tensors
    in messages.
    """

    def __init__(self) -> None:
        self._forward: Dict[str, Tuple[str, Optional[Dict[str, str]]]] = {}
        self._backward: Dict[str, Tuple[str, Optional[Dict[str, str]]]] = {}

    def add(self, source: str, target: str, inner: Optional[Dict[str, str]] = None) -> None:
        self._forward[source] = (target, inner)
        self._backward[target] = (source, {v: k for k, v in inner.items()} if inner else None)

    def forward(self, key: str) -> Optional[str]:
        return self._apply(self._forward, key)

    def backward(self, key: str) -> Optional[str]:
        return self._apply(self._backward, key)

    @staticmethod
    def _apply(table, key: str) -> Optional[str]:
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            entry = table.get(".".join(parts[:n]))
            if entry is None:
                continue
            target, inner = entry
            rest = ".".join(parts[n:])
            if inner is not None:
                module, _, param = rest.rpartition(".")
                if module not in inner:
                    return None
                rest = f"{inner[module]}.{param}"
            return f"{target}.{rest}"
        return None


# LDM ResBlock: in_layers = (GroupNorm, SiLU, conv), emb_layers = (SiLU, Linear),
# out_layers = (GroupNorm, SiLU, Dropout, conv); diffusers names the same layers directly.
_UNET_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "nin_shortcut": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _children(keys, prefix: str) -> List[int]:
    """Sorted integer indices that directly follow `prefix` in `keys` (e.g. the blocks of a level)."""
    found = set()
    for key in keys:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _unet_renames(keys: List[str]) -> _Renames:
    """LDM UNetModel -> diffusers UNet2DConditionModel, for the structure that `keys` (LDM names) show.

    LDM numbers its blocks flat: input_blocks[0] is conv_in, then per level `layers` blocks of
    (ResBlock[, SpatialTransformer]) and, except on the last level, one Downsample block; output_blocks has
    `layers + 1` blocks of (ResBlock[, SpatialTransformer][, Upsample]) per level, the upsampler in the
    level's last block. middle_block is (ResBlock, SpatialTransformer, ResBlock).
    """
    downsamplers = [i for i in _children(keys, "input_blocks.") if f"input_blocks.{i}.0.op.weight" in keys]
    levels = len(downsamplers) + 1
    n_input = len(_children(keys, "input_blocks."))
    layers = n_input // levels - 1
    if layers < 1 or n_input != levels * (layers + 1):
        raise ConversionError(f"U-Net: {n_input} input blocks with {levels - 1} downsamplers do not form an "
                              "SD v1 U-Net")

    def has_attention(block: str) -> bool:
        return any(k.startswith(block + ".1.") and not k.startswith(block + ".1.conv.") for k in keys)

    # A level's first input block is 1 + level * (layers + 1), its first output block level * (layers + 1).
    return _unet_level_renames(layers, [has_attention(f"input_blocks.{1 + level * (layers + 1)}")
                                        for level in range(levels)],
                               [has_attention(f"output_blocks.{level * (layers + 1)}") for level in range(levels)])


def diffusers_unet_renames(keys) -> _Renames:
    """The renames of _unet_renames for the U-Net whose diffusers names `keys` are: its backward() names a diffusers
    U-Net weight as LDM does."""
    levels = len(_children(keys, "down_blocks."))
    return _unet_level_renames(len(_children(keys, "down_blocks.0.resnets.")),
                               [bool(_children(keys, f"down_blocks.{level}.attentions.")) for level in range(levels)],
                               [bool(_children(keys, f"up_blocks.{level}.attentions.")) for level in range(levels)])


def _unet_level_renames(layers: int, down_attention: List[bool], up_attention: List[bool]) -> _Renames:
    """LDM UNetModel -> diffusers UNet2DConditionModel names, blocks numbered as _unet_renames says, for `layers`
    ResBlocks a level and each level's down and up blocks with attention or not."""
    levels = len(down_attention)
    r = _Renames()
    r.add("time_embed.0", "time_embedding.linear_1")
    r.add("time_embed.2", "time_embedding.linear_2")
    r.add("input_blocks.0.0", "conv_in")
    r.add("out.0", "conv_norm_out")
    r.add("out.2", "conv_out")
    block = 1
    for level, attention in enumerate(down_attention):
        for i in range(layers):
            r.add(f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{i}", _UNET_RESNET)
            if attention:
                r.add(f"input_blocks.{block}.1", f"down_blocks.{level}.attentions.{i}")
            block += 1
        if level < levels - 1:
            r.add(f"input_blocks.{block}.0", f"down_blocks.{level}.downsamplers.0", {"op": "conv"})
            block += 1
    r.add("middle_block.0", "mid_block.resnets.0", _UNET_RESNET)
    r.add("middle_block.1", "mid_block.attentions.0")
    r.add("middle_block.2", "mid_block.resnets.1", _UNET_RESNET)
    block = 0
    for level, attention in enumerate(up_attention):
        for i in range(layers + 1):
            r.add(f"output_blocks.{block}.0", f"up_blocks.{level}.resnets.{i}", _UNET_RESNET)
            if attention:
                r.add(f"output_blocks.{block}.1", f"up_blocks.{level}.attentions.{i}")
            block += 1
        if level < levels - 1:
            r.add(f"output_blocks.{block - 1}.{2 if attention else 1}", f"up_blocks.{level}.upsamplers.0")
    return r


def _vae_renames(keys: List[str]) -> _Renames:
    """LDM AutoencoderKL -> diffusers AutoencoderKL. The LDM decoder numbers its levels from the highest
    resolution (up.0, no upsampler) while diffusers numbers them in execution order (up_blocks.0 first)."""
    r = _Renames()
    for part in ("encoder", "decoder"):
        r.add(f"{part}.conv_in", f"{part}.conv_in")
        r.add(f"{part}.conv_out", f"{part}.conv_out")
        r.add(f"{part}.norm_out", f"{part}.conv_norm_out")
        r.add(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", _VAE_RESNET)
        r.add(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", _VAE_RESNET)
        r.add(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", _VAE_ATTENTION)
    levels = _children(keys, "encoder.down.")
    for i in levels:
        for j in _children(keys, f"encoder.down.{i}.block."):
            r.add(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", _VAE_RESNET)
        if i < len(levels) - 1:
            r.add(f"encoder.down.{i}.downsample", f"encoder.down_blocks.{i}.downsamplers.0")
    levels = _children(keys, "decoder.up.")
    for i in levels:
        up = len(levels) - 1 - i
        for j in _children(keys, f"decoder.up.{i}.block."):
            r.add(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}", _VAE_RESNET)
        if i > 0:
            r.add(f"decoder.up.{i}.upsample", f"decoder.up_blocks.{up}.upsamplers.0")
    r.add("quant_conv", "quant_conv")
    r.add("post_quant_conv", "post_quant_conv")
    return r


_LDM_UNET = "model.diffusion_model."
_LDM_VAE = "first_stage_model."
_LDM_TEXT = "cond_stage_model.transformer."
_LDM_EMA = "model_ema."
_CLIP_VISION = ("vision_model.", "visual_projection.")  # CLIPModel's image tower, under _LDM_TEXT
_LDM_EMA_STATE = ("model_ema.decay", "model_ema.num_updates")


def _strip(sd: Tensors, prefix: str) -> Tensors:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _ema_name(unet_key: str) -> str:
    """Where LDM's LitEma keeps the average of U-Net weight `unet_key` (without "model.diffusion_model."): under
    model_ema., named by its path in the model wrapper with the dots removed."""
    return _LDM_EMA + ("diffusion_model." + unet_key).replace(".", "")


# Single files of other model families, by key prefixes that only theirs have: what a .safetensors file's header
# says before any tensor is read. FLUX's and SD 3's files can also hold text encoders under text_encoders.*.
_OTHER_FAMILIES = (
    ("FLUX", ("double_blocks.", "model.diffusion_model.double_blocks.")),
    ("Stable Diffusion 3", ("model.diffusion_model.joint_blocks.", "text_encoders.")),
    ("Stable Diffusion XL", ("conditioner.embedders.",)),
    ("Stable Diffusion 2.x", ("cond_stage_model.model.",)),  # its OpenCLIP text encoder
)


def _check_ldm_names(names: List[str], origin: str, ema: bool = False, text_elsewhere: bool = False) -> None:
    """Refuses, by its tensor names alone, what is not an SD 1.x single file (another model family, a file without
    U-Net, or without text encoder unless `text_elsewhere` gives one) or cannot give `ema`'s moving average of every
    U-Net weight."""
    for family, prefixes in _OTHER_FAMILIES:
        found = next((name for name in names if name.startswith(prefixes)), None)
        if found is not None:
            raise ConversionError(f"{origin}: a {family} checkpoint (it holds {found}); only Stable Diffusion 1.x "
                                  "models convert")
    unet = [name[len(_LDM_UNET):] for name in names if name.startswith(_LDM_UNET)]
    has_ema = any(name.startswith(_LDM_EMA) and name not in _LDM_EMA_STATE for name in names)
    if not unet:
        if has_ema:
            raise ConversionError(f"{origin}: holds only the exponential moving average of the U-Net ({_LDM_EMA}*, "
                                  f"names without their dots), not its weights under their names "
                                  f"({_LDM_UNET}*): txt2img cannot convert such a file")
        prefixes = {name.split(".", 1)[0] for name in names}
        raise ConversionError(f"{origin}: no U-Net weights ({_LDM_UNET}*): not a Stable Diffusion 1.x "
                              "single-file checkpoint" +
                              (f" (every key starts with {next(iter(prefixes))}.)" if len(prefixes) == 1 else ""))
    if ema:
        if not has_ema:
            raise ConversionError(f"--ema: {origin} holds no exponential moving average of the U-Net ({_LDM_EMA}*)")
        present = set(names)
        missing = [key for key in unet if _ema_name(key) not in present]
        if missing:
            raise ConversionError(f"--ema: {origin} has no moving average of {_LDM_UNET}{missing[0]} "
                                  f"({_ema_name(missing[0])})" +
                                  (f" nor of {len(missing) - 1} more U-Net weights" if len(missing) > 1 else ""))
    if not text_elsewhere and not any(name.startswith(_LDM_TEXT) for name in names):
        raise ConversionError(f"{origin}: no CLIP text encoder weights ({_LDM_TEXT}*); where it was saved without "
                              "them, give --config a diffusers folder of its base model whose text_encoder/ holds "
                              "them, as diffusers' from_single_file takes them from its config")


def ldm_to_diffusers(sd: Tensors, origin: str, ema: bool = False, text_elsewhere: bool = False) -> Dict[str, Component]:
    """Split an LDM state dict into "unet", "vae" and "text_encoder" components with diffusers names (configs
    still empty). The U-Net's weights are the trained ones, as diffusers and A1111 read them, or with `ema` their
    exponential moving average where the file holds both. Keys outside the three models (schedule buffers, ...)
    are ignored. A checkpoint released without its VAE (to be used with a separate one, as A1111's VAE setting
    does), or with `text_elsewhere` without its text encoder, gives that component without tensors."""
    _check_ldm_names(list(sd), origin, ema, text_elsewhere)
    unet_ldm, vae_ldm, text_ldm = _strip(sd, _LDM_UNET), _strip(sd, _LDM_VAE), _strip(sd, _LDM_TEXT)
    ema_count = sum(k.startswith(_LDM_EMA) and k not in _LDM_EMA_STATE for k in sd)
    if ema:
        unet_ldm = {k: sd[_ema_name(k)] for k in unet_ldm}
    elif ema_count > 100:  # diffusers' threshold: a few stray model_ema.* keys are no moving average
        progress(f"{origin} also holds an exponential moving average of the U-Net ({_LDM_EMA}*); the trained weights "
                 "are converted, as diffusers and A1111 read the file, and --ema converts the average instead")
    unet_names = _unet_renames(list(unet_ldm))
    unet = {}
    for key, value in unet_ldm.items():
        name = unet_names.forward(key)
        if name is None:
            raise ConversionError(f"{origin}: unexpected U-Net tensor {_LDM_UNET}{key} (not an SD 1.x U-Net?)")
        unet[name] = value

    # Some files hold a whole CLIPModel there, its image tower beside the text tower: A1111 loads past it, diffusers
    # skips it.
    vision = [key for key in text_ldm if key.startswith(_CLIP_VISION)]
    if vision:
        progress(f"{origin} also holds CLIP's image encoder ({_LDM_TEXT}vision_model.*), which Stable Diffusion does "
                 "not use; ignored, as diffusers and A1111 ignore it")
    # transformers >= 4.? nests the text tower under `text_model.`; older CLIPTextModel saves did not, and merges of
    # the two can hold both. Each key is read on its own, as A1111 does.
    text, in_file = {}, {}
    for key, value in text_ldm.items():
        if not _ignorable(key) and not key.startswith(_CLIP_VISION):
            name = key if key.startswith("text_model.") else "text_model." + key
            text[name], in_file[name] = value, key
    nested = any(k.startswith("text_model.") and not _ignorable(k) for k in text_ldm)

    def text_source(name: str) -> str:
        # A missing tensor is named as the file's other names are.
        return _LDM_TEXT + in_file.get(name, name if nested else name[len("text_model."):])

    return {
        "unet": Component("U-Net", as_float32(unet), {}, origin, _via(unet_names, _LDM_UNET)),
        "vae": _ldm_vae(vae_ldm, origin, _LDM_VAE) if vae_ldm else Component("VAE", {}, {}, origin),
        "text_encoder": Component("text encoder", as_float32(text), {}, origin, text_source),
    }


def _via(renames: _Renames, prefix: str) -> Callable[[str], str]:
    """Names in the source file of diffusers names, for messages."""
    def name(key: str) -> str:
        source = renames.backward(key)
        return prefix + source if source else f"{prefix}? (diffusers {key})"
    return name


def _ldm_vae(vae_ldm: Tensors, origin: str, prefix: str) -> Component:
    """An LDM AutoencoderKL's tensors (without `prefix`, which they carry in `origin`) under diffusers names
    (config still empty)."""
    vae_names = _vae_renames(list(vae_ldm))
    vae = {}
    for key, value in vae_ldm.items():
        name = vae_names.forward(key)
        if name is None:
            # The decoder is what the bundle uses: anything unknown there means another architecture. Other
            # entries (e.g. a training loss's parameters) are not part of the model.
            if key.startswith(("decoder.", "post_quant_conv.")):
                raise ConversionError(f"{origin}: unexpected VAE tensor {prefix}{key}")
            continue
        # LDM's AttnBlock projects with 1x1 convolutions, diffusers' Attention with linear layers.
        if ".mid_block.attentions.0.to_" in name and name.endswith(".weight") and value.dim() == 4:
            value = value.reshape(value.shape[0], value.shape[1])
        vae[name] = value
    return Component("VAE", as_float32(vae), {}, origin, _via(vae_names, prefix))


# ------------------------------------------------------------------------------------ config inference


def tensor_shape(c: Component, key: str, *ranks: int) -> torch.Size:
    """The shape of tensor `key`, which has one of `ranks` dimensions (convolutions 4, linear layers and embeddings
    2): a damaged file's other shapes are named, not met as an IndexError."""
    tensor = c.tensors.get(key)
    if tensor is None:
        raise ConversionError(f"{c.origin}: missing {c.label} tensor {c.source_name(key)}")
    if tensor.dim() not in ranks:
        raise ConversionError(f"{c.origin}: {c.label} tensor {c.source_name(key)} has shape {list(tensor.shape)}, not "
                              f"{' or '.join(map(str, ranks))}-dimensional (a damaged file?)")
    return tensor.shape


def _count(c: Component, prefix: str) -> int:
    return len(_children(c.tensors, prefix))


def _first_key(c: Component, suffix: str) -> str:
    for key in sorted(c.tensors):
        if key.endswith(suffix):
            return key
    raise ConversionError(f"{c.origin}: no {c.label} tensor named *{suffix}")


def infer_unet_config(c: Component, base: dict) -> dict:
    """`base` with every field that the U-Net's tensor shapes determine replaced by what they say."""
    cfg = dict(base)
    levels = _count(c, "down_blocks.")
    cfg["block_out_channels"] = [tensor_shape(c, f"down_blocks.{b}.resnets.0.conv2.weight", 4)[0]
                                 for b in range(levels)]
    cfg["layers_per_block"] = _count(c, "down_blocks.0.resnets.")
    cfg["down_block_types"] = [
        "CrossAttnDownBlock2D" if _count(c, f"down_blocks.{b}.attentions.") else "DownBlock2D"
        for b in range(levels)]
    cfg["up_block_types"] = [
        "CrossAttnUpBlock2D" if _count(c, f"up_blocks.{b}.attentions.") else "UpBlock2D"
        for b in range(_count(c, "up_blocks."))]
    cfg["mid_block_type"] = "UNetMidBlock2DCrossAttn" if _count(c, "mid_block.attentions.") else "UNetMidBlock2D"
    cfg["in_channels"] = tensor_shape(c, "conv_in.weight", 4)[1]
    cfg["out_channels"] = tensor_shape(c, "conv_out.weight", 4)[0]
    cfg["cross_attention_dim"] = tensor_shape(c, _first_key(c, ".attn2.to_k.weight"), 2)[1]
    proj_in = _first_key(c, ".proj_in.weight")
    cfg["use_linear_projection"] = len(tensor_shape(c, proj_in, 2, 4)) == 2
    cfg["transformer_layers_per_block"] = _count(c, proj_in[: -len("proj_in.weight")] + "transformer_blocks.")
    return cfg


def infer_vae_config(c: Component, base: dict) -> dict:
    cfg = dict(base)
    levels = _count(c, "decoder.up_blocks.")
    # Decoder level i runs at the width of encoder level (levels - 1 - i).
    widths = [tensor_shape(c, f"decoder.up_blocks.{i}.resnets.0.conv2.weight", 4)[0] for i in range(levels)]
    cfg["block_out_channels"] = widths[::-1]
    cfg["layers_per_block"] = _count(c, "decoder.up_blocks.0.resnets.") - 1
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * levels
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * levels
    cfg["latent_channels"] = tensor_shape(c, "decoder.conv_in.weight", 4)[1]
    cfg["out_channels"] = tensor_shape(c, "decoder.conv_out.weight", 4)[0]
    if "encoder.conv_in.weight" in c.tensors:
        cfg["in_channels"] = tensor_shape(c, "encoder.conv_in.weight", 4)[1]
    cfg["mid_block_add_attention"] = _count(c, "decoder.mid_block.attentions.") > 0
    # Counted from the tensors, a damaged file's missing ones would make another network: where the model's VAE (or
    # SD 1's) has mid-block attention, they are missing.
    if base.get("mid_block_add_attention", True) and not cfg["mid_block_add_attention"]:
        raise ConversionError(f"{c.origin}: missing VAE tensors: the decoder's mid-block attention "
                              "(decoder.mid.attn_1.*, diffusers' decoder.mid_block.attentions.0.*), which SD 1.x VAEs "
                              "have (a damaged or cut-down file?)")
    return cfg


def infer_text_config(c: Component, base: dict, heads_known: bool) -> dict:
    """`heads_known`: `base` describes this model (from --config), so its head count applies."""
    cfg = dict(base)
    vocab, hidden = tensor_shape(c, "text_model.embeddings.token_embedding.weight", 2)
    cfg["vocab_size"] = vocab
    cfg["hidden_size"] = hidden
    cfg["max_position_embeddings"] = tensor_shape(c, "text_model.embeddings.position_embedding.weight", 2)[0]
    cfg["intermediate_size"] = tensor_shape(c, "text_model.encoder.layers.0.mlp.fc1.weight", 2)[0]
    cfg["num_hidden_layers"] = _count(c, "text_model.encoder.layers.")
    # Fewer layers than the model's --config (or than SD 1's 12, for its 768-wide encoder) are missing tensors, which
    # counted as they are would make another network.
    expected = int(base.get("num_hidden_layers") or 0)
    if cfg["num_hidden_layers"] < expected and (heads_known or hidden == 768):
        present = set(_children(c.tensors, "text_model.encoder.layers."))
        missing = [i for i in range(expected) if i not in present]
        raise ConversionError(f"{c.origin}: missing text encoder tensors: layer{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(map(str, missing))} of {expected} (text_model.encoder.layers.{missing[0]}.*; "
                              "a damaged or cut-down file?)")
    if not heads_known:
        # CLIP text towers use 64-dimensional heads (ViT-L/14: 768 = 12 x 64).
        if hidden % 64:
            raise ConversionError(
                f"{c.origin}: cannot tell the text encoder's number of attention heads (hidden size {hidden} "
                "is not a multiple of 64): pass --config with a diffusers folder of this model")
        cfg["num_attention_heads"] = hidden // 64
        cfg["projection_dim"] = hidden
    elif hidden % cfg["num_attention_heads"]:
        raise ConversionError(f"{c.origin}: the text encoder's hidden size {hidden} does not split into the "
                              f"{cfg['num_attention_heads']} attention heads of its --config")
    return cfg


# ---------------------------------------------------------------------------------------- the sources


WEIGHT_FORMATS = (".safetensors", ".bin")
_FP16 = ".fp16"  # the variant that model repositories carry beside their float32 weights


def _index_names(stem: str, variant: str, ext: str) -> List[str]:
    """The names of a sharded checkpoint's index. fp16 variants are spelled several ways: diffusers writes
    `<stem>.safetensors.fp16.index.json`, transformers `<stem>.safetensors.index.fp16.json`, and hub
    repositories also carry `<stem>.fp16.safetensors.index.json`."""
    if not variant:
        return [f"{stem}{ext}.index.json"]
    return [f"{stem}{variant}{ext}.index.json", f"{stem}{ext}{variant}.index.json", f"{stem}{ext}.index{variant}.json"]


def folder_weights(folder: str, stems: Tuple[str, ...], variants: Tuple[str, ...] = ("", _FP16)) -> str:
    """The weights of a diffusers/transformers model folder: one weights file, or the index (`*.index.json`) of a
    sharded checkpoint. As diffusers' from_pretrained without a variant: the float32 weights, safetensors before
    pickles, and only where there are none the fp16 variant (with a note); each index counting as the format of its
    shards, a single file before an index of the same kind."""
    for variant in variants:
        for ext in WEIGHT_FORMATS:
            for stem in stems:
                for name in [f"{stem}{variant}{ext}"] + _index_names(stem, variant, ext):
                    path = os.path.join(folder, name)
                    if os.path.isfile(path):
                        if variant:
                            progress(f"{folder}: no float32 weights; using the {variant[1:]} variant {name} "
                                     "(converted to float32)")
                        return path
    raise ConversionError(f"{folder}: no weights file ({stems[0]}.safetensors or {stems[-1]}.bin, the index of a "
                          f"sharded checkpoint such as {stems[0]}.safetensors.index.json, or their fp16 variants)")


def is_index(path: str) -> bool:
    return path.endswith(".json")


def _read_index(path: str) -> Dict[str, List[str]]:
    """shard file name -> the tensor names that the index `path` puts there (in the index's order)."""
    weight_map = read_json(path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{path}: no weight_map (tensor name -> shard file) in this sharded checkpoint index")
    shards: Dict[str, List[str]] = {}
    for name, shard in weight_map.items():
        # Shards lie beside their index; anything else is not a Hugging Face sharded checkpoint.
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard or shard in (".", ".."):
            raise ConversionError(f"{path}: weight_map puts {name} in {shard!r}, not a file name beside the index")
        shards.setdefault(shard, []).append(name)
    return shards


def listing(names, limit: int = 5) -> str:
    """The first `limit` names, sorted, for an error message: "a, b, c (and 4 more)"."""
    names = sorted(names)
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def weight_files(path: str) -> List[str]:
    """The files holding the weights of `path` (a weights file, or a sharded checkpoint's index)."""
    if not is_index(path):
        return [path]
    folder = os.path.dirname(path)
    return [os.path.join(folder, shard) for shard in sorted(_read_index(path))]


def read_sharded(path: str) -> Tensors:
    """Every tensor of the sharded checkpoint whose index is `path`: each shard of its weight_map, read like a
    single weights file, holding exactly the tensors that the weight_map puts there."""
    shards = _read_index(path)
    folder = os.path.dirname(path)
    absent = [s for s in sorted(shards) if not os.path.isfile(os.path.join(folder, s))]
    if absent:
        raise ConversionError(f"{path}: missing shard {listing(absent)} (named in the index's weight_map, not in "
                              f"{folder or '.'})")
    tensors: Tensors = {}
    missing: List[str] = []
    unexpected: List[str] = []
    for shard in sorted(shards):
        found = read_tensors(os.path.join(folder, shard))
        wanted = set(shards[shard])
        missing += [f"{name} (in {shard})" for name in shards[shard] if name not in found]
        unexpected += [f"{name} (in {shard})" for name in found if name not in wanted]
        tensors.update((k, v) for k, v in found.items() if k in wanted)
    if missing:
        raise ConversionError(f"{path}: the weight_map names tensors that its shards do not hold: {listing(missing)}")
    if unexpected:
        raise ConversionError(f"{path}: shards hold tensors that the weight_map does not name there: "
                              f"{listing(unexpected)}")
    return tensors


def sha256_weights(path: str) -> str:
    """sha256 of a weights file; of a sharded checkpoint, that of its shards' bytes one after the other in the
    order of their names (which is the order of Hugging Face's `-0000i-of-0000n` numbering)."""
    digest = hashlib.sha256()
    for shard in weight_files(path):
        _hash_file(digest, shard)
    return digest.hexdigest()


# Attention parameter names of diffusers < 0.14, still found in the VAE of several hub repositories.
_OLD_VAE_ATTENTION = re.compile(r"(\.mid_block\.attentions\.0\.)(query|key|value|proj_attn)\.")
_OLD_VAE_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def load_model_folder(folder: str, label: str, stems: Tuple[str, ...]) -> Component:
    """A diffusers or transformers model folder: config.json and a weights file or sharded weights (whose index
    is then the component's origin)."""
    config = read_json(os.path.join(folder, "config.json"))
    path = folder_weights(folder, stems)
    tensors = {k: v for k, v in (read_sharded(path) if is_index(path) else read_tensors(path)).items()
               if not _ignorable(k)}
    if label == "VAE":
        tensors = _new_vae_attention_names(tensors)
    return Component(label, as_float32(tensors), config, path)


def _new_vae_attention_names(tensors: Tensors) -> Tensors:
    """diffusers < 0.14 named the VAE's attention projections query/key/value/proj_attn."""
    return {_OLD_VAE_ATTENTION.sub(lambda m: m.group(1) + _OLD_VAE_NAMES[m.group(2)] + ".", k): v
            for k, v in tensors.items()}


_TAESD_HINT = "a TAESD (a tiny approximate decoder), not a VAE: add it with --taesd, for txt2img --decoder taesd"


def load_vae(source: str, model_vae: Component) -> Tuple[Component, str]:
    """A VAE to use instead of the model's (convert.py --vae): a diffusers VAE folder (config.json and weights,
    e.g. stabilityai/sd-vae-ft-mse), a diffusers model folder (its vae/), or one file of AutoencoderKL tensors
    under LDM names (vae-ft-mse-840000-ema-pruned.safetensors, a whole checkpoint's first_stage_model.*) or
    diffusers names. Its config is the folder's, else inferred from the shapes over the model's VAE config.
    Returns the component and the sha256 users know it by: the file's (A1111's "VAE hash" is its first 10
    digits), or a folder's weights'. A VAE of another latent space (other channels or scaling factor: SD 2.x's
    is SD 1's, SDXL's is not) is refused."""
    if os.path.isdir(source):
        folder = os.path.join(source, "vae") if os.path.isdir(os.path.join(source, "vae")) else source
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise ConversionError(f"--vae {source}: not a VAE folder (config.json and weights) nor a diffusers "
                                  "model folder with vae/")
        if read_json(os.path.join(folder, "config.json")).get("_class_name") == "AutoencoderTiny":
            raise ConversionError(f"--vae {source}: {_TAESD_HINT}")
        component = load_model_folder(folder, "VAE", ("diffusion_pytorch_model",))
        digest = sha256_weights(component.origin)
    elif os.path.isfile(source):
        tensors = {k: v for k, v in read_tensors(source).items() if not _ignorable(k)}
        if any(k.startswith(_LDM_VAE) for k in tensors):
            component = _ldm_vae(_strip(tensors, _LDM_VAE), source, _LDM_VAE)
        elif any(k.startswith(("decoder.up_blocks.", "decoder.mid_block.")) for k in tensors):
            component = Component("VAE", as_float32(_new_vae_attention_names(tensors)), {}, source)
        elif any(k.startswith(("decoder.up.", "decoder.mid.")) for k in tensors):
            component = _ldm_vae(tensors, source, "")
        elif any(k.startswith("decoder.layers.") or k[:1].isdigit() for k in tensors):
            raise ConversionError(f"--vae {source}: {_TAESD_HINT}")
        else:
            raise ConversionError(f"--vae {source}: no VAE decoder tensors in it (decoder.up.* or "
                                  f"decoder.up_blocks.*; found e.g. {listing(sorted(tensors), 3)})")
        component.config = infer_vae_config(component, model_vae.config)
        digest = sha256_file(source)
    else:
        raise ConversionError(f"--vae {source}: no such file or folder")
    for field, default in (("latent_channels", 4), ("scaling_factor", 0.18215)):
        theirs, ours = component.config.get(field, default), model_vae.config.get(field, default)
        if theirs != ours:
            raise ConversionError(f"--vae {source}: its {field} is {theirs}, the model's VAE has {ours}: a VAE of "
                                  "another model family (SDXL, SD 3?) decodes another latent space")
    theirs, ours = (2 ** (len(vae.config["block_out_channels"]) - 1) for vae in (component, model_vae))
    if theirs != ours:
        raise ConversionError(f"--vae {source}: it makes {theirs} pixels of a latent, the model's VAE {ours}: it "
                              "decodes latents of another size than the U-Net's")
    return component, digest


def load_safety_checker(folder: str) -> Component:
    component = load_model_folder(folder, "safety checker", ("model", "pytorch_model"))
    # CLIPConfig files written by transformers < 4.27 may give the vision tower's non-default values only in
    # "vision_config_dict", which took precedence over "vision_config" there.
    overrides = component.config.get("vision_config_dict")
    if overrides:
        component.config["vision_config"] = {**(component.config.get("vision_config") or {}), **overrides}
    return component


def _optional_json(path: str) -> Optional[dict]:
    return read_json(path) if os.path.isfile(path) else None


def check_diffusers_folder(folder: str) -> None:
    """Refuses, by its layout alone, a folder that is no diffusers SD 1.x model, saying what it looks like: another
    model family, a txt2img bundle, one component of a model."""
    # SDXL has a second text encoder, SD 3 and FLUX a transformer.
    other = [part for part in ("text_encoder_2", "transformer") if os.path.isdir(os.path.join(folder, part))]
    if other:
        pipeline = (_optional_json(os.path.join(folder, "model_index.json")) or {}).get("_class_name")
        raise ConversionError(f"{folder}: {pipeline or 'a model'} with {other[0]}/ is not Stable Diffusion 1.x "
                              "(SDXL, SD 3 or FLUX?); only SD 1.x models convert")
    missing = next((part for part in ("unet", "vae", "text_encoder") if not os.path.isdir(os.path.join(folder, part))),
                   None)
    if missing is None:
        return
    if os.path.isfile(os.path.join(folder, "model.json")):  # which no diffusers folder has
        raise ConversionError(f"{folder} is already a txt2img bundle (model.json); use it with txt2img -m {folder}")
    try:
        component = _optional_json(os.path.join(folder, "config.json"))
    except ConversionError:
        component = {}  # something's config.json all the same
    if component is not None:
        kind = component.get("_class_name") or "/".join(map(str, component.get("architectures") or []))
        raise ConversionError(f"{folder}: a single component ({'config.json of a ' + kind if kind else 'config.json'}"
                              "), not a whole model; give the model's folder, the one holding unet/")
    raise ConversionError(f"{folder}: not a diffusers Stable Diffusion folder (no {missing}/)")


def load_diffusers(folder: str) -> Model:
    check_diffusers_folder(folder)
    text_config = _optional_json(os.path.join(folder, "text_encoder", "config.json")) or {}
    unet_config = _optional_json(os.path.join(folder, "unet", "config.json")) or {}
    # AltDiffusion has SD 1's U-Net and an XLM-RoBERTa text encoder (whose config may say hidden_act gelu too). A
    # CLIPTextModelWithProjection's weights load into a CLIPTextModel (text_projection is ignored), as diffusers loads
    # them where model_index.json names that class.
    architectures = text_config.get("architectures") or ["CLIPTextModel"]
    model_type = text_config.get("model_type", "clip_text_model")
    if model_type != "clip_text_model" or not all(str(a).startswith("CLIPTextModel") for a in architectures):
        what = f"{'/'.join(map(str, architectures))}, model_type {model_type}, not CLIP's CLIPTextModel"
        if "roberta" in what.lower():
            raise ConversionError(f"{folder}: an AltDiffusion model (its text encoder is {what}); only SD 1.x models "
                                  "convert")
        raise ConversionError(f"{folder}: its text encoder is {what}; only SD 1.x models convert")
    # SD 2.x has SD 1's layout and classes; its OpenCLIP text encoder (GELU) and its U-Net's linear attention
    # projections tell it apart, which its configs say before any weights are read.
    if text_config.get("hidden_act") == "gelu" or unet_config.get("use_linear_projection"):
        why = ("its text encoder is OpenCLIP's (hidden_act gelu)" if text_config.get("hidden_act") == "gelu"
               else "its U-Net projects attention linearly (use_linear_projection)")
        raise ConversionError(f"{folder}: {why}, as Stable Diffusion 2.x's; only SD 1.x models convert")
    unet = load_model_folder(os.path.join(folder, "unet"), "U-Net", ("diffusion_pytorch_model",))
    return Model(
        unet=unet,
        vae=load_model_folder(os.path.join(folder, "vae"), "VAE", ("diffusion_pytorch_model",)),
        text_encoder=load_model_folder(os.path.join(folder, "text_encoder"), "text encoder",
                                       ("model", "pytorch_model")),
        scheduler=_optional_json(os.path.join(folder, "scheduler", "scheduler_config.json")),
        kind="diffusers",
        path=folder,
        name=os.path.basename(os.path.normpath(folder)),
        sha256=sha256_weights(unet.origin),
    )


def _text_encoder_folder(config_dir: Optional[str]) -> Optional[str]:
    """`config_dir`'s text_encoder/ where it holds a config and weights, else None."""
    if not config_dir:
        return None
    folder = os.path.join(config_dir, "text_encoder")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return None
    try:
        folder_weights(folder, ("model", "pytorch_model"))
    except ConversionError:
        return None
    return folder


def load_single_file(path: str, config_dir: Optional[str] = None, ema: bool = False) -> Model:
    """An LDM checkpoint. `config_dir`: a diffusers folder of the same model family, for what the tensors do
    not say (attention heads, sample size, scaling factor, scheduler), and the text encoder of a file saved
    without one. `ema`: the U-Net's moving average."""
    spare_text = _text_encoder_folder(config_dir)
    # Another model family (SDXL, FLUX: 7 to 24 GB) is refused before its weights are read.
    def check(names: List[str]) -> None:
        _check_ldm_names(names, path, ema, text_elsewhere=spare_text is not None)

    tensors = read_tensors(path, check)
    components = ldm_to_diffusers(tensors, path, ema, text_elsewhere=spare_text is not None)
    if not components["text_encoder"].tensors:
        progress(f"{path} holds no text encoder: using {spare_text}'s, as diffusers' from_single_file does")
        components["text_encoder"] = load_model_folder(spare_text, "text encoder", ("model", "pytorch_model"))
    defaults = sd1_defaults()

    def base(part: str) -> Optional[dict]:
        return _optional_json(os.path.join(config_dir, part, "config.json")) if config_dir else None

    unet, vae, text = components["unet"], components["vae"], components["text_encoder"]
    unet.config = infer_unet_config(unet, base("unet") or defaults["unet"])
    vae_base = base("vae") or defaults["vae"]
    vae.config = infer_vae_config(vae, vae_base) if vae.tensors else vae_base  # none: --vae brings one
    text_base = base("text_encoder")
    text.config = infer_text_config(text, text_base or defaults["text_encoder"], heads_known=text_base is not None)
    return Model(
        unet=unet,
        vae=vae,
        text_encoder=text,
        scheduler=(_optional_json(os.path.join(config_dir, "scheduler", "scheduler_config.json"))
                   if config_dir else None),
        kind="single_file",
        path=path,
        name=os.path.splitext(os.path.basename(path))[0],
        sha256=sha256_file(path),
        alphas_cumprod=tensors.get("alphas_cumprod"),
    )


# LDM's parameterization names, as diffusers' prediction types.
_PARAMETERIZATION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def ldm_config_path(checkpoint: str, original_config: Optional[str]) -> Optional[str]:
    """The LDM config (.yaml) of a single-file checkpoint: --original-config, else one beside it with the same stem
    (`model.safetensors` + `model.yaml`, where A1111 looks for it), else None."""
    if original_config is not None:
        if not os.path.isfile(original_config):
            raise ConversionError(f"--original-config {original_config}: no such file")
        return original_config
    beside = os.path.splitext(checkpoint)[0] + ".yaml"
    return beside if os.path.isfile(beside) else None


def _omegaconf_loader(yaml):
    """yaml.SafeLoader reading numbers as OmegaConf does, with which LDM and A1111 read these configs: YAML 1.1 (and
    so safe_load) takes an exponent without a dot or without a sign, as in 1e-4 or 1.0e5, for a string."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def ldm_schedule(path: str) -> dict:
    """The training schedule an LDM config (v1-inference.yaml and its kin) states, as diffusers scheduler options:
    model.params' parameterization, timesteps, linear_start and linear_end (each only where it is given)."""
    try:
        import yaml
    except ImportError:
        raise ConversionError(f"{path}: reading an LDM .yaml config needs PyYAML (Debian: python3-yaml)") from None
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.load(f, Loader=_omegaconf_loader(yaml))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConversionError(f"{path}: not a readable YAML file ({e})") from None
    model = config.get("model") if isinstance(config, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict):
        raise ConversionError(f"{path}: not an LDM config (no model.params)")
    out = {}
    if "parameterization" in params:
        if params["parameterization"] not in _PARAMETERIZATION:
            raise ConversionError(f"{path}: unknown parameterization {params['parameterization']!r} (known: "
                                  + ", ".join(_PARAMETERIZATION) + ")")
        out["prediction_type"] = _PARAMETERIZATION[params["parameterization"]]
    for key, name, kind in (("timesteps", "num_train_timesteps", int), ("linear_start", "beta_start", float),
                            ("linear_end", "beta_end", float)):
        if key in params:
            if not isinstance(params[key], (int, float)) or isinstance(params[key], bool):
                raise ConversionError(f"{path}: model.params.{key} is not a number")
            out[name] = kind(params[key])
    return out
