"""Fixtures for the Python model tests: the read-only reference data in the shared folder."""

import functools
import json
import os
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from txt2img_convert.safetensors_io import load_file  # noqa: E402

# Worst relative error per comparison label, reported at the end of the session.
_WORST: Dict[str, float] = {}


def _shared_dir() -> Path:
    return Path(os.environ.get("TXT2IMG_SHARED", str(REPO.parent / "shared"))).resolve()


@pytest.fixture(scope="session")
def reference() -> Path:
    """shared/reference; a missing folder fails the tests (parity must never be skipped silently)."""
    path = _shared_dir() / "reference"
    if not (path / "README.md").is_file():
        pytest.fail(f"reference fixtures not found at {path} (set TXT2IMG_SHARED to the shared folder)")
    return path


@functools.lru_cache(maxsize=None)
def _cached_tensors(path: str) -> Dict[str, torch.Tensor]:
    return load_file(path)


@pytest.fixture(scope="session")
def tensors(reference):
    """tensors(relative path) -> dict of the .safetensors file under reference/ (read once per session)."""

    def get(relative: str) -> Dict[str, torch.Tensor]:
        path = reference / relative
        if not path.is_file():
            pytest.fail(f"missing reference file {path}")
        return _cached_tensors(str(path))

    return get


@pytest.fixture(scope="session")
def config(reference):
    def get(relative: str) -> dict:
        path = reference / relative
        if not path.is_file():
            pytest.fail(f"missing reference file {path}")
        return json.loads(path.read_text())

    return get


@pytest.fixture(scope="session")
def sd1_weights(reference, tensors):
    """component -> diffusers-named state dict of the sd1 preset, rebuilt from the single-file checkpoint.

    The fixture's key_map.json supplies the names; VAE attention weights are stored there as 1x1 convs.
    """
    single = tensors("sd1/single_file/sd1.safetensors")
    entries = json.loads((reference / "sd1/single_file/key_map.json").read_text())
    weights: Dict[str, Dict[str, torch.Tensor]] = {}
    for entry in entries:
        value = single[entry["ldm_key"]].reshape(entry["diffusers_shape"])
        weights.setdefault(entry["component"], {})[entry["diffusers_key"]] = value
    return weights


@pytest.fixture
def check_close():
    """check_close(label, ours, ref, tol): assert ||ours-ref||/||ref|| <= tol and record the worst value."""

    def check(label: str, ours: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5) -> None:
        assert ours.shape == ref.shape, f"{label}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
        assert torch.isfinite(ours).all(), f"{label}: non-finite values"
        ours64, ref64 = ours.double(), ref.double()
        denom = ref64.norm().item()
        error = (ours64 - ref64).norm().item() / (denom if denom > 0 else 1.0)
        _WORST[label] = max(error, _WORST.get(label, 0.0))
        assert error <= tol, f"{label}: relative error {error:.3g} > {tol:g}"

    return check


def pytest_terminal_summary(terminalreporter):
    if _WORST:
        terminalreporter.write_sep("-", "worst relative errors")
        for label in sorted(_WORST):
            terminalreporter.write_line(f"{label}: {_WORST[label]:.3g}")
