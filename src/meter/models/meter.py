"""The METER model, composed from a vision encoder, a text encoder, a fusion module and task heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig

from meter.config import ModelConfig
from meter.errors import ConfigError
from meter.models.fusion import build_fusion
from meter.models.heads import build_head
from meter.models.layers import Pooler, init_bert_weights
from meter.models.text import TextEncoder, build_text
from meter.models.vision import VisionEncoder, build_vision

IMAGE_POOLS = ("first", "mean")


@dataclass
class Fused:
    text: Tensor  # (B, L, width): the fused text stream
    image: Tensor  # (B, N, width): the fused image stream
    joint: Tensor  # (B, 2 * width): pooled text and image, concatenated


class Meter(nn.Module):
    """Encoders -> projections + modality embeddings -> fusion -> poolers; heads read the joint feature."""

    def __init__(
        self,
        vision: VisionEncoder,
        text: TextEncoder,
        fusion: nn.Module,
        width: int,
        heads: dict[str, nn.Module],
        token_types: int = 2,
        image_pool: str = "first",
    ) -> None:
        super().__init__()
        if image_pool not in IMAGE_POOLS:
            raise ConfigError(f"model.image_pool = {image_pool!r}; choose one of: {', '.join(IMAGE_POOLS)}")
        self.vision = vision
        self.text = text
        self.text_proj = nn.Linear(text.width, width)
        self.image_proj = nn.Linear(vision.width, width)
        self.token_type = nn.Embedding(token_types, width)
        self.fusion = fusion
        self.text_pooler = Pooler(width)
        self.image_pooler = Pooler(width)
        self.heads = nn.ModuleDict(heads)
        self.width = width
        self.image_pool = image_pool
        for module in self.new_modules():
            module.apply(init_bert_weights)

    def new_modules(self) -> list[nn.Module]:
        """The parts that never come pretrained with an encoder (they train at a higher learning rate)."""
        return [self.text_proj, self.image_proj, self.token_type, self.fusion, self.text_pooler, self.image_pooler]

    def encode_image(self, pixels: Tensor) -> Tensor:
        return self.vision(pixels)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.text(input_ids, attention_mask)

    def fuse(self, text: Tensor, text_mask: Tensor, image: Tensor, image_token_type: int = 1) -> Fused:
        """Fuses encoder outputs; `image_token_type` is 1, or 2 for NLVR2's second image."""
        text = self.text_proj(text) + self.token_type.weight[0]
        image = self.image_proj(image) + self.token_type.weight[image_token_type]
        text, image = self.fusion(text, text_mask, image, None)
        image_summary = image if self.image_pool == "first" else image.mean(dim=1, keepdim=True)
        joint = torch.cat([self.text_pooler(text), self.image_pooler(image_summary)], dim=-1)
        return Fused(text, image, joint)

    def forward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Fused:
        return self.fuse(self.encode_text(input_ids, attention_mask), attention_mask, self.encode_image(pixels))


def build_meter(
    cfg: ModelConfig,
    vocab_size: int,
    pad_token_id: int,
    heads: dict[str, int],
    token_types: int = 2,
    text_hf_config: PretrainedConfig | None = None,
) -> Meter:
    """`heads` maps a head kind (mlm, itm, vqa, ...) to its output size; `text_hf_config` rebuilds a saved text
    encoder exactly (it may have come pretrained, with sizes no preset has)."""
    if cfg.architecture != "encoder":
        raise ConfigError(f"model.architecture = {cfg.architecture!r}; choose one of: encoder")
    width = cfg.fusion.width
    return Meter(
        vision=build_vision(cfg.vision, summary_token=cfg.image_pool == "first"),
        text=build_text(cfg.text, vocab_size, pad_token_id, text_hf_config),
        fusion=build_fusion(cfg.fusion),
        width=width,
        heads={kind: build_head(kind, width, size) for kind, size in heads.items()},
        token_types=token_types,
        image_pool=cfg.image_pool,
    )
