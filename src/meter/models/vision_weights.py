"""Pretrained vision weights from a local file, adapted to the model that was built.

The file is safetensors or a state dict (read with `weights_only=True`, never plain pickle), in timm's layout or
one timm converts (OpenAI CLIP's `visual.*`, OpenCLIP, ...). timm's own checkpoint filter of the architecture does
the conversions and the resolution changes it knows (ViT/DeiT/CLIP position embeddings, Swin and BEiT
relative-position tables for a new window or grid); absolute position embeddings that filter leaves at the old
grid (CaiT, VOLO) are resampled here the same way. The classifier is dropped; any other missing weight is an error.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed, resample_abs_pos_embed_nhwc
from timm.models import load_state_dict
from torch import nn

from meter.errors import DataError

log = logging.getLogger(__name__)


def _timm_filter(backbone: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The architecture's `checkpoint_filter_fn`, the function timm applies to its own pretrained downloads."""
    convert = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    return convert(state, backbone) if convert is not None else state


def _resample_position_embeddings(backbone: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    own = backbone.state_dict()
    for key, value in list(state.items()):
        target = own.get(key)
        if not key.endswith("pos_embed") or target is None or target.shape == value.shape:
            continue
        if value.ndim == 4:  # (1, H, W, C)
            state[key] = resample_abs_pos_embed_nhwc(value, list(target.shape[1:3]))
            continue
        grid = tuple(backbone.patch_embed.grid_size)
        prefix = target.shape[1] - math.prod(grid)  # tokens without a grid position (a class token, if any)
        state[key] = resample_abs_pos_embed(value, list(grid), num_prefix_tokens=prefix)
    return state


def load_vision_weights(backbone: nn.Module, path: Path) -> None:
    name = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture", type(backbone).__name__)
    try:
        state = load_state_dict(str(path))
    except Exception as error:  # a truncated file, a pickle that is not a plain state dict, ...
        raise DataError(f"{path}: cannot read vision weights: {error}") from None
    state = _resample_position_embeddings(backbone, _timm_filter(backbone, state))
    own = backbone.state_dict()
    classifiers = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    state = {k: v for k, v in state.items() if k in own or not k.startswith(tuple(f"{c}." for c in classifiers))}
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and own[k].shape != v.shape]  # fmt: skip
    if mismatched:
        raise DataError(f"{path}: {len(mismatched)} weights do not fit {name}, e.g. {mismatched[0]}")
    result = backbone.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise DataError(
            f"{path}: lacks {len(result.missing_keys)} weights of {name}, e.g. {result.missing_keys[:3]}"
            " (is it a checkpoint of this encoder?)"
        )
    if result.unexpected_keys:
        log.warning("%s: %d weights not used by %s, e.g. %s", path, len(result.unexpected_keys), name,
                    result.unexpected_keys[:3])  # fmt: skip
    log.info("vision weights: %s (%d tensors)", path, len(state))
