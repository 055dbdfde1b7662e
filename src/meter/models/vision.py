"""Vision encoders through timm, behind one adapter: tokens (B, 1 + N, width), a CLS-like token first.

A registered name maps to a timm architecture and its size presets; `timm:<name>` reaches any other timm model
that yields tokens. Weights load from a local file only (safetensors or a state dict, OpenAI CLIP layout
included), through timm's own key conversion and position-embedding resampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from meter.config import VisionConfig
from meter.errors import ConfigError, DataError
from meter.registry import Registry

TINY_VIT = {"embed_dim": 128, "depth": 3, "num_heads": 2, "patch_size": 8}


@dataclass(frozen=True)
class VisionSpec:
    timm_name: str
    sizes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"tiny": TINY_VIT, "base": {}})


VISION: Registry[VisionSpec] = Registry("vision encoder")
VISION.add("vit", VisionSpec("vit_base_patch16_224"), "ViT-B/16, ImageNet (timm vit_base_patch16_224)")
VISION.add("deit", VisionSpec("deit_base_patch16_224"), "DeiT-B/16 (timm deit_base_patch16_224)")
VISION.add("clip-vit", VisionSpec("vit_base_patch16_clip_quickgelu_224"), "CLIP-ViT-B/16, OpenAI layout with QuickGELU")
VISION.add(
    "clip-vit-b32",
    VisionSpec("vit_base_patch32_clip_quickgelu_224", {"tiny": {**TINY_VIT, "patch_size": 16}, "base": {}}),
    "CLIP-ViT-B/32, OpenAI layout with QuickGELU",
)


class VisionEncoder(nn.Module):
    """A timm backbone that returns its tokens, CLS-like first; grids (Swin) get their mean token prepended, unless
    `summary_token` is off (a model that mean-pools the image stream, as the official Swin METER does)."""

    def __init__(self, backbone: nn.Module, summary_token: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.summary_token = summary_token
        self.width: int = backbone.num_features
        pretrained_cfg = getattr(backbone, "pretrained_cfg", {}) or {}
        self.mean: tuple[float, float, float] = tuple(pretrained_cfg.get("mean", (0.5, 0.5, 0.5)))
        self.std: tuple[float, float, float] = tuple(pretrained_cfg.get("std", (0.5, 0.5, 0.5)))

    def forward(self, pixels: Tensor) -> Tensor:
        tokens = self.backbone.forward_features(pixels)
        if tokens.ndim == 4:  # (B, H, W, C) grid without a class token: its mean stands in for one
            tokens = tokens.flatten(1, 2)
            if self.summary_token:
                tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return tokens


def resolve_vision(cfg: VisionConfig) -> tuple[str, dict[str, Any]]:
    """The timm name and keyword arguments for a vision config."""
    if cfg.name.startswith("timm:"):
        return cfg.name.removeprefix("timm:"), dict(cfg.timm_kwargs)
    spec = VISION.get(cfg.name, key="model.vision")
    if cfg.size not in spec.sizes:
        raise ConfigError(
            f"model.vision.size = {cfg.size!r} is not a size of {cfg.name}; choose one of: " + ", ".join(spec.sizes)
        )
    return spec.timm_name, {**spec.sizes[cfg.size], **cfg.timm_kwargs}


def build_vision(cfg: VisionConfig, summary_token: bool = True) -> VisionEncoder:
    name, kwargs = resolve_vision(cfg)
    kwargs = {"img_size": cfg.image_size, "num_classes": 0, "drop_path_rate": cfg.drop_path, **kwargs}
    if cfg.weights:
        path = Path(cfg.weights)
        if not path.is_file():
            raise DataError(f"vision weights not found: {path} (model.vision.weights must be a local file)")
        # timm converts the OpenAI CLIP layout and resamples position embeddings to img_size
        backbone = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    else:
        try:
            backbone = timm.create_model(name, pretrained=False, **kwargs)
        except RuntimeError as error:
            raise ConfigError(f"model.vision = {cfg.name!r}: timm cannot build {name!r}: {error}") from None
    return VisionEncoder(backbone, summary_token)
