"""Builds the SentencePiece model that does CLIP's BPE merges for the C++ tokenizer.

The model lists one piece per CLIP token, in CLIP's id order, so SentencePiece ids are CLIP ids:
  0-255        the byte alphabet characters (CLIP's bytes_to_unicode, in its order)
  256-511      each of those followed by '▁', which stands for CLIP's end-of-word marker "</w>"
  512-49405    the merges, by rank; score -(rank + 1) makes SentencePiece merge in CLIP's rank order
  49406/49407  <|startoftext|> / <|endoftext|> (control pieces: the C++ side inserts them itself)
and one <unk> piece after them, required by SentencePiece and never produced (every byte has a piece).
The C++ side feeds SentencePiece the byte-mapped pre-tokens joined by spaces; with the whitespace treated as a
suffix, each word ends in '▁', which (score 0, above any merge) first joins the last character like "</w>" does.
"""
from __future__ import annotations

import argparse
import gzip
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as spm_pb2

NUM_MERGES = 49152 - 256 - 2  # what SD v1's CLIP tokenizer uses: 48,894 merges, vocabulary 49,408
END_OF_WORD = "</w>"
WORD_SUFFIX = "\u2581"
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<unk>"


def byte_alphabet() -> list[str]:
    """CLIP's bytes_to_unicode values in its order: the printable Latin-1 bytes as themselves, then the other
    bytes, in increasing order, as U+0100 onwards."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(0x100 + i) for i in range(len(others))]


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """The first 48,894 merges of CLIP's bpe_simple_vocab_16e6.txt.gz or of a diffusers merges.txt (both have a
    header line first; gzip is recognised by its magic number)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    merges = []
    for number, line in enumerate(lines, start=2):
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}:{number}: expected a merge 'left right', got {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != NUM_MERGES:
        raise ValueError(f"{path}: has {len(merges)} merges, CLIP's tokenizer needs {NUM_MERGES}")
    return merges


def build_model(merges: list[tuple[str, str]]) -> bytes:
    """The serialized SentencePiece ModelProto for these merges (see the module docstring for its layout)."""
    model = spm_pb2.ModelProto()
    normal = spm_pb2.ModelProto.SentencePiece.NORMAL

    def add(piece: str, score: float, kind=normal) -> None:
        entry = model.pieces.add()
        entry.piece = piece
        entry.score = score
        entry.type = kind

    alphabet = byte_alphabet()
    for char in alphabet:
        add(char, 0.0)
    for char in alphabet:
        add(char + WORD_SUFFIX, 0.0)
    seen = set(alphabet) | {char + WORD_SUFFIX for char in alphabet}
    for rank, (left, right) in enumerate(merges):
        piece = (left + right).replace(END_OF_WORD, WORD_SUFFIX)
        if piece in seen:
            raise ValueError(f"merge {rank} ({left} {right}) repeats the token {piece!r}")
        seen.add(piece)
        add(piece, -float(rank + 1))
    add(START_OF_TEXT, 0.0, spm_pb2.ModelProto.SentencePiece.CONTROL)
    add(END_OF_TEXT, 0.0, spm_pb2.ModelProto.SentencePiece.CONTROL)
    add(UNKNOWN, 0.0, spm_pb2.ModelProto.SentencePiece.UNKNOWN)

    trainer = model.trainer_spec
    trainer.model_type = spm_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(model.pieces)
    trainer.treat_whitespace_as_suffix = True
    trainer.byte_fallback = False
    trainer.unk_id = len(model.pieces) - 1
    trainer.bos_id = len(model.pieces) - 3
    trainer.eos_id = len(model.pieces) - 2
    trainer.pad_id = -1
    trainer.unk_piece = UNKNOWN
    trainer.bos_piece = START_OF_TEXT
    trainer.eos_piece = END_OF_TEXT

    # Identity: CLIP's cleaning happens before SentencePiece, which must not normalise (no NFKC) on top.
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.precompiled_charsmap = b""
    normalizer.add_dummy_prefix = True
    normalizer.remove_extra_whitespaces = True
    normalizer.escape_whitespaces = True
    return model.SerializeToString()


def write_model(vocab_path: str | Path, out_path: str | Path) -> None:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(build_model(read_merges(vocab_path)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", required=True, help="bpe_simple_vocab_16e6.txt.gz or a diffusers merges.txt")
    parser.add_argument("--out", required=True, help="where to write tokenizer.model")
    args = parser.parse_args(argv)
    write_model(args.vocab, args.out)


if __name__ == "__main__":
    main()
