"""From loaded weights to a model bundle: build the modules, load them strictly, export TorchScript, write
the bundle directory (TorchScript files, tokenizer.model, model.json) atomically."""

import json
import math
import os
import shutil
import tempfile
from typing import Callable, Dict, Optional

import torch
from torch import nn

from .checkpoints import Component, ConversionError, non_finite, sha256_file, sha256_tensors
from .clip import _TEXT_DEFAULTS, CLIPTextModel
from .launch import bundle_in_place, interrupts_held, progress  # noqa: F401 - the scripts call progress as export.progress
from .presets import DEFAULT_PREPROCESSOR, sd1_defaults
from .safety import StableDiffusionSafetyChecker
from .taesd import TAESDDecoder
from .unet import UNet2DConditionModel, script
from .vae import VAEDecoder, VAEEncoder

CONVERTER_VERSION = "0.1.0"
BUNDLE_FORMAT = "txt2img-bundle"
# Format 2 marks the bundles a format-1 reader (an older txt2img) would misread: a zero-terminal-SNR schedule (it
# would run the plain one) or an inpainting U-Net. Others stay format 1, readable by older binaries too.
BUNDLE_FORMAT_VERSION = 1
NEEDS_NEWER_READER_VERSION = 2
PAD_ID = 49407  # SD v1 pads prompts with <|endoftext|>

# Bundle file of each module, in the order they are written.
FILES = {
    "text_encoder": "text_encoder.pt",
    "unet": "unet.pt",
    "vae": "vae_decoder.pt",
    "vae_encoder": "vae_encoder.pt",
    "safety_checker": "safety_checker.pt",
    "taesd": "taesd_decoder.pt",
}

_CLASSES: Dict[str, Callable[[dict], nn.Module]] = {
    "text_encoder": CLIPTextModel,
    "unet": UNet2DConditionModel,
    "vae": VAEDecoder,
    "vae_encoder": VAEEncoder,
    "safety_checker": StableDiffusionSafetyChecker,
    "taesd": TAESDDecoder,
}


def _valid_text(value):
    """`value` with every string valid UTF-8: a path's undecodable bytes (which Python keeps as lone surrogates)
    become U+FFFD, so that model.json stays readable JSON for txt2img; the paths there are only a record."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    return value


def write_manifest(path: str, manifest: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_valid_text(manifest), f, indent=2)
        f.write("\n")


def format_version(fields: dict) -> int:
    newer = fields.get("inpainting") or fields["scheduler"].get("rescale_betas_zero_snr")
    return NEEDS_NEWER_READER_VERSION if newer else BUNDLE_FORMAT_VERSION


def build(part: str, config: dict) -> nn.Module:
    """An eval-mode float32 module of kind `part` ("unet", "vae", ...) for `config`, default-initialised."""
    try:
        module = _CLASSES[part](config)
    except (NotImplementedError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{part}: unsupported configuration ({type(e).__name__}: {e})") from None
    return module.float().eval().requires_grad_(False)


def load_weights(part: str, component: Component) -> nn.Module:
    """The module for `component`, with every one of its parameters taken from the component's tensors: a
    missing, surplus or differently shaped tensor is an error that names it as the source file does."""
    module = build(part, component.config)
    tensors = component.tensors
    # The VAE's component holds both halves; its decoder and its encoder are separate modules.
    select = getattr(_CLASSES[part], "select_state_dict", None)
    if select is not None:
        tensors = select(tensors)
    expected = module.state_dict()

    def listing(keys) -> str:
        first = component.source_name(keys[0])
        return first + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")

    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ConversionError(f"{component.origin}: missing {component.label} tensor {listing(missing)}")
    surplus = sorted(k for k in tensors if k not in expected)
    if surplus:
        raise ConversionError(f"{component.origin}: unexpected {component.label} tensor {listing(surplus)}")
    for key, target in expected.items():
        if tensors[key].shape != target.shape:
            raise ConversionError(
                f"{component.origin}: {component.label} tensor {component.source_name(key)} has shape "
                f"{list(tensors[key].shape)}, the model needs {list(target.shape)}")
    # Such weights would convert, and every image would then fail as non-finite, far from the cause.
    broken = non_finite({k: tensors[k] for k in expected})
    if broken:
        raise ConversionError(f"{component.origin}: not-a-number or infinite values in {component.label} tensor "
                              f"{listing(broken)}: the weights are damaged (a broken merge or download?)")
    module.load_state_dict(tensors, strict=True)
    return module


def random_modules(configs: Dict[str, dict], seed: int, with_safety: bool, flag_all: bool) -> Dict[str, nn.Module]:
    """Modules of a preset (presets.preset()) with random weights: PyTorch's default initialisation after
    torch.manual_seed(seed + i) for the i-th module, so the same seed gives the same weights. Every preset has a
    TAESD decoder (`txt2img --decoder taesd`).

    The safety checker's concept embeddings are random unit-scale vectors; its thresholds (the concept
    weights) are 2 so that no score (cosine - weight, cosine <= 1) is ever positive, or -2 with `flag_all`
    so that every image is flagged.
    """
    modules = {}
    parts = ["text_encoder", "unet", "vae"] + (["safety_checker"] if with_safety else []) + ["taesd"]
    for i, part in enumerate(parts):
        torch.manual_seed(seed + i)
        modules[part] = build(part, configs[part])
    if with_safety:
        checker = modules["safety_checker"]
        threshold = -2.0 if flag_all else 2.0
        with torch.no_grad():
            checker.concept_embeds.normal_()
            checker.special_care_embeds.normal_()
            checker.concept_embeds_weights.fill_(threshold)
            checker.special_care_embeds_weights.fill_(threshold)
    return modules


def safety_manifest(preprocessor: Optional[dict]) -> dict:
    """The safety checker's image preprocessing (CLIPImageProcessor) as model.json records it. Accepts the
    current processor config (`size: {"shortest_edge": n}`) and the older feature-extractor one (`size: n`)."""
    pre = dict(DEFAULT_PREPROCESSOR)
    pre.update({k: v for k, v in (preprocessor or {}).items() if v is not None})
    size, crop = pre["size"], pre["crop_size"]
    if isinstance(size, dict):
        shortest = size["shortest_edge"] if "shortest_edge" in size else min(size["height"], size["width"])
    else:
        shortest = size
    crop_h, crop_w = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
    return {
        "shortest_edge": int(shortest),
        "crop_height": int(crop_h),
        "crop_width": int(crop_w),
        "rescale_factor": float(pre["rescale_factor"]),
        "mean": [float(x) for x in pre["image_mean"]],
        "std": [float(x) for x in pre["image_std"]],
    }


def check_taesd(config: dict, fields: dict, source: str) -> None:
    """A TAESD decoder must produce the model's images from its latents: same channels, same pixels per latent."""
    theirs = (int(config.get("latent_channels", 4)), TAESDDecoder.scale_factor(config))
    ours = (fields["latent_channels"], fields["vae_scale_factor"])
    if theirs != ours:
        raise ConversionError(f"--taesd {source}: it decodes {theirs[0]} latent channels at {theirs[1]} pixels a "
                              f"latent, the model has {ours[0]} at {ours[1]}")


def _is_bundle(path: str) -> bool:
    try:
        with open(os.path.join(path, "model.json"), encoding="utf-8") as f:
            return json.load(f).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_destination(out: str, overwrite: bool) -> None:
    """Refuse early (before any slow work) an output that exists, unless --overwrite is given and it is an
    earlier bundle or an empty directory; never replace anything else; and one that cannot be made where it would
    be (a folder on the way that is a file, or that cannot be written)."""
    if not os.path.lexists(out):
        parent = os.path.dirname(os.path.abspath(out))
        missing = _missing_folders(parent)
        ancestor = os.path.dirname(missing[-1]) if missing else parent
        if not os.path.isdir(ancestor):
            raise ConversionError(f"cannot create {out}: {ancestor} is not a directory")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise ConversionError(f"cannot create {out}: {ancestor} is not writable")
        return
    if not overwrite:
        raise ConversionError(f"{out} already exists (pass --overwrite to replace it)")
    if not os.path.isdir(out) or os.path.islink(out) or (os.listdir(out) and not _is_bundle(out)):
        raise ConversionError(f"{out} exists and is not a model bundle; not replacing it")
    if not _is_bundle(out):
        return
    with open(os.path.join(out, "model.json"), encoding="utf-8") as f:
        loras = [str(entry.get("name")) for entry in json.load(f).get("loras", [])]
    if loras:
        progress(f"warning: replacing {out} drops the LoRAs added to it with add_lora.py ({', '.join(loras)}); "
                 "add them to the new bundle again")


def model_fields(unet: dict, vae: dict, text: dict, scheduler: dict, safety: Optional[dict]) -> dict:
    """The model.json fields that describe the model (configs of the three networks, the scheduler fields of
    scheduler_config.scheduler_fields(), the safety_manifest() or None). A text config without num_hidden_layers is
    transformers' default (as clip.CLIPTextModel builds it)."""
    vae_scale_factor = 2 ** (len(vae["block_out_channels"]) - 1)
    latent = int(vae.get("latent_channels", 4))
    # An inpainting U-Net also takes the mask and the masked image's latents (diffusers' 9-channel models).
    inpainting = unet.get("in_channels", 4) == 2 * latent + 1
    if unet.get("in_channels", 4) != latent and not inpainting:
        raise ConversionError(
            f"the U-Net takes {unet.get('in_channels')} input channels, not the VAE's {latent} latent channels, nor "
            f"an inpainting model's {2 * latent + 1} (an instruct-pix2pix or other image-conditioned model?): only "
            "text-to-image and inpainting models are supported")
    if latent != 4:
        raise ConversionError(f"the VAE has {latent} latent channels, not SD 1.x's 4 (a VAE of SD 3 or FLUX?)")
    sample_size = unet.get("sample_size")
    if sample_size is None:
        # diffusers' default (None) leaves the image size to the caller; SD 1.x models are trained at 64 latents.
        sample_size = sd1_defaults()["unet"]["sample_size"]
        progress(f"the U-Net's config gives no sample_size; images default to SD 1.x's {sample_size} latents a side "
                 f"({sample_size * vae_scale_factor} pixels)")
    # JSON's Infinity and NaN read as floats that int() refuses.
    if isinstance(sample_size, bool) or not isinstance(sample_size, (int, float)) \
            or (isinstance(sample_size, float) and not math.isfinite(sample_size)) or sample_size != int(sample_size):
        raise ConversionError(f"the U-Net's sample_size {sample_size!r} is not a whole number of latents (a damaged "
                              "unet/config.json?)")
    default_size = int(sample_size) * vae_scale_factor
    multiple = max(8, vae_scale_factor)  # the sizes txt2img accepts, which it checks model.json against
    if default_size % multiple or not multiple <= default_size <= 4096:
        raise ConversionError(f"the U-Net's sample_size {sample_size} makes {default_size}-pixel images, not a "
                              f"multiple of {multiple} from {multiple} to 4096 (a damaged unet/config.json?)")
    cross_attention = unet.get("cross_attention_dim")
    if cross_attention is not None and int(cross_attention) != int(text["hidden_size"]):
        raise ConversionError(
            f"the text encoder's embeddings are {text['hidden_size']} wide but the U-Net attends to {cross_attention}: "
            "they are not of one model (a mismatched --config, or a checkpoint mixing two models?)")
    fields = {
        "latent_channels": latent,
        "scale_factor": float(vae.get("scaling_factor") or 0.18215),
        "vae_scale_factor": vae_scale_factor,
        "default_size": default_size,
        "context_length": int(text.get("max_position_embeddings", 77)),
        "pad_id": PAD_ID,
        "text_hidden_size": int(text["hidden_size"]),
        # The text encoder's layers: txt2img checks --clip-skip (1 to this) before it loads any module.
        "text_num_layers": int(text.get("num_hidden_layers") or _TEXT_DEFAULTS["num_hidden_layers"]),
        "scheduler": scheduler,
        "safety": safety,
    }
    if inpainting:
        # txt2img runs it with the whole image masked, as A1111 does; the mask's latents come from vae_encoder.pt.
        fields["inpainting"] = True
    if unet.get("time_cond_proj_dim"):
        # An LCM-distilled U-Net: it takes the guidance scale as an embedding of this width, and txt2img runs it
        # without classifier-free guidance, as LatentConsistencyModelPipeline does.
        fields["guidance_embedding_dim"] = int(unet["time_cond_proj_dim"])
    return fields


def write_bundle(out: str, modules: Dict[str, nn.Module], vocab: str, fields: dict, name: str,
                 model_hash: Optional[str], source: dict, overwrite: bool) -> dict:
    """Write the bundle into a temporary directory beside `out`, then move it into place.

    `modules`: part -> loaded module (safety_checker optional); `fields`: model_fields(); `model_hash`: the
    short hash users know the model by, None for weights no file holds as they are (random, merged, a moving
    average): then the first 10 digits of checkpoints.sha256_tensors() of the U-Net's state dict, which
    `torch.jit.load("unet.pt").state_dict()` gives back. Not unet.pt's own sha256: TorchScript writes the
    converter's source paths into it, so that would differ between two installs. Returns the manifest written.
    """
    from .tokenizer import write_model  # imported when needed: the tokenizer converter is another module's

    check_destination(out, overwrite)
    if model_hash is None:
        model_hash = sha256_tensors(modules["unet"].state_dict())[:10]
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    created = _missing_folders(parent)  # made for `out`, removed again where it is not written
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=parent)
    except BaseException:
        _remove_folders(created)
        raise
    try:
        for part, filename in FILES.items():
            if part not in modules:
                continue
            progress(f"exporting {filename}")
            with torch.no_grad():
                torch.jit.save(script(modules[part]), os.path.join(staging, filename))
        write_model(vocab, os.path.join(staging, "tokenizer.model"))
        files = {}
        for filename in sorted(os.listdir(staging)):
            path = os.path.join(staging, filename)
            files[filename] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": format_version(fields),
            "family": "sd1",
            **fields,
            "files": files,
            "converter_version": CONVERTER_VERSION,
            "torch_version": torch.__version__,
            "model_name": name,
            "model_hash": model_hash,
            "source": source,
        }
        write_manifest(os.path.join(staging, "model.json"), manifest)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp creates it private; a bundle is an ordinary directory
        _move_into_place(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_folders(created)
        raise
    return manifest


def _missing_folders(folder: str) -> list:
    """`folder` and those above it up to the first that exists, innermost first: what makedirs would create."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def _remove_folders(folders: list) -> None:
    """Removes `folders` (innermost first) where they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def _move_into_place(staging: str, out: str, overwrite: bool) -> None:
    if not os.path.lexists(out):
        with interrupts_held():
            os.rename(staging, out)
            bundle_in_place()
        return
    # Checked again: something may have appeared at `out` during the conversion.
    check_destination(out, overwrite)
    old = staging + ".old"
    with interrupts_held():  # never neither bundle at `out`
        os.rename(out, old)
        os.rename(staging, out)
        bundle_in_place()
    shutil.rmtree(old, ignore_errors=True)
