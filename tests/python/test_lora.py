"""convert.py --lora: kohya/A1111, PEFT and older diffusers LoRA files merged into the tiny reference model's
U-Net and text encoder (W += weight * alpha / r * up @ down), LyCORIS LoHa, LoKr and full updates, the errors,
and the bundle end to end; the same files packed for txt2img to apply (lora.pack, for add_lora.py)."""

import hashlib
import json
import math

import pytest
import torch

from converter_runs import convert, expect_errors, run
from txt2img_convert import checkpoints as ck
from txt2img_convert import lora
from txt2img_convert.checkpoints import Component, ConversionError
from txt2img_convert.safetensors_io import load_file, save_file

ATTN = "down_blocks.1.attentions.0"
BLOCK = ATTN + ".transformer_blocks.0"
TEXT = "text_model.encoder.layers.0"
# (part, module) -> (shape of its weight) of the layers the tests put LoRAs on.
MODULES = {
    ("unet", BLOCK + ".attn1.to_q"): (64, 64),
    ("unet", BLOCK + ".attn2.to_k"): (64, 32),
    ("unet", BLOCK + ".attn1.to_out.0"): (64, 64),
    ("unet", BLOCK + ".ff.net.0.proj"): (512, 64),
    ("unet", ATTN + ".proj_in"): (64, 64, 1, 1),
    ("unet", "down_blocks.1.resnets.0.conv1"): (64, 32, 3, 3),
    ("text_encoder", TEXT + ".self_attn.q_proj"): (32, 32),
    ("text_encoder", TEXT + ".self_attn.out_proj"): (32, 32),
    ("text_encoder", "text_model.encoder.layers.3.mlp.fc1"): (37, 32),
}
KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


@pytest.fixture(scope="module")
def tiny(reference):
    return ck.load_diffusers(str(reference / "tiny/model"))


@pytest.fixture
def components(tiny):
    """Fresh U-Net and text encoder Components of the tiny model (merging replaces entries of their dicts)."""
    return {part: Component(c.label, dict(c.tensors), c.config, c.origin)
            for part, c in (("unet", tiny.unet), ("text_encoder", tiny.text_encoder))}


def make_pair(shape, rank, seed, dtype=torch.float32):
    """(down, up) of rank `rank` for a weight of `shape` ([out, in] or [out, in, kh, kw])."""
    g = torch.Generator().manual_seed(seed)
    down = torch.randn((rank,) + tuple(shape[1:]), generator=g).to(dtype)
    up = torch.randn((shape[0], rank) + ((1, 1) if len(shape) == 4 else ()), generator=g).to(dtype)
    return down, up


def make_lora(modules=MODULES, rank=4, alpha=2.0, seed=0, dtype=torch.float32):
    """module key -> (down, up, alpha or None)."""
    return {key: (*make_pair(shape, rank, seed + i, dtype), alpha) for i, (key, shape) in enumerate(modules.items())}


def kohya_file(path, pairs):
    tensors = {}
    for (part, module), (down, up, alpha) in pairs.items():
        name = KOHYA_PREFIX[part] + module.replace(".", "_")
        tensors[name + ".lora_down.weight"] = down
        tensors[name + ".lora_up.weight"] = up
        if alpha is not None:
            tensors[name + ".alpha"] = torch.tensor(alpha, dtype=down.dtype)
    save_file(tensors, str(path))
    return path


def expected_delta(weight, down, up, alpha):
    """The merge written out by hand: weight * alpha / r * sum_r up[o, r] * down[r, i, ...]."""
    rank = down.shape[0]
    alpha = rank if alpha is None else alpha
    up = up.double().reshape(up.shape[0], rank)
    if down.dim() == 4:
        product = torch.einsum("or,rikl->oikl", up, down.double())
    else:
        product = torch.einsum("or,ri->oi", up, down.double())
    return weight * alpha / rank * product


def check_merged(before, after, pairs, weight, tol=1e-6):
    """Every LoRA module equals W + delta (to float32 rounding); every other tensor is the same object."""
    targets = {}
    for (part, module), (down, up, alpha) in pairs.items():
        targets[(part, module + ".weight")] = expected_delta(weight, down, up, alpha)
    for part in ("unet", "text_encoder"):
        for key, old in before[part].items():
            new = after[part].tensors[key]
            if (part, key) in targets:
                assert new.dtype == torch.float32 and new.shape == old.shape, key
                want = old.double() + targets[(part, key)].reshape(old.shape)
                error = (new.double() - want).abs().max().item()
                assert error <= tol * max(1.0, want.abs().max().item()), (key, error)
                assert not torch.equal(new, old), key
            else:
                assert new is old, key


def snapshot(components):
    return {part: dict(c.tensors) for part, c in components.items()}


def merge(components, path, weight=1.0):
    return lora.merge(lora.LoraSpec(str(path), weight), components)


# ------------------------------------------------------------------------------------------------- kohya


def test_kohya_unet_linears_convs_and_text_encoder(tmp_path, components):
    pairs = make_lora()
    before = snapshot(components)
    record = merge(components, kohya_file(tmp_path / "style.safetensors", pairs), 0.7)
    check_merged(before, components, pairs, 0.7)
    assert record["format"] == "kohya" and record["weight"] == 0.7
    assert (record["modules"], record["unet_modules"], record["text_encoder_modules"]) == (9, 6, 3)
    assert record["path"] == str(tmp_path / "style.safetensors") and len(record["sha256"]) == 64
    assert record["a1111_hash"] == lora.a1111_hash(str(tmp_path / "style.safetensors"))


# U-Net layers of the tiny model by their LDM names, which A1111 reads in kohya files for SD 1 as well.
LDM_NAMES = {
    BLOCK + ".attn1.to_q": "input_blocks.3.1.transformer_blocks.0.attn1.to_q",
    ATTN + ".proj_in": "input_blocks.3.1.proj_in",
    "down_blocks.1.resnets.0.conv1": "input_blocks.3.0.in_layers.2",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.2.0.op",
    "mid_block.attentions.0.proj_in": "middle_block.1.proj_in",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k": "output_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.1.2.conv",
    "up_blocks.1.resnets.1.conv_shortcut": "output_blocks.3.0.skip_connection",
    "time_embedding.linear_1": "time_embed.0",
}


def test_kohya_lora_with_ldm_unet_names_is_the_one_with_diffusers_names(tmp_path, tiny):
    modules = {("unet", module): tiny.unet.tensors[module + ".weight"].shape for module in LDM_NAMES}
    pairs = make_lora({**modules, ("text_encoder", TEXT + ".self_attn.q_proj"): (32, 32)})
    diffusers, _ = merged(tiny, kohya_file(tmp_path / "diffusers-names.safetensors", pairs), 0.8)
    ldm_pairs = {(part, LDM_NAMES.get(module, module)): pair for (part, module), pair in pairs.items()}
    ldm, record = merged(tiny, kohya_file(tmp_path / "ldm-names.safetensors", ldm_pairs), 0.8)
    assert (record["format"], record["unet_modules"], record["text_encoder_modules"]) == ("kohya", len(LDM_NAMES), 1)
    assert_same(diffusers, ldm)
    by_diffusers_names, by_ldm_names = (
        lora.pack(str(tmp_path / name), {"unet": tiny.unet, "text_encoder": tiny.text_encoder})[0]
        for name in ("diffusers-names.safetensors", "ldm-names.safetensors"))
    assert by_diffusers_names.keys() == by_ldm_names.keys()
    assert all(torch.equal(value, by_ldm_names[key]) for key, value in by_diffusers_names.items())


def test_a1111_hash(tmp_path):
    """A1111's LoRA hash: of a .safetensors file the sha256 of what follows its header (so it survives metadata
    edits), of a pickle the whole file's; 12 hex digits."""
    payload = bytes(range(256)) * 40
    for i, metadata in enumerate(("{}", '{"__metadata__":{"ss_output_name":"style"}}')):
        header = metadata.encode() + b" " * (-len(metadata) % 8)
        path = tmp_path / f"style{i}.safetensors"
        path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
        assert lora.a1111_hash(str(path)) == hashlib.sha256(payload).hexdigest()[:12]
    pickle = tmp_path / "style.pt"
    pickle.write_bytes(payload)
    assert lora.a1111_hash(str(pickle)) == hashlib.sha256(payload).hexdigest()[:12]


# The layers diffusers' LCM-LoRA training script (train_lcm_distill_lora_sd.py) puts LoRAs on; LCM-LoRA files
# (lcm-lora-sdv1-5) store them in kohya naming, to be sampled with --sampler lcm.
LCM_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                    "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def test_every_layer_an_lcm_lora_targets(tmp_path, components):
    unet = components["unet"].tensors
    modules = {("unet", key[:-len(".weight")]): tuple(value.shape) for key, value in unet.items()
               if key.endswith(".weight") and value.dim() >= 2
               and any(key[:-len(".weight")].endswith("." + target) for target in LCM_LORA_TARGETS)}
    kinds = {target for target in LCM_LORA_TARGETS for _, module in modules if module.endswith("." + target)}
    assert kinds == set(LCM_LORA_TARGETS)  # the tiny U-Net has every kind of layer
    pairs = make_lora(modules, rank=2, alpha=1.0)
    before = snapshot(components)
    record = merge(components, kohya_file(tmp_path / "lcm-lora.safetensors", pairs))
    check_merged(before, components, pairs, 1.0)
    assert record["unet_modules"] == len(modules) and record["text_encoder_modules"] == 0


def test_alpha_absent_means_alpha_equals_rank(tmp_path, components):
    pairs = make_lora(rank=3, alpha=None)
    before = snapshot(components)
    merge(components, kohya_file(tmp_path / "a.safetensors", pairs))
    check_merged(before, components, pairs, 1.0)
    # The same file with alpha = rank stored explicitly gives exactly the same weights.
    explicit = {key: (down, up, 3.0) for key, (down, up, _) in pairs.items()}
    again = {part: Component(c.label, dict(before[part]), c.config, c.origin) for part, c in components.items()}
    merge(again, kohya_file(tmp_path / "b.safetensors", explicit))
    for part in again:
        for key, value in again[part].tensors.items():
            assert torch.equal(value, components[part].tensors[key]), key


def test_weight_zero_changes_nothing(tmp_path, components):
    before = snapshot(components)
    record = merge(components, kohya_file(tmp_path / "a.safetensors", make_lora()), 0.0)
    assert record["modules"] == 9
    for part in before:
        assert components[part].tensors == before[part]


def test_two_loras_add_up(tmp_path, components):
    first, second = make_lora(seed=0), make_lora(seed=100, rank=2, alpha=1.0)
    before = snapshot(components)
    merge(components, kohya_file(tmp_path / "a.safetensors", first), 0.5)
    merge(components, kohya_file(tmp_path / "b.safetensors", second), -1.25)
    for (part, module), (down, up, alpha) in first.items():
        key = module + ".weight"
        old = before[part][key]
        want = old.double() + (expected_delta(0.5, down, up, alpha)
                               + expected_delta(-1.25, *second[(part, module)])).reshape(old.shape)
        assert torch.allclose(components[part].tensors[key].double(), want, rtol=0, atol=1e-5), key


def test_fp16_lora_file_merges_in_float32(tmp_path, components):
    pairs = make_lora(dtype=torch.float16)
    before = snapshot(components)
    merge(components, kohya_file(tmp_path / "half.safetensors", pairs), 0.8)
    check_merged(before, components, pairs, 0.8)  # computed from the fp16 values, in float32


def test_linear_lora_on_a_1x1_conv_and_conv_lora_on_a_linear(tmp_path, components):
    proj_in, to_q = ("unet", ATTN + ".proj_in"), ("unet", BLOCK + ".attn1.to_q")
    down, up = make_pair((64, 64), 4, 1)  # 2-D pair for the [64, 64, 1, 1] proj_in
    down4, up4 = make_pair((64, 64, 1, 1), 4, 2)  # 4-D pair for the [64, 64] linear to_q
    pairs = {proj_in: (down, up, 4.0), to_q: (down4, up4, 1.0)}
    before = snapshot(components)
    merge(components, kohya_file(tmp_path / "a.safetensors", pairs))
    check_merged(before, components, pairs, 1.0)
    assert components["unet"].tensors[proj_in[1] + ".weight"].shape == (64, 64, 1, 1)
    assert components["unet"].tensors[to_q[1] + ".weight"].shape == (64, 64)


def test_single_file_components(reference, tmp_path):
    """A single-file source's components carry diffusers names once converted: the same LoRA names apply."""
    sd1 = ck.ldm_to_diffusers(ck.read_tensors(str(reference / "sd1/single_file/sd1.safetensors")), "sd1")
    components = {part: sd1[part] for part in ("unet", "text_encoder")}
    modules = {("unet", "up_blocks.1.attentions.2.proj_out"): (128, 128, 1, 1),
               ("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"): (128, 32),
               ("text_encoder", "text_model.encoder.layers.11.mlp.fc2"): (32, 128)}
    for (part, module), shape in modules.items():
        assert tuple(components[part].tensors[module + ".weight"].shape) == shape
    pairs = make_lora(modules)
    before = snapshot(components)
    record = merge(components, kohya_file(tmp_path / "a.safetensors", pairs))
    check_merged(before, components, pairs, 1.0)
    assert (record["unet_modules"], record["text_encoder_modules"]) == (2, 1)


# -------------------------------------------------------------------------------------- PEFT and diffusers


def peft_tensors(pairs, prefixed=True, alphas=True):
    tensors = {}
    for (part, module), (down, up, alpha) in pairs.items():
        name = f"{part}.{module}" if prefixed else f"base_model.model.{module}"
        tensors[name + ".lora_A.weight"] = down
        tensors[name + ".lora_B.weight"] = up
        if alphas and alpha is not None:
            tensors[name + ".alpha"] = torch.tensor(alpha)
    return tensors


def old_diffusers_tensors(pairs):
    """diffusers 0.17-0.2x: LoRACompatibleLinear `.lora.down/up`, attention processors `processor.to_q_lora`,
    text encoder `to_q_lora` / `lora_linear_layer`."""
    processor = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "to_out"}
    text_attention = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}
    tensors = {}
    for (part, module), (down, up, alpha) in pairs.items():
        parent, _, leaf = module.rpartition(".")
        if module.endswith("to_out.0"):
            parent, leaf = module[: -len(".to_out.0")], "to_out.0"
        if part == "unet" and leaf in processor:
            stem, layer = f"unet.{parent}.processor.{processor[leaf]}_lora", ""
        elif part == "unet":
            stem, layer = f"unet.{module}", ".lora"
        elif leaf in text_attention:
            stem, layer = f"text_encoder.{parent}.{text_attention[leaf]}_lora", ""
        else:
            stem, layer = f"text_encoder.{module}", ".lora_linear_layer"
        tensors[f"{stem}{layer}.down.weight"] = down
        tensors[f"{stem}{layer}.up.weight"] = up
        if alpha is not None and not stem.endswith("_lora"):
            tensors[f"{part}.{module}.alpha"] = torch.tensor(alpha)
    return tensors


def merged(tiny, path, weight=1.0):
    components = {part: Component(c.label, dict(c.tensors), c.config, c.origin)
                  for part, c in (("unet", tiny.unet), ("text_encoder", tiny.text_encoder))}
    record = merge(components, path, weight)
    return components, record


def assert_same(a, b):
    for part in ("unet", "text_encoder"):
        assert sorted(a[part].tensors) == sorted(b[part].tensors)
        for key, value in a[part].tensors.items():
            assert torch.equal(value, b[part].tensors[key]), key


def test_peft_and_old_diffusers_formats_equal_kohya(tmp_path, tiny):
    pairs = make_lora(alpha=4.0)  # alpha = rank: the old diffusers processor names carry no alpha
    kohya, _ = merged(tiny, kohya_file(tmp_path / "k.safetensors", pairs), 0.6)
    save_file(peft_tensors(pairs), str(tmp_path / "p.safetensors"))
    peft, record = merged(tiny, tmp_path / "p.safetensors", 0.6)
    assert record["format"] == "peft" and record["modules"] == 9
    assert_same(kohya, peft)
    save_file(old_diffusers_tensors(pairs), str(tmp_path / "d.safetensors"))
    old, record = merged(tiny, tmp_path / "d.safetensors", 0.6)
    assert record["format"] == "diffusers" and record["modules"] == 9
    assert_same(kohya, old)
    # A PEFT file without alphas: alpha = rank.
    save_file(peft_tensors(pairs, alphas=False), str(tmp_path / "n.safetensors"))
    assert_same(kohya, merged(tiny, tmp_path / "n.safetensors", 0.6)[0])


def test_peft_alphas_from_metadata_and_adapter_config(tmp_path, tiny):
    pairs = make_lora(alpha=8.0)
    to_q = ("unet", BLOCK + ".attn1.to_q")
    pairs_pattern = dict(pairs)
    pairs_pattern[to_q] = pairs[to_q][:2] + (1.0,)  # alpha_pattern overrides this one module
    kohya, _ = merged(tiny, kohya_file(tmp_path / "k.safetensors", pairs_pattern))
    metadata = {"unet.r": 4, "unet.lora_alpha": 8.0, "unet.alpha_pattern": {"attn1.to_q": 1.0},
                "text_encoder.r": 4, "text_encoder.lora_alpha": 8.0}
    save_file(peft_tensors(pairs, alphas=False), str(tmp_path / "m.safetensors"),
              {"lora_adapter_metadata": json.dumps(metadata)})
    assert_same(kohya, merged(tiny, tmp_path / "m.safetensors")[0])
    # PEFT's own layout: adapter_model.safetensors (base_model.model.* keys) beside adapter_config.json.
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file(peft_tensors(pairs, prefixed=False, alphas=False), str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "alpha_pattern": {"attn1.to_q": 1}}))
    adapter, record = merged(tiny, folder / "adapter_model.safetensors")
    assert record["format"] == "peft" and (record["unet_modules"], record["text_encoder_modules"]) == (6, 3)
    assert_same(kohya, adapter)
    # rsLoRA scales by alpha / sqrt(r): the same as alpha' = alpha * sqrt(r) in the plain formula.
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "use_rslora": True}))
    rs = {key: (down, up, 8.0 * math.sqrt(4)) for key, (down, up, _) in pairs.items()}
    assert_same(merged(tiny, kohya_file(tmp_path / "rs.safetensors", rs))[0],
                merged(tiny, folder / "adapter_model.safetensors")[0])
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "use_dora": True}))
    with pytest.raises(ConversionError, match="DoRA"):
        merged(tiny, folder / "adapter_model.safetensors")


# ------------------------------------------------------------------------------------------------ LyCORIS

TO_Q = ("unet", BLOCK + ".attn1.to_q")  # [64, 64], no bias
TO_OUT = ("unet", BLOCK + ".attn1.to_out.0")  # [64, 64] and a bias
CONV = ("unet", "down_blocks.1.resnets.0.conv1")  # [64, 32, 3, 3] and a bias
FC1 = ("text_encoder", "text_model.encoder.layers.3.mlp.fc1")  # [37, 32]


def randn(*shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def lycoris_file(path, modules):
    """modules: (part, module) -> {factor name: tensor, "alpha": number}, written in kohya naming."""
    tensors = {}
    for (part, module), factors in modules.items():
        stem = KOHYA_PREFIX[part] + module.replace(".", "_")
        for name, value in factors.items():
            tensors[f"{stem}.{name}"] = torch.tensor(float(value)) if name == "alpha" else value
    save_file(tensors, str(path))
    return path


def kron_by_blocks(w1, w2):
    """kron(w1, w2) written out: block [a, c] of the result is w1[a, c] * w2 (w2 2-D or 4-D)."""
    o2, i2 = w2.shape[:2]
    out = torch.zeros((w1.shape[0] * o2, w1.shape[1] * i2) + tuple(w2.shape[2:]), dtype=torch.float64)
    for a in range(w1.shape[0]):
        for c in range(w1.shape[1]):
            out[a * o2:(a + 1) * o2, c * i2:(c + 1) * i2] = w1[a, c].double() * w2.double()
    return out


def tucker_by_taps(core, a, b):
    """sum_ij core[i, j, k, l] * a[i, o] * b[j, c], one kernel tap at a time: a.T @ core[:, :, k, l] @ b."""
    out = torch.zeros((a.shape[1], b.shape[1]) + tuple(core.shape[2:]), dtype=torch.float64)
    for k in range(core.shape[2]):
        for l in range(core.shape[3]):
            out[:, :, k, l] = a.double().T @ core[:, :, k, l].double() @ b.double()
    return out


def changed(before, components, key):
    part, name = key
    return components[part].tensors[name].double() - before[part][name].double()


def test_loha_with_an_all_ones_half_is_the_lora_of_its_other_half(tmp_path, components, tiny):
    """(w1_a @ w1_b) * ones = the LoRA up=w1_a, down=w1_b, with the same alpha / r: checked against the LoRA path."""
    modules, pairs = {}, {}
    for i, (key, shape) in enumerate({TO_Q: (64, 64), CONV: (64, 32, 3, 3), FC1: (37, 32)}.items()):
        down, up = make_pair(shape, 4, 10 + i)
        inner = math.prod(shape[1:])
        modules[key] = {"hada_w1_a": up.reshape(shape[0], 4), "hada_w1_b": down.reshape(4, inner),
                        "hada_w2_a": torch.ones(shape[0], 2), "hada_w2_b": torch.full((2, inner), 0.5), "alpha": 3}
        pairs[key] = (down, up, 3.0)
    before = snapshot(components)
    record = merge(components, lycoris_file(tmp_path / "loha.safetensors", modules), 0.6)
    assert record["format"] == "kohya+loha" and record["modules"] == 3
    check_merged(before, components, pairs, 0.6, tol=1e-5)


def test_loha_is_the_product_of_its_halves(tmp_path, components):
    w = {n: randn(*shape, seed=i) for i, (n, shape) in enumerate(
        [("hada_w1_a", (64, 3)), ("hada_w1_b", (3, 64)), ("hada_w2_a", (64, 3)), ("hada_w2_b", (3, 64))])}
    before = snapshot(components)
    merge(components, lycoris_file(tmp_path / "a.safetensors", {TO_Q: {**w, "alpha": 1.5}}), 0.5)
    want = 0.5 * (1.5 / 3) * torch.einsum("or,rc->oc", w["hada_w1_a"].double(), w["hada_w1_b"].double()) \
        * torch.einsum("or,rc->oc", w["hada_w2_a"].double(), w["hada_w2_b"].double())
    assert torch.allclose(changed(before, components, (TO_Q[0], TO_Q[1] + ".weight")), want, atol=1e-5)


def test_loha_tucker_convolution(tmp_path, components):
    f = {"hada_t1": randn(2, 2, 3, 3, seed=1), "hada_w1_a": randn(2, 64, seed=2), "hada_w1_b": randn(2, 32, seed=3),
         "hada_t2": randn(2, 2, 3, 3, seed=4), "hada_w2_a": randn(2, 64, seed=5), "hada_w2_b": randn(2, 32, seed=6)}
    before = snapshot(components)
    merge(components, lycoris_file(tmp_path / "a.safetensors", {CONV: f}))  # no alpha: scale 1
    want = tucker_by_taps(f["hada_t1"], f["hada_w1_a"], f["hada_w1_b"]) \
        * tucker_by_taps(f["hada_t2"], f["hada_w2_a"], f["hada_w2_b"])
    assert torch.allclose(changed(before, components, (CONV[0], CONV[1] + ".weight")), want, atol=1e-4)


def test_lokr_is_a_kronecker_product(tmp_path, components):
    w1, w2 = randn(2, 4, seed=1), randn(32, 16, seed=2)
    conv_w1, conv_w2 = randn(2, 2, seed=3), randn(32, 16, 3, 3, seed=4)
    before = snapshot(components)
    # Whole factors: the alpha is not used (scale 1), as in A1111 and LyCORIS.
    merge(components, lycoris_file(tmp_path / "a.safetensors", {
        TO_Q: {"lokr_w1": w1, "lokr_w2": w2, "alpha": 8}, CONV: {"lokr_w1": conv_w1, "lokr_w2": conv_w2}}), 0.25)
    assert torch.allclose(changed(before, components, (TO_Q[0], TO_Q[1] + ".weight")), 0.25 * kron_by_blocks(w1, w2),
                          atol=1e-6)
    assert torch.allclose(changed(before, components, (CONV[0], CONV[1] + ".weight")),
                          0.25 * kron_by_blocks(conv_w1, conv_w2), atol=1e-6)


def test_lokr_factor_layouts_agree(tmp_path, tiny):
    """A convolution's w2 as a whole 4-D tensor, as a product [o2, r] @ [r, i2*3*3] and in Tucker form give the
    same update when they hold the same numbers; a product w1 scales by alpha / its rank."""
    core, a, b = randn(3, 3, 3, 3, seed=1), randn(3, 32, seed=2), randn(3, 16, seed=3)
    w2 = tucker_by_taps(core, a, b).float()
    w1_a, w1_b = randn(2, 5, seed=4), randn(5, 2, seed=5)
    w1 = w1_a @ w1_b
    variants = {
        "whole": {"lokr_w1": w1, "lokr_w2": w2},
        "product": {"lokr_w1": w1, "lokr_w2_a": w2.reshape(32, -1), "lokr_w2_b": torch.eye(16 * 9)},
        "tucker": {"lokr_w1": w1, "lokr_t2": core, "lokr_w2_a": a, "lokr_w2_b": b},
        "w1 product, alpha = rank": {"lokr_w1_a": w1_a, "lokr_w1_b": w1_b, "lokr_w2": w2, "alpha": 5},
    }
    results = {name: merged(tiny, lycoris_file(tmp_path / f"{i}.safetensors", {CONV: f}))[0]["unet"]
               .tensors[CONV[1] + ".weight"] for i, (name, f) in enumerate(variants.items())}
    for name, value in results.items():
        assert torch.allclose(value, results["whole"], atol=1e-4), name
    halved = merged(tiny, lycoris_file(tmp_path / "h.safetensors", {CONV: {**variants["w1 product, alpha = rank"],
                                                                          "alpha": 2.5}}))[0]
    base = tiny.unet.tensors[CONV[1] + ".weight"]
    assert torch.allclose(halved["unet"].tensors[CONV[1] + ".weight"] - base, (results["whole"] - base) / 2, atol=1e-4)


def test_full_update_changes_weight_and_bias(tmp_path, components):
    diff, diff_b = randn(64, 64, seed=1), randn(64, seed=2)
    conv_diff = randn(64, 32, 3, 3, seed=3)
    before = snapshot(components)
    record = merge(components, lycoris_file(tmp_path / "a.safetensors", {
        TO_OUT: {"diff": diff, "diff_b": diff_b}, CONV: {"diff": conv_diff}}), -0.5)
    assert record["format"] == "kohya+full" and record["modules"] == 2
    for key, delta in (((TO_OUT[1] + ".weight"), diff), ((TO_OUT[1] + ".bias"), diff_b),
                       ((CONV[1] + ".weight"), conv_diff)):
        assert torch.equal(components["unet"].tensors[key], before["unet"][key].float() - 0.5 * delta), key
    assert components["unet"].tensors[CONV[1] + ".bias"] is before["unet"][CONV[1] + ".bias"]


def test_lycoris_errors(tmp_path, tiny):
    stem = "lora_unet_" + TO_Q[1].replace(".", "_")
    down, up = make_pair((64, 64), 4, 0)
    loha = {stem + "." + n: randn(*shape, seed=0) for n, shape in
            [("hada_w1_a", (64, 2)), ("hada_w1_b", (2, 64)), ("hada_w2_a", (64, 2)), ("hada_w2_b", (2, 64))]}
    message = lora_error(tmp_path, tiny, {**loha, stem + ".lora_down.weight": down, stem + ".lora_up.weight": up})
    assert "LyCORIS LoHa and LoRA for one layer" in message and stem + ".hada_w1_a" in message
    message = lora_error(tmp_path, tiny, {k: v for k, v in loha.items() if not k.endswith("w2_b")})
    assert "no hada_w2_b tensor" in message
    message = lora_error(tmp_path, tiny, {stem + ".lokr_w1": randn(2, 2, seed=0), stem + ".lokr_w2_a": randn(32, 2, seed=0)})
    assert "no lokr_w2 (or lokr_w2_a and lokr_w2_b) tensor" in message
    message = lora_error(tmp_path, tiny, {stem + ".lokr_w1": randn(2, 2, seed=0), stem + ".lokr_w2": randn(32, 16, seed=0)})
    assert "changes a weight of shape [64, 32]" in message and "has shape [64, 64]" in message
    message = lora_error(tmp_path, tiny, {stem + ".diff": randn(64, 64, seed=0), stem + ".diff_b": randn(64, seed=0)})
    assert "has no bias" in message
    message = lora_error(tmp_path, tiny, {f"unet.{TO_Q[1]}.hada_w1_a": randn(64, 2, seed=0)})
    assert "outside kohya naming" in message
    assert "only an alpha" in lora_error(tmp_path, tiny, {**loha, "lora_unet_conv_in.alpha": torch.tensor(1.0)})


# ------------------------------------------------------------------------------------------------- errors


def lora_error(tmp_path, tiny, tensors, name="bad.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path))
    with pytest.raises(ConversionError) as info:
        merged(tiny, path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    return message


def test_errors_name_the_file_and_the_keys(tmp_path, tiny):
    down, up = make_pair((64, 64), 4, 0)
    good = {"lora_unet_" + (BLOCK + ".attn1.to_q").replace(".", "_") + s: t
            for s, t in ((".lora_down.weight", down), (".lora_up.weight", up))}
    # A key whose module is no weight of the model (here a fourth down block, and an LDM name of a fifth input block).
    for name in ("lora_unet_down_blocks_3_attentions_0_proj_in", "lora_unet_input_blocks_4_1_proj_in"):
        message = lora_error(tmp_path, tiny, {**good, name + ".lora_down.weight": down,
                                              name + ".lora_up.weight": up})
        assert "match no U-Net or text encoder weight" in message and name + ".lora_down.weight" in message
    message = lora_error(tmp_path, tiny, {**good, "unet.down_blocks.7.attn1.to_q.lora_A.weight": down,
                                          "unet.down_blocks.7.attn1.to_q.lora_B.weight": up})
    assert "unet.down_blocks.7.attn1.to_q.lora_A.weight" in message
    # Shape mismatch: a pair for a [64, 32] weight on the [64, 64] to_q.
    d32, u32 = make_pair((64, 32), 4, 0)
    message = lora_error(tmp_path, tiny, {k: (d32 if k.endswith("down.weight") else u32) for k in good})
    assert "[64, 32]" in message and "[64, 64]" in message and "attn1_to_q" in message
    # up and down of different ranks.
    message = lora_error(tmp_path, tiny, {**good, next(iter(good)): make_pair((64, 64), 3, 0)[0]})
    assert "does not fit" in message
    # LyCORIS types that are not merged, and DoRA.
    stem = "lora_unet_" + (BLOCK + ".attn1.to_q").replace(".", "_")
    assert "lora_mid" in lora_error(tmp_path, tiny, {**good, stem + ".lora_mid.weight": torch.ones(4, 4, 1, 1)})
    assert "DoRA" in lora_error(tmp_path, tiny, {**good, stem + ".dora_scale": torch.ones(64, 1)})
    # A half pair.
    message = lora_error(tmp_path, tiny, {stem + ".lora_down.weight": down})
    assert "no up tensor" in message and stem + ".lora_down.weight" in message
    # Files with no LoRA in them: a model's weights, an empty file.
    message = lora_error(tmp_path, tiny, {"conv_in.weight": torch.zeros(3), **good})
    assert "not LoRA tensors" in message and "conv_in.weight" in message
    assert "no LoRA tensors" in lora_error(tmp_path, tiny, {})
    # Damaged values, which would make every image non-finite.
    message = lora_error(tmp_path, tiny, {**good, stem + ".lora_up.weight": torch.full_like(up, float("nan"))})
    assert "not-a-number or infinite values" in message and stem + ".lora_up.weight" in message


def test_failed_file_changes_nothing(tmp_path, components):
    pairs = make_lora()
    path = kohya_file(tmp_path / "a.safetensors", pairs)
    tensors = load_file(str(path))
    tensors["lora_te_text_model_encoder_layers_9_mlp_fc1.lora_down.weight"] = torch.zeros(4, 32)
    tensors["lora_te_text_model_encoder_layers_9_mlp_fc1.lora_up.weight"] = torch.zeros(37, 4)
    save_file(tensors, str(path))
    before = snapshot(components)
    with pytest.raises(ConversionError, match="layers_9_mlp_fc1"):
        merge(components, path)
    for part in before:
        assert components[part].tensors == before[part]


def test_weight_syntax():
    assert lora.parse_spec("a.safetensors") == lora.LoraSpec("a.safetensors", 1.0)
    assert lora.parse_spec("a.safetensors:0.5") == lora.LoraSpec("a.safetensors", 0.5)
    assert lora.parse_spec("dir:x/a.safetensors:-1e-1") == lora.LoraSpec("dir:x/a.safetensors", -0.1)
    assert lora.parse_spec("dir:x/a.safetensors") == lora.LoraSpec("dir:x/a.safetensors", 1.0)
    for bad in ("a.safetensors:", "a.safetensors:x", "a.safetensors:nan", "a.safetensors:inf", ":0.5", ""):
        with pytest.raises(ValueError):
            lora.parse_spec(bad)


def test_existing_file_with_a_colon_in_its_name(tmp_path):
    path = tmp_path / "style:v2"
    path.write_bytes(b"")
    assert lora.parse_spec(str(path)) == lora.LoraSpec(str(path), 1.0)


# --------------------------------------------------------------------------------------------- convert.py


def test_command_line_errors(tmp_path, reference, capsys):
    vocab = reference.parent / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    tiny_model = reference / "tiny/model"
    out = tmp_path / "x"
    good = kohya_file(tmp_path / "good.safetensors", make_lora())
    cases = [
        ((tiny_model, "--lora", f"{good}:abc", "--out", out), 2, "not a number"),
        ((tiny_model, "--lora", f"{good}:", "--out", out), 2, "--lora"),
        (("--tiny", "--vocab", vocab, "--lora", good, "--out", out), 2, "--lora applies to a SOURCE"),
        (("--random-full", "--vocab", vocab, "--lora", good, "--out", out), 2, "--lora applies to a SOURCE"),
        ((tiny_model, "--lora", tmp_path / "missing.safetensors", "--no-safety-checker", "--out", out), 1,
         f"--lora {tmp_path / 'missing.safetensors'}: no such file"),
    ]
    bad = tmp_path / "loha.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.hada_w1_a": torch.zeros(2, 2)}, str(bad))
    cases.append(((tiny_model, "--lora", good, "--lora", bad, "--no-safety-checker", "--out", out), 1,
                  f"{bad}: no hada_w1_b tensor beside lora_unet_mid_block_attentions_0_proj_in.hada_w1_a"))
    expect_errors(capsys, cases, out)


def state_dict(bundle, name):
    return torch.jit.load(str(bundle / name)).state_dict()


def test_bundle_end_to_end(tmp_path, reference, tiny, components, capsys):
    tiny_model = reference / "tiny/model"
    first, second = make_lora(), make_lora(seed=50, rank=2, alpha=None)
    a = kohya_file(tmp_path / "style.safetensors", first)
    save_file(peft_tensors(second), str(tmp_path / "detail.safetensors"))
    b = tmp_path / "detail.safetensors"
    # As users run it (its own interpreter), two LoRAs, the second with a weight.
    result = run(tiny_model, "--lora", a, "--lora", f"{b}:-0.5", "--no-safety-checker", "--out", tmp_path / "lora")
    lines = [line for line in result.stderr.splitlines() if "LoRA" in line]
    assert lines == [f"convert.py: merged kohya LoRA {a} (weight 1) into 6 U-Net and 3 text encoder modules",
                     f"convert.py: merged peft LoRA {b} (weight -0.5) into 6 U-Net and 3 text encoder modules"]
    merge(components, a, 1.0)
    merge(components, b, -0.5)
    for part, filename in (("unet", "unet.pt"), ("text_encoder", "text_encoder.pt")):
        exported = state_dict(tmp_path / "lora", filename)
        for key, value in exported.items():
            assert torch.equal(value, components[part].tensors[key]), (filename, key)
    manifest = json.loads((tmp_path / "lora/model.json").read_text())
    loras = manifest["source"]["loras"]
    assert [(x["path"], x["weight"], x["format"], x["modules"]) for x in loras] == [
        (str(a), 1.0, "kohya", 9), (str(b), -0.5, "peft", 9)]
    assert loras[0]["sha256"] == ck.sha256_file(str(a))
    assert manifest["model_name"] == "model+style+detail:-0.5"
    assert manifest["model_hash"] == ck.sha256_tensors(state_dict(tmp_path / "lora", "unet.pt"))[:10]

    # Weight 0: the U-Net and text encoder of the conversion without --lora.
    assert convert(capsys, tiny_model, "--no-safety-checker", "--out", tmp_path / "plain")[0] == 0
    assert convert(capsys, tiny_model, "--lora", f"{a}:0", "--no-safety-checker", "--out", tmp_path / "zero")[0] == 0
    for filename in ("unet.pt", "text_encoder.pt"):
        plain, zero = state_dict(tmp_path / "plain", filename), state_dict(tmp_path / "zero", filename)
        assert sorted(plain) == sorted(zero)
        for key in plain:
            assert torch.equal(plain[key], zero[key]), (filename, key)
    assert "loras" not in json.loads((tmp_path / "plain/model.json").read_text())["source"]


# ------------------------------------------------------------------------------------------------ packing


def check_packed(tiny, path, weights=(1.0, 0.7, -1.3)):
    """pack's tensors, put to use as txt2img does (W + weight * (scale * (up @ down)).reshape(W.shape), or
    W + weight * diff, in float32), give bit for bit the weights that merge gives; nothing else is packed, and
    the components are left as they were. Returns pack's record."""
    components = {part: Component(c.label, dict(c.tensors), c.config, c.origin)
                  for part, c in (("unet", tiny.unet), ("text_encoder", tiny.text_encoder))}
    before = snapshot(components)
    packed, record = lora.pack(str(path), components)
    assert snapshot(components) == before
    assert all(t.dtype == torch.float32 for t in packed.values())
    used = set()
    for weight in weights:
        want, merged_record = merged(tiny, path, weight)
        assert record == {k: v for k, v in merged_record.items() if k != "weight"}
        changed_keys = 0
        for part in ("unet", "text_encoder"):
            for key, old in before[part].items():
                name = f"{part}.{key}"
                if name + ".up" in packed:
                    roles = (".up", ".down", ".scale")
                    assert packed[name + ".scale"].shape == ()
                    product = packed[name + ".up"] @ packed[name + ".down"]
                    delta = (packed[name + ".scale"] * product).reshape(old.shape)
                elif name + ".diff" in packed:
                    roles, delta = (".diff",), packed[name + ".diff"]
                else:
                    assert want[part].tensors[key] is old, key
                    continue
                used.update(name + role for role in roles)
                assert torch.equal(old + weight * delta, want[part].tensors[key]), (weight, key)
                changed_keys += 1
        assert changed_keys >= record["modules"]
    assert used == set(packed)
    return record


def test_packed_kohya_lora_gives_the_merged_weights(tmp_path, tiny):
    assert check_packed(tiny, kohya_file(tmp_path / "a.safetensors", make_lora()))["format"] == "kohya"
    # fp16 factors, alpha / r = 1 / 3 (not a float32 number), a 2-D pair on a 1x1 convolution, no alphas.
    pairs = make_lora(rank=3, alpha=1.0, dtype=torch.float16)
    pairs[("unet", ATTN + ".proj_out")] = (*make_pair((64, 64), 3, 7), 1.0)
    check_packed(tiny, kohya_file(tmp_path / "b.safetensors", pairs))
    check_packed(tiny, kohya_file(tmp_path / "c.safetensors", make_lora(alpha=None)))


def test_packed_peft_lora_with_config_alphas(tmp_path, tiny):
    pairs = make_lora(alpha=None)
    metadata = {"unet.r": 4, "unet.lora_alpha": 8.0, "unet.alpha_pattern": {"attn1.to_q": 1.0},
                "text_encoder.r": 4, "text_encoder.lora_alpha": 3.0}
    save_file(peft_tensors(pairs), str(tmp_path / "m.safetensors"), {"lora_adapter_metadata": json.dumps(metadata)})
    packed, record = lora.pack(str(tmp_path / "m.safetensors"), {"unet": tiny.unet, "text_encoder": tiny.text_encoder})
    assert record["format"] == "peft"
    assert packed[f"unet.{BLOCK}.attn1.to_q.weight.scale"].item() == 0.25
    assert packed[f"unet.{BLOCK}.attn2.to_k.weight.scale"].item() == 2.0
    assert packed[f"text_encoder.{TEXT}.self_attn.q_proj.weight.scale"].item() == 0.75
    check_packed(tiny, tmp_path / "m.safetensors")
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file(peft_tensors(pairs, prefixed=False), str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 3, "use_rslora": True}))
    check_packed(tiny, folder / "adapter_model.safetensors")


def test_packed_lycoris_updates(tmp_path, tiny):
    loha = {n: randn(*shape, seed=i) for i, (n, shape) in enumerate(
        [("hada_w1_a", (64, 3)), ("hada_w1_b", (3, 64)), ("hada_w2_a", (64, 3)), ("hada_w2_b", (3, 64))])}
    tucker = {"hada_t1": randn(2, 2, 3, 3, seed=1), "hada_w1_a": randn(2, 64, seed=2),
              "hada_w1_b": randn(2, 32, seed=3), "hada_t2": randn(2, 2, 3, 3, seed=4),
              "hada_w2_a": randn(2, 64, seed=5), "hada_w2_b": randn(2, 32, seed=6)}
    fc1 = {"hada_w1_a": randn(37, 2, seed=7), "hada_w1_b": randn(2, 32, seed=8), "hada_w2_a": randn(37, 2, seed=9),
           "hada_w2_b": randn(2, 32, seed=10), "alpha": 1}
    record = check_packed(tiny, lycoris_file(tmp_path / "loha.safetensors",
                                             {TO_Q: {**loha, "alpha": 1.5}, CONV: tucker, FC1: fc1}))
    assert (record["format"], record["modules"]) == ("kohya+loha", 3)
    lokr = {TO_Q: {"lokr_w1_a": randn(2, 3, seed=1), "lokr_w1_b": randn(3, 4, seed=2),
                   "lokr_w2": randn(32, 16, seed=3), "alpha": 2},
            CONV: {"lokr_w1": randn(2, 2, seed=4), "lokr_w2": randn(32, 16, 3, 3, seed=5)}}
    assert check_packed(tiny, lycoris_file(tmp_path / "lokr.safetensors", lokr))["format"] == "kohya+lokr"
    full = {TO_OUT: {"diff": randn(64, 64, seed=1), "diff_b": randn(64, seed=2)},
            CONV: {"diff": randn(64, 32, 3, 3, seed=3)}}
    packed, _ = lora.pack(str(lycoris_file(tmp_path / "full.safetensors", full)),
                          {"unet": tiny.unet, "text_encoder": tiny.text_encoder})
    assert sorted(packed) == sorted([f"unet.{CONV[1]}.weight.diff", f"unet.{TO_OUT[1]}.bias.diff",
                                     f"unet.{TO_OUT[1]}.weight.diff"])
    assert check_packed(tiny, tmp_path / "full.safetensors")["format"] == "kohya+full"


def test_pack_refuses_what_merge_refuses(tmp_path, tiny):
    down, up = make_pair((64, 64), 4, 0)
    name = "lora_unet_down_blocks_3_attentions_0_proj_in"
    save_file({name + ".lora_down.weight": down, name + ".lora_up.weight": up}, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(ConversionError, match="match no U-Net or text encoder weight"):
        lora.pack(str(tmp_path / "sdxl.safetensors"), {"unet": tiny.unet, "text_encoder": tiny.text_encoder})
    with pytest.raises(ConversionError, match="no such file"):
        lora.pack(str(tmp_path / "missing.safetensors"), {"unet": tiny.unet, "text_encoder": tiny.text_encoder})
