"""The text encoder's `encode(input_ids, clip_skip)` (AUTOMATIC1111's "Clip skip"), as exported into bundles:
clip_skip 1 is `forward` bit for bit, clip_skip k the output of layer L - (k - 1) through the final layer norm
(what diffusers computes with clip_skip=k-1: hidden_states[-k], then final_layer_norm), and model.json records L."""

import io

import pytest
import torch

from txt2img_convert import export
from txt2img_convert.clip import CLIPTextModel
from txt2img_convert.presets import preset
from txt2img_convert.unet import script

TINY_RUN = "ddim_s10_neg_g5_w24_h16"


def by_hand(model: CLIPTextModel, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    """Eager, one layer at a time: every hidden state as transformers' output_hidden_states lists them (the
    embeddings, then each layer's output), hidden_states[-clip_skip], then the final layer norm."""
    text = model.text_model
    hidden_states = [text.embeddings(input_ids)]
    for layer in text.encoder.layers:
        hidden_states.append(layer(hidden_states[-1], True))
    return text.final_layer_norm(hidden_states[-clip_skip])


def saved_and_loaded(model: torch.nn.Module) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(script(model), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.fixture(scope="module")
def tiny_text_encoder(config, tensors):
    model = CLIPTextModel(config("tiny/model/text_encoder/config.json"))
    model.load_state_dict(tensors("tiny/model/text_encoder/model.safetensors"), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def random_text_encoder():
    torch.manual_seed(0)
    return CLIPTextModel({"hidden_size": 16, "intermediate_size": 24, "num_attention_heads": 2,
                          "num_hidden_layers": 4, "vocab_size": 100, "max_position_embeddings": 10}).eval()


def test_clip_skip_1_is_forward_bit_for_bit(tiny_text_encoder, tensors):
    ref = tensors(f"tiny/runs/{TINY_RUN}/tensors.safetensors")
    loaded = saved_and_loaded(tiny_text_encoder)
    with torch.no_grad():
        for prefix in ("text", "uncond_text"):
            ids = ref[f"{prefix}/input_ids"]
            forward = loaded(ids)
            assert torch.equal(loaded.encode(ids, 1), forward), prefix
            assert torch.equal(tiny_text_encoder.encode(ids, 1), tiny_text_encoder(ids)), prefix
            assert torch.equal(forward, tiny_text_encoder(ids)), prefix


def test_encode_is_the_hidden_state_of_an_earlier_layer(tiny_text_encoder, random_text_encoder, tensors, check_close):
    ids_tiny = tensors(f"tiny/runs/{TINY_RUN}/tensors.safetensors")["text/input_ids"]
    ids_random = torch.randint(0, 100, (3, 10))
    with torch.no_grad():
        for model, ids in ((tiny_text_encoder, ids_tiny), (random_text_encoder, ids_random)):
            layers = len(model.text_model.encoder.layers)
            loaded = saved_and_loaded(model)
            outputs = []
            for clip_skip in range(1, layers + 1):
                expected = by_hand(model, ids, clip_skip)
                assert torch.equal(model.encode(ids, clip_skip), expected), clip_skip
                check_close("clip skip scripted", loaded.encode(ids, clip_skip), expected, 1e-6)
                outputs.append(expected)
            # Each clip skip is a different layer's output (the first layer's is the last one allowed).
            for a, b in zip(outputs, outputs[1:]):
                assert not torch.allclose(a, b)


def test_clip_skip_out_of_range_is_refused(random_text_encoder):
    loaded = saved_and_loaded(random_text_encoder)
    ids = torch.zeros(1, 10, dtype=torch.long)
    for bad in (0, -1, 5):
        with pytest.raises(Exception, match="clip_skip must be from 1"):
            loaded.encode(ids, bad)
        with pytest.raises(ValueError, match="clip_skip must be from 1"):
            random_text_encoder.encode(ids, bad)


def test_frozen_module_keeps_encode_when_asked(random_text_encoder):
    ids = torch.randint(0, 100, (2, 10))
    loaded = saved_and_loaded(random_text_encoder)
    frozen = torch.jit.freeze(loaded, preserved_attrs=["encode"])  # what txt2img --graph freeze does
    with torch.no_grad():
        assert torch.equal(frozen.encode(ids, 2), loaded.encode(ids, 2))
        assert torch.equal(frozen(ids), loaded(ids))


def test_model_json_records_the_text_encoder_layers(config):
    def fields(text):  # with a U-Net that attends to this text encoder's width
        unet = {**config("sd1/model/unet/config.json"), "cross_attention_dim": text["hidden_size"]}
        return export.model_fields(unet, config("sd1/model/vae/config.json"), text, {}, None)

    assert fields(config("sd1/model/text_encoder/config.json"))["text_num_layers"] == \
        config("sd1/model/text_encoder/config.json")["num_hidden_layers"]
    assert fields(config("tiny/model/text_encoder/config.json"))["text_num_layers"] == 5
    assert fields(preset("full")["text_encoder"])["text_num_layers"] == 12
    text = dict(preset("tiny")["text_encoder"])
    del text["num_hidden_layers"]  # transformers' default, as CLIPTextModel builds it
    assert fields(text)["text_num_layers"] == 12 == len(CLIPTextModel(text).text_model.encoder.layers)
