"""TAESD (convert.py --taesd, txt2img --decoder taesd): the decoder against values of the original release's
taesd.py, its three file layouts, refusals, and the bundle entry."""

import json
import math

import pytest
import torch

from converter_runs import convert, expect_errors
from txt2img_convert import presets
from txt2img_convert.checkpoints import ConversionError
from txt2img_convert.safetensors_io import save_file
from txt2img_convert.taesd import TAESD_CONFIG, TAESDDecoder, load_taesd
from txt2img_convert.unet import script


def original_layout(config=TAESD_CONFIG):
    """Names and shapes of the original release's taesd_decoder.pth: diffusers' indices plus one (its Clamp)."""
    shapes = {}
    for name, value in TAESDDecoder(config).state_dict().items():
        index, rest = name[len("decoder.layers."):].split(".", 1)
        shapes[f"{int(index) + 1}.{rest}"] = tuple(value.shape)
    return shapes


def formula_weights(shapes):
    """Deterministic weights of a plausible scale, each a function of its name only."""
    out = {}
    for name, shape in shapes.items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        phase = sum(map(ord, name))
        values = torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * 0.731 + phase) / math.sqrt(fan_in)
        out[name] = (values * 1.7).float().view(shape)
    return out


def diffusers_names(original):
    return {f"decoder.layers.{int(k.split('.', 1)[0]) - 1}.{k.split('.', 1)[1]}": v for k, v in original.items()}


LATENTS = (2.5 * torch.sin(torch.arange(4 * 6 * 10, dtype=torch.float64) * 0.37)).float().view(1, 4, 6, 10)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = tmp_path_factory.mktemp("taesd") / "taesd_decoder.safetensors"
    save_file(formula_weights(original_layout()), str(path))
    return path


def test_decodes_as_the_original_release(original, check_close):
    """Golden values of madebyollin/taesd's taesd.py Decoder() (commit 2a1b414) with formula_weights, decoding
    LATENTS to [0, 1]: its sum, and the pixel at row 17, column 33."""
    component, _ = load_taesd(str(original))
    assert component.config == {"latent_channels": 4, "out_channels": 3, "decoder_block_out_channels": [64] * 4,
                                "num_decoder_blocks": [3, 3, 3, 1], "upsampling_scaling_factor": 2}
    decoder = TAESDDecoder(component.config).eval()
    decoder.load_state_dict(component.tensors, strict=True)
    for kind, module in (("eager", decoder), ("scripted", script(decoder))):
        with torch.no_grad():
            image = (module(LATENTS) + 1) / 2  # ours is in diffusers' [-1, 1]
        assert image.shape == (1, 3, 48, 80)
        check_close(f"taesd {kind} sum", image.sum(), torch.tensor(7278.0810546875))
        check_close(f"taesd {kind} pixel", image[0, :, 17, 33],
                    torch.tensor([1.0264198780059814, 0.8195481300354004, 0.2203097939491272]))


def test_layouts_load_the_same_weights(tmp_path, original):
    """The diffusers folder (madebyollin/taesd), its weights file alone with the encoder beside the decoder, and
    ComfyUI's prefixed names give the original file's tensors."""
    weights = formula_weights(original_layout())
    want, _ = load_taesd(str(original))
    encoder = {"encoder.layers.0.weight": torch.zeros(64, 3, 3, 3)}
    folder = tmp_path / "taesd"
    folder.mkdir()
    save_file({**diffusers_names(weights), **encoder}, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny", "act_fn": "relu",
                                                    "scaling_factor": 1.0, "upsampling_scaling_factor": 2}))
    comfy = tmp_path / "comfy.safetensors"
    save_file({**{f"taesd_decoder.{k}": v for k, v in weights.items()}, "vae_scale": torch.tensor(1.0)}, str(comfy))
    for source in (folder, folder / "diffusion_pytorch_model.safetensors", comfy):
        got, digest = load_taesd(str(source))
        assert got.config == want.config, source
        assert sorted(got.tensors) == sorted(want.tensors), source
        assert all(torch.equal(got.tensors[k], want.tensors[k]) for k in want.tensors), source
        assert len(digest) == 64
    # Messages name a tensor as the file does.
    component, _ = load_taesd(str(original))
    assert component.source_name("decoder.layers.0.weight") == "1.weight"
    comfy_component, _ = load_taesd(str(comfy))
    assert comfy_component.source_name("decoder.layers.2.conv.0.bias") == "taesd_decoder.3.conv.0.bias"


def test_refusals(tmp_path, original):
    encoder = tmp_path / "taesd_encoder.safetensors"
    save_file({"0.weight": torch.zeros(64, 3, 3, 3), "0.bias": torch.zeros(64)}, str(encoder))
    xl = tmp_path / "taesdxl_decoder.safetensors"
    xl.write_bytes(original.read_bytes())
    other = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(other))
    gelu = tmp_path / "gelu"
    gelu.mkdir()
    (gelu / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny", "act_fn": "gelu"}))
    save_file(diffusers_names(formula_weights(original_layout())), str(gelu / "diffusion_pytorch_model.safetensors"))
    kl = tmp_path / "kl"
    kl.mkdir()
    (kl / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    cases = [
        (encoder, "this is a TAESD encoder"),
        (xl, "a TAESD for another model family"),
        (other, "no TAESD decoder tensors in it"),
        (gelu, "act_fn 'gelu' is not supported"),
        (kl, "is a AutoencoderKL, not an AutoencoderTiny"),
        (tmp_path / "missing.pth", "no such file or folder"),
    ]
    for source, text in cases:
        with pytest.raises(ConversionError, match=text):
            load_taesd(str(source))


def small_taesd_folder(path, blocks):
    """A diffusers AutoencoderTiny folder with random weights, 8 channels wide, `blocks` per level."""
    config = {"_class_name": "AutoencoderTiny", "decoder_block_out_channels": [8] * len(blocks),
              "num_decoder_blocks": blocks, "latent_channels": 4, "out_channels": 3, "scaling_factor": 1.0}
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    torch.manual_seed(3)
    save_file(TAESDDecoder(config).state_dict(), str(path / "diffusion_pytorch_model.safetensors"))
    return path


def test_convert_adds_taesd(tmp_path, reference, capsys):
    """--taesd: taesd_decoder.pt holds the given weights and model.json names and hashes them; a TAESD of another
    scale than the model's VAE is refused before anything is written."""
    taesd = small_taesd_folder(tmp_path / "taesd", [1, 2])  # 2 pixels a latent, as the reference tiny VAE
    out = tmp_path / "bundle"
    status, stderr = convert(capsys, reference / "tiny/model", "--no-safety-checker", "--taesd", taesd, "--out", out)
    assert status == 0, stderr
    manifest = json.loads((out / "model.json").read_text())
    weights = taesd / "diffusion_pytorch_model.safetensors"
    digest = load_taesd(str(taesd))[1]
    assert manifest["taesd_name"] == "taesd" and manifest["taesd_hash"] == digest[:10]
    assert manifest["source"]["taesd"] == {"path": str(taesd), "sha256": digest}
    exported = torch.jit.load(str(out / "taesd_decoder.pt"))
    want = load_taesd(str(weights))[0].tensors
    assert all(torch.equal(exported.state_dict()[k], want[k]) for k in want)
    with torch.no_grad():
        assert exported(torch.zeros(1, 4, 8, 8)).shape == (1, 3, 16, 16)

    wrong = small_taesd_folder(tmp_path / "taesd8", [1, 1, 1, 1])
    expect_errors(capsys, [
        ((reference / "tiny/model", "--no-safety-checker", "--taesd", wrong, "--out", tmp_path / "x"), 1,
         "it decodes 4 latent channels at 8 pixels a latent, the model has 4 at 2"),
        ((reference / "tiny/model", "--no-safety-checker", "--taesd", tmp_path / "none", "--out", tmp_path / "x"), 1,
         "--taesd " + str(tmp_path / "none") + ": no such file or folder"),
        (("--tiny", "--vocab", reference.parent / "clip/bpe_simple_vocab_16e6.txt.gz", "--taesd", wrong,
          "--out", tmp_path / "x"), 2, "--taesd applies to a SOURCE"),
    ], tmp_path / "x")


@pytest.mark.parametrize("name", ["tiny", "full"])
def test_presets_decode_at_the_vae_scale(name):
    """Every random bundle has a TAESD; its pixels per latent are the preset VAE's."""
    configs = presets.preset(name)
    vae_scale = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    assert TAESDDecoder.scale_factor(configs["taesd"]) == vae_scale == 8


def test_hub_ids_for_taesd_and_vae(monkeypatch, tmp_path, reference, capsys):
    """--taesd and --vae take hub ids as SOURCE does: config.json and one weights file are downloaded (here by a
    stand-in for huggingface_hub), and the bundle names the TAESD by the id's name."""
    import sys
    import types
    from txt2img_convert import hub

    repos = {"madebyollin/taesd": small_taesd_folder(tmp_path / "hub-taesd", [1, 2])}
    requested = []

    def snapshot_download(repo_id, allow_patterns):
        requested.append((repo_id, allow_patterns))
        if repo_id not in repos:
            raise RuntimeError("404 Repository Not Found")
        return str(repos[repo_id])

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    assert hub.resolve_component("madebyollin/taesd", "--taesd") == str(repos["madebyollin/taesd"])
    assert requested[0] == ("madebyollin/taesd", ["config.json", "diffusion_pytorch_model.safetensors",
                                                  "diffusion_pytorch_model.safetensors.index.json",
                                                  "diffusion_pytorch_model-*-of-*.safetensors"])
    with pytest.raises(ConversionError, match="cannot download stabilityai/nothing .*404.*hub VAE"):
        hub.resolve_component("stabilityai/nothing", "--vae")
    with pytest.raises(ConversionError, match="--vae no/such/file.pt: no such file or folder"):
        hub.resolve_component("no/such/file.pt", "--vae")

    out = tmp_path / "bundle"
    status, stderr = convert(capsys, reference / "tiny/model", "--no-safety-checker", "--taesd", "madebyollin/taesd",
                             "--out", out)
    assert status == 0, stderr
    manifest = json.loads(out.joinpath("model.json").read_text())
    assert manifest["taesd_name"] == "taesd"
    assert manifest["source"]["taesd"]["path"] == str(repos["madebyollin/taesd"])
    # A variant for another family is refused by the name it was asked for, whatever the download is called.
    repos["madebyollin/taesdxl"] = repos["madebyollin/taesd"]
    expect_errors(capsys, [((reference / "tiny/model", "--no-safety-checker", "--taesd", "madebyollin/taesdxl",
                             "--out", tmp_path / "x"), 1, "a TAESD for another model family")], tmp_path / "x")


def test_a_taesd_given_as_vae_points_to_taesd(tmp_path, original):
    """A TAESD passed where a VAE belongs (--vae), as a diffusers folder or the original decoder file, is named as
    such, with the option it needs."""
    from txt2img_convert import checkpoints as ck
    folder = small_taesd_folder(tmp_path / "taesd", [1, 2])
    model_vae = ck.Component("VAE", {}, {"latent_channels": 4, "scaling_factor": 0.18215}, "model")
    for source in (folder, original):
        with pytest.raises(ConversionError, match="a TAESD .* add it with --taesd"):
            ck.load_vae(str(source), model_vae)
