"""convert.py --embedding: textual-inversion files in A1111's and diffusers' layouts appended to the tiny reference
model's token embedding, model.json's records, and the errors."""

import json
import shutil

import pytest
import torch

from converter_runs import convert, expect_errors
from txt2img_convert import checkpoints as ck
from txt2img_convert import embeddings
from txt2img_convert.checkpoints import ConversionError
from txt2img_convert.safetensors_io import load_file, save_file

WIDTH = 32  # the tiny reference text encoder's


def vectors(n, seed, width=WIDTH):
    return torch.randn((n, width), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def text_encoder(reference):
    return ck.load_diffusers(str(reference / "tiny/model")).text_encoder


def test_every_layout_reads_the_same_vectors(tmp_path):
    v = vectors(3, 0)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": v.clone().requires_grad_()},
                "name": "internal-name", "step": 3000, "sd_checkpoint": "abc"}, tmp_path / "a1111.pt")
    save_file({"emb_params": v}, str(tmp_path / "a1111.safetensors"))
    torch.save({"<cat-toy>": v}, tmp_path / "learned_embeds.bin")
    save_file({"<cat-toy>": v[0]}, str(tmp_path / "one.safetensors"))
    # The original textual_inversion code's: string_to_param an nn.ParameterDict, read with the restricted unpickler.
    torch.save({"string_to_token": {"*": torch.tensor(265)},
                "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(v.clone())})}, tmp_path / "ldm.pt")
    for name in ("a1111.pt", "a1111.safetensors", "learned_embeds.bin", "ldm.pt"):
        e = embeddings.read(str(tmp_path / name))
        assert e.name == name.rsplit(".", 1)[0]  # named after the file, as A1111 does, not after "name"
        assert torch.equal(e.vectors, v), name
    assert torch.equal(embeddings.read(str(tmp_path / "one.safetensors")).vectors, v[:1])


def test_vectors_are_appended_to_the_token_embedding(tmp_path, text_encoder):
    before = text_encoder.tensors[embeddings.TOKEN_EMBEDDING]
    assert before.shape == (49408, WIDTH)
    save_file({"emb_params": vectors(2, 1)}, str(tmp_path / "EasyNegative.safetensors"))
    save_file({"emb_params": vectors(1, 2)}, str(tmp_path / "bad-hands-5.safetensors"))
    records = embeddings.add([str(tmp_path / "EasyNegative.safetensors"), str(tmp_path / "bad-hands-5.safetensors")],
                             text_encoder)
    assert [(r["name"], r["first_id"], r["vectors"]) for r in records] == [("EasyNegative", 49408, 2),
                                                                           ("bad-hands-5", 49410, 1)]
    assert len(records[0]["sha256"]) == 64
    table = text_encoder.tensors[embeddings.TOKEN_EMBEDDING]
    assert table.shape == (49411, WIDTH) and text_encoder.config["vocab_size"] == 49411
    assert torch.equal(table[:49408], before)
    assert torch.equal(table[49408:], torch.cat([vectors(2, 1), vectors(1, 2)]))


def test_errors(tmp_path, text_encoder):
    def error(*files):
        with pytest.raises(ConversionError) as e:
            embeddings.add([str(f) for f in files], text_encoder)
        return str(e.value)

    save_file({"emb_params": vectors(2, 0, width=1024)}, str(tmp_path / "sd2.safetensors"))
    assert "1024 wide" in error(tmp_path / "sd2.safetensors")
    save_file({"clip_l": vectors(2, 0, 768), "clip_g": vectors(2, 0, 1280)}, str(tmp_path / "xl.safetensors"))
    assert "SDXL" in error(tmp_path / "xl.safetensors")
    save_file({"a": vectors(1, 0), "b": vectors(1, 0)}, str(tmp_path / "two.safetensors"))
    assert "not an embedding file" in error(tmp_path / "two.safetensors")
    save_file({"emb_params": vectors(1, 0)}, str(tmp_path / "Style.safetensors"))
    (tmp_path / "other").mkdir()
    save_file({"emb_params": vectors(1, 0)}, str(tmp_path / "other" / "style.safetensors"))
    assert "both are named 'style'" in error(tmp_path / "Style.safetensors", tmp_path / "other" / "style.safetensors")
    save_file({"emb_params": vectors(1, 0)}, str(tmp_path / "---.safetensors"))
    assert "no letter or digit" in error(tmp_path / "---.safetensors")
    assert "no such file" in error(tmp_path / "missing.pt")
    save_file({"emb_params": torch.full((1, WIDTH), float("inf"))}, str(tmp_path / "broken.safetensors"))
    assert "not-a-number or infinite" in error(tmp_path / "broken.safetensors")
    assert text_encoder.tensors[embeddings.TOKEN_EMBEDDING].shape == (49408, WIDTH)  # nothing added on failure


def test_bundle_records_the_embeddings(tmp_path, reference, capsys):
    save_file({"emb_params": vectors(2, 3)}, str(tmp_path / "EasyNegative.safetensors"))
    out = tmp_path / "bundle"
    status, stderr = convert(capsys, reference / "tiny/model", "--no-safety-checker", "--embedding",
                             tmp_path / "EasyNegative.safetensors", "--out", out)
    assert status == 0, stderr
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["embeddings"] == [{"name": "EasyNegative", "first_id": 49408, "vectors": 2}]
    assert manifest["source"]["embeddings"][0]["name"] == "EasyNegative"
    table = torch.jit.load(str(out / "text_encoder.pt")).state_dict()[embeddings.TOKEN_EMBEDDING]
    assert torch.equal(table[49408:], vectors(2, 3))
    refused = ("--tiny", "--vocab", tmp_path / "v", "--embedding", tmp_path / "EasyNegative.safetensors", "--out",
               tmp_path / "x")
    expect_errors(capsys, [(refused, 2, "--embedding applies to a SOURCE")], tmp_path / "x")


def test_a_missing_token_embedding_is_named(tmp_path, reference, capsys):
    folder = tmp_path / "model"
    shutil.copytree(reference / "tiny/model", folder)
    weights = folder / "text_encoder/model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if k != embeddings.TOKEN_EMBEDDING}, str(weights))
    expect_errors(capsys, [((folder, "--no-safety-checker", "--out", tmp_path / "x"), 1,
                            f"{weights}: missing text encoder tensor {embeddings.TOKEN_EMBEDDING}")], tmp_path / "x")


def with_added_tokens(reference, folder, tokens, rows, config_tokens=None):
    """A copy of the tiny model whose tokenizer adds `tokens` (added_tokens.json; `config_tokens` in
    tokenizer_config.json's added_tokens_decoder) and whose text encoder has `rows` more rows (seeded vectors)."""
    shutil.copytree(reference / "tiny/model", folder)
    weights = folder / "text_encoder/model.safetensors"
    tensors = load_file(str(weights))
    tensors[embeddings.TOKEN_EMBEDDING] = torch.cat([tensors[embeddings.TOKEN_EMBEDDING], vectors(rows, 7)])
    save_file(tensors, str(weights))
    config = json.loads((folder / "text_encoder/config.json").read_text())
    (folder / "text_encoder/config.json").write_text(json.dumps({**config, "vocab_size": 49408 + rows}))
    if tokens is not None:
        (folder / "tokenizer/added_tokens.json").write_text(json.dumps(tokens))
    if config_tokens is not None:
        config = json.loads((folder / "tokenizer/tokenizer_config.json").read_text())
        config["added_tokens_decoder"].update((str(i), {"content": token, "special": False})
                                              for token, i in config_tokens.items())
        (folder / "tokenizer/tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_tokens_the_tokenizer_adds_are_recorded_as_embeddings(tmp_path, reference, capsys):
    """diffusers' textual_inversion.py saving a whole pipeline: tokenizer/added_tokens.json names rows of the text
    encoder beyond CLIP's, which model.json records as embeddings over those rows (a multi-vector token's
    continuations <token>_1, ... with it, as diffusers' pipelines expand it); an --embedding goes after all rows."""
    folder = with_added_tokens(reference, tmp_path / "model", {"<cat-toy>": 49408, "<style>": 49409,
                                                               "<style>_1": 49410}, 4, config_tokens={"sks": 49411})
    save_file({"emb_params": vectors(2, 3)}, str(tmp_path / "EasyNegative.safetensors"))
    out = tmp_path / "bundle"
    status, stderr = convert(capsys, folder, "--no-safety-checker", "--embedding",
                             tmp_path / "EasyNegative.safetensors", "--out", out)
    assert status == 0, stderr
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["embeddings"] == [{"name": "<cat-toy>", "first_id": 49408, "vectors": 1, "added_token": True},
                                      {"name": "<style>", "first_id": 49409, "vectors": 2, "added_token": True},
                                      {"name": "sks", "first_id": 49411, "vectors": 1, "added_token": True},
                                      {"name": "EasyNegative", "first_id": 49412, "vectors": 2}]
    assert [e["name"] for e in manifest["source"]["embeddings"]] == ["EasyNegative"]  # the others are the model's
    table = torch.jit.load(str(out / "text_encoder.pt")).state_dict()[embeddings.TOKEN_EMBEDDING]
    assert torch.equal(table[49408:], torch.cat([vectors(4, 7), vectors(2, 3)]))
    assert "the tokenizer adds the token <cat-toy>: recorded as an embedding of 1 vector from id 49408\n" in stderr
    assert "the tokenizer adds the token sks: recorded as an embedding of 1 vector from id 49411\n" in stderr


def test_a_token_added_with_clip_s_own_id_changes_nothing(tmp_path, reference, capsys):
    """A tokenizer that lists CLIP's own token under CLIP's own id ("!": 0, SD 2's pad token) adds nothing: the model
    converts as without it."""
    folder = with_added_tokens(reference, tmp_path / "model", {"!": 0, "<cat-toy>": 49408}, 1,
                               config_tokens={"a</w>": 320})
    out = tmp_path / "bundle"
    status, stderr = convert(capsys, folder, "--no-safety-checker", "--out", out)
    assert status == 0, stderr
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["embeddings"] == [{"name": "<cat-toy>", "first_id": 49408, "vectors": 1, "added_token": True}]


def test_an_empty_added_token_is_passed_over_as_transformers_does(tmp_path, reference, capsys):
    """transformers' tokenizers skip an empty added token, so no prompt reaches its row: the model converts without
    it, saying so."""
    folder = with_added_tokens(reference, tmp_path / "model", {"<cat-toy>": 49408}, 2, config_tokens={"": 49409})
    out = tmp_path / "bundle"
    status, stderr = convert(capsys, folder, "--no-safety-checker", "--out", out)
    assert status == 0, stderr
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["embeddings"] == [{"name": "<cat-toy>", "first_id": 49408, "vectors": 1, "added_token": True}]
    assert "passing over the empty token the tokenizer adds (id 49409), as transformers does" in stderr


def test_added_tokens_that_cannot_be_recorded_are_refused(tmp_path, reference, capsys):
    cases = [
        ({"<cat-toy>": 49409}, "the tokenizer adds the token '<cat-toy>' as id 49409, beyond the 49409 rows of the "
                               "text encoder's token embedding"),
        ({"<cat-toy>": 320}, "the tokenizer adds the token '<cat-toy>' as id 320, one of CLIP's own, which txt2img "
                             "cannot give another text"),
        # "!" is CLIP's id 0: added as id 1 (CLIP's '"') it is not a token that changes nothing.
        ({"!": 1}, "the tokenizer adds the token '!' as id 1, one of CLIP's own"),
        ({"<x>": 49408, "<x>_1": 49410, "<y>": 49409}, "the tokenizer adds <x>_1 as id 49410, not right after <x> "
                                                       "(id 49408)"),
        ({" ": 49408}, "the tokenizer adds ' ' (id 49408), a token no prompt can write; remove it"),
    ]
    for i, (tokens, message) in enumerate(cases):
        folder = with_added_tokens(reference, tmp_path / f"model{i}", tokens, len(tokens))
        expect_errors(capsys, [((folder, "--no-safety-checker", "--out", tmp_path / "x"), 1,
                                f"{folder / 'tokenizer'}: {message}")], tmp_path / "x")
    folder = with_added_tokens(reference, tmp_path / "decoder", None, 1, config_tokens={"\t": 49408})
    expect_errors(capsys, [((folder, "--no-safety-checker", "--out", tmp_path / "x"), 1,
                            f"{folder / 'tokenizer'}: the tokenizer adds '\\t' (id 49408), a token no prompt can "
                            "write")], tmp_path / "x")
    folder = with_added_tokens(reference, tmp_path / "clash", {"easynegative": 49408}, 1)
    save_file({"emb_params": vectors(2, 3)}, str(tmp_path / "EasyNegative.safetensors"))
    clash = (folder, "--no-safety-checker", "--embedding", tmp_path / "EasyNegative.safetensors", "--out",
             tmp_path / "x")
    expect_errors(capsys, [(clash, 1, "the model's tokenizer has a token 'EasyNegative' of its own")], tmp_path / "x")
