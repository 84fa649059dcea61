"""diffusers' StableDiffusionSafetyChecker (the tensor part) in plain, scriptable PyTorch.

Only the embeddings and cosine similarities are computed here; the score rounding and flagging rule is
applied by the C++ pipeline.
"""

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip import CLIPVisionModel

_NUM_CONCEPTS = 17
_NUM_SPECIAL_CARE = 3


class StableDiffusionSafetyChecker(nn.Module):
    """forward(clip_input [B,3,S,S]) -> (image_embeds [B,P], cos_dist [B,17], special_cos_dist [B,3],
    concept_embeds_weights [17], special_care_embeds_weights [3]), similarities in float32."""

    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        vision_config = config.get("vision_config") or {}
        projection_dim = int(config.get("projection_dim", 512))
        self.vision_model = CLIPVisionModel(vision_config)
        hidden = self.vision_model.vision_model.post_layernorm.normalized_shape[0]
        self.visual_projection = nn.Linear(hidden, projection_dim, bias=False)
        # Parameters (not buffers) as in diffusers, frozen like there.
        self.concept_embeds = nn.Parameter(torch.ones(_NUM_CONCEPTS, projection_dim), requires_grad=False)
        self.special_care_embeds = nn.Parameter(torch.ones(_NUM_SPECIAL_CARE, projection_dim), requires_grad=False)
        self.concept_embeds_weights = nn.Parameter(torch.ones(_NUM_CONCEPTS), requires_grad=False)
        self.special_care_embeds_weights = nn.Parameter(torch.ones(_NUM_SPECIAL_CARE), requires_grad=False)

    def forward(self, clip_input: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        image_embeds = self.visual_projection(self.vision_model(clip_input))
        normalized = F.normalize(image_embeds.float())
        special_cos_dist = torch.mm(normalized, F.normalize(self.special_care_embeds.float()).t())
        cos_dist = torch.mm(normalized, F.normalize(self.concept_embeds.float()).t())
        return (
            image_embeds,
            cos_dist,
            special_cos_dist,
            self.concept_embeds_weights.float(),
            self.special_care_embeds_weights.float(),
        )
