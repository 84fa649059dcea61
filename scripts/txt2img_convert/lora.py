"""LoRA files for the U-Net and text encoder: merged into the weights before export (convert.py --lora
FILE[:WEIGHT]), or packed for txt2img to apply when a prompt names them (add_lora.py).

A LoRA stores, for some linear or convolution layers of the model, a low-rank pair `down` [r, in(, kh, kw)] and
`up` [out, r(, 1, 1)] and optionally a scalar `alpha`. Merging adds to the layer's weight

    W += weight * (alpha / r) * (up @ down)        (r = down's first dimension; alpha = r when absent)

computed in float32; for convolutions up.flatten(1) @ down.flatten(1) is reshaped to [out, in, kh, kw]. SD v1's
transformer proj_in / proj_out are 1x1 convolutions here while some LoRAs store them as [out, in] matrices (and
the other way round): [out, in] and [out, in, 1, 1] are reshaped into each other.

LyCORIS files in kohya naming (`lora_unet_<module>.<factor>`) are merged too, with the updates that A1111,
stable-diffusion.cpp and LyCORIS itself compute (products of two-dimensional factors are reshaped to the weight's
shape, as above):

* LoHa: `hada_w1_a` [out, r], `hada_w1_b` [r, in*kh*kw], `hada_w2_a`, `hada_w2_b`:
  W += weight * (alpha / r) * (w1_a @ w1_b) * (w2_a @ w2_b)  (elementwise; r = w1_b's first dimension). With
  Tucker factors `hada_t1`/`hada_t2` [r, r, kh, kw] (convolutions), w1_a and w1_b are [r, out] and [r, in] and
  w1 = sum_ij t1[i, j] * w1_a[i, o] * w1_b[j, c] (the same for w2).
* LoKr: W += weight * scale * kron(w1, w2), each factor either whole (`lokr_w1`, `lokr_w2`) or a product
  (`lokr_w1_a @ lokr_w1_b`; `lokr_w2_a @ lokr_w2_b`, or Tucker with `lokr_t2`); for a convolution w1 [o1, i1] is
  taken as [o1, i1, 1, 1] against a 4-D w2. scale = alpha / r with r the first dimension of `lokr_w1_b`, else of
  `lokr_w2_b`; 1 when neither factor is a product or alpha is absent.
* full: W += weight * `diff`, and the bias += weight * `diff_b` where present.

Formats read (.safetensors, or a pickle read without running code as checkpoints.read_tensors does):

* kohya-ss / A1111 ("kohya"): `lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, optional `.alpha`, and
  the same with `lora_te_` for the text encoder, where <module> is the diffusers / transformers module name with
  every "." replaced by "_" (`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`,
  `lora_te_text_model_encoder_layers_0_self_attn_q_proj`); U-Net modules also by their LDM names, as A1111 reads
  them for SD 1 (`lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q`). Names are mapped back through a
  table of the actual weight names of our components, never by guessing where the dots were.
* PEFT / current diffusers ("peft"): `unet.<module>.lora_A.weight` (down) and `.lora_B.weight` (up), and
  `text_encoder.<module>...`; a PEFT adapter without these prefixes (`base_model.model.<module>...`, or none)
  is matched against both components. Alphas: `<module>.alpha` tensors, else the LoRA config that diffusers
  writes into the safetensors metadata (`lora_adapter_metadata`: `unet.lora_alpha`, `unet.alpha_pattern`, ...)
  or that PEFT writes beside `adapter_model.*` (`adapter_config.json`), else alpha = r. `use_rslora` configs
  scale by alpha / sqrt(r).
* older diffusers ("diffusers"): `<module>.lora.down.weight` / `.lora.up.weight`, `<module>.lora_linear_layer.
  down.weight` / `.up.weight`, and the attention-processor names `<attention>.processor.to_q_lora.down.weight`
  (to_q, to_k, to_v, to_out -> to_q, ..., to_out.0 in the U-Net, q_proj, ..., out_proj in the text encoder).

Refused with a ConversionError that names the file and some offending keys: the other LyCORIS types (GLoRA,
OFT/BOFT, norm, LoCon's Tucker `lora_mid`), LoHa/LoKr/full factors outside kohya naming, DoRA (`dora_scale`,
`lora_magnitude_vector`, `use_dora`), any other key, a LoRA key whose module is no weight of ours, a module with
factors of two types or an incomplete set of them, a shape that does not fit. No key is ever skipped silently,
and a file is merged or packed only once all of it has been checked.

Packing (`pack`, for add_lora.py) reads and checks a file exactly as merging does, against the weights of a
bundle's own modules, and gives per weight what txt2img needs to add `weight * delta` itself when a prompt says
`<lora:name:weight>`: the tensors of a safetensors file (written with metadata format "txt2img-lora",
format_version "1"), each named by the part ("unet" or "text_encoder"), the weight key and a role:

* a plain LoRA: `<part>.<key>.up` [out, r], `.down` [r, in*kh*kw] (the factors flattened as above) and `.scale`
  (a 0-dim tensor, alpha / r with alpha found as above, rounded to float32 as merging's product with it rounds
  it); delta = (scale * (up @ down)).reshape(W.shape);
* LoHa, LoKr and full updates: `<part>.<key>.diff`, the delta itself (scaled, shaped as the weight), and for a
  full update's `diff_b` the same under the bias key.

All of them are float32, and merging computes its deltas from exactly these tensors with exactly these operations
(then W + weight * delta): txt2img doing the same in float32, with the same matrix-product code (LibTorch on the
CPU), gets bit for bit the weights that convert.py --lora FILE:WEIGHT exports.
"""

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from .checkpoints import (Component, ConversionError, diffusers_unet_renames, listing, non_finite, read_tensors,
                          sha256_file)
from .safetensors_io import is_safetensors, read_header

PARTS = ("unet", "text_encoder")
# The safetensors metadata of a packed file, by which a reader can tell one from other safetensors files.
PACKED_METADATA = {"format": "txt2img-lora", "format_version": "1"}
_KOHYA_PREFIX = {"lora_unet_": "unet", "lora_te_": "text_encoder"}

# Key endings of the types this module does not read, with their names for the error message.
_UNSUPPORTED = [
    (re.compile(r"\.(dora_scale|lora_magnitude_vector(\.[^.]+)?)$"), "DoRA"),
    (re.compile(r"\.(a1|a2|b1|b2)\.weight$"), "LyCORIS GLoRA"),
    (re.compile(r"\.(oft_blocks|oft_diag|rescale)$"), "LyCORIS OFT/BOFT"),
    (re.compile(r"\.(w_norm|b_norm)$"), "LyCORIS norm"),
    (re.compile(r"\.lora_mid\.weight$"), "LyCORIS LoCon with CP decomposition (lora_mid)"),
]

# The factors of each update type in kohya naming, by key ending; "down" and "up" are LoRA's.
_LYCORIS_FACTORS = {
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "full": ("diff", "diff_b"),
}
_KIND_OF = {"down": "lora", "up": "lora", **{f: kind for kind, fs in _LYCORIS_FACTORS.items() for f in fs}}
_KIND_NAMES = {"lora": "LoRA", "loha": "LyCORIS LoHa", "lokr": "LyCORIS LoKr", "full": "LyCORIS full (diff)"}
_KOHYA_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha",
                **{f: f for fs in _LYCORIS_FACTORS.values() for f in fs}}
_KOHYA = re.compile(r"^(lora_[A-Za-z0-9_]+)\.(" + "|".join(re.escape(r) for r in _KOHYA_ROLES) + ")$")
_LYCORIS_ELSEWHERE = re.compile(r"\.(" + "|".join(f for fs in _LYCORIS_FACTORS.values() for f in fs) + ")$")
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
class _Update:
    """What a file does to one layer: its factors by role ("down", "up", or a LyCORIS factor name)."""

    part: str  # "unet" | "text_encoder"
    target: str  # weight key in the component
    keys: List[str]  # the LoRA keys it came from (for messages)
    factors: Dict[str, torch.Tensor] = field(default_factory=dict)
    alpha: Optional[float] = None
    alpha_from_config: Optional[Tuple[dict, str]] = None  # (PEFT config, module name relative to the model)

    def kinds(self) -> List[str]:
        return sorted({_KIND_OF[role] for role in self.factors})


def _kohya_table(components: Dict[str, Component]) -> Dict[str, Optional[Tuple[str, str]]]:
    """kohya module name -> (part, weight key); None where two weights give the same name. U-Net modules go by their
    LDM names too (lora_unet_input_blocks_1_1_...), which A1111 reads for SD 1."""
    table: Dict[str, Optional[Tuple[str, str]]] = {}

    def add(name: str, target: Tuple[str, str]) -> None:
        table[name] = None if table.get(name, target) != target else target

    ldm = diffusers_unet_renames(components["unet"].tensors)
    for prefix, part in _KOHYA_PREFIX.items():
        for key in components[part].tensors:
            if key.endswith(".weight"):
                add(prefix + key[: -len(".weight")].replace(".", "_"), (part, key))
                ldm_key = ldm.backward(key) if part == "unet" else None
                if ldm_key is not None:
                    add(prefix + ldm_key[: -len(".weight")].replace(".", "_"), (part, key))
    return table


def _metadata(path: str) -> dict:
    if not is_safetensors(path):
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
                                  "plain LoRA is supported")
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
        self.updates: Dict[Tuple[str, str], _Update] = {}
        self.formats = set()  # the naming layouts
        self.kinds = set()  # the LyCORIS update types, beside plain LoRA
        self.unmapped: List[str] = []
        self.ambiguous: List[str] = []
        self.unknown: List[str] = []

    def _update(self, part: str, target: str, key: str) -> _Update:
        update = self.updates.setdefault((part, target), _Update(part, target, []))
        update.keys.append(key)
        return update

    def _resolve(self, prefix: Optional[str], candidates: Tuple[str, ...]) -> Optional[Tuple[str, str]]:
        """(part, weight key) of the first candidate module that is a weight of the prefix's component (of
        either component without a prefix); None if none is."""
        parts = (prefix,) if prefix else PARTS
        found = [(part, module + ".weight") for module in candidates for part in parts
                 if module + ".weight" in self.components[part].tensors]
        return found[0] if found else None

    def _set(self, update: _Update, role: str, key: str, value: torch.Tensor) -> None:
        if role == "alpha":
            update.alpha = _scalar(self.path, key, value)
        elif role in update.factors:
            raise ConversionError(f"{self.path}: two {role} tensors for {update.target}: {listing(update.keys)}")
        else:
            update.factors[role] = value

    def add(self, key: str, value: torch.Tensor, configs: Dict[str, dict]) -> None:
        for pattern, name in _UNSUPPORTED:
            if pattern.search(key):
                raise ConversionError(f"{self.path}: a {name} file (e.g. {key}); only LoRA (down/up pairs) and "
                                      "LyCORIS LoHa, LoKr and full updates are supported")
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
            self._set(self._update(target[0], target[1], key), _KOHYA_ROLES[found.group(2)], key, value)
            return
        if _LYCORIS_ELSEWHERE.search(key):
            raise ConversionError(f"{self.path}: LyCORIS factors outside kohya naming (e.g. {key}); LoHa, LoKr and "
                                  "full updates are read as lora_unet_<module>.<factor> / lora_te_<module>.<factor>")

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
        update = self._update(resolved[0], resolved[1], key)
        self._set(update, role, key, value)
        if role != "alpha":
            config = configs.get(prefix or "")
            if config is not None:
                update.alpha_from_config = (config, resolved[1][: -len(".weight")])

    def finish(self) -> List[_Update]:
        if self.unknown:
            raise ConversionError(f"{self.path}: not LoRA tensors of a format this converter knows: "
                                  f"{listing(self.unknown)}")
        if self.unmapped:
            raise ConversionError(f"{self.path}: LoRA keys that match no U-Net or text encoder weight of this "
                                  "model (another architecture, e.g. SDXL or SD 2.x?): "
                                  f"{listing(self.unmapped)}")
        if self.ambiguous:
            raise ConversionError(f"{self.path}: LoRA keys that match several weights of this model: "
                                  f"{listing(self.ambiguous)}")
        if not self.updates:
            raise ConversionError(f"{self.path}: no LoRA tensors in it")
        for update in self.updates.values():
            kinds = update.kinds()
            if len(kinds) != 1:
                what = " and ".join(_KIND_NAMES[k] for k in kinds) if kinds else "only an alpha"
                raise ConversionError(f"{self.path}: {what} for one layer: {listing(update.keys)}")
            missing = _missing_factors(kinds[0], update.factors)
            if missing:
                raise ConversionError(f"{self.path}: no {missing} tensor beside {listing(update.keys)}")
            if kinds[0] != "lora":
                self.kinds.add(kinds[0])
        return sorted(self.updates.values(), key=lambda u: (PARTS.index(u.part), u.target))


def _missing_factors(kind: str, factors: Dict[str, torch.Tensor]) -> str:
    """The factor (or choice of factors) that `kind` needs and `factors` lacks, '' if complete."""
    def need(*names):
        return next((n for n in names if n not in factors), "")
    if kind == "lora":
        return need("down", "up")
    if kind == "loha":
        return need("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    if kind == "lokr":
        for whole in ("lokr_w1", "lokr_w2"):
            if whole not in factors and need(whole + "_a", whole + "_b"):
                return f"{whole} (or {whole}_a and {whole}_b)"
        return need("lokr_w2_a", "lokr_w2_b") if "lokr_t2" in factors else ""
    return need("diff")


def _fit(path: str, update: _Update, delta: torch.Tensor, target: torch.Tensor, what: str) -> torch.Tensor:
    """`delta` reshaped to `target`'s shape: the same shape, or the same output size and number of elements
    ([out, in] against [out, in, 1, 1], a convolution's [out, in*kh*kw] against [out, in, kh, kw])."""
    if delta.shape != target.shape and (delta.shape[:1] != target.shape[:1] or delta.numel() != target.numel()):
        raise ConversionError(f"{path}: {listing(update.keys)}: the {_KIND_NAMES[update.kinds()[0]]} changes a "
                              f"{what} of shape {list(delta.shape)}, {update.target} has shape {list(target.shape)}")
    return delta.reshape(target.shape)


def _product(path: str, update: _Update, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """up [out, r(, ...)] @ down [r, ...] as up.flatten(1) @ down.flatten(1)."""
    if up.dim() < 2 or down.dim() < 2 or up.flatten(1).shape[1] != down.shape[0]:
        raise ConversionError(f"{path}: {listing(update.keys)}: factors of shapes {list(up.shape)} and "
                              f"{list(down.shape)} cannot be multiplied")
    return up.flatten(1) @ down.flatten(1)


def _tucker(path: str, update: _Update, core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_ij core[i, j, ...] * a[i, o] * b[j, c] -> [o, c, ...] (LyCORIS's Tucker form of a convolution)."""
    if core.dim() != 4 or a.dim() != 2 or b.dim() != 2 or core.shape[0] != a.shape[0] or core.shape[1] != b.shape[0]:
        raise ConversionError(f"{path}: {listing(update.keys)}: Tucker factors of shapes {list(core.shape)}, "
                              f"{list(a.shape)} and {list(b.shape)} do not fit together")
    return torch.einsum("ijkl,io,jc->ockl", core, a, b)


def _scale(update: _Update, rank: Optional[int]) -> float:
    """alpha / rank, 1 without an alpha or a rank (A1111's and LyCORIS's rule)."""
    return 1.0 if update.alpha is None or rank is None else update.alpha / rank


def _deltas(path: str, update: _Update, tensors: Dict[str, torch.Tensor]) -> List[Tuple[str, torch.Tensor]]:
    """[(key, delta)] in float32 for the layer's weight (and bias, for a full update), each shaped as its key's
    tensor in `tensors`."""
    target = tensors[update.target]
    kind = update.kinds()[0]
    if kind == "lora":
        # The arithmetic txt2img repeats on packed factors, in the same order: scale, product, reshape.
        scale, up, down = _lora_factors(path, update, target)
        return [(update.target, (scale * (up @ down)).reshape(target.shape))]
    f = {role: value.float() for role, value in update.factors.items()}
    if kind == "loha":
        halves = []
        for i in ("1", "2"):
            a, b = f[f"hada_w{i}_a"], f[f"hada_w{i}_b"]
            core = f.get(f"hada_t{i}")
            halves.append(_product(path, update, a, b) if core is None else _tucker(path, update, core, a, b))
        if halves[0].shape != halves[1].shape:
            raise ConversionError(f"{path}: {listing(update.keys)}: the two LoHa halves have shapes "
                                  f"{list(halves[0].shape)} and {list(halves[1].shape)}")
        rank = f["hada_w1_b"].shape[0]
        return [(update.target, _fit(path, update, _scale(update, rank) * halves[0] * halves[1], target, "weight"))]
    if kind == "lokr":
        w1 = f["lokr_w1"] if "lokr_w1" in f else _product(path, update, f["lokr_w1_a"], f["lokr_w1_b"])
        if "lokr_w2" in f:
            w2 = f["lokr_w2"]
        elif "lokr_t2" in f:
            w2 = _tucker(path, update, f["lokr_t2"], f["lokr_w2_a"], f["lokr_w2_b"])
        else:
            w2 = _product(path, update, f["lokr_w2_a"], f["lokr_w2_b"])
        if w1.dim() != 2 or w2.dim() not in (2, 4):
            raise ConversionError(f"{path}: {listing(update.keys)}: LoKr factors of shapes {list(w1.shape)} and "
                                  f"{list(w2.shape)} (expected a matrix and a matrix or convolution weight)")
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        rank = next((f[k].shape[0] for k in ("lokr_w1_b", "lokr_w2_b") if k in f), None)
        kron = torch.kron(w1.contiguous(), w2.contiguous())  # PyTorch 1.13's kron views its inputs
        return [(update.target, _fit(path, update, _scale(update, rank) * kron, target, "weight"))]
    deltas = [(update.target, _fit(path, update, f["diff"], target, "weight"))]
    if "diff_b" in f:
        bias = update.target[: -len(".weight")] + ".bias"
        if bias not in tensors:
            raise ConversionError(f"{path}: {listing(update.keys)}: a bias update for {update.target}, whose layer "
                                  "has no bias")
        deltas.append((bias, _fit(path, update, f["diff_b"], tensors[bias], "bias")))
    return deltas


def _lora_factors(path: str, update: _Update, target: torch.Tensor) -> Tuple[float, torch.Tensor, torch.Tensor]:
    """(alpha / r, up [out, r], down [r, in*kh*kw]) in float32, checked to give an update of `target`'s shape."""
    down, up = update.factors["down"].float(), update.factors["up"].float()
    names = listing(update.keys)
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
                                  f"{update.target} has shape {list(target.shape)}")
    alpha = update.alpha
    if alpha is None and update.alpha_from_config is not None:
        alpha = _config_alpha(*update.alpha_from_config, rank)
    if alpha is None:
        alpha = float(rank)
    # Contiguous: the packed copies are, and a matrix product may round differently on a strided operand.
    return alpha / rank, up.flatten(1).contiguous(), down.flatten(1).contiguous()


def a1111_hash(path: str) -> str:
    """The 12 hex digits A1111 names a LoRA by in its "Lora hashes" (and Civitai finds it by): for a .safetensors
    file the sha256 of its tensor data, after the 8-byte length and the JSON header (sd-scripts' hash, which
    editing the metadata leaves as it is); for other files the sha256 of the whole file."""
    if not is_safetensors(path):
        return sha256_file(path)[:12]
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return sha256_file(path, start=8 + header)[:12]


def _parse(path: str, components: Dict[str, Component]) -> Tuple[List[_Update], dict]:
    """The checked updates of the LoRA file `path` to components "unet" and "text_encoder", and the fields of its
    record that describe the file: path, sha256, a1111_hash, format, modules and <part>_modules (counts)."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    tensors = read_tensors(path)
    # A NaN merged into the weights would make every image fail later, far from its cause.
    broken = non_finite(tensors)
    if broken:
        raise ConversionError(f"{path}: not-a-number or infinite values in {listing(broken)}: the LoRA file is "
                              "damaged")
    configs = _peft_configs(path)
    parser = _Parser(path, tensors, components)
    for key in sorted(tensors):
        parser.add(key, tensors[key], configs)
    updates = parser.finish()
    record = {
        "path": os.path.abspath(path),
        "sha256": sha256_file(path),
        "a1111_hash": a1111_hash(path),
        "format": "+".join(sorted(parser.formats) + sorted(parser.kinds)),
        "modules": len(updates),
    }
    for part in PARTS:
        record[f"{part}_modules"] = sum(update.part == part for update in updates)
    return updates, record


def merge(spec: LoraSpec, components: Dict[str, Component]) -> dict:
    """Add the LoRA `spec` to components "unet" and "text_encoder" (their tensors dicts get new float32 tensors;
    the old ones are not modified in place). Everything is checked before anything is changed. Returns the
    manifest record: path, sha256, a1111_hash, weight, format, modules (count) and unet_modules /
    text_encoder_modules."""
    updates, record = _parse(spec.path, components)
    deltas = [(update, _deltas(spec.path, update, components[update.part].tensors)) for update in updates]
    if spec.weight != 0:  # weight 0 leaves every weight exactly as it was (bit for bit)
        for update, changes in deltas:
            tensors = components[update.part].tensors
            for key, delta in changes:
                tensors[key] = tensors[key].float() + spec.weight * delta
    return {**record, "weight": spec.weight}


def pack(path: str, components: Dict[str, Component]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """The tensors of the packed file of the LoRA `path` for the weights of components "unet" and "text_encoder"
    (see the module docstring; written with safetensors_io.save_file and PACKED_METADATA), and its record as
    merge() returns it, without the weight. The components are not changed."""
    updates, record = _parse(path, components)
    packed: Dict[str, torch.Tensor] = {}
    for update in updates:
        tensors = components[update.part].tensors
        if update.kinds() == ["lora"]:
            scale, up, down = _lora_factors(path, update, tensors[update.target])
            name = f"{update.part}.{update.target}"
            packed.update({name + ".up": up, name + ".down": down,
                           name + ".scale": torch.tensor(scale, dtype=torch.float32)})
        else:
            for key, delta in _deltas(path, update, tensors):
                packed[f"{update.part}.{key}.diff"] = delta
    return packed, record
