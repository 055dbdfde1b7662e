"""Vision encoders through timm, behind one adapter: tokens (B, 1 + N, width), a CLS-like token first.

A registered name maps to a timm architecture and its size presets; `timm:<name>` reaches any other timm model
that yields tokens or a feature grid. The CLS-like token is the model's own pooled feature (`forward_head` with
`pre_logits`): the class token of ViT/DeiT/CLIP/CaiT/VOLO, the mean token of Swin and BEiT. Weights load from a
local file only (see `vision_weights.py`), resampled to the configured resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import build_model_with_cfg
from timm.models.volo import VOLO
from torch import Tensor, nn

from meter.config import VisionConfig
from meter.errors import ConfigError, DataError
from meter.models.conv_stem import replace_patchify_with_conv_stem
from meter.models.vision_weights import load_vision_weights
from meter.registry import Registry

TINY_VIT = {"embed_dim": 128, "depth": 3, "num_heads": 2, "patch_size": 8}
TINY_SWIN = {"embed_dim": 64, "depths": (2, 2), "num_heads": (2, 4), "patch_size": 4}
BASE_SWIN = {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32), "patch_size": 4}
TINY_CAIT = {**TINY_VIT, "depth_token_only": 1}
TINY_VOLO = {
    "layers": (1, 1, 1, 1), "embed_dims": (64, 128, 128, 128), "num_heads": (2, 2, 2, 2), "stem_hidden_dim": 32,
    "post_layers": ("ca",),
}  # fmt: skip
BASE_VOLO = {  # VOLO-D5, the entry point's arguments (its entry point does not let them be overridden)
    "layers": (12, 12, 20, 4), "embed_dims": (384, 768, 768, 768), "num_heads": (12, 16, 16, 16), "mlp_ratio": 4,
    "stem_hidden_dim": 128,
}  # fmt: skip

Builder = Callable[..., nn.Module]


def _build_volo(name: str, **kwargs: Any) -> nn.Module:
    # timm's VOLO entry points fix layers/embed_dims/num_heads; build the class with the variant's pretrained config
    return build_model_with_cfg(VOLO, name, pretrained=False, **kwargs)


@dataclass(frozen=True)
class VisionSpec:
    timm_name: str
    sizes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"tiny": TINY_VIT, "base": {}})
    windows_follow_image: bool = False  # Swin: window = last stage's grid (7 at 224 px, 9 at 288, 12 at 384)
    builder: Builder | None = None  # None: timm.create_model


VISION: Registry[VisionSpec] = Registry("vision encoder")
VISION.add("vit", VisionSpec("vit_base_patch16_224"), "ViT-B/16, ImageNet (timm vit_base_patch16_224)")
VISION.add("deit", VisionSpec("deit_base_patch16_224"), "DeiT-B/16 (timm deit_base_patch16_224)")
VISION.add(
    "clip-vit",
    VisionSpec("vit_base_patch16_clip_quickgelu_224"),
    "CLIP-ViT-B/16, OpenAI's (timm vit_base_patch16_clip_quickgelu_224)",
)
VISION.add(
    "clip-vit-b32",
    VisionSpec("vit_base_patch32_clip_quickgelu_224", {"tiny": {**TINY_VIT, "patch_size": 16}, "base": {}}),
    "CLIP-ViT-B/32, OpenAI's (timm vit_base_patch32_clip_quickgelu_224)",
)
VISION.add(
    "swin",
    VisionSpec("swin_base_patch4_window7_224", {"tiny": TINY_SWIN, "base": BASE_SWIN}, windows_follow_image=True),
    "Swin-B (timm swin_base_patch4_window7_224); mean token as CLS, windows follow the resolution",
)
VISION.add("cait", VisionSpec("cait_m36_384", {"tiny": TINY_CAIT, "base": {}}), "CaiT-M36 (timm cait_m36_384)")
VISION.add(
    "volo",
    VisionSpec("volo_d5_224", {"tiny": TINY_VOLO, "base": BASE_VOLO}, builder=_build_volo),
    "VOLO-D5 (timm volo_d5_224)",
)
VISION.add("beit", VisionSpec("beit_base_patch16_224"), "BEiT-B/16, mean token as CLS (timm beit_base_patch16_224)")


@dataclass(frozen=True)
class VisionRecipe:
    """What timm is asked to build: an architecture name and its keyword arguments."""

    timm_name: str
    kwargs: dict[str, Any]
    builder: Builder | None = None


class VisionEncoder(nn.Module):
    """A timm backbone that returns its pooled feature, then its patch tokens: (B, 1 + N, width). A model whose
    features are a grid (Swin) has no token of its own for the pooled feature: with `summary_token` off it returns
    the grid alone (a model that mean-pools the image stream, as the official Swin METER does)."""

    def __init__(self, backbone: nn.Module, summary_token: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.summary_token = summary_token
        self.width: int = backbone.num_features
        pooled = getattr(backbone, "head_hidden_size", self.width)
        if pooled != self.width:
            raise ConfigError(f"model.vision: the pooled feature ({pooled}) and the tokens ({self.width}) differ")
        prefix = getattr(backbone, "num_prefix_tokens", None)
        if prefix is None:  # VOLO: a class token prepended after its class-attention blocks
            prefix = 1 if getattr(backbone, "cls_token", None) is not None else 0
        self.prefix_tokens: int = prefix
        self.channels_last = getattr(backbone, "output_fmt", "NCHW") == "NHWC"
        # BEiT-style heads normalise the pooled feature (fc_norm) and leave the tokens unnormalised: normalise the
        # tokens the same way so that every token the fusion sees is on one scale
        fc_norm, norm = getattr(backbone, "fc_norm", None), getattr(backbone, "norm", None)
        self.normalize_tokens = isinstance(fc_norm, nn.LayerNorm) and isinstance(norm, nn.Identity)
        pretrained_cfg = getattr(backbone, "pretrained_cfg", {}) or {}
        self.mean: tuple[float, float, float] = tuple(pretrained_cfg.get("mean", (0.5, 0.5, 0.5)))
        self.std: tuple[float, float, float] = tuple(pretrained_cfg.get("std", (0.5, 0.5, 0.5)))

    def forward(self, pixels: Tensor) -> Tensor:
        features = self.backbone.forward_features(pixels)
        if features.ndim == 4:  # a grid: (B, H, W, C) for Swin, (B, C, H, W) for convolutional models
            tokens = features.flatten(1, 2) if self.channels_last else features.flatten(2).transpose(1, 2)
            if not self.summary_token:
                return tokens
        else:
            tokens = features[:, self.prefix_tokens :]
        pooled = self.backbone.forward_head(features, pre_logits=True)
        if self.normalize_tokens:
            tokens = self.backbone.fc_norm(tokens)
        return torch.cat([pooled.unsqueeze(1), tokens], dim=1)


def _swin_windows(image_size: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Swin's window = its last stage's grid, as in the public checkpoints (window 7 at 224 px, 12 at 384 px): every
    stage then splits into whole windows, and pretrained relative-position tables are resized to it."""
    if "window_size" in kwargs:
        return kwargs
    stride = kwargs["patch_size"] * 2 ** (len(kwargs["depths"]) - 1)
    if image_size % stride:
        raise ConfigError(
            f"model.vision.image_size = {image_size}: Swin needs a multiple of {stride} (patch x 2^(stages - 1));"
            " or set model.vision.timm_kwargs.window_size"
        )
    return {**kwargs, "window_size": image_size // stride}


# timm arguments meter sets from its own settings: given in timm_kwargs too, they silently won (a drop_path_rate of
# 0 there turned model.vision.drop_path off) or failed later (img_size against image_size)
OWN_TIMM_ARGUMENTS = {"img_size": "model.vision.image_size", "drop_path_rate": "model.vision.drop_path",
                      "num_classes": "nothing: the encoder has no classifier, the heads are meter's",
                      "in_chans": "nothing: meter feeds it RGB images (3 channels)"}  # fmt: skip


def resolve_vision(cfg: VisionConfig) -> VisionRecipe:
    """The timm architecture and keyword arguments for a vision config."""
    for key, setting in OWN_TIMM_ARGUMENTS.items():
        if key in cfg.timm_kwargs:
            raise ConfigError(
                f"model.vision.timm_kwargs.{key}: meter sets it from {setting}; remove it from "
                f"timm_kwargs" + ("" if setting.startswith("nothing") else f" and set {setting}")
            )
    if cfg.name.startswith("timm:"):
        return VisionRecipe(cfg.name.removeprefix("timm:"), dict(cfg.timm_kwargs))
    spec = VISION.get(cfg.name, key="model.vision")
    if cfg.size not in spec.sizes:
        raise ConfigError(
            f"model.vision.size = {cfg.size!r} is not a size of {cfg.name}; choose one of: " + ", ".join(spec.sizes)
        )
    kwargs = {**spec.sizes[cfg.size], **cfg.timm_kwargs}
    if spec.windows_follow_image:
        kwargs = _swin_windows(cfg.image_size, kwargs)
    return VisionRecipe(spec.timm_name, kwargs, spec.builder)


def build_vision(cfg: VisionConfig, summary_token: bool = True) -> VisionEncoder:
    recipe = resolve_vision(cfg)
    kwargs = {"img_size": cfg.image_size, "num_classes": 0, "drop_path_rate": cfg.drop_path, **recipe.kwargs}
    build = recipe.builder or partial(timm.create_model, pretrained=False)
    try:
        try:
            backbone = build(recipe.timm_name, **kwargs)
        except TypeError as error:
            if "img_size" not in str(error):
                raise
            kwargs.pop("img_size")  # a convolutional model: it takes any resolution and has no such argument
            backbone = build(recipe.timm_name, **kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError, KeyError, ZeroDivisionError) as error:  # patch_size 0
        raise ConfigError(f"model.vision = {cfg.name!r}: timm cannot build {recipe.timm_name!r}: {error}") from None
    if cfg.conv_stem:
        if cfg.weights:
            raise ConfigError(
                "model.vision.conv_stem = true replaces the patch projection that pretrained weights hold;"
                " use it for an encoder trained from scratch (model.vision.weights = null)"
            )
        replace_patchify_with_conv_stem(backbone, cfg.name)
    if cfg.weights:
        path = Path(cfg.weights)
        if not path.is_file():
            raise DataError(f"vision weights not found: {path} (model.vision.weights must be a local file)")
        load_vision_weights(backbone, path)
    return VisionEncoder(backbone, summary_token)
