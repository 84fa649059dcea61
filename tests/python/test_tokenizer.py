"""The SentencePiece model built by txt2img_convert.tokenizer follows the recipe whose ids are CLIP's ids."""
import json
import os
import re
from pathlib import Path

import pytest
import sentencepiece
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from txt2img_convert import tokenizer

SHARED = Path(os.environ.get("TXT2IMG_SHARED", Path(__file__).resolve().parents[3] / "shared"))
CLIP_VOCAB = SHARED / "clip" / "bpe_simple_vocab_16e6.txt.gz"
DIFFUSERS_TOKENIZER = SHARED / "reference" / "sd1" / "model" / "tokenizer"
Piece = spm_pb2.ModelProto.SentencePiece


@pytest.fixture(scope="module")
def merges():
    return tokenizer.read_merges(CLIP_VOCAB)


@pytest.fixture(scope="module")
def model_bytes(merges):
    return tokenizer.build_model(merges)


@pytest.fixture(scope="module")
def model(model_bytes):
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def test_reads_both_merge_formats(merges):
    assert len(merges) == 48894
    assert merges[0] == ("i", "n")
    assert tokenizer.read_merges(DIFFUSERS_TOKENIZER / "merges.txt") == merges


def test_pieces_ids_and_scores_follow_the_recipe(model, merges):
    pieces = model.pieces
    assert len(pieces) == 49409
    alphabet = tokenizer.byte_alphabet()
    # CLIP's bytes_to_unicode order: '!'..'~', '¡'..'¬', '®'..'ÿ', then the other bytes as U+0100 onwards.
    assert alphabet[:3] == ["!", '"', "#"] and alphabet[93] == "~" and alphabet[94] == "\u00a1"
    assert alphabet[188:] == [chr(0x100 + i) for i in range(68)]
    for i, char in enumerate(alphabet):
        assert (pieces[i].piece, pieces[i].score, pieces[i].type) == (char, 0.0, Piece.NORMAL)
        assert (pieces[256 + i].piece, pieces[256 + i].score) == (char + "\u2581", 0.0)
    for rank in (0, 1, 1000, 48893):
        left, right = merges[rank]
        piece = pieces[512 + rank]
        assert piece.piece == (left + right).replace("</w>", "\u2581")
        assert piece.score == -(rank + 1) and piece.type == Piece.NORMAL
    assert (pieces[49406].piece, pieces[49406].type) == ("<|startoftext|>", Piece.CONTROL)
    assert (pieces[49407].piece, pieces[49407].type) == ("<|endoftext|>", Piece.CONTROL)
    assert (pieces[49408].piece, pieces[49408].type) == ("<unk>", Piece.UNKNOWN)
    assert model.trainer_spec.model_type == spm_pb2.TrainerSpec.BPE
    assert model.trainer_spec.treat_whitespace_as_suffix
    spec = model.normalizer_spec
    assert spec.name == "identity" and not spec.precompiled_charsmap
    assert spec.add_dummy_prefix and spec.escape_whitespaces and spec.remove_extra_whitespaces


def test_every_piece_is_the_diffusers_token_with_the_same_id(model):
    vocab = json.loads((DIFFUSERS_TOKENIZER / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408
    for token, token_id in vocab.items():
        assert model.pieces[token_id].piece == token.replace("</w>", "\u2581")


def test_sentencepiece_encodes_pre_tokens_to_clip_ids(model_bytes):
    """Golden prompts of printable ASCII without '&' or '<|': for them CLIP's cleaning is whitespace collapse and
    lowercasing, the pre-token regex reduces to ASCII classes, and the byte alphabet maps each byte to itself."""
    processor = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
    pre_token = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")
    checked = 0
    with open(SHARED / "clip" / "tokenizer-golden.jsonl", encoding="utf-8") as golden:
        for line in golden:
            record = json.loads(line)
            prompt = record["prompt"]
            if not all(" " <= c <= "~" for c in prompt) or "&" in prompt or "<|" in prompt:
                continue
            words = pre_token.findall(" ".join(prompt.split()).lower())
            assert processor.encode(" ".join(words)) == record["ids"], prompt
            checked += 1
    assert checked > 500


def test_cli_writes_the_model(tmp_path, model_bytes):
    out = tmp_path / "sub" / "tokenizer.model"
    tokenizer.main(["--vocab", str(CLIP_VOCAB), "--out", str(out)])
    assert out.read_bytes() == model_bytes
