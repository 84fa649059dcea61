"""Sources given as Hugging Face hub ids, without the network here."""

import os

import pytest

from txt2img_convert import hub
from txt2img_convert.checkpoints import ConversionError


def test_hub_id_without_network_or_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConversionError, match="download it yourself"):
        hub.resolve_source("someone/not-a-local-model")
    with pytest.raises(ConversionError, match="no such file"):
        hub.resolve_source(os.path.join("missing", "dir", "model.safetensors"))
