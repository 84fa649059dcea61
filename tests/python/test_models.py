"""Parity of the plain-PyTorch SD v1 networks with diffusers v0.31.0 (shared/reference fixtures).

Every parity check runs the eager module and its TorchScript; relative error bound 1e-5.
"""

import copy
import math
from pathlib import Path

import pytest
import torch

from txt2img_convert.clip import CLIPTextModel, CLIPVisionModel
from txt2img_convert.safety import StableDiffusionSafetyChecker
from txt2img_convert.safetensors_io import load_file, read_header, save_file
from txt2img_convert.unet import HAS_SDPA, Conv2d, UNet2DConditionModel, guidance_scale_embedding, script
from txt2img_convert.vae import VAEDecoder, VAEEncoder

TINY_RUNS = ["ddim_s10", "ddim_s10_neg_g5_w24_h16", "euler_s20"]
SAFETY_CASES = ["A_all_flagged", "B_one_flagged", "C_special_care_adjustment", "D_none_flagged"]
# diffusers' AutoencoderKL.encode of random images (tests/fixtures/make_inpainting_reference.py).
INPAINTING_REFERENCE = Path(__file__).parent.parent / "fixtures" / "inpainting_reference.safetensors"


def _loaded(module: torch.nn.Module, state_dict) -> torch.nn.Module:
    module.load_state_dict(state_dict, strict=True)
    return module.eval()


def _eager_and_scripted(module):
    return [("eager", module), ("scripted", script(module))]


# --- safetensors -------------------------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path):
    tensors = {
        "f64": torch.randn(2, 3, dtype=torch.float64),
        "f32": torch.randn(4, 1, 2),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(3, 3).bfloat16(),
        "i64": torch.arange(7, dtype=torch.int64),
        "i32": torch.tensor([[-1, 2]], dtype=torch.int32),
        "i16": torch.tensor([-300, 300], dtype=torch.int16),
        "i8": torch.tensor([-5, 6, 7], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6).t(),
    }
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    loaded = load_file(str(path))
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name
    assert read_header(str(path))["__metadata__"] == {"format": "pt"}
    with open(path, "rb") as f:
        assert int.from_bytes(f.read(8), "little") % 8 == 0


def test_safetensors_rejects_inconsistent_offsets(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"a": torch.zeros(4)}, str(path))
    data = bytearray(path.read_bytes())
    data = data.replace(b"[0,16]", b"[0,12]")
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        load_file(str(path))


def test_safetensors_reads_reference_metadata_file(reference):
    header = read_header(str(reference / "tiny/model/text_encoder/model.safetensors"))
    assert header["__metadata__"] == {"format": "pt"}


# --- state dict names ----------------------------------------------------------------------------------------


def _assert_same_layout(module: torch.nn.Module, reference_tensors) -> None:
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference_tensors.items()}
    assert sorted(set(ours) - set(theirs)) == []
    assert sorted(set(theirs) - set(ours)) == []
    assert ours == theirs


def test_tiny_state_dict_layouts(config, tensors):
    _assert_same_layout(
        UNet2DConditionModel(config("tiny/model/unet/config.json")),
        tensors("tiny/model/unet/diffusion_pytorch_model.safetensors"),
    )
    _assert_same_layout(
        VAEDecoder(config("tiny/model/vae/config.json")),
        VAEDecoder.select_state_dict(tensors("tiny/model/vae/diffusion_pytorch_model.safetensors")),
    )
    _assert_same_layout(
        CLIPTextModel(config("tiny/model/text_encoder/config.json")),
        tensors("tiny/model/text_encoder/model.safetensors"),
    )
    _assert_same_layout(
        StableDiffusionSafetyChecker(config("tiny/model/safety_checker/config.json")),
        tensors("tiny/model/safety_checker/model.safetensors"),
    )


def test_sd1_state_dict_layouts(config, sd1_weights):
    """The sd1 preset has the full SD v1.5 key set (686 / 248 / 196 keys)."""
    _assert_same_layout(UNet2DConditionModel(config("sd1/model/unet/config.json")), sd1_weights["unet"])
    vae = sd1_weights["vae"]
    assert len(vae) == 248
    _assert_same_layout(VAEDecoder(config("sd1/model/vae/config.json")), VAEDecoder.select_state_dict(vae))
    _assert_same_layout(VAEEncoder(config("sd1/model/vae/config.json")), VAEEncoder.select_state_dict(vae))
    assert len(VAEDecoder.select_state_dict(vae)) + len(VAEEncoder.select_state_dict(vae)) == len(vae)
    text = CLIPTextModel(config("sd1/model/text_encoder/config.json"))
    _assert_same_layout(text, sd1_weights["text_encoder"])
    assert not any("position_ids" in k for k in text.state_dict())


def test_sd1_safety_checker_layout(config, tensors):
    case = "sd1/safety/A_all_flagged/safety_checker"
    _assert_same_layout(
        StableDiffusionSafetyChecker(config(f"{case}/config.json")), tensors(f"{case}/model.safetensors")
    )


# --- parity with diffusers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_text_encoder(config, tensors):
    return _loaded(
        CLIPTextModel(config("tiny/model/text_encoder/config.json")),
        tensors("tiny/model/text_encoder/model.safetensors"),
    )


@pytest.fixture(scope="module")
def tiny_unet(config, tensors):
    return _loaded(
        UNet2DConditionModel(config("tiny/model/unet/config.json")),
        tensors("tiny/model/unet/diffusion_pytorch_model.safetensors"),
    )


@pytest.fixture(scope="module")
def tiny_vae(config, tensors):
    weights = VAEDecoder.select_state_dict(tensors("tiny/model/vae/diffusion_pytorch_model.safetensors"))
    return _loaded(VAEDecoder(config("tiny/model/vae/config.json")), weights)


@pytest.mark.parametrize("run", TINY_RUNS)
def test_tiny_text_encoder(run, tiny_text_encoder, tensors, check_close):
    ref = tensors(f"tiny/runs/{run}/tensors.safetensors")
    with torch.no_grad():
        for kind, model in _eager_and_scripted(tiny_text_encoder):
            for prefix in ("text", "uncond_text"):
                out = model(ref[f"{prefix}/input_ids"])
                check_close(f"tiny text encoder ({kind})", out, ref[f"{prefix}/last_hidden_state"])


@pytest.mark.parametrize("run", TINY_RUNS)
def test_tiny_unet(run, tiny_unet, tensors, check_close):
    ref = tensors(f"tiny/runs/{run}/tensors.safetensors")
    steps = sorted({k.split("/")[1] for k in ref if k.startswith("unet/") and k.endswith("/noise_pred")})
    context = ref["unet/encoder_hidden_states"]
    with torch.no_grad():
        for kind, model in _eager_and_scripted(tiny_unet):
            for step in (steps[0], steps[len(steps) // 2], steps[-1]):
                out = model(ref[f"unet/{step}/sample_in"], ref[f"unet/{step}/timestep"], context)
                check_close(f"tiny unet ({kind})", out, ref[f"unet/{step}/noise_pred"])


@pytest.mark.parametrize("run", TINY_RUNS)
def test_tiny_vae(run, tiny_vae, tensors, check_close):
    ref = tensors(f"tiny/runs/{run}/tensors.safetensors")
    with torch.no_grad():
        for kind, model in _eager_and_scripted(tiny_vae):
            check_close(f"tiny vae decoder ({kind})", model(ref["vae/decode_in"]), ref["vae/decode_out"])


@pytest.mark.parametrize("preset", ["tiny", "sd1"])
def test_vae_encoder(preset, config, tensors, sd1_weights, check_close):
    """The encoder's output is the mean of diffusers' latent distribution (its mode)."""
    weights = (tensors("tiny/model/vae/diffusion_pytorch_model.safetensors") if preset == "tiny"
               else sd1_weights["vae"])
    encoder = _loaded(VAEEncoder(config(f"{preset}/model/vae/config.json")), VAEEncoder.select_state_dict(weights))
    ref = load_file(str(INPAINTING_REFERENCE))
    with torch.no_grad():
        for kind, model in _eager_and_scripted(encoder):
            check_close(f"{preset} vae encoder ({kind})", model(ref[f"encoder/{preset}/image"]),
                        ref[f"encoder/{preset}/mean"])


def _safety_rule(cos, weights, special_cos, special_weights):
    """diffusers' flagging rule, used only to prove the similarities land on the same side of every rounding."""
    flags = []
    for i in range(cos.shape[0]):
        adjustment = 0.0
        for c in range(special_cos.shape[1]):
            if round(float(special_cos[i, c]) - float(special_weights[c]) + adjustment, 3) > 0:
                adjustment = 0.01
        scores = [round(float(cos[i, c]) - float(weights[c]) + adjustment, 3) for c in range(cos.shape[1])]
        flags.append(any(s > 0 for s in scores))
    return flags


@pytest.mark.parametrize("preset", ["tiny", "sd1"])
@pytest.mark.parametrize("case", SAFETY_CASES)
def test_safety_checker(preset, case, config, tensors, check_close):
    folder = f"{preset}/safety/{case}"
    checker = _loaded(
        StableDiffusionSafetyChecker(config(f"{folder}/safety_checker/config.json")),
        tensors(f"{folder}/safety_checker/model.safetensors"),
    )
    ref = tensors(f"{folder}/tensors.safetensors")
    with torch.no_grad():
        for kind, model in _eager_and_scripted(checker):
            embeds, cos, special_cos, weights, special_weights = model(ref["safety/clip_input"])
            for name, value in (("image_embeds", embeds), ("cos_dist", cos), ("special_cos_dist", special_cos)):
                assert value.dtype == torch.float32
                check_close(f"{preset} safety {name} ({kind})", value, ref[f"safety/{name}"])
            assert torch.equal(weights, ref["safety/concept_embeds_weights"])
            assert torch.equal(special_weights, ref["safety/special_care_embeds_weights"])
            assert _safety_rule(cos, weights, special_cos, special_weights) == ref["safety/has_nsfw"].tolist()


SD1_RUNS = ["ddim_s10", "ddim_s10_neg_g5_w128_h96"]


@pytest.mark.parametrize("run", SD1_RUNS)
def test_sd1_pipeline_models(run, config, tensors, sd1_weights, check_close):
    """Full SD v1 structure; the 128x96 run has latents 16x12, whose down path rounds 3 up to 2."""
    ref = tensors(f"sd1/runs/{run}/tensors.safetensors")
    text = _loaded(CLIPTextModel(config("sd1/model/text_encoder/config.json")), sd1_weights["text_encoder"])
    unet = _loaded(UNet2DConditionModel(config("sd1/model/unet/config.json")), sd1_weights["unet"])
    vae = _loaded(
        VAEDecoder(config("sd1/model/vae/config.json")), VAEDecoder.select_state_dict(sd1_weights["vae"])
    )
    context = ref["unet/encoder_hidden_states"]
    with torch.no_grad():
        for kind, model in _eager_and_scripted(text):
            check_close(f"sd1 text encoder ({kind})", model(ref["text/input_ids"]), ref["text/last_hidden_state"])
        for kind, model in _eager_and_scripted(unet):
            for step in ("000", "009"):
                out = model(ref[f"unet/{step}/sample_in"], ref[f"unet/{step}/timestep"], context)
                check_close(f"sd1 unet ({kind})", out, ref[f"unet/{step}/noise_pred"])
        for kind, model in _eager_and_scripted(vae):
            check_close(f"sd1 vae decoder ({kind})", model(ref["vae/decode_in"]), ref["vae/decode_out"])


# --- shapes, timesteps and options ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_random(config):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(config("sd1/model/unet/config.json")).eval()
    vae = VAEDecoder(config("sd1/model/vae/config.json")).eval()
    return unet, script(unet), vae, script(vae)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(8, 8), (16, 12), (12, 20)])
def test_scripted_shapes_match_eager(batch, size, sd1_random, check_close):
    unet, unet_scripted, vae, vae_scripted = sd1_random
    generator = torch.Generator().manual_seed(batch * 100 + size[0] + size[1])
    latents = torch.randn(batch, 4, *size, generator=generator)
    context = torch.randn(batch, 77, 32, generator=generator)
    timestep = torch.tensor([501])
    with torch.no_grad():
        expected = unet(latents, timestep, context)
        assert expected.shape == latents.shape
        check_close("shape test unet scripted vs eager", unet_scripted(latents, timestep, context), expected, 1e-6)
        image = vae(latents)
        assert image.shape == (batch, 3, size[0] * 8, size[1] * 8)
        check_close("shape test vae scripted vs eager", vae_scripted(latents), image, 1e-6)


def test_unet_timestep_forms(sd1_random):
    _, unet_scripted, _, _ = sd1_random
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(3, 4, 8, 8, generator=generator)
    context = torch.randn(3, 77, 32, generator=generator)
    with torch.no_grad():
        expected = unet_scripted(latents, torch.tensor([261, 261, 261]), context)
        for timestep in (torch.tensor(261), torch.tensor([261]), torch.tensor([261.0]), torch.tensor(261.0)):
            assert torch.equal(unet_scripted(latents, timestep, context), expected), timestep
        per_row = unet_scripted(latents, torch.tensor([1, 261, 999]), context)
        assert torch.equal(per_row[1], expected[1])
        assert not torch.equal(per_row[0], expected[0])


def _small_unet_config(**overrides):
    config = {
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "cross_attention_dim": 16,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }
    config.update(overrides)
    return config


def test_linear_projection_equals_conv_projection(check_close):
    torch.manual_seed(0)
    conv = UNet2DConditionModel(_small_unet_config()).eval()
    linear = UNet2DConditionModel(_small_unet_config(use_linear_projection=True)).eval()
    weights = {k: v.reshape(linear.state_dict()[k].shape) for k, v in conv.state_dict().items()}
    linear.load_state_dict(weights, strict=True)
    assert linear.state_dict()["down_blocks.0.attentions.0.proj_in.weight"].dim() == 2
    latents, context = torch.randn(2, 4, 6, 10), torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = conv(latents, torch.tensor(10), context)
        check_close("linear vs conv projection", linear(latents, torch.tensor(10), context), expected, 1e-6)
        check_close("linear projection scripted", script(linear)(latents, torch.tensor(10), context), expected, 1e-6)


def test_num_attention_heads_overrides_attention_head_dim():
    unet = UNet2DConditionModel(_small_unet_config(num_attention_heads=[2, 4]))
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.heads == 2
    assert unet.mid_block.attentions[0].transformer_blocks[0].attn2.heads == 4
    assert unet.up_blocks[1].attentions[0].transformer_blocks[0].attn1.heads == 2
    quirk = UNet2DConditionModel(_small_unet_config(attention_head_dim=8))
    assert quirk.down_blocks[0].attentions[0].transformer_blocks[0].attn1.heads == 8


def test_unsupported_unet_config_is_rejected():
    with pytest.raises(NotImplementedError):
        UNet2DConditionModel(_small_unet_config(upcast_attention=True))
    with pytest.raises(NotImplementedError):
        UNet2DConditionModel(_small_unet_config(down_block_types=["CrossAttnDownBlock2D", "AttnDownBlock2D"]))


def test_guidance_scale_embedding():
    """LatentConsistencyModelPipeline.get_guidance_scale_embedding: sin then cos of w * 1000 at frequencies
    10000^(-k / (half - 1)), zero-padded to an odd width; checked against the formula in float64."""
    w = torch.tensor([0.0, 0.001, 6.5, 7.5])
    for dim in (256, 7):
        got = guidance_scale_embedding(w, dim)
        half = dim // 2
        k = torch.arange(half, dtype=torch.float64)
        angles = w.double()[:, None] * 1000 * torch.exp(-k * math.log(10000.0) / (half - 1))[None, :]
        want = torch.cat([angles.sin(), angles.cos()] + ([torch.zeros(4, 1, dtype=torch.float64)] if dim % 2 else []),
                         dim=1)
        assert got.dtype == torch.float32 and got.shape == (4, dim)
        # float32 angles reach 7500 radians: their rounding (half an ulp, 2.4e-4) bounds the difference.
        assert torch.allclose(got.double(), want, atol=5e-4), dim
    assert torch.equal(guidance_scale_embedding(torch.tensor([0.0]), 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_guidance_embedding_is_added_to_the_timestep_embedding_input(check_close):
    """An LCM U-Net (time_cond_proj_dim) adds cond_proj(embedding(w)) to the sinusoidal timestep embedding before
    linear_1, as diffusers' TimestepEmbedding does: the same as a plain U-Net whose linear_1 bias absorbs it."""
    torch.manual_seed(0)
    lcm = UNet2DConditionModel(_small_unet_config(time_cond_proj_dim=16)).eval()
    assert lcm.state_dict()["time_embedding.cond_proj.weight"].shape == (32, 16)
    plain = UNet2DConditionModel(_small_unet_config()).eval()
    weights = {k: v for k, v in lcm.state_dict().items() if k != "time_embedding.cond_proj.weight"}
    w = 6.5
    shift = lcm.time_embedding.cond_proj(guidance_scale_embedding(torch.tensor([w]), 16))[0]
    linear_1 = lcm.time_embedding.linear_1
    weights["time_embedding.linear_1.bias"] = linear_1.bias + linear_1.weight @ shift
    plain.load_state_dict(weights, strict=True)
    latents, context = torch.randn(2, 4, 6, 10), torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = plain(latents, torch.tensor(10), context)
        check_close("guidance embedding eager", lcm(latents, torch.tensor(10), context, torch.tensor(w)), expected,
                    1e-5)
        scripted = script(lcm)
        check_close("guidance embedding scripted", scripted(latents, torch.tensor(10), context, torch.tensor([w, w])),
                    expected, 1e-5)
        assert not torch.allclose(scripted(latents, torch.tensor(10), context, torch.tensor(1.0)), expected)
        with pytest.raises(Exception, match="guidance embedding"):
            scripted(latents, torch.tensor(10), context)
        # A plain U-Net ignores a guidance it is given.
        assert torch.equal(plain(latents, torch.tensor(10), context, torch.tensor(w)), expected)


def test_sdpa_selection(check_close):
    torch.manual_seed(0)
    math_unet = UNet2DConditionModel(_small_unet_config(), use_sdpa=False).eval()
    if not HAS_SDPA:
        with pytest.raises(ValueError):
            UNet2DConditionModel(_small_unet_config(), use_sdpa=True)
        auto = UNet2DConditionModel(_small_unet_config())
        assert auto.mid_block.attentions[0].transformer_blocks[0].attn1.use_sdpa is False
        return
    sdpa_unet = UNet2DConditionModel(_small_unet_config(), use_sdpa=True).eval()
    sdpa_unet.load_state_dict(math_unet.state_dict())
    latents, context = torch.randn(2, 4, 6, 10), torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = math_unet(latents, torch.tensor(10), context)
        check_close("sdpa vs math", script(sdpa_unet)(latents, torch.tensor(10), context), expected, 1e-5)


def test_vae_without_mid_attention_or_post_quant_conv(check_close):
    config = {"block_out_channels": [32, 32], "layers_per_block": 1, "norm_num_groups": 8,
              "mid_block_add_attention": False, "use_post_quant_conv": False}
    vae = VAEDecoder(config).eval()
    keys = vae.state_dict().keys()
    assert not any(k.startswith("post_quant_conv") or ".attentions." in k for k in keys)
    z = torch.randn(1, 4, 5, 3)
    with torch.no_grad():
        check_close("vae variant scripted", script(vae)(z), vae(z), 1e-6)


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_clip_towers_script(hidden_act, check_close):
    torch.manual_seed(0)
    common = {"hidden_size": 16, "intermediate_size": 24, "num_attention_heads": 2, "num_hidden_layers": 2,
              "hidden_act": hidden_act}
    text = CLIPTextModel(dict(common, vocab_size=100, max_position_embeddings=10)).eval()
    vision = CLIPVisionModel(dict(common, image_size=8, patch_size=4)).eval()
    assert "vision_model.pre_layrnorm.weight" in vision.state_dict()
    assert not any("position_ids" in k for k in list(text.state_dict()) + list(vision.state_dict()))
    ids = torch.randint(0, 100, (3, 7))
    pixels = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        hidden = text(ids)
        check_close("clip text scripted", script(text)(ids), hidden, 1e-6)
        check_close("clip vision scripted", script(vision)(pixels), vision(pixels), 1e-6)
        # Causality: a token never sees later ones.
        changed = ids.clone()
        changed[:, -1] = (changed[:, -1] + 1) % 100
        assert torch.equal(text(changed)[:, :-1], hidden[:, :-1])


def test_modules_survive_save_and_load(tmp_path, tiny_unet, check_close):
    path = tmp_path / "unet.pt"
    script(copy.deepcopy(tiny_unet)).save(str(path))
    loaded = torch.jit.load(str(path))
    latents, context = torch.randn(1, 4, 8, 6), torch.randn(1, 77, 32)
    with torch.no_grad():
        check_close("saved scripted unet", loaded(latents, torch.tensor(3), context),
                    tiny_unet(latents, torch.tensor(3), context), 1e-6)


# --- tiling (A1111's Tiling: circular padding) ---------------------------------------------------------------


def _set_tiling(module: torch.nn.Module, on: bool) -> int:
    """What txt2img does at load time with --tiling, on an eager or scripted module; returns the switches set."""
    switched = 0
    for sub in module.modules():
        if hasattr(sub, "tiling"):
            sub.tiling = on
            switched += 1
    return switched


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (2, 0)])
def test_tiling_conv_is_a_circular_conv(stride, padding, check_close):
    torch.manual_seed(0)
    ours = Conv2d(3, 5, 3, stride=stride, padding=padding).eval()
    circular = torch.nn.Conv2d(3, 5, 3, stride=stride, padding=padding, padding_mode="circular").eval()
    zeros = torch.nn.Conv2d(3, 5, 3, stride=stride, padding=padding).eval()
    circular.load_state_dict(ours.state_dict(), strict=True)
    zeros.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 8, 6)
    with torch.no_grad():
        for kind, model in _eager_and_scripted(ours):
            assert torch.equal(model(x), zeros(x)), kind
            _set_tiling(model, True)
            assert torch.equal(model(x), circular(x)), kind
            if padding:
                assert not torch.equal(model(x), zeros(x)), kind


def _roll(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def test_tiling_makes_unet_and_vae_wrap_around(tiny_unet, tiny_vae, check_close):
    # With circular padding every layer commutes with a shift of its input by a multiple of the networks'
    # downsampling (the U-Net's 2 here, 8 in SD; the decoder's upsampling scales the shift): the image wraps around,
    # which is what makes copies of it tile without seams. Zero padding breaks it at the edges.
    unet, vae = script(copy.deepcopy(tiny_unet)), script(copy.deepcopy(tiny_vae))
    torch.manual_seed(1)
    latents, context = torch.randn(1, 4, 8, 12), torch.randn(1, 77, 32)
    shifted = _roll(latents, 2, 4)
    with torch.no_grad():
        assert not torch.allclose(unet(shifted, torch.tensor(5), context),
                                  _roll(unet(latents, torch.tensor(5), context), 2, 4), atol=1e-3)
        assert _set_tiling(unet, True) > 0 and _set_tiling(vae, True) > 0
        check_close("tiled unet, shifted", unet(shifted, torch.tensor(5), context),
                    _roll(unet(latents, torch.tensor(5), context), 2, 4), 1e-5)
        image = vae(latents)
        scale = image.size(-1) // latents.size(-1)
        check_close("tiled vae, shifted", vae(shifted), _roll(image, 2 * scale, 4 * scale), 1e-5)
        # Off again, the parity modules' values come back.
        _set_tiling(unet, False)
        check_close("unet after tiling", unet(latents, torch.tensor(5), context),
                    tiny_unet(latents, torch.tensor(5), context), 1e-6)
