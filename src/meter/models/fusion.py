"""Fusion modules: co-attention (METER's choice) and merged attention, registered by name."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from meter.config import FusionConfig
from meter.models.layers import TransformerLayer, key_padding_mask
from meter.registry import Registry

FUSIONS: Registry[type[nn.Module]] = Registry("fusion")


@FUSIONS.register("co-attention")
class CoAttentionFusion(nn.Module):
    """Two streams; each layer: self-attention, cross-attention to the other stream's previous output, FFN."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                TransformerLayer(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout, cross=True)
                for _ in range(cfg.layers)
            )

        self.text_layers, self.image_layers = stack(), stack()

    def forward(
        self, text: Tensor, text_mask: Tensor, image: Tensor, image_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        text_keys, image_keys = key_padding_mask(text_mask), key_padding_mask(image_mask)
        for text_layer, image_layer in zip(self.text_layers, self.image_layers, strict=True):
            text, image = (
                text_layer(text, text_keys, image, image_keys),
                image_layer(image, image_keys, text, text_keys),
            )
        return text, image


@FUSIONS.register("merged")
class MergedAttentionFusion(nn.Module):
    """One stream: the two sequences concatenated through ordinary transformer layers."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout, cross=False) for _ in range(cfg.layers)
        )

    def forward(
        self, text: Tensor, text_mask: Tensor, image: Tensor, image_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if image_mask is None:
            image_mask = torch.ones(image.shape[:2], dtype=text_mask.dtype, device=image.device)
        x = torch.cat([text, image], dim=1)
        keys = key_padding_mask(torch.cat([text_mask, image_mask.to(text_mask.dtype)], dim=1))
        for layer in self.layers:
            x = layer(x, keys)
        return x[:, : text.shape[1]], x[:, text.shape[1] :]


def build_fusion(cfg: FusionConfig) -> nn.Module:
    return FUSIONS.build(cfg.name, cfg, key="model.fusion")
