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
"""

import os
import re
from dataclasses import dataclass
from typing import Dict, List

import torch

from .checkpoints import Component, ConversionError, listing, read_file, sha256_file
from .restricted_pickle import stand_in_state

TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"


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


def add(files: List[str], text_encoder: Component) -> List[Dict]:
    """Appends the embeddings in `files` to the text encoder's token embedding (its tensors and config's
    vocab_size); returns model.json's "embeddings" records: name, first_id, vectors, path, sha256."""
    table = text_encoder.tensors[TOKEN_EMBEDDING]
    width = table.shape[1]
    embeddings = [read(path) for path in files]
    seen: Dict[str, str] = {}
    for e in embeddings:
        if e.vectors.shape[1] != width:
            raise ConversionError(f"{e.path}: vectors {e.vectors.shape[1]} wide for a text encoder {width} wide: an "
                                  "embedding for another model (SD 2.x's are 1024 wide)")
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
