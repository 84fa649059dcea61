"""scripts/convert.py end to end: bundles from the reference models reproduce the reference tensors through
TorchScript; model.json; random presets; refusing to overwrite; one-line errors."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from converter_runs import CONVERT, convert, expect_errors, run
from txt2img_convert import export, presets
from txt2img_convert.checkpoints import sha256_tensors

SD1_HASH = "2d0529e13291b284137f8e7cc0cad91e619609c870492f86c62dc57a5e9d8a77"
SD1_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "steps_offset": 1, "timestep_spacing": "leading",
                 "prediction_type": "epsilon", "set_alpha_to_one": False, "rescale_betas_zero_snr": False}
SAFETY_32 = {"shortest_edge": 32, "crop_height": 32, "crop_width": 32, "rescale_factor": 1 / 255,
             "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def vocab(reference):
    return reference.parent / "clip" / "bpe_simple_vocab_16e6.txt.gz"


@pytest.fixture(scope="module")
def bundles(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    run(reference / "tiny/model", "--out", out / "tiny")
    run(reference / "sd1/single_file/sd1.safetensors", "--config", reference / "sd1/model", "--out", out / "sd1")
    return out


@pytest.mark.parametrize("preset", ["tiny", "sd1"])
def test_bundle_reproduces_the_reference_run(bundles, tensors, check_close, preset):
    run_tensors = tensors(f"{preset}/runs/ddim_s10/tensors.safetensors")
    bundle = bundles / preset
    text_encoder = torch.jit.load(str(bundle / "text_encoder.pt"))
    unet = torch.jit.load(str(bundle / "unet.pt"))
    vae = torch.jit.load(str(bundle / "vae_decoder.pt"))
    safety = torch.jit.load(str(bundle / "safety_checker.pt"))
    with torch.no_grad():
        check_close(f"bundle {preset} text", text_encoder(run_tensors["text/input_ids"]),
                    run_tensors["text/last_hidden_state"])
        noise = unet(run_tensors["unet/000/sample_in"], run_tensors["unet/000/timestep"],
                     run_tensors["unet/encoder_hidden_states"])
        check_close(f"bundle {preset} unet", noise, run_tensors["unet/000/noise_pred"])
        check_close(f"bundle {preset} vae", vae(run_tensors["vae/decode_in"]), run_tensors["vae/decode_out"])
        embeds = safety(run_tensors["safety/clip_input"])[0]
        check_close(f"bundle {preset} safety", embeds, run_tensors["safety/image_embeds"])


def check_files(bundle, manifest):
    names = sorted(p.name for p in bundle.iterdir())
    assert names == sorted(list(manifest["files"]) + ["model.json"])
    for name, info in manifest["files"].items():
        assert info == {"sha256": sha256(bundle / name), "bytes": (bundle / name).stat().st_size}, name


def test_model_json(bundles, reference):
    tiny = json.loads((bundles / "tiny/model.json").read_text())
    unet_weights = reference / "tiny/model/unet/diffusion_pytorch_model.safetensors"
    assert tiny == {
        "format": "txt2img-bundle", "format_version": 1, "family": "sd1", "latent_channels": 4,
        "scale_factor": 0.18215, "vae_scale_factor": 2, "default_size": 16, "context_length": 77,
        "pad_id": 49407, "text_hidden_size": 32, "text_num_layers": 5,
        "scheduler": {**SD1_SCHEDULER, "class": "PNDMScheduler", "sampler": "pndm"}, "safety": SAFETY_32,
        "files": tiny["files"], "converter_version": "0.1.0", "torch_version": torch.__version__,
        "model_name": "model", "model_hash": sha256(unet_weights)[:10],
        "source": {"kind": "diffusers", "path": str(reference / "tiny/model"), "sha256": sha256(unet_weights)},
    }
    assert sorted(tiny["files"]) == ["safety_checker.pt", "text_encoder.pt", "tokenizer.model", "unet.pt",
                                     "vae_decoder.pt"]
    check_files(bundles / "tiny", tiny)

    sd1 = json.loads((bundles / "sd1/model.json").read_text())
    assert (sd1["vae_scale_factor"], sd1["default_size"], sd1["model_name"], sd1["model_hash"]) == (8, 128, "sd1",
                                                                                                     SD1_HASH[:10])
    assert sd1["source"] == {"kind": "single_file", "path": str(reference / "sd1/single_file/sd1.safetensors"),
                             "sha256": SD1_HASH}
    # The single file's scheduler is that of the --config folder.
    assert sd1["scheduler"] == {**SD1_SCHEDULER, "class": "PNDMScheduler", "sampler": "pndm"}
    assert sd1["safety"] == SAFETY_32
    check_files(bundles / "sd1", sd1)


def test_tiny_is_deterministic_and_runs(tmp_path, vocab):
    for name in ("a", "b"):
        run("--tiny", "--vocab", vocab, "--seed", 7, "--out", tmp_path / name)
    manifests = [json.loads((tmp_path / name / "model.json").read_text()) for name in ("a", "b")]
    assert manifests[0] == manifests[1]  # every file byte-identical
    manifest = manifests[0]
    check_files(tmp_path / "a", manifest)
    assert (manifest["vae_scale_factor"], manifest["default_size"], manifest["text_hidden_size"]) == (8, 64, 32)
    assert manifest["source"]["kind"] == "random" and manifest["model_name"] == "random-tiny-seed7"
    assert manifest["safety"] == SAFETY_32

    bundle = tmp_path / "a"
    with torch.no_grad():
        hidden = torch.jit.load(str(bundle / "text_encoder.pt"))(torch.full((2, 77), 49407, dtype=torch.long))
        noise = torch.jit.load(str(bundle / "unet.pt"))(torch.randn(2, 4, 8, 8), torch.tensor([901]), hidden)
        image = torch.jit.load(str(bundle / "vae_decoder.pt"))(noise)
        _, cos, special, weights, special_weights = torch.jit.load(str(bundle / "safety_checker.pt"))(
            torch.randn(2, 3, 32, 32))
    assert hidden.shape == (2, 77, 32) and noise.shape == (2, 4, 8, 8) and image.shape == (2, 3, 64, 64)
    assert all(torch.isfinite(t).all() for t in (hidden, noise, image))
    # Never flagged: every score cos - weight is negative, even with the +0.01 special-care adjustment.
    assert (cos - weights).max() < -0.5 and (special - special_weights).max() < -0.5


def test_random_presets_in_process():
    """Different seeds give different weights; --tiny-flag-all makes every score positive."""
    configs = presets.preset("tiny")
    a = export.random_modules(configs, 0, True, False)
    b = export.random_modules(configs, 1, True, True)
    assert not torch.equal(a["unet"].conv_in.weight, b["unet"].conv_in.weight)
    with torch.no_grad():
        _, cos, special, weights, special_weights = b["safety_checker"](torch.randn(3, 3, 32, 32))
    assert (cos - weights).min() > 0.5 and (special - special_weights).min() > 0.5
    full = presets.preset("full")
    assert full["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert full["safety_checker"]["vision_config"]["hidden_size"] == 1024


def test_overwrite(tmp_path, vocab, capsys):
    out = tmp_path / "bundle"
    assert convert(capsys, "--tiny", "--vocab", vocab, "--no-safety-checker", "--out", out)[0] == 0
    first = json.loads((out / "model.json").read_text())
    assert first["safety"] is None and "safety_checker.pt" not in first["files"]
    status, stderr = convert(capsys, "--tiny", "--vocab", vocab, "--seed", 1, "--out", out)
    assert (status, stderr) == (1, f"convert.py: error: {out} already exists (pass --overwrite to replace it)\n")
    assert json.loads((out / "model.json").read_text()) == first
    assert convert(capsys, "--tiny", "--vocab", vocab, "--seed", 1, "--out", out, "--overwrite")[0] == 0
    second = json.loads((out / "model.json").read_text())
    assert second["files"]["unet.pt"] != first["files"]["unet.pt"] and "safety_checker.pt" in second["files"]
    check_files(out, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging directories left behind
    # LoRAs added with add_lora.py go with the bundle they were added to: replacing it says so.
    second["loras"] = [{"name": "ink"}]
    (out / "model.json").write_text(json.dumps(second))
    status, stderr = convert(capsys, "--tiny", "--vocab", vocab, "--out", out, "--overwrite")
    assert status == 0 and f"warning: replacing {out} drops the LoRAs added to it with add_lora.py (ink)" in stderr
    # Never replace something that is not a bundle.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    status, stderr = convert(capsys, "--tiny", "--vocab", vocab, "--out", tmp_path / "notes", "--overwrite")
    assert status == 1 and "not a model bundle" in stderr
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    # A link to a bundle (models/sd15 -> a larger disk) is kept, and the bundle it points to replaced.
    link = tmp_path / "link"
    link.symlink_to(out)
    status, stderr = convert(capsys, "--tiny", "--vocab", vocab, "--seed", 2, "--out", f"{link}/", "--overwrite")
    assert status == 0 and f"{link} is a link to {out}; writing the bundle there" in stderr
    assert link.is_symlink() and json.loads((out / "model.json").read_text())["model_name"] == "random-tiny-seed2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "link", "notes"]
    link.unlink()
    link.symlink_to(tmp_path / "notes")
    status, stderr = convert(capsys, "--tiny", "--vocab", vocab, "--out", link, "--overwrite")
    assert status == 1 and "not a model bundle" in stderr and (tmp_path / "notes" / "todo.txt").is_file()


def test_an_out_that_cannot_be_made_fails_first_and_leaves_no_folder(tmp_path, vocab, capsys, monkeypatch):
    """--out under a file is refused before any work; folders made for --out go again when the bundle is not
    written."""
    (tmp_path / "afile").write_text("")
    status, stderr = convert(capsys, "--tiny", "--vocab", vocab, "--out", tmp_path / "afile/sub/b")
    assert status == 1 and stderr.splitlines()[-1] == (f"convert.py: error: cannot create {tmp_path}/afile/sub/b: "
                                                       f"{tmp_path}/afile is not a directory")
    assert "exporting" not in stderr

    def failing_script(module):
        raise RuntimeError("scripting failed")

    monkeypatch.setattr(export, "script", failing_script)
    status, stderr = convert(capsys, "--tiny", "--vocab", vocab, "--out", tmp_path / "new/sub/b")
    assert status == 1 and "scripting failed" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_interrupt_once_the_bundle_is_in_place_is_ignored(monkeypatch):
    """The script's interrupts unwind a conversion (exit 130, nothing left) until its bundle is in place; from then
    on, to the process's end, they are ignored: the bundle is complete."""
    import signal
    from txt2img_convert import launch
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(launch, "_as_script", True)
    try:
        def interrupted_after(placed):
            def action():
                if placed:
                    launch.bundle_in_place()
                os.kill(os.getpid(), signal.SIGTERM)
            return launch.report_errors("convert.py", action)

        assert interrupted_after(False) == 130
        assert interrupted_after(True) == 0
        os.kill(os.getpid(), signal.SIGINT)  # after report_errors too, as in the script's teardown
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# Run as `python -c` with sys.argv set: convert.py as __main__, beside an object that sends the process the signal given
# in argv[1] when it is destroyed. That is when Python's shutdown clears the modules, after it has reset the signal
# handlers it ran: so the signal always comes in the teardown, once the script has written its bundle and returned.
SIGNAL_AT_SHUTDOWN = """
import os, runpy, sys
del sys.argv[0]  # "-c"
class SignalWhenDestroyed:
    def __del__(self, kill=os.kill, pid=os.getpid(), signum=int(sys.argv.pop(1)), write=os.write):
        kill(pid, signum)
        write(2, b"signalled at shutdown\\n")
at_shutdown = SignalWhenDestroyed()
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as running the script would
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_an_interrupt_in_the_teardown_leaves_the_bundle_and_exit_0(tmp_path, vocab, signame):
    """Once the bundle is in place the interrupts are ignored to the process's very end, through Python's shutdown
    (which resets Python's own signal handlers): the process is not killed by the signal over a complete bundle."""
    import signal
    env = {k: v for k, v in os.environ.items() if k != "TXT2IMG_PYTHON"}
    env["PYTHONHASHSEED"] = "0"  # under this Python directly (no search for one with torch, no re-execution)
    process = subprocess.run([sys.executable, "-c", SIGNAL_AT_SHUTDOWN, str(CONVERT),
                              str(int(getattr(signal, signame))), "--tiny", "--vocab", str(vocab), "--out",
                              str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=120)
    assert process.returncode == 0, process.stderr
    lines = process.stderr.splitlines()
    assert "wrote" in lines[-2] and lines[-1] == "signalled at shutdown", process.stderr
    assert (tmp_path / "b/model.json").is_file()


def test_interrupts_the_process_was_started_ignoring_stay_ignored(monkeypatch):
    """nohup's SIGHUP (or a background job's SIGINT) ignored when the script starts neither stops the conversion nor
    is taken over by its handlers."""
    import signal
    from txt2img_convert import launch
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(launch, "_as_script", False)
    monkeypatch.setattr(launch, "_started_ignoring", frozenset())
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

        def main():
            def action():
                assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
                os.kill(os.getpid(), signal.SIGHUP)
            return launch.report_errors("convert.py", action)

        assert launch.run_main("convert.py", main) == 0
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def config_without_safety(reference, tmp_path):
    config = tmp_path / "config"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        os.makedirs(config / part)
        for file in (reference / "sd1/model" / part).iterdir():
            os.symlink(file, config / part / file.name)
    return config


def test_errors(tmp_path, reference, vocab, capsys):
    single = reference / "sd1/single_file/sd1.safetensors"
    out = tmp_path / "x"
    cases = [
        # (arguments, exit status, text the message must contain)
        ((single, "--out", out), 1, "pass --vocab"),
        ((single, "--vocab", vocab, "--no-safety-checker", "--out", out), 1, "attention heads"),
        ((single, "--config", config_without_safety(reference, tmp_path), "--out", out), 1,
         "--safety-checker DIR"),
        ((tmp_path / "nothing.ckpt", "--out", out), 1, "no such file"),
        (("--out", out), 2, "give either SOURCE"),
        (("--tiny", "--out", out), 2, "need --vocab"),
        ((single, "--tiny", "--out", out), 2, "give either SOURCE"),
        ((single, "--seed", 3, "--out", out), 2, "--seed applies"),
        ((single, "--safety-checker", tmp_path, "--no-safety-checker", "--out", out), 2, "not allowed"),
        (("--tiny", "--vocab", vocab, "--vae", single, "--out", out), 2, "--vae applies to a SOURCE"),
        ((single, "--vae", tmp_path / "no-vae.safetensors", "--out", out), 1, "--vae"),
    ]
    expect_errors(capsys, cases, out)


def test_command_line(tmp_path, vocab):
    """The script is executable, re-executes itself under a Python with torch whatever interpreter starts
    it, and reports errors in one line without a traceback."""
    assert os.access(CONVERT, os.X_OK)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    env = dict(os.environ, TXT2IMG_PYTHON=sys.executable)
    result = subprocess.run(["python3", str(CONVERT), broken, "--no-safety-checker", "--vocab", vocab,
                             "--out", tmp_path / "x"], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(f"convert.py: error: cannot read {broken}")
    assert "Traceback" not in result.stderr


def test_txt2img_python_is_used_even_where_python3_has_torch(tmp_path):
    """TXT2IMG_PYTHON chooses the Python that converts (a newer PyTorch, for float8 files) also when the script is
    started by one that has torch."""
    log = tmp_path / "used"
    chosen = tmp_path / "python"
    chosen.write_text(f'#!/bin/sh\necho "$@" >> \'{log}\'\nexec \'{sys.executable}\' "$@"\n')
    chosen.chmod(0o755)
    result = subprocess.run([sys.executable, str(CONVERT), "--help"], capture_output=True, text=True,
                            env=dict(os.environ, TXT2IMG_PYTHON=str(chosen)))
    assert result.returncode == 0, result.stderr
    assert f"{CONVERT} --help" in log.read_text().splitlines()


def test_txt2img_python_naming_the_running_interpreter_starts_nothing_again(tmp_path):
    """TXT2IMG_PYTHON that is the running interpreter (by path, link or name on PATH) needs no second start."""
    from txt2img_convert import launch
    link = tmp_path / "python-link"
    link.symlink_to(sys.executable)
    assert launch._is_this_interpreter(sys.executable)
    assert launch._is_this_interpreter(str(link))
    assert not launch._is_this_interpreter("/bin/sh")
    assert not launch._is_this_interpreter(str(tmp_path / "missing"))


def test_separate_safety_checker(tmp_path, reference, tensors, check_close, capsys):
    """--safety-checker DIR (transformers layout) replaces the source's own checker."""
    case = reference / "tiny/safety/A_all_flagged"
    out = tmp_path / "bundle"
    status, stderr = convert(capsys, reference / "tiny/model", "--safety-checker", case / "safety_checker",
                             "--out", out)
    assert status == 0, stderr
    assert json.loads((out / "model.json").read_text())["safety"] == SAFETY_32  # the folder's feature_extractor
    expected = tensors("tiny/safety/A_all_flagged/tensors.safetensors")
    with torch.no_grad():
        _, cos, special, weights, special_weights = torch.jit.load(str(out / "safety_checker.pt"))(
            expected["safety/clip_input"])
    check_close("bundle tiny safety A cos", cos, expected["safety/cos_dist"])
    check_close("bundle tiny safety A special cos", special, expected["safety/special_cos_dist"])
    assert torch.equal(weights, expected["safety/concept_embeds_weights"])
    assert torch.equal(special_weights, expected["safety/special_care_embeds_weights"])
    # A model folder names its checker too (its safety_checker/), as --vae takes a model folder's vae/.
    status, stderr = convert(capsys, reference / "tiny/model", "--safety-checker", case, "--out", tmp_path / "root")
    assert status == 0, stderr
    via_root = torch.jit.load(str(tmp_path / "root/safety_checker.pt")).state_dict()
    direct = torch.jit.load(str(out / "safety_checker.pt")).state_dict()
    assert via_root.keys() == direct.keys() and all(torch.equal(via_root[k], direct[k]) for k in direct)
    assert json.loads((tmp_path / "root/model.json").read_text())["safety"] == SAFETY_32


def test_replacement_vae(tmp_path, reference, capsys):
    """--vae: the bundle decodes with the given VAE (the tiny model's with other weights, in a VAE-only file) and
    model.json names and hashes it as A1111 does; everything else is the tiny model's."""
    from txt2img_convert.safetensors_io import load_file, save_file
    other = {k: v * 1.5 for k, v in load_file(str(reference / "tiny/model/vae/diffusion_pytorch_model.safetensors")).items()}
    vae_file = tmp_path / "vae-ft-test.safetensors"
    save_file(other, str(vae_file))
    plain, replaced = tmp_path / "plain", tmp_path / "replaced"
    for out, extra in ((plain, ()), (replaced, ("--vae", vae_file))):
        status, stderr = convert(capsys, reference / "tiny/model", "--no-safety-checker", *extra, "--out", out)
        assert status == 0, stderr
    manifest = json.loads((replaced / "model.json").read_text())
    assert manifest["vae_name"] == "vae-ft-test.safetensors" and manifest["vae_hash"] == sha256(vae_file)[:10]
    assert manifest["source"]["vae"] == {"path": str(vae_file), "sha256": sha256(vae_file)}
    plain_manifest = json.loads((plain / "model.json").read_text())
    assert "vae_name" not in plain_manifest and "vae" not in plain_manifest["source"]
    assert manifest["model_hash"] == plain_manifest["model_hash"]  # the checkpoint's hash, as in A1111
    for name in ("unet.pt", "text_encoder.pt"):
        assert manifest["files"][name]["sha256"] == plain_manifest["files"][name]["sha256"], name
    decoder = torch.jit.load(str(replaced / "vae_decoder.pt")).state_dict()
    want = export.VAEDecoder.select_state_dict(other)
    assert sorted(decoder) == sorted(want)
    assert all(torch.equal(decoder[k], want[k].float()) for k in want)


def test_checkpoint_released_without_its_vae(tmp_path, reference, capsys):
    """A single file without first_stage_model.* converts with --vae, and without it fails naming --vae."""
    from txt2img_convert.safetensors_io import load_file, save_file
    sd1 = load_file(str(reference / "sd1/single_file/sd1.safetensors"))
    no_vae = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in sd1.items() if not k.startswith("first_stage_model.")}, str(no_vae))
    vae = tmp_path / "vae.safetensors"
    save_file({k[len("first_stage_model."):]: v for k, v in sd1.items() if k.startswith("first_stage_model.")},
              str(vae))
    common = ["--config", reference / "sd1/model", "--no-safety-checker"]
    expect_errors(capsys, [((no_vae, *common, "--out", tmp_path / "x"), 1,
                            "has no VAE weights (first_stage_model.*): it was released to be used with a separate "
                            "VAE; pass it with --vae")], tmp_path / "x")
    status, stderr = convert(capsys, no_vae, *common, "--vae", vae, "--out", tmp_path / "with")
    assert status == 0, stderr
    status, stderr = convert(capsys, reference / "sd1/single_file/sd1.safetensors", *common, "--out", tmp_path / "whole")
    assert status == 0, stderr
    for name in ("vae_decoder.pt", "unet.pt", "text_encoder.pt"):
        ours = torch.jit.load(str(tmp_path / "with" / name)).state_dict()
        whole = torch.jit.load(str(tmp_path / "whole" / name)).state_dict()
        assert sorted(ours) == sorted(whole) and all(torch.equal(ours[k], whole[k]) for k in whole), name
    assert json.loads((tmp_path / "with/model.json").read_text())["vae_name"] == "vae.safetensors"


def test_checkpoint_saved_without_its_text_encoder(tmp_path, reference, capsys):
    """A single file without cond_stage_model.* takes the text encoder of --config's text_encoder/, as diffusers'
    from_single_file does, and says so; model.json records where it came from. Without one there, it fails naming
    --config."""
    from txt2img_convert import checkpoints as ck
    from txt2img_convert.safetensors_io import load_file, save_file
    whole_file = reference / "sd1/single_file/sd1.safetensors"
    sd1 = load_file(str(whole_file))
    no_text = tmp_path / "no-text.safetensors"
    save_file({k: v for k, v in sd1.items() if not k.startswith("cond_stage_model.")}, str(no_text))
    config = tmp_path / "base"
    shutil.copytree(reference / "sd1/model", config)  # configs only: the reference leaves out its weights
    save_file(ck.ldm_to_diffusers(sd1, "sd1")["text_encoder"].tensors, str(config / "text_encoder/model.safetensors"))
    common = ["--no-safety-checker"]
    expect_errors(capsys, [((no_text, "--config", reference / "sd1/model", *common, "--out", tmp_path / "x"), 1,
                            "no CLIP text encoder weights (cond_stage_model.transformer.*); where it was saved "
                            "without them, give --config a diffusers folder of its base model whose text_encoder/ "
                            "holds them")], tmp_path / "x")
    status, stderr = convert(capsys, no_text, "--config", config, *common, "--out", tmp_path / "borrowed")
    assert status == 0, stderr
    assert f"{no_text} holds no text encoder: using {config / 'text_encoder'}'s" in stderr
    status, stderr = convert(capsys, whole_file, "--config", config, *common, "--out", tmp_path / "whole")
    assert status == 0, stderr
    assert "holds no text encoder" not in stderr
    for name in ("text_encoder.pt", "unet.pt"):
        ours = torch.jit.load(str(tmp_path / "borrowed" / name)).state_dict()
        whole = torch.jit.load(str(tmp_path / "whole" / name)).state_dict()
        assert sorted(ours) == sorted(whole) and all(torch.equal(ours[k], whole[k]) for k in whole), name
    source = json.loads((tmp_path / "borrowed/model.json").read_text())["source"]
    weights = config / "text_encoder/model.safetensors"
    assert source["text_encoder"] == {"path": str(weights), "sha256": ck.sha256_weights(str(weights))}
    assert "text_encoder" not in json.loads((tmp_path / "whole/model.json").read_text())["source"]


def save_with_moving_average(reference, path, scale):
    """The sd1 single file with a moving average of its U-Net (model_ema.*, as LDM names it): its weights * `scale`."""
    from txt2img_convert.safetensors_io import load_file, save_file
    sd1 = load_file(str(reference / "sd1/single_file/sd1.safetensors"))
    with_ema = dict(sd1)
    for key, value in sd1.items():
        if key.startswith("model.diffusion_model."):
            with_ema["model_ema." + key[len("model."):].replace(".", "")] = value * scale
    save_file(with_ema, str(path))


def test_moving_average_of_a_single_file(tmp_path, reference, capsys, monkeypatch):
    """--ema converts the U-Net's moving average (model_ema.*), named and hashed apart from the file's own weights;
    without it the file converts as diffusers reads it, with a note."""
    source = tmp_path / "with-ema.safetensors"
    save_with_moving_average(reference, source, 0.5)
    common = ["--config", reference / "sd1/model", "--no-safety-checker"]
    status, stderr = convert(capsys, source, *common, "--out", tmp_path / "trained")
    assert status == 0 and "--ema converts the average instead" in stderr, stderr
    status, stderr = convert(capsys, source, *common, "--ema", "--out", tmp_path / "averaged")
    assert status == 0, stderr
    trained = torch.jit.load(str(tmp_path / "trained/unet.pt")).state_dict()
    averaged = torch.jit.load(str(tmp_path / "averaged/unet.pt")).state_dict()
    assert all(torch.equal(averaged[k], trained[k] * 0.5) for k in trained if trained[k].is_floating_point())
    for name in ("text_encoder.pt", "vae_decoder.pt"):
        assert (tmp_path / "trained" / name).read_bytes() == (tmp_path / "averaged" / name).read_bytes()
    manifests = {b: json.loads((tmp_path / b / "model.json").read_text()) for b in ("trained", "averaged")}
    assert manifests["averaged"]["model_name"] == manifests["trained"]["model_name"] + "+ema"
    assert manifests["averaged"]["source"]["ema"] is True and "ema" not in manifests["trained"]["source"]
    assert manifests["averaged"]["model_hash"] == sha256_tensors(averaged)[:10]
    assert manifests["trained"]["model_hash"] == manifests["trained"]["source"]["sha256"][:10]
    expect_errors(capsys, [
        ((reference / "sd1/single_file/sd1.safetensors", *common, "--ema", "--out", tmp_path / "x"), 1,
         "--ema: " + str(reference / "sd1/single_file/sd1.safetensors") + " holds no exponential moving average"),
        ((reference / "tiny/model", "--ema", "--out", tmp_path / "x"), 2, "--ema applies to a single-file SOURCE"),
    ], tmp_path / "x")
    # A hub id is a diffusers model too, known as one only once it is downloaded.
    from txt2img_convert import hub
    monkeypatch.setattr(hub, "resolve_source", lambda source, safety_checker: str(reference / "tiny/model"))
    expect_errors(capsys, [(("owner/model", "--ema", "--out", tmp_path / "x"), 1,
                            "--ema applies to a single-file SOURCE; owner/model is a diffusers model")], tmp_path / "x")


def test_hash_of_weights_no_file_holds_is_that_of_the_weights_alone(tmp_path, reference):
    """A bundle hashed by its U-Net's weights (--ema here; merged LoRAs and random weights alike) gets the same hash
    from a converter installed elsewhere, whose TorchScript files record other source paths, and another hash for
    other weights."""
    elsewhere = tmp_path / "elsewhere" / "scripts"
    shutil.copytree(CONVERT.parent, elsewhere, ignore=shutil.ignore_patterns("__pycache__"))
    for scale in (0.5, 0.25):
        save_with_moving_average(reference, tmp_path / f"ema{scale}.safetensors", scale)
    common = ["--config", reference / "sd1/model", "--no-safety-checker", "--ema"]
    run(tmp_path / "ema0.5.safetensors", *common, "--out", tmp_path / "here")
    result = subprocess.run([str(elsewhere / "convert.py"), tmp_path / "ema0.5.safetensors", *common,
                             "--out", tmp_path / "there"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    run(tmp_path / "ema0.25.safetensors", *common, "--out", tmp_path / "other")
    hashes = {name: json.loads((tmp_path / name / "model.json").read_text())["model_hash"]
              for name in ("here", "there", "other")}
    assert re.fullmatch("[0-9a-f]{10}", hashes["here"]), hashes
    assert hashes["here"] == hashes["there"] != hashes["other"], hashes


def test_a_vae_beside_the_checkpoint_is_used_as_a1111_does(tmp_path, reference, capsys):
    """NAME.vae.safetensors beside NAME.safetensors replaces the checkpoint's VAE (A1111's Automatic VAE setting),
    recorded as a --vae would be; --vae still names another."""
    from txt2img_convert.safetensors_io import load_file, save_file
    sd1 = load_file(str(reference / "sd1/single_file/sd1.safetensors"))
    save_file(sd1, str(tmp_path / "model.safetensors"))
    save_file({k[len("first_stage_model."):]: v * 0.5 for k, v in sd1.items() if k.startswith("first_stage_model.")},
              str(tmp_path / "model.vae.safetensors"))
    common = ["--config", reference / "sd1/model", "--no-safety-checker"]
    status, stderr = convert(capsys, tmp_path / "model.safetensors", *common, "--out", tmp_path / "beside")
    assert status == 0, stderr
    assert f"using the VAE beside the checkpoint, {tmp_path / 'model.vae.safetensors'}, as A1111 does" in stderr
    status, stderr = convert(capsys, reference / "sd1/single_file/sd1.safetensors", *common, "--out", tmp_path / "own")
    assert status == 0, stderr
    beside = torch.jit.load(str(tmp_path / "beside/vae_decoder.pt")).state_dict()
    own = torch.jit.load(str(tmp_path / "own/vae_decoder.pt")).state_dict()
    assert all(torch.equal(beside[k], own[k] * 0.5) for k in own if own[k].is_floating_point())
    manifest = json.loads((tmp_path / "beside/model.json").read_text())
    assert manifest["vae_name"] == "model.vae.safetensors"
    assert "using the VAE beside" not in convert(capsys, tmp_path / "model.safetensors", *common, "--vae",
                                                 tmp_path / "model.vae.safetensors", "--out", tmp_path / "named")[1]
    status, stderr = convert(capsys, tmp_path / "model.safetensors", *common, "--own-vae", "--out", tmp_path / "kept")
    assert status == 0 and "using the VAE beside" not in stderr, stderr
    assert (tmp_path / "kept/vae_decoder.pt").read_bytes() == (tmp_path / "own/vae_decoder.pt").read_bytes()


def test_lcm_model_with_a_guidance_embedding(tmp_path, reference, capsys):
    """An LCM-distilled model (its U-Net config has time_cond_proj_dim, as SimianLuo/LCM_Dreamshaper_v7) converts:
    model.json records the embedding's width, and the exported U-Net takes the guidance as a fourth input."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
    from make_lcm_model import make

    make(str(reference / "tiny/model"), str(tmp_path / "lcm"), 8)
    status, stderr = convert(capsys, tmp_path / "lcm", "--no-safety-checker", "--out", tmp_path / "bundle")
    assert status == 0, stderr
    manifest = json.loads((tmp_path / "bundle/model.json").read_text())
    assert manifest["guidance_embedding_dim"] == 8
    unet = torch.jit.load(str(tmp_path / "bundle/unet.pt"))
    assert unet.state_dict()["time_embedding.cond_proj.weight"].shape == (32, 8)
    sample, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        low, high = (unet(sample, torch.tensor(999), context, torch.tensor([w])) for w in (1.0, 7.5))
    assert not torch.allclose(low, high)
    # A model without one records nothing.
    status, stderr = convert(capsys, reference / "tiny/model", "--no-safety-checker", "--out", tmp_path / "plain")
    assert status == 0, stderr
    assert "guidance_embedding_dim" not in json.loads((tmp_path / "plain/model.json").read_text())


def test_inpainting_single_file(tmp_path, reference, capsys):
    """An inpainting checkpoint (LDM layout, a 9-channel U-Net input as sd-v1-5-inpainting's) converts: model.json
    records it, and the bundle gains vae_encoder.pt, the checkpoint's VAE encoder; a text-to-image model's has
    none."""
    from txt2img_convert import checkpoints as ck
    from txt2img_convert.safetensors_io import load_file, save_file
    sd1 = load_file(str(reference / "sd1/single_file/sd1.safetensors"))
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    weight = sd1[conv_in]
    inpainting = dict(sd1)
    inpainting[conv_in] = torch.cat([weight, torch.zeros(weight.shape[0], 5, *weight.shape[2:])], dim=1)
    source = tmp_path / "sd1-inpainting.safetensors"
    save_file(inpainting, str(source))
    status, stderr = convert(capsys, source, "--config", reference / "sd1/model", "--no-safety-checker",
                             "--out", tmp_path / "bundle")
    assert status == 0, stderr
    assert "loading the VAE encoder weights" in stderr
    manifest = json.loads((tmp_path / "bundle/model.json").read_text())
    assert manifest["inpainting"] is True and "vae_encoder.pt" in manifest["files"]
    encoder = torch.jit.load(str(tmp_path / "bundle/vae_encoder.pt")).state_dict()
    want = export.VAEEncoder.select_state_dict(ck.ldm_to_diffusers(sd1, "sd1")["vae"].tensors)
    assert sorted(encoder) == sorted(want) and all(torch.equal(encoder[k], want[k].float()) for k in want)
    assert torch.jit.load(str(tmp_path / "bundle/unet.pt")).state_dict()["conv_in.weight"].shape[1] == 9

    # A replacement VAE must bring the encoder too; one with only the decoder is refused before any slow work.
    decoder_only = tmp_path / "decoder-only.safetensors"
    save_file({k[len("first_stage_model."):]: v for k, v in sd1.items()
               if k.startswith(("first_stage_model.decoder.", "first_stage_model.post_quant_conv."))},
              str(decoder_only))
    status, stderr = convert(capsys, source, "--config", reference / "sd1/model", "--no-safety-checker", "--vae",
                             decoder_only, "--out", tmp_path / "x")
    assert status == 1 and "Traceback" not in stderr and not (tmp_path / "x").exists()
    assert stderr.splitlines()[-1] == (
        f"convert.py: error: {decoder_only}: the VAE has no encoder (encoder.*), which an inpainting model needs for "
        "its masked image; pass a VAE file with both halves, or leave out --vae")
    assert "loading the U-Net weights" not in stderr

    # One found beside the checkpoint (no --vae given) is left out with --own-vae, where the checkpoint has a whole VAE.
    shutil.copy(decoder_only, tmp_path / "sd1-inpainting.vae.safetensors")
    no_vae = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in inpainting.items() if not k.startswith("first_stage_model.")}, str(no_vae))
    shutil.copy(decoder_only, tmp_path / "no-vae.vae.safetensors")
    for checkpoint, advice in ((source, "pass --own-vae to keep the checkpoint's, or a complete VAE with --vae"),
                               (no_vae, "pass a complete VAE with --vae")):
        beside = checkpoint.with_suffix(".vae.safetensors")
        status, stderr = convert(capsys, checkpoint, "--config", reference / "sd1/model", "--no-safety-checker",
                                 "--out", tmp_path / "x")
        assert status == 1 and "Traceback" not in stderr and not (tmp_path / "x").exists()
        assert stderr.splitlines()[-1] == (
            f"convert.py: error: {beside}: the VAE beside the checkpoint has no encoder (encoder.*), which an "
            f"inpainting model needs for its masked image; {advice}")
    status, stderr = convert(capsys, source, "--config", reference / "sd1/model", "--no-safety-checker", "--own-vae",
                             "--out", tmp_path / "own")
    assert status == 0, stderr

    status, stderr = convert(capsys, reference / "tiny/model", "--no-safety-checker", "--out", tmp_path / "plain")
    assert status == 0, stderr
    manifest = json.loads((tmp_path / "plain/model.json").read_text())
    assert "inpainting" not in manifest and "vae_encoder.pt" not in manifest["files"]


def test_v_prediction_zero_terminal_snr_single_file(tmp_path, reference, capsys):
    """A single file's training schedule comes from its LDM .yaml beside it (A1111's convention) and the command
    line: a zero-terminal-SNR v-prediction model's bundle records it, in format 2, which older binaries refuse
    rather than run the plain schedule; other bundles stay format 1."""
    single = tmp_path / "vpred.safetensors"
    shutil.copy(reference / "sd1/single_file/sd1.safetensors", single)
    (tmp_path / "vpred.yaml").write_text("model:\n  params:\n    parameterization: v\n    timesteps: 1000\n")
    status, stderr = convert(capsys, single, "--config", reference / "sd1/model", "--no-safety-checker",
                             "--zero-terminal-snr", "--out", tmp_path / "bundle")
    assert status == 0, stderr
    assert f"reading the training schedule in {tmp_path / 'vpred.yaml'}" in stderr
    manifest = json.loads((tmp_path / "bundle/model.json").read_text())
    assert manifest["format_version"] == 2
    assert {k: manifest["scheduler"][k] for k in ("prediction_type", "rescale_betas_zero_snr", "timestep_spacing")} \
        == {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}

    out = tmp_path / "x"
    (tmp_path / "vpred.yaml").unlink()
    expect_errors(capsys, [
        ((single, "--config", reference / "sd1/model", "--no-safety-checker", "--zero-terminal-snr", "--out", out), 1,
         "--zero-terminal-snr needs a v-prediction model"),
        ((single, "--config", reference / "sd1/model", "--original-config", tmp_path / "none.yaml",
          "--no-safety-checker", "--out", out), 1, "--original-config"),
        ((reference / "tiny/model", "--original-config", tmp_path / "none.yaml", "--out", out), 2,
         "--original-config applies to a single-file SOURCE"),
        (("--tiny", "--vocab", single, "--original-config", single, "--out", out), 2,
         "--original-config applies to a SOURCE"),
        ((single, "--prediction-type", "x0", "--out", out), 2, "invalid choice"),
        ((single, "--out", ""), 2, "--out is empty"),
    ], out)
    status, stderr = convert(capsys, reference / "tiny/model", "--no-safety-checker", "--out", tmp_path / "plain")
    assert status == 0, stderr
    assert json.loads((tmp_path / "plain/model.json").read_text())["format_version"] == 1


def test_a_single_files_own_noise_schedule_is_warned_of(tmp_path, reference, capsys):
    """The schedule buffers of a single file (LDM's alphas_cumprod, which A1111 samples with) are no part of the
    bundle, as diffusers reads the file; where they are another schedule than the bundle's, a warning says so."""
    from txt2img_convert.safetensors_io import load_file, save_file
    single = tmp_path / "own-schedule.safetensors"
    betas = torch.linspace(1e-4 ** 0.5, 0.02 ** 0.5, 1000, dtype=torch.float64) ** 2
    save_file({**load_file(str(reference / "sd1/single_file/sd1.safetensors")), "betas": betas.float(),
               "alphas_cumprod": torch.cumprod(1 - betas, 0).float()}, str(single))
    common = ["--config", reference / "sd1/model", "--no-safety-checker"]
    status, stderr = convert(capsys, single, *common, "--out", tmp_path / "a")
    assert status == 0, stderr
    assert (f"convert.py: warning: {single} holds a noise schedule (alphas_cumprod) other than the bundle's "
            "(scaled_linear betas from 0.00085 to 0.012 over 1000 steps, as diffusers reads the file): A1111 samples "
            "with the file's, so its images of this model differ") in stderr
    (tmp_path / "own-schedule.yaml").write_text("model:\n  params:\n    linear_start: 0.0001\n    linear_end: 0.02\n")
    status, stderr = convert(capsys, single, *common, "--out", tmp_path / "b")
    assert status == 0 and "warning" not in stderr, stderr


def test_paths_that_are_not_utf8_keep_model_json_readable(tmp_path, reference):
    """A path with bytes of another encoding (Latin-1 "café") is recorded with U+FFFD in their place: model.json
    stays valid UTF-8 JSON, which txt2img reads."""
    source = tmp_path / os.fsdecode(b"caf\xe9")
    shutil.copytree(reference / "tiny/model", source)
    run(source, "--no-safety-checker", "--out", tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle/model.json").read_bytes().decode("utf-8"))
    assert manifest["source"]["path"].endswith("caf\ufffd") and manifest["model_name"] == "caf\ufffd"


def test_wrong_inputs_fail_before_any_slow_work(tmp_path, reference, capsys):
    """A component's folder as --config (its configs would be silently ignored), a vocab.json for merges.txt, a
    missing local file that looks like a hub id, and a text encoder of another width than the U-Net attends to."""
    single = reference / "sd1/single_file/sd1.safetensors"
    out = tmp_path / "x"
    vocab_json = tmp_path / "vocab.json"
    vocab_json.write_text('{"!": 0,\n  "a": 1}\n')
    expect_errors(capsys, [
        ((single, "--config", reference / "sd1/model/scheduler", "--out", out), 2,
         "not a diffusers model folder (it has none of model_index.json, unet/config.json"),
        ((single, "--config", reference / "sd1/model", "--vocab", vocab_json, "--out", out), 1,
         f"{vocab_json}: not CLIP's BPE merges"),
        (("models/v1-5-pruned-emaonly.safetensors", "--out", out), 1,
         "models/v1-5-pruned-emaonly.safetensors: no such file or directory"),
        ((reference / "tiny/model", "--vae", "vae/sd-vae-ft-mse.safetensors", "--out", out), 1,
         "--vae vae/sd-vae-ft-mse.safetensors: no such file or folder"),
    ], out)
    status, stderr = convert(capsys, single, "--config", reference / "sd1/model", "--vocab", vocab_json,
                             "--no-safety-checker", "--out", out)
    assert "loading" not in stderr
    text = {"hidden_size": 64, "max_position_embeddings": 77}
    with pytest.raises(Exception, match="the text encoder's embeddings are 64 wide but the U-Net attends to 32"):
        export.model_fields({"in_channels": 4, "sample_size": 8, "cross_attention_dim": 32},
                            {"block_out_channels": [32, 64]}, text, {}, None)
    # Values txt2img would refuse in model.json are refused here, where the advice to convert again makes sense.
    with pytest.raises(Exception, match="the VAE has 16 latent channels, not SD 1.x's 4"):
        export.model_fields({"in_channels": 16, "sample_size": 8}, {"block_out_channels": [32, 64],
                                                                    "latent_channels": 16}, text, {}, None)
    with pytest.raises(Exception, match="sample_size 3 makes 6-pixel images, not a multiple of 8"):
        export.model_fields({"in_channels": 4, "sample_size": 3}, {"block_out_channels": [32, 64]}, text, {}, None)


def test_a_folder_of_another_kind_is_named_before_the_vocabulary_is_missed(tmp_path, reference, capsys):
    """A folder that is no model folder (empty, a txt2img bundle, one component of a model) is said to be what it is,
    not to lack a tokenizer vocabulary (which --vocab would give, only to fail on the folder next)."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text(json.dumps({"format": export.BUNDLE_FORMAT}))
    (tmp_path / "empty").mkdir()
    out = tmp_path / "x"
    expect_errors(capsys, [
        ((tmp_path / "empty", "--out", out), 1, f"{tmp_path / 'empty'}: not a diffusers Stable Diffusion folder "
                                                "(no unet/)"),
        ((bundle, "--out", out), 1, f"{bundle} is already a txt2img bundle (model.json); use it with txt2img -m "
                                    f"{bundle}"),
        ((reference / "tiny/model/unet", "--out", out), 1,
         f"{reference / 'tiny/model/unet'}: a single component (config.json of a UNet2DConditionModel), not a whole "
         "model; give the model's folder, the one holding unet/"),
        ((reference / "tiny/model/safety_checker", "--out", out), 1,
         "a single component (config.json of a StableDiffusionSafetyChecker)"),
    ], out)


def test_a_unet_config_without_sample_size_gets_sd1s(tmp_path, reference, capsys):
    """diffusers defaults sample_size to None (the caller gives the size); SD 1.x models are trained at 64 latents."""
    folder = tmp_path / "model"
    shutil.copytree(reference / "tiny/model", folder)
    config = json.loads((folder / "unet/config.json").read_text())
    for edit in ({"sample_size": None}, {}):
        (folder / "unet/config.json").write_text(json.dumps({**{k: v for k, v in config.items() if k != "sample_size"},
                                                             **edit}))
        status, stderr = convert(capsys, folder, "--no-safety-checker", "--overwrite", "--out", tmp_path / "bundle")
        assert status == 0, stderr
        assert "the U-Net's config gives no sample_size; images default to SD 1.x's 64 latents a side (128 pixels)" \
            in stderr  # the tiny VAE makes 2 pixels of a latent
        assert json.loads((tmp_path / "bundle/model.json").read_text())["default_size"] == 128
    text = {"hidden_size": 32}
    for odd in ("64", [64, 64], 64.5, True, float("inf"), float("nan")):
        with pytest.raises(Exception, match=re.escape(f"the U-Net's sample_size {odd!r} is not a whole number of "
                                                      "latents")):
            export.model_fields({"sample_size": odd}, {"block_out_channels": [32, 64]}, text, {}, None)
    with pytest.raises(Exception, match=r"the U-Net's sample_size 1000+ makes 2000+-pixel images"):
        export.model_fields({"sample_size": 10 ** 400}, {"block_out_channels": [32, 64]}, text, {}, None)


# Run as `python -c` with sys.argv set: convert.py as __main__, whose import of the module named in argv[1] (after its
# start-up) first sends the process the signal given in argv[2]. So the interrupt always comes while that module is
# being imported.
SIGNAL_AT_IMPORT = """
import importlib.machinery, os, runpy, sys
del sys.argv[0]  # "-c"
module_name = sys.argv.pop(1)
signum = int(sys.argv.pop(1))
class SignalAtImport:
    def find_spec(self, name, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path) if name == module_name else None
        if spec is not None:
            run = spec.loader.exec_module
            def signal_then_run(module):
                os.kill(os.getpid(), signum)
                run(module)
            spec.loader.exec_module = signal_then_run
        return spec
sys.meta_path.insert(0, SignalAtImport())
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as running the script would
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("module", ["argparse", "torch"])
def test_an_interrupt_while_starting_is_one_line(tmp_path, vocab, signame, module):
    """An interrupt while the script still imports its modules (argparse: the first after its first line) or torch is
    reported as a later one is (exit 130), without a traceback."""
    import signal
    # Under this Python directly (no search for one with torch, no re-execution).
    env = {k: v for k, v in os.environ.items() if k != "TXT2IMG_PYTHON"}
    env["PYTHONHASHSEED"] = "0"
    process = subprocess.run([sys.executable, "-c", SIGNAL_AT_IMPORT, str(CONVERT), module,
                              str(int(getattr(signal, signame))), "--tiny", "--vocab", str(vocab), "--out",
                              str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=120)
    assert process.returncode == 130, process.stderr
    assert process.stderr.splitlines() == ["convert.py: error: interrupted"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_an_interrupt_while_looking_for_a_python_is_one_line(tmp_path, signame):
    """scripts/with-torch-python, which convert.py goes through where `python3` lacks torch, says an interrupt while
    it probes Pythons as the script would (exit 130), instead of dying of the signal (143, 129)."""
    import signal
    import time
    slow = tmp_path / "slow-python"  # a candidate that takes its time, as importing torch does
    started = tmp_path / "started"
    slow.write_text(f"#!/bin/sh\ntouch '{started}'\nsleep 1\n")
    slow.chmod(0o755)
    process = subprocess.Popen([str(CONVERT.parent / "with-torch-python"), str(CONVERT), "--help"],
                               env=dict(os.environ, TXT2IMG_PYTHON=str(slow)), stderr=subprocess.PIPE, text=True)
    while not started.exists():
        time.sleep(0.01)
    process.send_signal(getattr(signal, signame))
    assert process.wait(timeout=60) == 130
    assert process.stderr.read().splitlines() == ["convert.py: error: interrupted"]


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_killed_conversion_leaves_nothing(tmp_path, vocab, signame):
    """SIGTERM (a job scheduler's kill) or SIGHUP (a closed terminal) while exporting removes the half-written bundle,
    as Ctrl-C does: exit 130."""
    import signal
    process = subprocess.Popen([str(CONVERT), "--tiny", "--vocab", str(vocab), "--out", str(tmp_path / "b")],
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "exporting" in line:  # the first of five exports into the staging directory
            process.send_signal(getattr(signal, signame))
            break
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130, rest
    assert "convert.py: error: interrupted" in rest and "Traceback" not in rest
    assert list(tmp_path.iterdir()) == []
