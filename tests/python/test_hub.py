"""Sources given as Hugging Face hub ids, without the network here (huggingface_hub stood in for)."""

import fnmatch
import os
import sys
import types
from pathlib import Path

import pytest

from converter_runs import convert
from txt2img_convert import hub
from txt2img_convert.checkpoints import ConversionError


def test_hub_id_without_network_or_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConversionError, match="download it yourself"):
        hub.resolve_source("someone/not-a-local-model")
    with pytest.raises(ConversionError, match="no such file"):
        hub.resolve_source(os.path.join("missing", "dir", "model.safetensors"))


def fake_hub(monkeypatch, tmp_path, repo):
    """huggingface_hub stood in for by a repository holding the (empty) files `repo`; returns the allow_patterns of
    each download."""
    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append(allow_patterns)
        folder = tmp_path / "snapshot"
        for name in repo:
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_text("")
        return str(folder)

    tmp_path.mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    return calls


def fetched(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def test_hub_download_fetches_indexes_and_shards(monkeypatch, tmp_path):
    """resolve_source asks the hub for one weights file or one sharded checkpoint per model, nothing more."""
    repo = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors.index.json",
            "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
            "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
            "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
            "unet/diffusion_pytorch_model.safetensors.fp16.index.json", "unet/diffusion_pytorch_model.bin",
            "text_encoder/model.safetensors.index.json", "text_encoder/model-00001-of-00002.safetensors",
            "text_encoder/pytorch_model-00001-of-00002.bin", "v1-5-pruned.ckpt", "unet/flax_model.msgpack"]
    calls = fake_hub(monkeypatch, tmp_path, repo)
    folder = hub.resolve_source("someone/sharded-model")
    assert len(calls) == 1
    assert fetched(folder) == ["model_index.json", "text_encoder/model-00001-of-00002.safetensors",
                               "text_encoder/model.safetensors.index.json", "unet/config.json",
                               "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                               "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
                               "unet/diffusion_pytorch_model.safetensors.index.json"]


def test_models_without_safetensors_weights_get_their_bin_weights(monkeypatch, tmp_path):
    """A repository whose text encoder and safety checker have only .bin weights (the U-Net and VAE safetensors):
    those two models' .bin files are fetched, as diffusers reads them, and no other model's."""
    repo = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.bin", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.bin", "text_encoder/config.json", "text_encoder/pytorch_model.bin",
            "text_encoder/model.fp16.safetensors", "safety_checker/config.json", "safety_checker/pytorch_model.bin",
            "tokenizer/merges.txt", "v1-5-pruned.ckpt"]
    calls = fake_hub(monkeypatch, tmp_path, repo)
    folder = hub.resolve_source("someone/mixed-formats")
    assert len(calls) == 2 and all(p.startswith(("text_encoder/", "safety_checker/")) for p in calls[1])
    assert fetched(folder) == ["model_index.json", "safety_checker/config.json", "safety_checker/pytorch_model.bin",
                               "text_encoder/config.json", "text_encoder/pytorch_model.bin", "tokenizer/merges.txt",
                               "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                               "vae/diffusion_pytorch_model.safetensors"]


def test_only_the_models_a_bundle_is_made_of_are_fetched(monkeypatch, tmp_path):
    """A repository with models a bundle does not use (an image encoder, whose weights are only .bin) converts from
    the others; the safety checker's weights are fetched only where the conversion uses the repository's own."""
    repo = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors",
            "safety_checker/config.json", "safety_checker/model.safetensors", "image_encoder/config.json",
            "image_encoder/pytorch_model.bin"]
    for safety_checker in (True, False):
        calls = fake_hub(monkeypatch, tmp_path / str(safety_checker), repo)
        folder = hub.resolve_source("someone/model", safety_checker=safety_checker)
        assert len(calls) == 1
        weights = [f for f in fetched(folder) if not f.endswith(".json")]
        assert weights == (["safety_checker/model.safetensors"] if safety_checker else []) + [
            "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors"]
    # A safety checker with only fp16 weights (which no conversion reads) fails only the downloads that use it.
    repo = [f for f in repo if not f.startswith("safety_checker/model")] + ["safety_checker/model.fp16.safetensors"]
    calls = fake_hub(monkeypatch, tmp_path / "fp16", repo)
    hub.resolve_source("someone/model", safety_checker=False)
    assert len(calls) == 1
    with pytest.raises(ConversionError, match="no diffusers model weights for safety_checker/:"):
        hub.resolve_source("someone/model", safety_checker=True)


def test_a_hub_id_asks_for_the_safety_checker_only_where_the_conversion_uses_it(monkeypatch, tmp_path, reference,
                                                                             capsys):
    """convert.py downloads the repository's safety checker unless --no-safety-checker leaves it out or
    --safety-checker DIR brings another."""
    asked = []

    def resolve_source(source, safety_checker):
        asked.append(safety_checker)
        raise ConversionError("not downloaded here")

    monkeypatch.setattr(hub, "resolve_source", resolve_source)
    for flags in ([], ["--no-safety-checker"], ["--safety-checker", str(reference / "sd1/model")]):
        status, stderr = convert(capsys, "someone/model", *flags, "--out", tmp_path / "x")
        assert status == 1 and "not downloaded here" in stderr, stderr
    assert asked == [True, False, False]


def test_a_repository_without_weights_says_which_models_lack_them(monkeypatch, tmp_path):
    fake_hub(monkeypatch, tmp_path, ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.bin",
                                     "vae/config.json", "vae/diffusion_pytorch_model.bin", "v1-5-pruned.ckpt"])
    with pytest.raises(ConversionError, match=r"someone/model: the repository has no diffusers model weights for "
                                              r"unet/: if it is a Hugging Face hub model, download it yourself"):
        hub.resolve_source("someone/model")
    fake_hub(monkeypatch, tmp_path / "vae", ["config.json", "diffusion_pytorch_model.bin"])
    assert fetched(hub.resolve_component("someone/vae", "--vae")) == ["config.json", "diffusion_pytorch_model.bin"]
