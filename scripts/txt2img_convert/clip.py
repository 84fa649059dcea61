"""CLIP text and vision towers in plain, scriptable PyTorch with transformers' parameter names.

Both towers share one encoder-layer implementation. `position_ids` is not a buffer here (positions are
always 0..L-1), so it never appears in a state dict; loaders drop it from old checkpoints.

The text model's exported `encode(input_ids, clip_skip)` is AUTOMATIC1111's "Clip skip": the hidden state after
layer L - (clip_skip - 1) of the L layers, through the final layer norm (clip_skip 1: exactly `forward`).
"""

import math
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# transformers' CLIPTextConfig / CLIPVisionConfig defaults, for configs that leave keys out.
_TEXT_DEFAULTS: Dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_VISION_DEFAULTS: Dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")


def _with_defaults(config: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    merged = dict(defaults)
    merged.update({k: v for k, v in config.items() if k in defaults and v is not None})
    if merged["hidden_act"] not in _ACTIVATIONS:
        raise NotImplementedError(f"CLIP hidden_act {merged['hidden_act']!r}")
    return merged


class CLIPAttention(nn.Module):
    def __init__(self, hidden_size: int, heads: int):
        super().__init__()
        if hidden_size % heads != 0:
            raise ValueError(f"hidden size {hidden_size} does not split into {heads} heads")
        self.heads = heads
        self.scale = 1.0 / math.sqrt(hidden_size // heads)
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, -1).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.heads, -1).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.heads, -1).transpose(1, 2)
        scores = torch.matmul(q * self.scale, k.transpose(-1, -2))
        if causal:
            future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(batch, length, -1)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.hidden_act = hidden_act
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        if self.hidden_act == "quick_gelu":
            x = x * torch.sigmoid(1.702 * x)
        elif self.hidden_act == "gelu":
            x = F.gelu(x)
        else:
            x = F.gelu(x, approximate="tanh")
        return self.fc2(x)


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        hidden = config["hidden_size"]
        eps = float(config["layer_norm_eps"])
        self.self_attn = CLIPAttention(hidden, config["num_attention_heads"])
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = CLIPMLP(hidden, config["intermediate_size"], config["hidden_act"])
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(config) for _ in range(config["num_hidden_layers"])])

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        for layer in self.layers:
            x = layer(x, causal)
        return x

    def first_layers(self, x: Tensor, causal: bool, count: int) -> Tensor:
        """The output of the first `count` layers (TorchScript unrolls the loop, so no `break`)."""
        i = 0
        for layer in self.layers:
            if i < count:
                x = layer(x, causal)
            i += 1
        return x


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        self.token_embedding = nn.Embedding(config["vocab_size"], config["hidden_size"])
        self.position_embedding = nn.Embedding(config["max_position_embeddings"], config["hidden_size"])

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = self.position_embedding.weight[: input_ids.size(1)]
        return self.token_embedding(input_ids) + positions.unsqueeze(0)


class CLIPTextTransformer(nn.Module):
    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config["hidden_size"], eps=float(config["layer_norm_eps"]))
        self.num_layers: int = int(config["num_hidden_layers"])

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids), True))

    @torch.jit.export
    def encode(self, input_ids: Tensor, clip_skip: int) -> Tensor:
        if clip_skip < 1 or clip_skip > self.num_layers:
            raise ValueError("clip_skip must be from 1 to the number of text encoder layers")
        x = self.encoder.first_layers(self.embeddings(input_ids), True, self.num_layers - (clip_skip - 1))
        return self.final_layer_norm(x)


class CLIPTextModel(nn.Module):
    """forward(input_ids int64 [B, L]) -> last_hidden_state [B, L, hidden] (after the final layer norm);
    encode(input_ids, clip_skip) -> the same from the output of layer L - (clip_skip - 1), 1 <= clip_skip <= L
    (A1111's "Clip skip"; diffusers' clip_skip is one less)."""

    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        self.text_model = CLIPTextTransformer(_with_defaults(config, _TEXT_DEFAULTS))

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.text_model(input_ids)

    @torch.jit.export
    def encode(self, input_ids: Tensor, clip_skip: int) -> Tensor:
        return self.text_model.encode(input_ids, clip_skip)


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        hidden = config["hidden_size"]
        patch = config["patch_size"]
        self.class_embedding = nn.Parameter(torch.zeros(hidden))
        self.patch_embedding = nn.Conv2d(config["num_channels"], hidden, patch, stride=patch, bias=False)
        self.position_embedding = nn.Embedding((config["image_size"] // patch) ** 2 + 1, hidden)

    def forward(self, pixel_values: Tensor) -> Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.view(1, 1, -1).expand(patches.size(0), 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.unsqueeze(0)


class CLIPVisionTransformer(nn.Module):
    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        eps = float(config["layer_norm_eps"])
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config["hidden_size"], eps=eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config["hidden_size"], eps=eps)

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)), False)
        return self.post_layernorm(x[:, 0, :])


class CLIPVisionModel(nn.Module):
    """forward(pixel_values [B, C, S, S], S = image_size) -> pooled output [B, hidden] (normed class token)."""

    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        self.vision_model = CLIPVisionTransformer(_with_defaults(config, _VISION_DEFAULTS))

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.vision_model(pixel_values)
