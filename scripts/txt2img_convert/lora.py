"""Merging LoRA files into the U-Net and text-encoder weights before export (convert.py --lora FILE[:WEIGHT]).

A LoRA stores, for some linear or convolution layers of the model, a low-rank pair `down` [r, in(, kh, kw)] and
`up` [out, r(, 1, 1)] and optionally a scalar `alpha`. Merging adds to the layer's weight

    W += weight * (alpha / r) * (up @ down)        (r = down's first dimension; alpha = r when absent)

computed in float32; for convolutions up.flatten(1) @ down.flatten(1) is reshaped to [out, in, kh, kw]. SD v1's
transformer proj_in / proj_out are 1x1 convolutions here while some LoRAs store them as [out, in] matrices (and
the other way round): [out, in] and [out, in, 1, 1] are reshaped into each other.

Formats read (.safetensors, or a pickle read without running code as checkpoints.read_tensors does):

* kohya-ss / A1111 ("kohya"): `lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, optional `.alpha`, and
  the same with `lora_te_` for the text encoder, where <module> is the diffusers / transformers module name with
  every "." replaced by "_" (`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`,
  `lora_te_text_model_encoder_layers_0_self_attn_q_proj`). Names are mapped back through a table of the actual
  weight names of our components, never by guessing where the dots were.
* PEFT / current diffusers ("peft"): `unet.<module>.lora_A.weight` (down) and `.lora_B.weight` (up), and
  `text_encoder.<module>...`; a PEFT adapter without these prefixes (`base_model.model.<module>...`, or none)
  is matched against both components. Alphas: `<module>.alpha` tensors, else the LoRA config that diffusers
  writes into the safetensors metadata (`lora_adapter_metadata`: `unet.lora_alpha`, `unet.alpha_pattern`, ...)
  or that PEFT writes beside `adapter_model.*` (`adapter_config.json`), else alpha = r. `use_rslora` configs
  scale by alpha / sqrt(r).
* older diffusers ("diffusers"): `<module>.lora.down.weight` / `.lora.up.weight`, `<module>.lora_linear_layer.
  down.weight` / `.up.weight`, and the attention-processor names `<attention>.processor.to_q_lora.down.weight`
  (to_q, to_k, to_v, to_out -> to_q, ..., to_out.0 in the U-Net, q_proj, ..., out_proj in the text encoder).

Refused with a ConversionError that names the file and some offending keys: LyCORIS types (LoHa `hada_*`, LoKr
`lokr_*`, full `diff` weights, ...), DoRA (`dora_scale`, `lora_magnitude_vector`, `use_dora`), any other key,
a LoRA key whose module is no weight of ours, an incomplete down/up pair, a shape that does not fit. No key is
ever skipped silently, and a file is merged only once all of it has been checked.
"""

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .checkpoints import Component, ConversionError, listing, read_tensors, sha256_file
from .safetensors_io import read_header

PARTS = ("unet", "text_encoder")
_KOHYA_PREFIX = {"lora_unet_": "unet", "lora_te_": "text_encoder"}

# Key endings of the types this module does not merge, with their names for the error message.
_UNSUPPORTED = [
    (re.compile(r"\.(dora_scale|lora_magnitude_vector(\.[^.]+)?)$"), "DoRA"),
    (re.compile(r"\.hada_(w1|w2|t1|t2)(_a|_b)?$"), "LyCORIS LoHa"),
    (re.compile(r"\.lokr_(w1|w2|t1|t2)(_a|_b)?$"), "LyCORIS LoKr"),
    (re.compile(r"\.(diff|diff_b)$"), "LyCORIS full (diff) weights"),
    (re.compile(r"\.(a1|a2|b1|b2)\.weight$"), "LyCORIS GLoRA"),
    (re.compile(r"\.(oft_blocks|oft_diag|rescale)$"), "LyCORIS OFT/BOFT"),
    (re.compile(r"\.(w_norm|b_norm)$"), "LyCORIS norm"),
    (re.compile(r"\.lora_mid\.weight$"), "LyCORIS LoCon with CP decomposition (lora_mid)"),
]

_KOHYA = re.compile(r"^(lora_[A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
# PEFT and the diffusers layouts: (role, format) of each key ending.
_SUFFIXES = [
    (".lora_A.weight", "down", "peft"),
    (".lora_B.weight", "up", "peft"),
    (".lora.down.weight", "down", "diffusers"),
    (".lora.up.weight", "up", "diffusers"),
    (".lora_linear_layer.down.weight", "down", "diffusers"),
    (".lora_linear_layer.up.weight", "up", "diffusers"),
    (".alpha", "alpha", None),
]
_PROCESSOR = re.compile(r"^(.*?)(\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
# The layer an attention processor's LoRA belongs to: U-Net (diffusers Attention) or text encoder (CLIP).
_PROCESSOR_TARGETS = {"to_q": ("to_q", "q_proj"), "to_k": ("to_k", "k_proj"), "to_v": ("to_v", "v_proj"),
                      "to_out": ("to_out.0", "out_proj")}
_PEFT_PREFIXES = ("base_model.model.",)


@dataclass
class LoraSpec:
    """One --lora argument."""

    path: str
    weight: float


def parse_spec(text: str) -> LoraSpec:
    """FILE or FILE:WEIGHT (WEIGHT a finite float). A FILE that exists as given keeps any ':' in its name.
    Raises ValueError with a message for the user."""
    if not text:
        raise ValueError("empty LoRA file name")
    path, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and not os.path.exists(text) and "/" not in tail and "\\" not in tail:
        try:
            weight = float(tail)
        except ValueError:
            raise ValueError(f"{text!r}: WEIGHT {tail!r} after ':' is not a number (FILE[:WEIGHT])") from None
        if not math.isfinite(weight):
            raise ValueError(f"{text!r}: WEIGHT must be a finite number")
        if not head:
            raise ValueError(f"{text!r}: no file before ':'")
        path = head
    return LoraSpec(path, weight)


def check_files(specs: List[LoraSpec]) -> None:
    """Fail early (before the slow model loading) on a LoRA file that does not exist."""
    for spec in specs:
        if not os.path.isfile(spec.path):
            raise ConversionError(f"--lora {spec.path}: no such file")


@dataclass
class _Pair:
    part: str  # "unet" | "text_encoder"
    target: str  # weight key in the component
    keys: List[str]  # the LoRA keys it came from (for messages)
    down: Optional[torch.Tensor] = None
    up: Optional[torch.Tensor] = None
    alpha: Optional[float] = None
    alpha_from_config: Optional[Tuple[dict, str]] = None  # (PEFT config, module name relative to the model)


def _kohya_table(components: Dict[str, Component]) -> Dict[str, Optional[Tuple[str, str]]]:
    """kohya module name -> (part, weight key); None where two weights give the same name."""
    table: Dict[str, Optional[Tuple[str, str]]] = {}
    for prefix, part in _KOHYA_PREFIX.items():
        for key in components[part].tensors:
            if key.endswith(".weight"):
                name = prefix + key[: -len(".weight")].replace(".", "_")
                table[name] = None if name in table else (part, key)
    return table


def _metadata(path: str) -> dict:
    if not path.endswith(".safetensors"):
        return {}
    try:
        return read_header(path).get("__metadata__") or {}
    except (OSError, ValueError):
        return {}  # read_tensors has read it already: an odd header only means no metadata


def _peft_configs(path: str) -> Dict[str, dict]:
    """LoRA configs by key prefix ("unet", "text_encoder", "" for unprefixed PEFT adapters)."""
    configs: Dict[str, dict] = {}
    raw = _metadata(path).get("lora_adapter_metadata")
    if raw:
        try:
            flat = json.loads(raw)
        except ValueError:
            raise ConversionError(f"{path}: its lora_adapter_metadata is not valid JSON") from None
        if isinstance(flat, dict):
            for key, value in flat.items():
                prefix, _, field = key.rpartition(".")
                configs.setdefault(prefix, {})[field] = value
    if os.path.basename(path).startswith("adapter_model."):
        adapter_config = os.path.join(os.path.dirname(path), "adapter_config.json")
        if os.path.isfile(adapter_config):
            try:
                with open(adapter_config, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError) as e:
                raise ConversionError(f"cannot read {adapter_config}: {e}") from None
            if isinstance(data, dict):
                configs.setdefault("", data)
    for prefix, config in configs.items():
        if config.get("use_dora"):
            raise ConversionError(f"{path}: a DoRA adapter (use_dora in its {prefix or 'adapter'} config): only "
                                  "plain LoRA can be merged")
    return configs


def _config_alpha(config: dict, module: str, rank: int) -> float:
    """PEFT's scale for `module` as an alpha of the W += alpha / r * up @ down formula."""
    alpha = config.get("lora_alpha")
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    if alpha is None:
        return float(rank)
    alpha = float(alpha)
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha  # rsLoRA: alpha / sqrt(r)


def _scalar(path: str, key: str, tensor: torch.Tensor) -> float:
    if tensor.numel() != 1 or (not tensor.is_floating_point() and tensor.dtype not in (torch.int32, torch.int64)):
        raise ConversionError(f"{path}: {key} should be one number, found a {tensor.dtype} of shape "
                              f"{list(tensor.shape)}")
    return float(tensor.reshape(()).item())


class _Parser:
    def __init__(self, path: str, tensors: Dict[str, torch.Tensor], components: Dict[str, Component]):
        self.path = path
        self.tensors = tensors
        self.components = components
        self.kohya = _kohya_table(components)
        self.pairs: Dict[Tuple[str, str], _Pair] = {}
        self.formats = set()
        self.unmapped: List[str] = []
        self.ambiguous: List[str] = []
        self.unknown: List[str] = []

    def _pair(self, part: str, target: str, key: str) -> _Pair:
        pair = self.pairs.setdefault((part, target), _Pair(part, target, []))
        pair.keys.append(key)
        return pair

    def _resolve(self, prefix: Optional[str], candidates: Tuple[str, ...]) -> Optional[Tuple[str, str]]:
        """(part, weight key) of the first candidate module that is a weight of the prefix's component (of
        either component without a prefix); None if none is."""
        parts = (prefix,) if prefix else PARTS
        found = [(part, module + ".weight") for module in candidates for part in parts
                 if module + ".weight" in self.components[part].tensors]
        return found[0] if found else None

    def _set(self, pair: _Pair, role: str, key: str, value: torch.Tensor) -> None:
        if role == "alpha":
            pair.alpha = _scalar(self.path, key, value)
        elif getattr(pair, role) is not None:
            raise ConversionError(f"{self.path}: two {role} tensors for {pair.target}: {listing(pair.keys)}")
        else:
            setattr(pair, role, value)

    def add(self, key: str, value: torch.Tensor, configs: Dict[str, dict]) -> None:
        for pattern, name in _UNSUPPORTED:
            if pattern.search(key):
                raise ConversionError(f"{self.path}: a {name} file, not a plain LoRA (e.g. {key}); only LoRA "
                                      "(down/up pairs) can be merged")
        found = _KOHYA.match(key)
        if found:
            name = found.group(1)
            if name not in self.kohya:
                self.unmapped.append(key)
                return
            target = self.kohya[name]
            if target is None:
                self.ambiguous.append(key)
                return
            self.formats.add("kohya")
            role = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[found.group(2)]
            self._set(self._pair(target[0], target[1], key), role, key, value)
            return

        rest, prefix = key, None
        for candidate in PARTS:
            if rest.startswith(candidate + "."):
                rest, prefix = rest[len(candidate) + 1:], candidate
                break
        else:
            for strip in _PEFT_PREFIXES:
                if rest.startswith(strip):
                    rest = rest[len(strip):]
        processor = _PROCESSOR.match(rest)
        if processor:
            module, candidates = processor.group(1), _PROCESSOR_TARGETS[processor.group(3)]
            role, fmt = processor.group(4), "diffusers"
            candidates = tuple(f"{module}.{c}" for c in candidates)
        else:
            for suffix, role, fmt in _SUFFIXES:
                if rest.endswith(suffix):
                    module = rest[: -len(suffix)]
                    candidates = (module,)
                    break
            else:
                self.unknown.append(key)
                return
        resolved = self._resolve(prefix, candidates)
        if resolved is None:
            self.unmapped.append(key)
            return
        if fmt:
            self.formats.add(fmt)
        pair = self._pair(resolved[0], resolved[1], key)
        self._set(pair, role, key, value)
        if role != "alpha":
            config = configs.get(prefix or "")
            if config is not None:
                pair.alpha_from_config = (config, resolved[1][: -len(".weight")])

    def finish(self) -> List[_Pair]:
        if self.unknown:
            raise ConversionError(f"{self.path}: not LoRA tensors of a format this converter knows: "
                                  f"{listing(self.unknown)}")
        if self.unmapped:
            raise ConversionError(f"{self.path}: LoRA keys that match no U-Net or text encoder weight of this "
                                  f"model (another architecture, e.g. SDXL or SD 2.x, or an LDM-named LoRA?): "
                                  f"{listing(self.unmapped)}")
        if self.ambiguous:
            raise ConversionError(f"{self.path}: LoRA keys that match several weights of this model: "
                                  f"{listing(self.ambiguous)}")
        if not self.pairs:
            raise ConversionError(f"{self.path}: no LoRA tensors in it")
        for pair in self.pairs.values():
            if pair.down is None or pair.up is None:
                missing = "down" if pair.down is None else "up"
                raise ConversionError(f"{self.path}: no {missing} tensor beside {listing(pair.keys)}")
        return sorted(self.pairs.values(), key=lambda p: (PARTS.index(p.part), p.target))


def _delta(path: str, pair: _Pair, target: torch.Tensor) -> torch.Tensor:
    """(alpha / r) * up @ down in float32, shaped as `target`."""
    down, up = pair.down.float(), pair.up.float()
    names = listing(pair.keys)
    if down.dim() not in (2, 4) or up.dim() not in (2, 4):
        raise ConversionError(f"{path}: {names}: LoRA tensors must be 2-D or 4-D, found shapes "
                              f"{list(down.shape)} (down) and {list(up.shape)} (up)")
    rank = down.shape[0]
    if up.shape[1] != rank or (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise ConversionError(f"{path}: {names}: up {list(up.shape)} does not fit down {list(down.shape)} "
                              f"(expected [out, {rank}] or [out, {rank}, 1, 1])")
    shape = (up.shape[0],) + tuple(down.shape[1:])  # [out, in] or [out, in, kh, kw]
    if tuple(target.shape) != shape:
        linear_vs_1x1 = (target.dim() + len(shape) == 6 and target.shape[:2] == torch.Size(shape[:2])
                         and target.numel() == math.prod(shape))
        if not linear_vs_1x1:
            raise ConversionError(f"{path}: {names}: the LoRA changes a weight of shape {list(shape)}, "
                                  f"{pair.target} has shape {list(target.shape)}")
    alpha = pair.alpha
    if alpha is None and pair.alpha_from_config is not None:
        alpha = _config_alpha(*pair.alpha_from_config, rank)
    if alpha is None:
        alpha = float(rank)
    return ((alpha / rank) * (up.flatten(1) @ down.flatten(1))).reshape(target.shape)


def merge(spec: LoraSpec, components: Dict[str, Component]) -> dict:
    """Add the LoRA `spec` to components "unet" and "text_encoder" (their tensors dicts get new float32 tensors;
    the old ones are not modified in place). Everything is checked before anything is changed. Returns the
    manifest record: path, sha256, weight, format, modules (count) and unet_modules / text_encoder_modules."""
    path = spec.path
    if not os.path.isfile(path):
        raise ConversionError(f"--lora {path}: no such file")
    tensors = read_tensors(path)
    configs = _peft_configs(path)
    parser = _Parser(path, tensors, components)
    for key in sorted(tensors):
        parser.add(key, tensors[key], configs)
    pairs = parser.finish()
    deltas = [(pair, _delta(path, pair, components[pair.part].tensors[pair.target])) for pair in pairs]
    counts = {part: 0 for part in PARTS}
    for pair, delta in deltas:
        counts[pair.part] += 1
        if spec.weight != 0:  # weight 0 leaves every weight exactly as it was (bit for bit)
            target = components[pair.part].tensors
            target[pair.target] = target[pair.target].float() + spec.weight * delta
    return {
        "path": os.path.abspath(path),
        "sha256": sha256_file(path),
        "weight": spec.weight,
        "format": "+".join(sorted(parser.formats)),
        "modules": len(pairs),
        "unet_modules": counts["unet"],
        "text_encoder_modules": counts["text_encoder"],
    }
