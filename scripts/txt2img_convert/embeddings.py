"""Textual-inversion embeddings (A1111's embeddings/ folder) converted into the bundle (convert.py --embedding FILE).

An embedding is N vectors of the text encoder's width that stand for a word in prompts; A1111 names it after its
file ("EasyNegative.safetensors" -> "EasyNegative"). The converter appends the vectors to the text encoder's token
embedding, as rows from CLIP's vocabulary size (49408) on, and records name, first row and count in model.json;
txt2img's tokenizer replaces the name's tokens in a prompt by those rows' ids.

Files read (.safetensors, or a pickle read without running code as checkpoints.read_tensors does):

* A1111 .pt/.bin: {"string_to_param": {"*": [N, D]}, "name": ..., "step": ...}, or the original textual_inversion
  code's, whose "string_to_param" is an nn.ParameterDict (read, as A1111 reads it, for its parameters);
* A1111 .safetensors: {"emb_params": [N, D]};
* diffusers / textual_inversion training ("learned_embeds.bin" / .safetensors): {"<token>": [D] or [N, D]}.

Refused with a ConversionError: SDXL embeddings ("clip_l" and "clip_g"), vectors of another width than the text
encoder's (SD 2.x's are 1024 wide), any other layout, two embeddings whose names differ only in case (CLIP
lowercases prompts), and a name without letters or digits.

A diffusers folder can hold textual inversions of its own: tokens its tokenizer adds to CLIP's vocabulary
(tokenizer/added_tokens.json, and tokenizer_config.json's added_tokens_decoder, {"<cat-toy>": 49408}), whose vectors
are rows of the text encoder's token embedding beyond CLIP's (diffusers' textual_inversion.py saves a whole
pipeline so). They are recorded in model.json as the embeddings are, over the rows they already have.
"""

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

from .checkpoints import Component, ConversionError, listing, read_file, read_json, sha256_file, tensor_shape
from .launch import progress
from .restricted_pickle import stand_in_state

TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"
CLIP_VOCABULARY = 49408  # ids from here on are rows that txt2img's tokenizer reaches through model.json's embeddings
_CLIP_SPECIAL = {"<|startoftext|>": 49406, "<|endoftext|>": 49407}


@dataclass
class Embedding:
    name: str
    path: str
    vectors: torch.Tensor  # [N, D] float32


def read(path: str) -> Embedding:
    """The embedding in `path`, named after the file."""
    if not os.path.isfile(path):
        raise ConversionError(f"--embedding {path}: no such file")
    name = os.path.splitext(os.path.basename(path))[0]
    if not re.search(r"\w", name):
        raise ConversionError(f"--embedding {path}: the name {name!r} has no letter or digit to write in a prompt")
    data = read_file(path)
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a dict, found {type(data).__name__}: not an embedding file")
    if "clip_l" in data or "clip_g" in data:
        raise ConversionError(f"{path}: an SDXL embedding (clip_l / clip_g vectors); only SD 1.x embeddings fit")
    params = data.get("string_to_param")
    # The original textual_inversion code saves an nn.ParameterDict, read as A1111 reads it: its _parameters.
    state = stand_in_state(params)
    if isinstance(state, tuple) and state and isinstance(state[0], dict):
        state = state[0]
    if isinstance(state, dict) and isinstance(state.get("_parameters"), dict):
        params = state["_parameters"]
    if isinstance(params, dict) and isinstance(params.get("*"), torch.Tensor):
        vectors = params["*"]
    elif isinstance(data.get("emb_params"), torch.Tensor):
        vectors = data["emb_params"]
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1 or len(data) != 1:
            raise ConversionError(f"{path}: not an embedding file this converter knows (A1111's string_to_param "
                                  f"or emb_params, or one token's vectors); its keys: {listing(map(str, data))}")
        vectors = next(iter(tensors.values()))
    vectors = vectors.detach().float()
    if vectors.dim() == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.dim() != 2 or vectors.shape[0] == 0:
        raise ConversionError(f"{path}: the embedding's vectors have shape {list(vectors.shape)}, expected [N, width]")
    if not torch.isfinite(vectors).all():
        raise ConversionError(f"{path}: the embedding's vectors hold not-a-number or infinite values: the file is "
                              "damaged")
    return Embedding(name, path, vectors)


def _tokenizer_additions(tokenizer: str) -> Dict[str, int]:
    """token -> id of the tokens a transformers tokenizer folder adds: added_tokens.json, and the
    added_tokens_decoder of tokenizer_config.json (transformers >= 4.34), which takes precedence where both name a
    token, as transformers reads them."""
    tokens: Dict[str, int] = {}
    path = os.path.join(tokenizer, "added_tokens.json")
    if os.path.isfile(path):
        tokens.update(read_json(path))
    config = os.path.join(tokenizer, "tokenizer_config.json")
    decoder = read_json(config).get("added_tokens_decoder") if os.path.isfile(config) else None
    if isinstance(decoder, dict):
        for id_, token in decoder.items():
            content = token.get("content") if isinstance(token, dict) else None
            if not isinstance(content, str) or not id_.isdigit():
                raise ConversionError(f"{config}: added_tokens_decoder has {id_!r}: {token!r}, not an id and a token "
                                      "with its content")
            tokens[content] = int(id_)
    for token, id_ in tokens.items():
        if type(id_) is not int:
            raise ConversionError(f"{path}: the token {token!r} has the id {id_!r}, not a whole number")
    return tokens


def added_tokens(tokenizer: str, text_encoder: Component) -> List[Dict]:
    """The tokens that the tokenizer folder `tokenizer` adds beyond CLIP's vocabulary, as model.json's "embeddings"
    records (name, first_id, vectors) over the text encoder's rows that hold them. A token with continuations
    `<token>_1`, `<token>_2`, ... on the next rows (a multi-vector textual inversion) is one record of that many
    vectors, as diffusers' pipelines expand the token in a prompt."""
    # A token "added" with the id CLIP's vocabulary already gives it changes nothing (SD 2's tokenizer adds its pad
    # token "!" as 0 so; the start and end tokens are listed so by every recent tokenizer_config.json).
    vocab_file = os.path.join(tokenizer, "vocab.json")
    own = {**(read_json(vocab_file) if os.path.isfile(vocab_file) else {}), **_CLIP_SPECIAL}
    tokens = {k: v for k, v in _tokenizer_additions(tokenizer).items() if own.get(k) != v}
    if "" in tokens:  # transformers' tokenizers skip an empty added token too: no text is split at it
        empty_id = tokens.pop("")
        progress(f"{tokenizer}: passing over the empty token the tokenizer adds (id {empty_id}), as "
                 "transformers does")
    if not tokens:
        return []
    for name, first_id in tokens.items():
        if not name.strip():
            raise ConversionError(f"{tokenizer}: the tokenizer adds {name!r} (id {first_id}), a token no prompt can "
                                  "write; remove it from added_tokens.json (or tokenizer_config.json's "
                                  "added_tokens_decoder)")
    rows = tensor_shape(text_encoder, TOKEN_EMBEDDING, 2)[0]
    records = []
    continuations = set()
    for name, first_id in sorted(tokens.items(), key=lambda item: item[1]):
        if not CLIP_VOCABULARY <= first_id < rows:
            place = (f"beyond the {rows} rows of the text encoder's token embedding ({text_encoder.origin})"
                     if first_id >= CLIP_VOCABULARY else "one of CLIP's own, which txt2img cannot give another text")
            raise ConversionError(f"{tokenizer}: the tokenizer adds the token {name!r} as id {first_id}, {place}")
        if name in continuations:
            continue
        vectors = 1
        while f"{name}_{vectors}" in tokens:
            if tokens[f"{name}_{vectors}"] != first_id + vectors:
                raise ConversionError(f"{tokenizer}: the tokenizer adds {name}_{vectors} as id "
                                      f"{tokens[f'{name}_{vectors}']}, not right after {name} (id {first_id}), where "
                                      "txt2img needs the vectors of one token to be")
            continuations.add(f"{name}_{vectors}")
            vectors += 1
        records.append({"name": name, "first_id": first_id, "vectors": vectors})
    return records


def add(files: List[str], text_encoder: Component, added: Sequence[Dict] = ()) -> List[Dict]:
    """Appends the embeddings in `files` to the text encoder's token embedding (its tensors and config's
    vocab_size), after all its rows; returns model.json's "embeddings" records: name, first_id, vectors, path,
    sha256. `added`: the model's own (added_tokens()), whose names they must not take."""
    width = tensor_shape(text_encoder, TOKEN_EMBEDDING, 2)[1]
    table = text_encoder.tensors[TOKEN_EMBEDDING]
    embeddings = [read(path) for path in files]
    own = {r["name"].lower() for r in added}
    seen: Dict[str, str] = {}
    for e in embeddings:
        if e.vectors.shape[1] != width:
            raise ConversionError(f"{e.path}: vectors {e.vectors.shape[1]} wide for a text encoder {width} wide: an "
                                  "embedding for another model (SD 2.x's are 1024 wide)")
        if e.name.lower() in own:
            raise ConversionError(f"--embedding {e.path}: the model's tokenizer has a token {e.name!r} of its own "
                                  "(CLIP lowercases prompts); rename the file")
        other = seen.get(e.name.lower())
        if other is not None:
            raise ConversionError(f"--embedding {other} and {e.path}: both are named {e.name!r} in prompts (CLIP "
                                  "lowercases them)")
        seen[e.name.lower()] = e.path
    records = []
    first_id = table.shape[0]
    for e in embeddings:
        records.append({"name": e.name, "first_id": first_id, "vectors": e.vectors.shape[0],
                        "path": os.path.abspath(e.path), "sha256": sha256_file(e.path)})
        first_id += e.vectors.shape[0]
    if embeddings:
        text_encoder.tensors[TOKEN_EMBEDDING] = torch.cat([table.float()] + [e.vectors for e in embeddings])
        text_encoder.config = {**text_encoder.config, "vocab_size": first_id}
    return records
