"""Loading SD v1 weights: LDM -> diffusers key mapping, config inference, .ckpt safety (Lightning checkpoints),
sharded folders, error messages."""

import collections
import hashlib
import importlib
import json
import os
import pickle
import re
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from converter_runs import run
from txt2img_convert import checkpoints as ck
from txt2img_convert import export, presets, restricted_pickle
from txt2img_convert.safetensors_io import load_file, save_file

SD1_FILE = "sd1/single_file/sd1.safetensors"

# The extra keys of real single-file checkpoints that a converter must ignore (reference README).
SCHEDULE_BUFFERS = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
]


@pytest.fixture(scope="module")
def sd1_ldm(reference):
    return load_file(str(reference / SD1_FILE))


@pytest.fixture(scope="module")
def key_map(reference):
    return json.loads((reference / "sd1/single_file/key_map.json").read_text())


@pytest.fixture(scope="module")
def sd1_components(sd1_ldm):
    return ck.ldm_to_diffusers(sd1_ldm, SD1_FILE)


def with_real_file_extras(sd):
    """`sd` plus what real SD v1 checkpoints also hold: EMA copies, EMA state, schedule buffers, position_ids."""
    extra = dict(sd)
    for key, value in sd.items():
        if key.startswith("model.diffusion_model."):
            extra["model_ema." + key[len("model."):].replace(".", "")] = value.clone()
    extra["model_ema.decay"] = torch.tensor(0.9999)
    extra["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    for name in SCHEDULE_BUFFERS:
        extra[name] = torch.rand(1000)
    extra["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    return extra


def assert_same_weights(a, b):
    for part in ("unet", "vae", "text_encoder"):
        ta, tb = a[part].tensors, b[part].tensors
        assert sorted(ta) == sorted(tb), part
        for key in ta:
            assert ta[key].dtype == torch.float32, key
            assert torch.equal(ta[key], tb[key]), key


def test_every_ldm_key_maps_as_key_map_says(sd1_ldm, sd1_components, key_map):
    assert len(key_map) == len(sd1_ldm) == 1130
    for entry in key_map:
        component = sd1_components[entry["component"]]
        value = component.tensors[entry["diffusers_key"]]
        assert list(value.shape) == entry["diffusers_shape"], entry["ldm_key"]
        assert torch.equal(value, sd1_ldm[entry["ldm_key"]].reshape(entry["diffusers_shape"])), entry["ldm_key"]
        # The inverse direction, used to name tensors in messages.
        assert component.source_name(entry["diffusers_key"]) == entry["ldm_key"]
    counts = {part: len(c.tensors) for part, c in sd1_components.items()}
    assert counts == {"unet": 686, "vae": 248, "text_encoder": 196}


CONFIG_FIELDS = {
    "unet": ["block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "mid_block_type",
             "cross_attention_dim", "in_channels", "out_channels", "attention_head_dim", "use_linear_projection",
             "transformer_layers_per_block", "norm_num_groups", "sample_size"],
    "vae": ["block_out_channels", "layers_per_block", "latent_channels", "out_channels", "in_channels",
            "norm_num_groups", "scaling_factor", "down_block_types", "up_block_types"],
    "text_encoder": ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "vocab_size", "max_position_embeddings", "hidden_act", "layer_norm_eps"],
}


def test_inferred_configs_equal_the_reference(reference, config):
    model = ck.load_single_file(str(reference / SD1_FILE), str(reference / "sd1/model"))
    for part, fields in CONFIG_FIELDS.items():
        ref = config(f"sd1/model/{part}/config.json")
        ours = getattr(model, part).config
        assert {f: ours[f] for f in fields} == {f: ref[f] for f in fields}, part
    assert model.kind == "single_file" and model.name == "sd1"
    assert model.sha256 == "2d0529e13291b284137f8e7cc0cad91e619609c870492f86c62dc57a5e9d8a77"
    assert model.scheduler == config("sd1/model/scheduler/scheduler_config.json")


def test_shapes_override_a_config_of_another_size(reference, sd1_components):
    """Without --config, SD v1.5 defaults fill in only what the tensors do not reveal."""
    defaults = presets.sd1_defaults()
    unet = ck.infer_unet_config(sd1_components["unet"], defaults["unet"])
    assert unet["block_out_channels"] == [32, 64, 128, 128]
    assert unet["cross_attention_dim"] == 32 and unet["attention_head_dim"] == 8
    vae = ck.infer_vae_config(sd1_components["vae"], defaults["vae"])
    assert vae["block_out_channels"] == [32, 64, 128, 128] and vae["scaling_factor"] == 0.18215
    # 32-wide CLIP: the default of 64-dim heads does not apply, so the user must say.
    with pytest.raises(ck.ConversionError, match="attention heads.*--config"):
        ck.infer_text_config(sd1_components["text_encoder"], defaults["text_encoder"], heads_known=False)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_ckpt_with_real_file_extras_gives_the_same_weights(tmp_path, sd1_ldm, sd1_components, zip_format):
    path = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": with_real_file_extras(sd1_ldm), "global_step": 1, "epoch": 0}, path,
               _use_new_zipfile_serialization=zip_format)
    assert_same_weights(ck.ldm_to_diffusers(ck.read_tensors(str(path)), str(path)), sd1_components)


def test_fp16_file_and_old_text_encoder_names(tmp_path, sd1_ldm, sd1_components):
    """Half-precision files are cast to float32; transformers < 4.x saved CLIP without `text_model.`."""
    old = "cond_stage_model.transformer."
    half = {(old + k[len(old + "text_model."):] if k.startswith(old + "text_model.") else k): v.half()
            for k, v in sd1_ldm.items()}
    path = tmp_path / "sd1-fp16.safetensors"
    save_file(half, str(path))
    loaded = ck.ldm_to_diffusers(ck.read_tensors(str(path)), str(path))
    expected = {part: ck.Component(c.label, {k: v.half().float() for k, v in c.tensors.items()}, {}, "")
                for part, c in sd1_components.items()}
    assert_same_weights(loaded, expected)
    key = "text_model.encoder.layers.0.mlp.fc1.weight"
    assert loaded["text_encoder"].source_name(key) == old + "encoder.layers.0.mlp.fc1.weight"


class _RunsCode:
    """Unpickling this would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _RunsShell:
    """Unpickling this would run a shell command creating a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Unknown:
    """A class of the checkpoint's training code."""


class _TensorOfUnknown:
    """Pickles as a tensor rebuilt from an object of an unknown class instead of a storage."""

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, (_Unknown(), 0, (1,), (1,), False, collections.OrderedDict()))


class _TensorChangedAfterBuild:
    """Pickles as an empty tensor rebuilt from a storage, then changed by BUILD with `state`
    (`Tensor.__setstate__`)."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (torch.zeros(0).storage(), 0, (0,), (1,), False, collections.OrderedDict()), self.state)


STANDIN_MODULE = """
open({imported!r}, "w").close()  # importing this module is running the checkpoint's code


class ModelCheckpoint:
    def __init__(self, dirpath):
        self.dirpath = dirpath
        self.best_k_models = {{}}


class AttributeDict(dict):
    pass
"""


def lightning_checkpoint(tmp_path, state_dict, zip_format, importable):
    """A PyTorch Lightning-style .ckpt of `state_dict`: its pickle also holds instances of classes of a module
    that, at load time, is no longer imported (and, unless `importable`, no longer importable), a global run
    by __reduce__ (os.system, open) and Lightning's usual training state. Returns (path, markers): files
    that exist only if loading ran code."""
    package = f"lightning_standin_{'zip' if zip_format else 'legacy'}_{importable}"
    modules = tmp_path / "modules"
    (modules / package).mkdir(parents=True)
    imported = tmp_path / "module-imported"
    (modules / package / "__init__.py").write_text("")
    (modules / package / "callbacks.py").write_text(STANDIN_MODULE.format(imported=str(imported)))
    sys.path.insert(0, str(modules))
    try:
        callbacks = importlib.import_module(f"{package}.callbacks")
        state = collections.OrderedDict(state_dict)
        state._metadata = collections.OrderedDict({"": {"version": 1}})  # as nn.Module.state_dict() has
        checkpoint = {
            "epoch": 6, "global_step": 470000, "pytorch-lightning_version": "1.4.2",
            "state_dict": state,
            "callbacks": {callbacks.ModelCheckpoint: {"best_model_score": torch.tensor(0.25),
                                                      "dirpath": "/logs/checkpoints",
                                                      "instance": callbacks.ModelCheckpoint("/logs")}},
            "hyper_parameters": callbacks.AttributeDict(base_learning_rate=1e-4, size=torch.Size([4, 64])),
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}],
            "lr_schedulers": [],
            "hooks": [_RunsShell(tmp_path / "shell-ran"), _RunsCode(str(tmp_path / "open-ran"))],
        }
        path = tmp_path / "lightning.ckpt"
        torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    finally:
        for name in (package, f"{package}.callbacks"):
            sys.modules.pop(name, None)
        if not importable:
            sys.path.remove(str(modules))
            shutil.rmtree(modules)
    imported.unlink()
    return path, [imported, tmp_path / "shell-ran", tmp_path / "open-ran"], package, modules


@pytest.mark.parametrize("zip_format,importable", [(True, False), (False, True)], ids=["zip", "legacy"])
def test_lightning_ckpt_loads_without_running_its_pickles(tmp_path, capsys, sd1_ldm, sd1_components, zip_format,
                                                          importable):
    state_dict = with_real_file_extras(sd1_ldm)
    path, markers, package, modules = lightning_checkpoint(tmp_path, state_dict, zip_format, importable)
    try:
        loaded = ck.read_tensors(str(path))
    finally:
        if importable:
            sys.path.remove(str(modules))
    assert not any(m.exists() for m in markers), [str(m) for m in markers if m.exists()]
    assert not any(name.startswith(package) for name in sys.modules)
    assert sorted(loaded) == sorted(state_dict)
    for key, value in state_dict.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert_same_weights(ck.ldm_to_diffusers(loaded, str(path)), sd1_components)
    for name in (f"{package}.callbacks.ModelCheckpoint", f"{package}.callbacks.AttributeDict",
                 f"{os.system.__module__}.system", f"{open.__module__}.open"):
        assert name in lines[0]
    assert "restricted unpickler" in lines[0] and str(path) in lines[0]


def refuse_torch_load(*args, **kwargs):
    raise AssertionError("torch.load was called: it can run a pickle's code (CVE-2025-32434, torch <= 2.5.1)")


def tensors_in_every_layout():
    """Tensors of every dtype that checkpoints hold, fp16 and bf16 too, with storages shared as torch.save shares
    them (views of one tensor, a transposed one, a slice starting inside its storage), a parameter, an empty tensor
    and a scalar."""
    base = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    out = {"base": base, "transposed": base.t(), "slice": base[2:5, 1:], "row": base[3]}
    for dtype in (torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool):
        converted = (base * 100).to(dtype)
        out[f"{dtype}"] = converted
        out[f"{dtype} view"] = converted[1:, ::2]
    out["parameter"] = torch.nn.Parameter(base[0].clone())
    out["empty"] = torch.empty(0, 4)
    out["scalar"] = torch.tensor(0.5, dtype=torch.float16)
    return out


def same_storage(a, b):
    return a.storage().data_ptr() == b.storage().data_ptr()


@pytest.mark.parametrize("layout", ["zip", "legacy", "deflated zip"])
def test_every_format_is_read_exactly_without_torch_load(tmp_path, monkeypatch, capsys, layout):
    """The restricted unpickler, the only reader of pickles, gives what torch.load gives: the same dtypes, shapes,
    strides, offsets, bytes and storage sharing; also for a zip whose records are compressed, which torch.save never
    writes but torch.load reads."""
    state = tensors_in_every_layout()
    path = tmp_path / "all.ckpt"
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=layout != "legacy")
    if layout == "deflated zip":
        stored = tmp_path / "stored.ckpt"
        path.rename(stored)
        with zipfile.ZipFile(stored) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                target.writestr(info.filename, source.read(info))
    expected = torch.load(path)["state_dict"]  # the test's own file: safe to unpickle
    monkeypatch.setattr(torch, "load", refuse_torch_load)
    loaded = ck.read_tensors(str(path))
    assert list(loaded) == list(expected)
    for key, want in expected.items():
        got = loaded[key]
        assert (got.dtype, got.shape, got.stride(), got.storage_offset()) == \
            (want.dtype, want.shape, want.stride(), want.storage_offset()), key
        assert torch.equal(got, want), key
        for other in expected:
            assert same_storage(got, loaded[other]) == same_storage(want, expected[other]), (key, other)
    assert capsys.readouterr().err == ""  # nothing ignored, so no note


def test_a_pickle_cannot_change_how_later_files_are_read(tmp_path):
    """A pickle can set attributes of what it names (BUILD): a storage type it names is its own, so a file setting
    torch.FloatStorage's dtype leaves later files as they are."""
    poisoned = tmp_path / "poisoned.ckpt"
    build = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x03\x00\x00\x00badsb."
    poisoned.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C) + pickle.dumps(1001) +
                         pickle.dumps({"little_endian": True}) + build + pickle.dumps([]))
    with pytest.raises(ck.ConversionError, match="expected a dict of tensors"):
        ck.read_tensors(str(poisoned))
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"first_stage_model.decoder.conv_in.weight": torch.ones(2, 3)},
                "callbacks": {_Unknown: {}}}, path)
    assert torch.equal(ck.read_tensors(str(path))["first_stage_model.decoder.conv_in.weight"], torch.ones(2, 3))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("content,message", [
    ({"state_dict": {"model.diffusion_model.out.2.weight": _Unknown()}},
     r"model\.diffusion_model\.out\.2\.weight is an object of test_checkpoints\._Unknown, not a tensor"),
    ({"state_dict": {"model.diffusion_model.out.2.weight": _TensorOfUnknown()}},
     r"a tensor is built from an object of test_checkpoints\._Unknown \(not loaded\) instead of a storage"),
    (_Unknown(), r"expected a dict of tensors, found an object of test_checkpoints\._Unknown"),
], ids=["value", "storage", "top"])
def test_stand_in_never_becomes_a_tensor(tmp_path, zip_format, content, message):
    path = tmp_path / "odd.ckpt"
    torch.save(content, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ck.ConversionError, match=message):
        ck.read_tensors(str(path))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("state", [(torch.zeros(0), 0, (1 << 20,), (1,)), (True, None, collections.OrderedDict())],
                         ids=["grown past the file", "requires grad"])
def test_a_tensor_changed_after_it_is_built_is_refused(tmp_path, zip_format, state):
    """`Tensor.__setstate__` calls `set_`, which grows a tensor built on an empty storage to a megabyte of memory the
    file never held; a tensor a pickle changes after building it is refused, whatever it changes."""
    path = tmp_path / "changed.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": _TensorChangedAfterBuild(state)}}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ck.ConversionError, match=r"a tensor is changed after it is built \(a BUILD of its state\)"):
        ck.read_tensors(str(path))


LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\noid sha256:2d0529e13291b284137f8e7cc0cad91e619609c870"
               "492f86c62dc57a5e9d8a77\nsize 62205364\n")


def test_cut_files_and_lfs_pointers_say_so(tmp_path):
    """A download cut short (a legacy .ckpt's last bytes, a zip .ckpt without the directory at its end) is called
    truncated; a Git LFS pointer (a clone without git-lfs) is named as one, whatever the file's name."""
    legacy = tmp_path / "legacy.ckpt"
    state = {"model.diffusion_model.out.2.weight": torch.randn(64, 64)}
    torch.save({"state_dict": state, "callbacks": {_Unknown: {}}}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:-100])
    archive = tmp_path / "zip.ckpt"
    torch.save({"state_dict": state}, archive)
    archive.write_bytes(archive.read_bytes()[:archive.stat().st_size // 2])
    truncated = r"cannot read .*: truncated or damaged \(an interrupted download\?\): "
    for path, detail in ((legacy, r"storage \d+ is truncated"), (archive, "a zip archive without its directory")):
        with pytest.raises(ck.ConversionError, match=truncated + detail):
            ck.read_tensors(str(path))
    for name in ("model.ckpt", "model.safetensors", "text_encoder/model.safetensors"):
        pointer = tmp_path / name
        pointer.parent.mkdir(exist_ok=True)
        pointer.write_text(LFS_POINTER)
        with pytest.raises(ck.ConversionError, match=re.escape(f"{pointer} is a Git LFS pointer (a 133-byte text file "
                                                               "standing for the weights), not the weights: fetch "
                                                               "them with `git lfs pull`")):
            ck.read_tensors(str(pointer))
    with pytest.raises(ck.ConversionError, match="Git LFS pointer"):
        ck.load_single_file(str(tmp_path / "model.safetensors"))


@pytest.mark.parametrize("content,message", [
    (b"", r"the file is empty"),
    (bytes(range(256)) * 4, r"damaged or truncated .*or not a PyTorch checkpoint"),
], ids=["empty", "garbage"])
def test_files_that_are_no_checkpoint_say_so(tmp_path, content, message):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(ck.ConversionError, match=message):
        ck.read_tensors(str(path))


def test_a_damaged_zip_checkpoint_is_caught_by_its_crcs(tmp_path):
    """torch.load would read a flipped byte in a tensor record as a different weight."""
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.ones(256)}}, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename)
    offset = record.header_offset  # the local header's name and (alignment) extra lengths, then the data
    start = offset + 30 + int.from_bytes(data[offset + 26:offset + 28], "little") + \
        int.from_bytes(data[offset + 28:offset + 30], "little")
    data[start + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ck.ConversionError, match=r"truncated or damaged \(an interrupted download\?\): record "
                                                 r"model/data/0 fails its CRC check"):
        ck.read_tensors(str(path))


def test_the_format_is_read_from_the_content_not_the_name(tmp_path, capsys):
    """Downloads get renamed: an upper-case extension, or a pickle saved as .safetensors, read as what they hold."""
    tensors = {"model.diffusion_model.out.2.weight": torch.randn(4, 3)}
    upper = tmp_path / "MODEL.SAFETENSORS"
    save_file(tensors, str(upper))
    pickled = tmp_path / "model.safetensors"
    torch.save(tensors, pickled)
    plain = tmp_path / "model.bin"
    save_file(tensors, str(plain))
    for path in (upper, pickled, plain):
        loaded = ck.read_tensors(str(path))
        assert torch.equal(loaded["model.diffusion_model.out.2.weight"], tensors["model.diffusion_model.out.2.weight"])
    notes = [line.split(": ", 1)[1] for line in capsys.readouterr().err.splitlines()]  # after "PROG: "
    assert notes == [f"{pickled} is a pickled PyTorch checkpoint despite its name; reading it as one",
                     f"{plain} is a .safetensors file despite its name; reading it as one"]


def test_a_dict_without_tensors_says_what_it_holds(tmp_path):
    path = tmp_path / "nested.ckpt"
    torch.save({"model": {"model.diffusion_model.out.2.weight": torch.randn(4, 3)}, "step": 3}, path)
    with pytest.raises(ck.ConversionError, match=r"no tensors found \(it holds 'model' \(dict\), 'step' \(int\)\)"):
        ck.read_tensors(str(path))


def test_old_and_new_text_encoder_names_mixed(sd1_ldm, sd1_components):
    """Checkpoints saved with transformers' old names that a "fix position ids" script gave a new-style position_ids
    (or merges of both layouts): each key is read on its own, as A1111 does."""
    old = "cond_stage_model.transformer."
    mixed = {(old + k[len(old + "text_model."):] if k.startswith(old + "text_model.encoder.layers.1") or
              k.startswith(old + "text_model.embeddings") else k): v for k, v in sd1_ldm.items()}
    mixed[old + "text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    assert_same_weights(ck.ldm_to_diffusers(mixed, "x"), sd1_components)
    # A message names a tensor as the file does, whichever of the two layouts its own name has.
    for stray in (old + "text_model.extra.weight", old + "extra.weight"):
        text = ck.ldm_to_diffusers({**mixed, stray: torch.zeros(2)}, "x")["text_encoder"]
        with pytest.raises(ck.ConversionError, match=f"x: unexpected text encoder tensor {re.escape(stray)}$"):
            export.load_weights("text_encoder", text)


def test_clip_heads_unused_by_sd_are_ignored(tmp_path, reference, sd1_ldm, sd1_components):
    """CLIP's text_projection (which ComfyUI saves with SD 1's text encoder) and logit_scale, in a single file or a
    text encoder folder, are ignored as diffusers and A1111 ignore them."""
    extra = {**sd1_ldm, "cond_stage_model.transformer.text_projection.weight": torch.eye(32),
             "cond_stage_model.transformer.logit_scale": torch.tensor(4.6),
             "cond_stage_model.logit_scale": torch.ones(())}
    assert_same_weights(ck.ldm_to_diffusers(extra, "x"), sd1_components)
    folder = tmp_path / "text_encoder"
    shutil.copytree(reference / "tiny/model/text_encoder", folder)
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({**tensors, "text_projection.weight": torch.eye(32), "logit_scale": torch.tensor(4.6)},
              str(folder / "model.safetensors"))
    text = ck.load_model_folder(str(folder), "text encoder", ("model",))
    assert text.tensors.keys() == tensors.keys()
    export.load_weights("text_encoder", text)


def test_a_whole_clip_model_in_a_single_file_gives_its_text_encoder(capsys, sd1_ldm, sd1_components):
    """A file whose cond_stage_model.transformer is a whole CLIPModel (its image tower beside the text tower) converts
    as the text tower alone, as A1111 and diffusers load it, with a note."""
    clip = "cond_stage_model.transformer."
    whole = {**sd1_ldm, clip + "vision_model.embeddings.patch_embedding.weight": torch.zeros(8, 3, 4, 4),
             clip + "vision_model.encoder.layers.0.mlp.fc1.weight": torch.zeros(16, 8),
             clip + "vision_model.post_layernorm.weight": torch.ones(8),
             clip + "visual_projection.weight": torch.zeros(32, 8),
             clip + "text_projection.weight": torch.eye(32), clip + "logit_scale": torch.tensor(4.6)}
    assert_same_weights(ck.ldm_to_diffusers(whole, "x"), sd1_components)
    note, = capsys.readouterr().err.splitlines()
    assert note.endswith(f": x also holds CLIP's image encoder ({clip}vision_model.*), which Stable Diffusion does not "
                         "use; ignored, as diffusers and A1111 ignore it")


def with_moving_average(sd, offset=1.0):
    """`sd` with an exponential moving average of its U-Net that differs from the weights by `offset`, in LitEma's
    names (model.diffusion_model.a.0.b -> model_ema.diffusion_modela0b)."""
    ema = dict(sd)
    for key, value in sd.items():
        if key.startswith("model.diffusion_model."):
            ema["model_ema." + key[len("model."):].replace(".", "")] = value + offset
    ema["model_ema.decay"] = torch.tensor(0.9999)
    ema["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return ema


def test_moving_average_is_converted_only_when_asked(capsys, sd1_ldm, sd1_components):
    sd = with_moving_average(sd1_ldm)
    assert_same_weights(ck.ldm_to_diffusers(sd, "x"), sd1_components)  # the trained weights, as diffusers reads it
    assert "x also holds an exponential moving average of the U-Net" in capsys.readouterr().err
    averaged = ck.ldm_to_diffusers(sd, "x", ema=True)
    expected = dict(sd1_components)
    expected["unet"] = ck.Component("U-Net", {k: v + 1.0 for k, v in sd1_components["unet"].tensors.items()}, {}, "")
    assert_same_weights(averaged, expected)
    with pytest.raises(ck.ConversionError, match=r"--ema: x holds no exponential moving average of the U-Net"):
        ck.ldm_to_diffusers(sd1_ldm, "x", ema=True)
    unet_key = "model.diffusion_model.out.2.weight"
    partial = {k: v for k, v in sd.items() if k != "model_ema.diffusion_modelout2weight"}
    with pytest.raises(ck.ConversionError, match=r"--ema: x has no moving average of " + unet_key.replace(".", r"\.") +
                                                 r" \(model_ema\.diffusion_modelout2weight\)$"):
        ck.ldm_to_diffusers(partial, "x", ema=True)
    only_average = {k: v for k, v in sd.items() if not k.startswith("model.diffusion_model.")}
    with pytest.raises(ck.ConversionError, match=r"holds only the exponential moving average of the U-Net"):
        ck.ldm_to_diffusers(only_average, "x")


def _single_file_model(tmp_path, reference, sd):
    path = tmp_path / "broken.safetensors"
    save_file(sd, str(path))
    return ck.load_single_file(str(path), str(reference / "sd1/model"))


@pytest.mark.parametrize("part,key", [
    ("unet", "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"),
    ("vae", "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight"),
    ("text_encoder", "cond_stage_model.transformer.text_model.encoder.layers.3.self_attn.k_proj.bias"),
])
def test_missing_tensor_is_named(tmp_path, reference, sd1_ldm, part, key):
    sd = {k: v for k, v in sd1_ldm.items() if k != key}
    model = _single_file_model(tmp_path, reference, sd)
    with pytest.raises(ck.ConversionError, match="missing .* tensor " + key.replace(".", r"\.") + "$"):
        export.load_weights(part, getattr(model, part))


@pytest.mark.parametrize("prefix,message", [
    ("cond_stage_model.transformer.text_model.encoder.layers.11.",
     r"missing text encoder tensors: layer 11 of 12 \(text_model\.encoder\.layers\.11\.\*"),
    ("first_stage_model.decoder.mid.attn_1.", r"missing VAE tensors: the decoder's mid-block attention"),
])
def test_whole_missing_parts_are_named_not_counted_away(tmp_path, reference, sd1_ldm, prefix, message):
    """A text encoder's last layer or the VAE's mid-block attention, gone whole, would convert as a network without
    them if the count of what is there were taken as the model's."""
    with pytest.raises(ck.ConversionError, match=message):
        _single_file_model(tmp_path, reference, {k: v for k, v in sd1_ldm.items() if not k.startswith(prefix)})


@pytest.mark.parametrize("key,rank", [
    ("model.diffusion_model.input_blocks.0.0.weight", 4),
    ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", 2),
    ("first_stage_model.decoder.conv_in.weight", 4),
])
def test_a_tensor_of_another_rank_is_named(tmp_path, reference, sd1_ldm, key, rank):
    """The tensors a config is read from, with another number of dimensions (a damaged file), are named, not met as
    an IndexError."""
    with pytest.raises(ck.ConversionError, match=re.escape(key) + rf" has shape \[7\], not {rank}-dimensional"):
        _single_file_model(tmp_path, reference, {**sd1_ldm, key: torch.zeros(7)})


def test_misshaped_tensor_is_named(tmp_path, reference, sd1_ldm):
    key = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_v.weight"
    sd = dict(sd1_ldm)
    sd[key] = torch.zeros(128, 31)
    model = _single_file_model(tmp_path, reference, sd)
    with pytest.raises(ck.ConversionError, match=key.replace(".", r"\.") + r" has shape \[128, 31\], the model "
                                                  r"needs \[128, 32\]"):
        export.load_weights("unet", model.unet)


def test_non_finite_weights_are_named(tmp_path, reference, sd1_ldm):
    key = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_v.weight"
    sd = dict(sd1_ldm)
    sd[key] = sd1_ldm[key].clone()
    sd[key][0, 0] = float("nan")
    model = _single_file_model(tmp_path, reference, sd)
    with pytest.raises(ck.ConversionError, match=r"not-a-number or infinite values in U-Net tensor " +
                                                 key.replace(".", r"\.") + r": the weights are damaged"):
        export.load_weights("unet", model.unet)
    export.load_weights("vae", model.vae)  # the other parts are fine


def test_unknown_unet_tensor_is_an_error(tmp_path, sd1_ldm):
    sd = dict(sd1_ldm)
    sd["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(4, 4)
    with pytest.raises(ck.ConversionError, match=r"unexpected U-Net tensor model\.diffusion_model\.label_emb"):
        ck.ldm_to_diffusers(sd, "x")


def test_not_an_sd1_checkpoint(sd1_ldm):
    sd2 = {k: v for k, v in sd1_ldm.items() if not k.startswith("cond_stage_model.")}
    sd2["cond_stage_model.model.positional_embedding"] = torch.zeros(77, 8)
    with pytest.raises(ck.ConversionError, match=r"x: a Stable Diffusion 2\.x checkpoint \(it holds "
                                                 r"cond_stage_model\.model\.positional_embedding\)"):
        ck.ldm_to_diffusers(sd2, "x")
    # A pickle's keys are known only once it is read: SD 3's is named then, not taken for an SD 1 without CLIP.
    sd3 = {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(1),
           "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1)}
    with pytest.raises(ck.ConversionError, match="a Stable Diffusion 3 checkpoint"):
        ck.ldm_to_diffusers(sd3, "x")
    with pytest.raises(ck.ConversionError, match="no U-Net weights"):
        ck.ldm_to_diffusers({"foo": torch.zeros(1)}, "x")
    prefixed = {"module." + k: v for k, v in sd1_ldm.items()}
    with pytest.raises(ck.ConversionError, match=r"no U-Net weights .* \(every key starts with module\.\)"):
        ck.ldm_to_diffusers(prefixed, "x")


def test_diffusers_folder_loads_strictly(reference, config):
    folder = reference / "tiny/model"
    model = ck.load_diffusers(str(folder))
    assert model.kind == "diffusers" and model.name == "model"
    assert model.sha256 == ck.sha256_file(str(folder / "unet/diffusion_pytorch_model.safetensors"))
    for part in ("unet", "vae", "text_encoder"):
        assert getattr(model, part).config == config(f"tiny/model/{part}/config.json")
        export.load_weights(part, getattr(model, part))
    export.load_weights("safety_checker", ck.load_safety_checker(str(folder / "safety_checker")))


def test_folder_with_pre_0_14_vae_attention_names_and_fp16_bin(tmp_path, reference):
    """Older diffusers saves name the VAE attention query/key/value/proj_attn; fp16 .bin variants exist."""
    source = reference / "tiny/model/vae"
    vae = tmp_path / "vae"
    vae.mkdir()
    shutil.copy(source / "config.json", vae / "config.json")
    new = load_file(str(source / "diffusion_pytorch_model.safetensors"))
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in new.items():
        for now, before in renames.items():
            key = key.replace(f"attentions.0.{now}.", f"attentions.0.{before}.")
        old[key] = value.half()
    assert old.keys() != new.keys()
    torch.save(old, vae / "diffusion_pytorch_model.fp16.bin")
    component = ck.load_model_folder(str(vae), "VAE", ("diffusion_pytorch_model",))
    assert component.tensors.keys() == new.keys()
    assert all(torch.equal(component.tensors[k], new[k].half().float()) for k in new)


def test_preprocessor_fields():
    old_style = {"size": 224, "crop_size": 224, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}
    assert export.safety_manifest(old_style) == {
        "shortest_edge": 224, "crop_height": 224, "crop_width": 224, "rescale_factor": 1 / 255,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert export.safety_manifest(None)["shortest_edge"] == 224


def test_safety_checker_config_of_old_transformers(tmp_path, reference):
    source = reference / "tiny/model/safety_checker"
    folder = tmp_path / "safety_checker"
    folder.mkdir()
    os.symlink(source / "model.safetensors", folder / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    vision = config.pop("vision_config")
    config["vision_config_dict"] = {k: vision[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                          "num_hidden_layers", "image_size", "patch_size")}
    (folder / "config.json").write_text(json.dumps(config))
    export.load_weights("safety_checker", ck.load_safety_checker(str(folder)))


def test_inpainting_unet_is_recorded_and_other_image_conditioned_ones_refused(config):
    def fields(in_channels):
        unet = dict(config("sd1/model/unet/config.json"), in_channels=in_channels)
        return export.model_fields(unet, config("sd1/model/vae/config.json"),
                                   config("sd1/model/text_encoder/config.json"), presets.SD1_SCHEDULER, None)

    assert "inpainting" not in fields(4)
    assert fields(9)["inpainting"] is True
    with pytest.raises(ck.ConversionError, match="8 input channels.*inpainting model's 9.*instruct-pix2pix"):
        fields(8)


# ------------------------------------------------------------------------------------ sharded folders

TINY_PARTS = {"unet": ("diffusion_pytorch_model", "diffusion_pytorch_model.safetensors"),
              "vae": ("diffusion_pytorch_model", "diffusion_pytorch_model.safetensors"),
              "text_encoder": ("model", "model.safetensors")}


def write_sharded(folder, tensors, stem, ext=".safetensors", shards=3, variant="", index_name=None):
    """`tensors` as Hugging Face writes a sharded checkpoint: `stem[variant]-0000i-of-0000n.ext` files holding
    consecutive runs of the sorted names, and `index_name` (default `stem.ext.index.json`) with the weight_map.
    Returns the index path."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    size = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        shard = f"{stem}{variant}-{i + 1:05d}-of-{shards:05d}{ext}"
        part = {k: tensors[k] for k in names[i * size:(i + 1) * size]}
        if ext == ".safetensors":
            save_file(part, str(folder / shard))
        else:
            torch.save(part, folder / shard)
        weight_map.update((k, shard) for k in part)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = folder / (index_name or f"{stem}{ext}.index.json")
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return index


def sharded_copy(reference, out, ext=".safetensors", shards=3, half=False, index_names=None):
    """A copy of the tiny diffusers folder whose U-Net, VAE and text encoder weights are sharded (the text
    encoder's as transformers names them: model*.safetensors, pytorch_model*.bin)."""
    source = reference / "tiny/model"
    shutil.copytree(source, out, ignore=lambda d, names: [n for n in names if n.endswith(".safetensors")
                                                          and os.path.basename(d) in TINY_PARTS])
    for part, (stem, weights) in TINY_PARTS.items():
        tensors = load_file(str(source / part / weights))
        if half:
            tensors = {k: v.half() for k, v in tensors.items()}
        if part == "text_encoder" and ext == ".bin":
            stem = "pytorch_model"
        name = (index_names or {}).get(stem)
        write_sharded(out / part, tensors, stem, ext, shards, ".fp16" if half else "", name)
    return out


def unsharded(reference, part):
    stem, _ = TINY_PARTS[part]
    return ck.load_model_folder(str(reference / "tiny/model" / part), part, (stem,))


@pytest.mark.parametrize("ext,shards,half,index_names", [
    (".safetensors", 3, False, None),
    (".safetensors", 2, True, {"diffusion_pytorch_model": "diffusion_pytorch_model.fp16.safetensors.index.json",
                               "model": "model.safetensors.index.fp16.json"}),
    (".safetensors", 2, True, {"diffusion_pytorch_model": "diffusion_pytorch_model.safetensors.fp16.index.json",
                               "model": "model.fp16.safetensors.index.json"}),
    (".bin", 2, False, None),
])
def test_sharded_folder_loads_as_the_unsharded_one(tmp_path, reference, ext, shards, half, index_names):
    folder = sharded_copy(reference, tmp_path / "model", ext, shards, half, index_names)
    for part, (stem, _) in TINY_PARTS.items():
        stems = (stem,) if part != "text_encoder" else ("model", "pytorch_model")
        ours = ck.load_model_folder(str(folder / part), part, stems)
        expected = unsharded(reference, part).tensors
        assert ours.origin.endswith(".json") and ext in os.path.basename(ours.origin), ours.origin
        assert sorted(ours.tensors) == sorted(expected), part
        for key, value in expected.items():
            want = value.half().float() if half else value
            assert ours.tensors[key].dtype == torch.float32, key
            assert torch.equal(ours.tensors[key], want), f"{part} {key}"
    model = ck.load_diffusers(str(folder))
    shards_of_unet = sorted(p for p in (folder / "unet").iterdir() if "-of-" in p.name)
    assert len(shards_of_unet) == shards
    assert model.sha256 == hashlib.sha256(b"".join(p.read_bytes() for p in shards_of_unet)).hexdigest()


def test_sharded_weights_follow_the_preference_order(tmp_path, reference, capsys):
    """As diffusers' from_pretrained without a variant: float32 safetensors (one file or an index), then float32 .bin,
    and the fp16 variant only where neither is there, with a note; a file before an index of its kind."""
    tensors = load_file(str(reference / "tiny/model/vae/diffusion_pytorch_model.safetensors"))
    stem = "diffusion_pytorch_model"
    folder = tmp_path / "vae"
    fp16_index = write_sharded(folder, {k: v.half() for k, v in tensors.items()}, stem, variant=".fp16",
                               index_name=f"{stem}.fp16.safetensors.index.json")
    torch.save({k: v.half() for k, v in tensors.items()}, folder / f"{stem}.fp16.bin")
    assert ck.folder_weights(str(folder), (stem,)) == str(fp16_index)
    assert capsys.readouterr().err.endswith(f"{folder}: no float32 weights; using the fp16 variant "
                                            f"{fp16_index.name} (converted to float32)\n")
    # A float32 .bin goes before any fp16 variant, safetensors or not.
    torch.save(tensors, folder / f"{stem}.bin")
    assert ck.folder_weights(str(folder), (stem,)) == str(folder / f"{stem}.bin")
    index = write_sharded(folder, tensors, stem, shards=2)
    assert ck.folder_weights(str(folder), (stem,)) == str(index)
    save_file(tensors, str(folder / f"{stem}.safetensors"))
    assert ck.folder_weights(str(folder), (stem,)) == str(folder / f"{stem}.safetensors")
    bin_folder = tmp_path / "bin"
    bin_index = write_sharded(bin_folder, tensors, stem, ext=".bin", shards=2)
    save_file({k: v.half() for k, v in tensors.items()}, str(bin_folder / f"{stem}.fp16.safetensors"))
    assert ck.folder_weights(str(bin_folder), (stem,)) == str(bin_index)
    assert capsys.readouterr().err == ""
    shutil.copy(reference / "tiny/model/vae/config.json", bin_folder)
    loaded = ck.load_model_folder(str(bin_folder), "VAE", (stem,)).tensors
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())  # float32, not fp16-rounded
    with pytest.raises(ck.ConversionError, match=re.escape(
            f"{tmp_path}: no weights file (model.safetensors or pytorch_model.bin, the index of a sharded checkpoint "
            "such as model.safetensors.index.json, or their fp16 variants)")):
        ck.folder_weights(str(tmp_path), ("model", "pytorch_model"))


@pytest.fixture
def sharded_vae(tmp_path, reference):
    shutil.copytree(reference / "tiny/model/vae", tmp_path / "vae", ignore=shutil.ignore_patterns("*.safetensors"))
    tensors = load_file(str(reference / "tiny/model/vae/diffusion_pytorch_model.safetensors"))
    index = write_sharded(tmp_path / "vae", tensors, "diffusion_pytorch_model", shards=3)
    return index, json.loads(index.read_text())


def load_vae(index):
    return ck.load_model_folder(str(index.parent), "VAE", ("diffusion_pytorch_model",))


def test_missing_shard_is_named(sharded_vae):
    index, _ = sharded_vae
    shard = "diffusion_pytorch_model-00002-of-00003.safetensors"
    (index.parent / shard).unlink()
    with pytest.raises(ck.ConversionError, match=re.escape(f"{index}: missing shard {shard} (named in")):
        load_vae(index)


def test_shard_without_a_mapped_tensor_is_an_error(sharded_vae):
    index, data = sharded_vae
    key = "decoder.conv_out.bias"
    data["weight_map"]["decoder.extra.weight"] = data["weight_map"][key]
    index.write_text(json.dumps(data))
    with pytest.raises(ck.ConversionError, match=r"weight_map names tensors that its shards do not hold: "
                                                 r"decoder\.extra\.weight \(in diffusion_pytorch_model-0000"):
        load_vae(index)


def test_tensor_missing_from_the_weight_map_is_an_error(sharded_vae):
    index, data = sharded_vae
    del data["weight_map"]["decoder.conv_out.bias"]
    index.write_text(json.dumps(data))
    with pytest.raises(ck.ConversionError, match=r"shards hold tensors that the weight_map does not name there: "
                                                 r"decoder\.conv_out\.bias"):
        load_vae(index)


def test_tensor_in_another_shard_than_mapped_is_an_error(sharded_vae):
    index, data = sharded_vae
    key = "decoder.conv_out.bias"
    other = next(s for s in set(data["weight_map"].values()) if s != data["weight_map"][key])
    data["weight_map"][key] = other
    index.write_text(json.dumps(data))
    with pytest.raises(ck.ConversionError, match=r"decoder\.conv_out\.bias \(in "):
        load_vae(index)


@pytest.mark.parametrize("weight_map,message", [
    (None, "no weight_map"),
    ({}, "no weight_map"),
    ({"decoder.conv_out.bias": "../elsewhere.safetensors"}, "not a file name beside the index"),
])
def test_malformed_index_is_an_error(sharded_vae, weight_map, message):
    index, _ = sharded_vae
    index.write_text(json.dumps({"metadata": {}} if weight_map is None else {"weight_map": weight_map}))
    with pytest.raises(ck.ConversionError, match=message):
        load_vae(index)


def test_sharded_folder_converts_to_the_same_bundle(tmp_path, reference):
    """scripts/convert.py end to end: a sharded copy of the tiny folder gives the unsharded bundle's tensors."""
    folder = sharded_copy(reference, tmp_path / "model", shards=2)
    for source, out in ((reference / "tiny/model", tmp_path / "plain"), (folder, tmp_path / "sharded")):
        run(source, "--out", out)
    for name in ("text_encoder.pt", "unet.pt", "vae_decoder.pt", "safety_checker.pt"):
        plain = torch.jit.load(str(tmp_path / "plain" / name)).state_dict()
        sharded = torch.jit.load(str(tmp_path / "sharded" / name)).state_dict()
        assert plain.keys() == sharded.keys(), name
        assert all(torch.equal(plain[k], sharded[k]) for k in plain), name
    assert (tmp_path / "plain/tokenizer.model").read_bytes() == (tmp_path / "sharded/tokenizer.model").read_bytes()
    manifest = json.loads((tmp_path / "sharded/model.json").read_text())
    assert manifest["source"]["kind"] == "diffusers" and manifest["source"]["path"] == str(folder)


# ---------------------------------------------------------------------------------------------- --vae


@pytest.fixture(scope="module")
def tiny_model(reference):
    return ck.load_diffusers(str(reference / "tiny/model"))


def test_vae_from_every_layout(tmp_path, reference, sd1_ldm, tiny_model):
    """The sd1 checkpoint's VAE, for a model whose VAE has other widths (the same latent space and downsampling
    factor), read from a whole checkpoint, a VAE-only LDM file (.safetensors, and a Lightning-style .ckpt), a
    diffusers-named file, a diffusers VAE folder and a diffusers model folder: the same tensors every time, the
    config from its shapes."""
    model_vae = ck.Component("VAE", {}, {**tiny_model.vae.config, "block_out_channels": [16, 16, 16, 16]}, "model")
    want = ck.ldm_to_diffusers(sd1_ldm, "sd1")["vae"].tensors
    ldm_vae = {k[len("first_stage_model."):]: v for k, v in sd1_ldm.items() if k.startswith("first_stage_model.")}
    save_file(ldm_vae, str(tmp_path / "vae-ldm.safetensors"))
    torch.save({"state_dict": ldm_vae, "global_step": 840000}, tmp_path / "vae-ldm.ckpt")
    save_file(want, str(tmp_path / "vae-diffusers.safetensors"))
    folder = tmp_path / "sd-vae" / "vae"
    folder.mkdir(parents=True)
    save_file(want, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(ck.infer_vae_config(ck.Component("VAE", want, {}, "x"),
                                                                      model_vae.config)))
    whole = str(reference / SD1_FILE)
    for source in (whole, tmp_path / "vae-ldm.safetensors", tmp_path / "vae-ldm.ckpt",
                   tmp_path / "vae-diffusers.safetensors", folder, folder.parent):
        vae, digest = ck.load_vae(str(source), model_vae)
        assert sorted(vae.tensors) == sorted(want), source
        assert all(torch.equal(vae.tensors[k], want[k].float()) for k in want), source
        assert vae.config["block_out_channels"] == [32, 64, 128, 128], source
        assert vae.config["scaling_factor"] == model_vae.config["scaling_factor"], source
        file = str(source) if os.path.isfile(source) else str(folder / "diffusion_pytorch_model.safetensors")
        assert digest == hashlib.sha256(Path(file).read_bytes()).hexdigest(), source
    # The decoder module loads from it.
    export.load_weights("vae", ck.load_vae(str(tmp_path / "vae-ldm.safetensors"), model_vae)[0])


def test_vae_errors(tmp_path, reference, tiny_model):
    def error(source):
        with pytest.raises(ck.ConversionError) as e:
            ck.load_vae(str(source), tiny_model.vae)
        return str(e.value)

    assert "no such file or folder" in error(tmp_path / "missing.safetensors")
    (tmp_path / "empty").mkdir()
    assert "not a VAE folder" in error(tmp_path / "empty")
    unet = reference / "tiny/model/unet/diffusion_pytorch_model.safetensors"
    message = error(unet)
    assert "no VAE decoder tensors" in message and "conv_in.bias" in message
    for field, value in (("scaling_factor", 0.13025), ("latent_channels", 16)):
        folder = tmp_path / field
        shutil.copytree(reference / "tiny/model/vae", folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, field: value}))
        message = error(folder)
        assert f"its {field} is {value}" in message and "another model family" in message
    # A VAE of another downsampling factor makes images of another size from the U-Net's latents.
    folder = tmp_path / "deeper"
    shutil.copytree(reference / "tiny/model/vae", folder)
    config = json.loads((folder / "config.json").read_text())
    deeper = config["block_out_channels"] + config["block_out_channels"][-1:]
    (folder / "config.json").write_text(json.dumps({**config, "block_out_channels": deeper}))
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    assert f"it makes {factor * 2} pixels of a latent, the model's VAE {factor}" in error(folder)


def test_ldm_config_schedule(tmp_path):
    """An LDM .yaml states a single file's training schedule: v-prediction fine-tunes say parameterization: "v"."""
    yaml_file = tmp_path / "model.yaml"
    yaml_file.write_text("model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n"
                         "    parameterization: \"v\"\n    linear_start: 0.00085\n    linear_end: 0.0120\n"
                         "    timesteps: 1000\n    scale_factor: 0.18215\n")
    assert ck.ldm_schedule(str(yaml_file)) == {"prediction_type": "v_prediction", "num_train_timesteps": 1000,
                                               "beta_start": 0.00085, "beta_end": 0.012}
    # Numbers as OmegaConf reads them (LDM, A1111), which YAML 1.1 would take for strings.
    yaml_file.write_text("model:\n  params:\n    linear_start: 1e-4\n    linear_end: 2.0e2\n    timesteps: 1E+3\n")
    assert ck.ldm_schedule(str(yaml_file)) == {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 200.0}
    yaml_file.write_text("model:\n  params:\n    timesteps: 1000\n")  # v1-inference.yaml says no parameterization
    assert ck.ldm_schedule(str(yaml_file)) == {"num_train_timesteps": 1000}
    # Found beside the checkpoint under its name, as A1111 finds it; --original-config names another.
    checkpoint = tmp_path / "model.safetensors"
    assert ck.ldm_config_path(str(checkpoint), None) == str(yaml_file)
    assert ck.ldm_config_path(str(tmp_path / "other.safetensors"), None) is None
    assert ck.ldm_config_path(str(tmp_path / "other.safetensors"), str(yaml_file)) == str(yaml_file)
    for text, message in (("model:\n  params:\n    parameterization: x1\n", "unknown parameterization 'x1'"),
                          ("model:\n  params:\n    linear_start: low\n", "linear_start is not a number"),
                          ("just: [text\n", "not a readable YAML file"),
                          ("model: 3\n", "not an LDM config")):
        yaml_file.write_text(text)
        with pytest.raises(ck.ConversionError, match=re.escape(message)):
            ck.ldm_schedule(str(yaml_file))
    with pytest.raises(ck.ConversionError, match="--original-config .*: no such file"):
        ck.ldm_config_path(str(checkpoint), str(tmp_path / "missing.yaml"))


def test_damaged_safetensors_files_say_what_is_wrong(tmp_path):
    """A download cut short is called truncated (not a tensor's odd offsets), and a malformed header entry is named,
    as ValueErrors, which the converter reports in one line."""
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(1000), "b": torch.ones(1000)}, str(good))
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) - 3000])
    with pytest.raises(ValueError, match=r"truncated: its header describes 8000 bytes of tensor data but the file "
                                         r"holds 5000 \(an interrupted download\? fetch it again\)"):
        load_file(str(cut))
    header = b'{"a": 3}'
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ValueError, match="tensor 'a' has a malformed header entry: 3"):
        load_file(str(odd))
    # A header length off by some bytes cuts the JSON or takes tensor bytes into it.
    length = int.from_bytes(data[:8], "little")
    for delta, message in ((-30, "its header is not valid JSON"), (9, "its header is not valid JSON"),
                           (-2, "its header describes 8000 bytes of tensor data but the file holds 8002")):
        wrong = tmp_path / f"length{delta}.safetensors"
        wrong.write_bytes((length + delta).to_bytes(8, "little") + data[8:])
        with pytest.raises(ValueError, match=f"{message}.*: a damaged file, or its header length is wrong"):
            load_file(str(wrong))
    assert torch.equal(load_file(str(good))["b"], torch.ones(1000))


def test_sha256_tensors_covers_names_dtypes_shapes_and_values_in_any_order():
    a, b = torch.zeros(2, dtype=torch.int32), torch.arange(6.0).reshape(2, 3)
    digest = ck.sha256_tensors({"a": a, "b": b})
    assert re.fullmatch("[0-9a-f]{64}", digest)
    assert ck.sha256_tensors({"b": b, "a": a}) == digest
    assert ck.sha256_tensors({"a": a, "b": b.t().contiguous().t()}) == digest  # another memory layout
    for other in ({"a": a, "c": b}, {"a": a, "b": b.reshape(3, 2)}, {"a": a, "b": b.double()}, {"a": a, "b": b + 1},
                  {"a": a.view(torch.float32), "b": b}):  # the last: the same bytes as another dtype
        assert ck.sha256_tensors(other) != digest, other


def raw_safetensors(path, dtype, data):
    """A .safetensors file of one tensor 'a' of `dtype` (a safetensors dtype name) holding the bytes `data`, one a
    value: written by hand, for dtypes that this PyTorch may not have."""
    header = json.dumps({"a": {"dtype": dtype, "shape": [len(data)], "data_offsets": [0, len(data)]}})
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode() + data)


FLOAT8 = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
HAS_FLOAT8 = all(hasattr(torch, name) for name in FLOAT8.values())


@pytest.mark.parametrize("dtype", sorted(FLOAT8))
def test_float8_safetensors_without_float8_in_pytorch_say_what_to_do(tmp_path, dtype):
    """SD 1.x fp8 uploads are refused by a PyTorch without float8 (before 2.1) in one message that names the file
    once, the PyTorch version and the two ways out."""
    if HAS_FLOAT8:
        pytest.skip(f"PyTorch {torch.__version__} reads float8 (test_float8_safetensors_are_read)")
    path = tmp_path / "fp8.safetensors"
    raw_safetensors(path, dtype, bytes([0x38, 0x40]))
    with pytest.raises(ck.ConversionError) as failure:
        ck.read_tensors(str(path))
    assert str(failure.value) == (
        f"cannot read {path}: it holds float8 weights ({dtype}, in tensor 'a'), which PyTorch {torch.__version__} "
        "cannot read: run the converter under PyTorch 2.1 or later (set TXT2IMG_PYTHON to a python3 that has it), "
        "or convert the file to fp16 first")


@pytest.mark.parametrize("dtype,data", [("F8_E4M3", bytes([0x38, 0x40, 0xB8])), ("F8_E5M2", bytes([0x3C, 0x40, 0xBC]))])
def test_float8_safetensors_are_read(tmp_path, dtype, data):
    """Where PyTorch has float8 (2.1 and later), fp8 weights read, and become float32 as every other dtype does."""
    if not HAS_FLOAT8:
        pytest.skip(f"PyTorch {torch.__version__} has no float8 dtypes (torch.float8_e4m3fn and float8_e5m2 came in "
                    "2.1), so fp8 files cannot be read here")
    path = tmp_path / "fp8.safetensors"
    raw_safetensors(path, dtype, data)
    tensor = ck.read_tensors(str(path))["a"]
    assert tensor.dtype == getattr(torch, FLOAT8[dtype])
    assert torch.equal(ck.as_float32({"a": tensor})["a"], torch.tensor([1.0, 2.0, -1.0]))


def test_unsupported_safetensors_dtype_names_the_file_once(tmp_path):
    path = tmp_path / "odd.safetensors"
    raw_safetensors(path, "F4", bytes([0]))
    with pytest.raises(ck.ConversionError) as failure:
        ck.read_tensors(str(path))
    assert str(failure.value) == f"cannot read {path}: tensor 'a' has unsupported dtype 'F4'"


def unreadable_safetensors(path, names):
    """A .safetensors file whose header lists `names` but which holds none of their data: reading any tensor fails."""
    header = json.dumps({name: {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]} for name in names})
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode())


@pytest.mark.parametrize("family,names", [
    ("Stable Diffusion XL", ["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                             "model.diffusion_model.input_blocks.0.0.weight"]),
    ("Stable Diffusion 3", ["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
                            "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight"]),
    ("Stable Diffusion 3", ["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
                            "first_stage_model.decoder.conv_in.weight"]),
    ("FLUX", ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"]),
    ("FLUX", ["model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "text_encoders.t5xxl.x.weight"]),
    ("Stable Diffusion 2.x", ["cond_stage_model.model.positional_embedding", "model.diffusion_model.out.2.weight"]),
])
def test_other_families_single_files_are_named_from_the_header(tmp_path, family, names):
    """A .safetensors file of another model family (SDXL is 7 GB, FLUX 24 GB) is refused by the first of its header's
    names that tells the family, before any tensor is read."""
    path = tmp_path / "model.safetensors"
    unreadable_safetensors(path, names)
    with pytest.raises(ck.ConversionError, match=re.escape(f"{path}: a {family} checkpoint (it holds {names[0]}); "
                                                           "only Stable Diffusion 1.x models convert")):
        ck.load_single_file(str(path))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_other_families_pickled_checkpoints_are_named_before_their_weights_are_read(tmp_path, monkeypatch,
                                                                                     zip_format):
    """A .ckpt of another family is refused by the names its pickle gives, before any storage's bytes are read."""
    path = tmp_path / "sdxl.ckpt"
    names = ["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
             "model.diffusion_model.input_blocks.0.0.weight"]
    torch.save({"state_dict": {name: torch.ones(4) for name in names}, "global_step": 1}, path,
               _use_new_zipfile_serialization=zip_format)

    def no_reading(*args):
        raise AssertionError("a tensor's bytes were read")

    monkeypatch.setattr(restricted_pickle, "_read_into", no_reading)
    with pytest.raises(ck.ConversionError, match=re.escape(f"{path}: a Stable Diffusion XL checkpoint (it holds "
                                                           f"{names[0]})")):
        ck.load_single_file(str(path))


def test_other_model_families_are_named_before_any_weights_are_read(tmp_path, reference):
    """An SDXL folder (a second text encoder) is refused by its layout, naming its pipeline, without reading weights."""
    sdxl = tmp_path / "sdxl"
    shutil.copytree(reference / "tiny/model", sdxl)
    (sdxl / "text_encoder_2").mkdir()
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    (sdxl / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"not read")
    with pytest.raises(ck.ConversionError, match="StableDiffusionXLPipeline with text_encoder_2/ is not Stable "
                                                 r"Diffusion 1\.x \(SDXL, SD 3 or FLUX\?\)"):
        ck.load_diffusers(str(sdxl))
    # SD 2.x has SD 1's layout: its configs tell it apart (an OpenCLIP text encoder, linear attention projections).
    for part, key, value, why in (("text_encoder", "hidden_act", "gelu", "OpenCLIP's"),
                                  ("unet", "use_linear_projection", True, "projects attention linearly")):
        sd2 = tmp_path / f"sd2-{part}"
        shutil.copytree(reference / "tiny/model", sd2)
        config = json.loads((sd2 / part / "config.json").read_text())
        (sd2 / part / "config.json").write_text(json.dumps({**config, key: value}))
        (sd2 / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"not read")
        with pytest.raises(ck.ConversionError, match=f"{why}.*as Stable Diffusion 2.x's; only SD 1.x models convert"):
            ck.load_diffusers(str(sd2))
    # AltDiffusion: SD 1's U-Net, an XLM-RoBERTa text encoder (named by its config before SD 2's GELU is looked at).
    alt = tmp_path / "alt"
    shutil.copytree(reference / "tiny/model", alt)
    (alt / "text_encoder/config.json").write_text(json.dumps({
        "architectures": ["RobertaSeriesModelWithTransformation"], "model_type": "roberta", "hidden_act": "gelu",
        "hidden_size": 32, "project_dim": 32}))
    (alt / "text_encoder/model.safetensors").write_bytes(b"not read")
    with pytest.raises(ck.ConversionError, match=re.escape(
            f"{alt}: an AltDiffusion model (its text encoder is RobertaSeriesModelWithTransformation, model_type "
            "roberta, not CLIP's CLIPTextModel); only SD 1.x models convert")):
        ck.load_diffusers(str(alt))
    (alt / "text_encoder/config.json").write_text(json.dumps({"architectures": ["T5EncoderModel"], "model_type": "t5"}))
    with pytest.raises(ck.ConversionError, match=f"{alt}: its text encoder is T5EncoderModel, model_type t5, not "
                                                 "CLIP's CLIPTextModel; only SD 1.x models convert"):
        ck.load_diffusers(str(alt))
