"""Loading SD v1 weights: LDM -> diffusers key mapping, config inference, .ckpt safety, error messages."""

import json
import os
import shutil

import pytest
import torch

from txt2img_convert import checkpoints as ck
from txt2img_convert import export, presets
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


def test_ckpt_with_real_file_extras_gives_the_same_weights(tmp_path, sd1_ldm, sd1_components):
    path = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": with_real_file_extras(sd1_ldm), "global_step": 1, "epoch": 0}, path)
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
    """Unpickling this would create a file: torch.load(weights_only=True) must refuse before that."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_ckpt_with_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(1)},
                "callbacks": _RunsCode(str(marker))}, path)
    with pytest.raises(ck.ConversionError, match="pickled Python objects.*arbitrary code"):
        ck.read_tensors(str(path))
    assert not marker.exists()


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


def test_misshaped_tensor_is_named(tmp_path, reference, sd1_ldm):
    key = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_v.weight"
    sd = dict(sd1_ldm)
    sd[key] = torch.zeros(128, 31)
    model = _single_file_model(tmp_path, reference, sd)
    with pytest.raises(ck.ConversionError, match=key.replace(".", r"\.") + r" has shape \[128, 31\], the model "
                                                  r"needs \[128, 32\]"):
        export.load_weights("unet", model.unet)


def test_unknown_unet_tensor_is_an_error(tmp_path, sd1_ldm):
    sd = dict(sd1_ldm)
    sd["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(4, 4)
    with pytest.raises(ck.ConversionError, match=r"unexpected U-Net tensor model\.diffusion_model\.label_emb"):
        ck.ldm_to_diffusers(sd, "x")


def test_not_an_sd1_checkpoint(sd1_ldm):
    sd2 = {k: v for k, v in sd1_ldm.items() if not k.startswith("cond_stage_model.")}
    sd2["cond_stage_model.model.positional_embedding"] = torch.zeros(77, 8)
    with pytest.raises(ck.ConversionError, match="2.x"):
        ck.ldm_to_diffusers(sd2, "x")
    with pytest.raises(ck.ConversionError, match="no U-Net weights"):
        ck.ldm_to_diffusers({"foo": torch.zeros(1)}, "x")


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


def test_preprocessor_and_scheduler_fields():
    old_style = {"size": 224, "crop_size": 224, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}
    assert export.safety_manifest(old_style) == {
        "shortest_edge": 224, "crop_height": 224, "crop_width": 224, "rescale_factor": 1 / 255,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert export.safety_manifest(None)["shortest_edge"] == 224
    # Configs of early diffusers releases lack timestep_spacing / prediction_type.
    fields = ck.scheduler_fields({"beta_end": 0.02, "steps_offset": 0, "set_alpha_to_one": True})
    assert fields == {**presets.SD1_SCHEDULER, "beta_end": 0.02, "steps_offset": 0, "set_alpha_to_one": True}


def test_hub_id_without_network_or_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ck.ConversionError, match="download it yourself"):
        ck.resolve_source("someone/not-a-local-model")
    with pytest.raises(ck.ConversionError, match="no such file"):
        ck.resolve_source(os.path.join("missing", "dir", "model.safetensors"))


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


def test_image_conditioned_unet_is_refused(config):
    unet = dict(config("sd1/model/unet/config.json"), in_channels=9)
    with pytest.raises(ck.ConversionError, match="9 input channels.*inpainting"):
        export.model_fields(unet, config("sd1/model/vae/config.json"), config("sd1/model/text_encoder/config.json"),
                            presets.SD1_SCHEDULER, None)
