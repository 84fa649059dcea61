"""scripts/add_lora.py: LoRAs packed into a bundle of the tiny reference model for prompts to apply, model.json's
"loras" and "files" entries, --name, --overwrite, --remove, and errors that leave the bundle as it was; the LoRA
files of tests/fixtures/make_lora.py."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import add_lora as add_lora_script  # scripts/add_lora.py (conftest puts scripts/ on sys.path)
import convert as convert_script
from converter_runs import in_process
from txt2img_convert import checkpoints as ck
from txt2img_convert import lora
from txt2img_convert.safetensors_io import load_file, read_header, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import make_lora  # noqa: E402

ADD_LORA = Path(__file__).resolve().parents[2] / "scripts" / "add_lora.py"


@pytest.fixture(scope="module")
def made(reference, tmp_path_factory):
    """A bundle of the tiny reference model and make_lora.py's two files."""
    folder = tmp_path_factory.mktemp("add_lora")
    assert convert_script.main([str(reference / "tiny/model"), "--no-safety-checker",
                                "--out", str(folder / "bundle")]) == 0
    make_lora.make(str(reference / "tiny/model"), str(folder / "loras"))
    return folder


@pytest.fixture
def bundle(made, tmp_path):
    """A fresh copy of the tiny bundle."""
    return Path(shutil.copytree(made / "bundle", tmp_path / "bundle"))


@pytest.fixture
def ink(made):
    return made / "loras" / "ink-style.safetensors"


@pytest.fixture
def loha(made):
    return made / "loras" / "detail-loha.safetensors"


def add_lora(capsys, *args):
    """add_lora.py's main() in this process: (exit status, stderr)."""
    return in_process(capsys, add_lora_script, *args)


def manifest(bundle):
    return json.loads((bundle / "model.json").read_text())


def modules_state(bundle):
    return {part: torch.jit.load(str(bundle / f"{part}.pt")).state_dict() for part in ("unet", "text_encoder")}


def check_entry(bundle, name, source, file=None):
    """model.json's entry for `name` describes `source`, and lists its packed file (`file`, by default
    loras/NAME.safetensors) with the right sha256 and size; the packed file is what lora.pack makes of `source`
    against the bundle's own weights, every name in it a weight of those modules followed by its role."""
    m = manifest(bundle)
    state = modules_state(bundle)
    packed, record = lora.pack(str(source), {part: ck.Component(part, dict(sd), {}, "") for part, sd in state.items()})
    file = file or f"loras/{name}.safetensors"
    entry = next(e for e in m["loras"] if e["name"] == name)
    assert entry == {"name": name, "file": file, "source": str(source), "sha256": ck.sha256_file(str(source)),
                     "a1111_hash": lora.a1111_hash(str(source)), "format": record["format"],
                     "modules": record["modules"], "unet_modules": record["unet_modules"],
                     "text_encoder_modules": record["text_encoder_modules"]}
    path = bundle / file
    assert m["files"][file] == {"sha256": ck.sha256_file(str(path)), "bytes": path.stat().st_size}
    assert read_header(str(path))["__metadata__"] == {"format": "txt2img-lora", "format_version": "1"}
    stored = load_file(str(path))
    assert sorted(stored) == sorted(packed)
    for key, value in stored.items():
        assert torch.equal(value, packed[key]), key
        part, _, rest = key.partition(".")
        weight, _, role = rest.rpartition(".")
        assert weight in state[part] and role in ("up", "down", "scale", "diff"), key
    return entry


def test_add_and_remove_as_users_run_it(bundle, ink, loha):
    original = (bundle / "model.json").read_bytes()
    result = subprocess.run([str(ADD_LORA), str(bundle), str(ink), str(loha)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "add_lora.py: added kohya LoRA ink-style (66 modules: 41 U-Net, 25 text encoder); use it with "
        "<lora:ink-style:1> in a prompt",
        "add_lora.py: added kohya+loha LoRA detail-loha (4 modules: 3 U-Net, 1 text encoder); use it with "
        "<lora:detail-loha:1> in a prompt"]
    m = manifest(bundle)
    assert [e["name"] for e in m["loras"]] == ["detail-loha", "ink-style"]
    assert check_entry(bundle, "ink-style", ink)["format"] == "kohya"
    assert check_entry(bundle, "detail-loha", loha)["format"] == "kohya+loha"
    assert list(m["files"]) == sorted(m["files"])
    assert sorted(p.name for p in (bundle / "loras").iterdir()) == ["detail-loha.safetensors", "ink-style.safetensors"]
    # Everything else in model.json is as convert.py wrote it.
    before = json.loads(original)
    assert {k: v for k, v in m.items() if k not in ("loras", "files")} == {k: v for k, v in before.items()
                                                                             if k != "files"}
    assert {k: v for k, v in m["files"].items() if not k.startswith("loras/")} == before["files"]
    text = (bundle / "model.json").read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "format"')

    result = subprocess.run([str(ADD_LORA), str(bundle), "--remove", "ink-style", "detail-loha"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (bundle / "model.json").read_bytes() == original
    assert not (bundle / "loras").exists()


def test_name_overwrite_and_remove(bundle, ink, loha, capsys):
    assert add_lora(capsys, bundle, ink, "--name", "ink v2")[0] == 0
    first = check_entry(bundle, "ink v2", ink)
    assert add_lora(capsys, bundle, loha)[0] == 0
    # The same name again: refused, then replaced with --overwrite.
    before = (bundle / "model.json").read_bytes()
    status, stderr = add_lora(capsys, bundle, loha, "--name", "ink v2")
    assert status == 1 and f"{bundle} already has a LoRA named ink v2 (pass --overwrite" in stderr
    assert (bundle / "model.json").read_bytes() == before
    status, stderr = add_lora(capsys, bundle, loha, "--name", "ink v2", "--overwrite")
    assert status == 0, stderr
    # Under another file's name than the one it replaces, which is gone.
    packed_sha256 = manifest(bundle)["files"]["loras/detail-loha.safetensors"]["sha256"]
    replaced = check_entry(bundle, "ink v2", loha, f"loras/ink v2={packed_sha256[:12]}.safetensors")
    assert replaced["sha256"] != first["sha256"]
    assert [e["name"] for e in manifest(bundle)["loras"]] == ["detail-loha", "ink v2"]
    assert sorted(p.name for p in (bundle / "loras").iterdir()) == [
        "detail-loha.safetensors", f"ink v2={packed_sha256[:12]}.safetensors"]
    # Replaced again, it takes the first name back.
    assert add_lora(capsys, bundle, ink, "--name", "ink v2", "--overwrite")[0] == 0
    check_entry(bundle, "ink v2", ink)
    assert sorted(p.name for p in (bundle / "loras").iterdir()) == ["detail-loha.safetensors", "ink v2.safetensors"]
    # Removing one keeps the other.
    status, stderr = add_lora(capsys, bundle, "--remove", "ink v2")
    assert status == 0 and stderr == "add_lora.py: removed the LoRA ink v2\n"
    m = manifest(bundle)
    assert [e["name"] for e in m["loras"]] == ["detail-loha"] and "loras/ink v2.safetensors" not in m["files"]
    assert sorted(p.name for p in (bundle / "loras").iterdir()) == ["detail-loha.safetensors"]
    check_entry(bundle, "detail-loha", loha)


def test_errors_leave_the_bundle_as_it_was(bundle, ink, loha, tmp_path, capsys):
    assert add_lora(capsys, bundle, loha)[0] == 0
    down, up = torch.ones(4, 64, 1, 1), torch.ones(64, 4, 1, 1)
    sdxl = tmp_path / "sdxl-style.safetensors"  # a module that SD 1.x does not have
    save_file({"lora_unet_down_blocks_3_attentions_0_proj_in.lora_down.weight": down,
               "lora_unet_down_blocks_3_attentions_0_proj_in.lora_up.weight": up}, str(sdxl))
    colon = tmp_path / "style:v2.safetensors"
    shutil.copy(ink, colon)
    not_bundle = tmp_path / "notes"
    not_bundle.mkdir()
    (not_bundle / "model.json").write_text('{"format": "something-else"}')
    cases = [
        ((bundle, ink, sdxl), 1, f"{sdxl}: LoRA keys that match no U-Net or text encoder weight"),
        ((bundle, colon), 2, f"{colon}: its name 'style:v2' cannot be written in a prompt as <lora:NAME:WEIGHT> "
                             "(it contains ':'): choose another with --name NAME"),
        ((bundle, ink, "--name", ".hidden"), 2, "(it starts with '.')"),
        ((bundle, ink, "--name", "a\tb"), 2, "(it contains '\\t')"),
        ((bundle, ink, "--name", "a<b>=c"), 2, "(it contains '<' '=' '>')"),
        ((bundle, ink, "--name", ""), 2, "(it is empty)"),
        ((bundle, ink, "--name", " ink "), 2, "(it starts or ends with a blank"),
        ((bundle, ink, "--name", "x" * 201), 2, "(it is longer than 200 bytes)"),
        ((bundle, ink, "--name", "caf\udce9"), 2, "(it is not UTF-8 text"),
        ((bundle, ink, loha, "--name", "x"), 2, "--name names one FILE"),
        ((bundle, ink, tmp_path / "loras" / "ink-style.safetensors"), 2, "two FILEs named 'ink-style'"),
        ((bundle, loha), 1, "already has a LoRA named detail-loha"),
        ((bundle, tmp_path / "missing.safetensors"), 1, f"{tmp_path / 'missing.safetensors'}: no such file"),
        ((bundle,), 2, "give the LoRA FILEs to add"),
        ((bundle, ink, "--remove", "detail-loha"), 2, "--remove takes only the NAMEs"),
        ((bundle, "--remove", "detail-loha", "ink-style", "nope"), 1,
         f"{bundle} has no LoRA named ink-style, nope (its LoRAs are detail-loha)"),
        ((tmp_path, ink), 1, f"{tmp_path} is not a model bundle"),
        ((not_bundle, ink), 1, f"{not_bundle} is not a model bundle"),
    ]
    before = (bundle / "model.json").read_bytes()
    listing = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*"))
    for args, expected_status, text in cases:
        status, stderr = add_lora(capsys, *args)
        assert status == expected_status, (args, stderr)
        last = stderr.splitlines()[-1]
        assert last.startswith("add_lora.py: error: ") and text in last, stderr
        assert "Traceback" not in stderr
        assert (bundle / "model.json").read_bytes() == before, args
        assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*")) == listing, args


def test_make_lora_is_deterministic_and_fits_the_tiny_model(made, reference, tmp_path):
    make_lora.make(str(reference / "tiny/model"), str(tmp_path))
    for name in ("ink-style.safetensors", "detail-loha.safetensors"):
        assert (tmp_path / name).read_bytes() == (made / "loras" / name).read_bytes(), name
    tiny = ck.load_diffusers(str(reference / "tiny/model"))
    components = {"unet": tiny.unet, "text_encoder": tiny.text_encoder}
    packed, record = lora.pack(str(tmp_path / "ink-style.safetensors"), components)
    assert (record["format"], record["unet_modules"], record["text_encoder_modules"]) == ("kohya", 41, 25)
    targets = {key.rpartition(".")[0] for key in packed}
    assert "unet.mid_block.resnets.0.conv1.weight" in targets
    assert "unet.up_blocks.0.attentions.1.proj_out.weight" in targets
    assert "text_encoder.text_model.encoder.layers.4.mlp.fc1.weight" in targets
    for target in targets:
        part, _, key = target.partition(".")
        weight = components[part].tensors[key]
        delta = (packed[target + ".scale"] * (packed[target + ".up"] @ packed[target + ".down"])).reshape(weight.shape)
        assert packed[target + ".scale"].item() == 0.5
        # Visible next to the weight, and finite.
        assert torch.isfinite(delta).all() and 0.1 < delta.norm() / weight.norm() < 10, target
    packed, record = lora.pack(str(tmp_path / "detail-loha.safetensors"), components)
    assert (record["format"], record["unet_modules"], record["text_encoder_modules"]) == ("kohya+loha", 3, 1)
    for name, delta in packed.items():
        part, _, key = name[: -len(".diff")].partition(".")
        weight = components[part].tensors[key]
        assert torch.isfinite(delta).all() and 0.1 < delta.norm() / weight.norm() < 10, name


def test_a_failed_write_leaves_the_bundle_as_it_was(bundle, ink, loha, capsys, monkeypatch):
    """The disk fills up while the second of two packed files is written: neither is added, no temporary file is
    left, and a loras/ folder made for them is gone; one that was there before stays as it was."""
    from txt2img_convert import safetensors_io

    real_save_file = safetensors_io.save_file
    written = []

    def save_file(tensors, path, metadata=None):
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        real_save_file(tensors, path, metadata)

    def contents():
        return (bundle / "model.json").read_bytes(), sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*"))

    def add_both_and_fail():
        written.clear()
        before = contents()
        with monkeypatch.context() as patch:
            patch.setattr(safetensors_io, "save_file", save_file)
            status, stderr = add_lora(capsys, bundle, ink, loha, "--overwrite")
        assert status == 1 and "OSError: [Errno 28] No space left on device" in stderr, stderr
        assert len(written) == 1 and Path(written[0]).parent == bundle / "loras"
        assert contents() == before

    add_both_and_fail()
    assert add_lora(capsys, bundle, loha)[0] == 0
    add_both_and_fail()


def test_an_interrupt_among_the_renames_does_not_part_the_files_from_model_json(bundle, ink, loha, capsys,
                                                                                monkeypatch):
    """Ctrl-C (or a kill) right after the first replaced LoRA file is renamed into place neither leaves it listed with
    its predecessor's sha256 (which txt2img info --verify calls corrupt) nor reports exit 130 over a change that is
    made: the script ends with its LoRAs replaced and model.json listing them. The signal comes from another process,
    as a user's does, while another thread runs (as torch's workers do), to which the kernel may hand it."""
    import os
    import signal
    import subprocess
    import threading
    import time

    from txt2img_convert import launch

    assert add_lora(capsys, bundle, ink)[0] == 0
    real_replace = os.replace
    renamed = []

    def replace_then_interrupt(source, target):
        real_replace(source, target)
        renamed.append(target)
        if len(renamed) == 1:
            subprocess.run(["kill", "-INT", str(os.getpid())], check=True)
            time.sleep(0.2)  # for Python to run its handler, here, between the renames

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(launch, "_as_script", True)  # as the script runs it, to its end
    done = threading.Event()
    worker = threading.Thread(target=done.wait)
    worker.start()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", replace_then_interrupt)
            status, stderr = add_lora(capsys, bundle, loha, "--name", "ink-style", "--overwrite")
    finally:
        done.set()
        worker.join()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert status == 0, stderr
    file = manifest(bundle)["loras"][0]["file"]
    assert [Path(p).name for p in renamed] == [Path(file).name, "model.json"]
    assert manifest(bundle)["files"][file]["sha256"] == ck.sha256_file(str(bundle / file))
    assert manifest(bundle)["loras"][0]["source"] == str(loha)


# Run as `python -c` with sys.argv set: add_lora.py as __main__, whose process ends at once (as in a crash or a
# power cut: no cleanup, no handler) when it is about to rename a file onto model.json.
CRASH_BEFORE_MODEL_JSON = """
import os, runpy, sys
del sys.argv[0]  # "-c"
real_replace = os.replace
def replace(source, target):
    if os.path.basename(target) == "model.json":
        os._exit(9)
    real_replace(source, target)
os.replace = replace
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as running the script would
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_crash_before_model_json_leaves_every_listed_file_as_listed(bundle, ink, loha, capsys):
    """--overwrite writes a replacing LoRA under another file name than the one listed, so that a crash among the
    renames (model.json is renamed last) leaves the bundle as it was, with at most an unlisted file more: every
    listed file keeps its sha256 (which txt2img info --verify checks)."""
    import os

    assert add_lora(capsys, bundle, ink)[0] == 0
    before = (bundle / "model.json").read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "TXT2IMG_PYTHON"}
    env["PYTHONHASHSEED"] = "0"  # under this Python directly (no re-execution)
    process = subprocess.run([sys.executable, "-c", CRASH_BEFORE_MODEL_JSON, str(ADD_LORA), str(bundle), str(loha),
                              "--name", "ink-style", "--overwrite"], capture_output=True, text=True, env=env)
    assert process.returncode == 9, process.stderr
    assert (bundle / "model.json").read_bytes() == before
    for file, listed in manifest(bundle)["files"].items():
        assert ck.sha256_file(str(bundle / file)) == listed["sha256"], file
    # The same command run again makes the change.
    assert add_lora(capsys, bundle, loha, "--name", "ink-style", "--overwrite")[0] == 0
    check_entry(bundle, "ink-style", loha, manifest(bundle)["loras"][0]["file"])
