"""Pretrained vision weights from a local file, adapted to the model that was built.

The file is safetensors or a state dict (read with `weights_only=True`, never plain pickle), in timm's layout or
one timm converts (OpenAI CLIP's `visual.*`, OpenCLIP, ...). timm's own checkpoint filter of the architecture does
the conversions and the resolution changes it knows (ViT/DeiT/CLIP position embeddings, BEiT relative-position
tables), resampling as official METER does (plain bicubic, no antialiasing); Swin's relative-position tables for a
new window are resized here first, as METER resizes them; absolute position embeddings that filter leaves at the old
grid (CaiT, VOLO) are resampled here the same way. The classifier is dropped; any other missing weight is an error.
`adapt_vision_state` is that adaptation alone: fine-tuning a model folder at another resolution uses it too.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resample_abs_pos_embed_nhwc
from timm.models import load_state_dict
from torch import nn

from meter.errors import DataError, first_line
from meter.models.weight_files import is_torchscript_archive, torchscript_refused, unpickler_reason

log = logging.getLogger(__name__)


def architecture(backbone: nn.Module) -> str:
    """timm's name of the backbone's architecture (vit_base_patch16_224), else its class's."""
    return (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture", type(backbone).__name__)


OTHER_ENCODER_HINT = "give weights of the encoder named, or name the encoder they are of (model.vision.name)"


def timm_filter(
    backbone: nn.Module,
    state: dict[str, torch.Tensor],
    source: str = "vision weights",
    hint: str = OTHER_ENCODER_HINT,
) -> dict[str, torch.Tensor]:
    """The architecture's `checkpoint_filter_fn`, the function timm applies to its own pretrained downloads, with
    METER's resampling: relative-position tables first resized as METER resizes them (`resize_tables_as_meter`),
    and position embeddings bicubic without antialiasing (METER's adapt_position_encoding is a plain
    F.interpolate; timm's default antialiased kernel differs from it by up to a tenth of the values).
    `source` names the weights in the error when they are another architecture's; `hint` says what to do, naming
    the caller's own setting or option (a command's option is not model.vision.name)."""
    state = resize_tables_as_meter(backbone, state)
    convert = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    if convert is None:
        return state
    kwargs = {"antialias": False} if "antialias" in inspect.signature(convert).parameters else {}
    try:
        return convert(state, backbone, **kwargs)
    # what a filter fails with on another architecture's tensors (BEiT's reads a pos_embed its model lacks: an
    # AttributeError; ViT's reshapes a CaiT grid without class token: a RuntimeError)
    except (AttributeError, KeyError, IndexError, ValueError, RuntimeError) as error:
        reason = first_line(error)
        raise DataError(f"{source}: not a checkpoint of {architecture(backbone)} (timm's conversion for it failed: "
                        f"{type(error).__name__}: {reason}); {hint}") from None  # fmt: skip


def resize_tables_as_meter(backbone: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Swin's relative-position tables ((2w - 1)^2 rows, one column per head) for another window, as METER's
    swin_adapt_position_encoding does: each head's table a (2w - 1)-square image, resized bicubic (timm's own filter
    interpolates them another way). Tables with extra rows (BEiT's class-token rows) are left to timm."""
    own = backbone.state_dict()
    for key, table in list(state.items()):
        target = own.get(key)
        if not key.endswith("relative_position_bias_table") or target is None or target.shape == table.shape:
            continue
        before, after = math.isqrt(table.shape[0]), math.isqrt(target.shape[0])
        if before * before != table.shape[0] or after * after != target.shape[0] or table.shape[1] != target.shape[1]:
            continue
        images = table.transpose(0, 1).reshape(1, -1, before, before).float()
        resized = F.interpolate(images, size=(after, after), mode="bicubic", align_corners=False)
        state[key] = resized[0].permute(1, 2, 0).reshape(-1, table.shape[1]).to(table.dtype)
    return state


def _resample_position_embeddings(backbone: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    own = backbone.state_dict()
    for key, value in list(state.items()):
        target = own.get(key)
        if not key.endswith("pos_embed") or target is None or target.shape == value.shape:
            continue
        if value.ndim == 4:  # (1, H, W, C)
            state[key] = resample_abs_pos_embed_nhwc(value, list(target.shape[1:3]), antialias=False)
            continue
        grid = tuple(backbone.patch_embed.grid_size)
        prefix = target.shape[1] - math.prod(grid)  # tokens without a grid position (a class token, if any)
        state[key] = resample_abs_pos_embed(value, list(grid), num_prefix_tokens=prefix, antialias=False)
    return state


def _table_window(rows: int) -> tuple[str, int] | None:
    """The window of a relative-position table of (2h - 1)(2w - 1) rows, and its extra rows (BEiT: 3, for its
    class token)."""
    for extra in (0, 3):
        side = math.isqrt(rows - extra)
        if side * side == rows - extra and side % 2:
            window = (side + 1) // 2
            return f"{window}x{window}", extra
    return None


def _token_grid(tokens: int, prefix: int) -> str:
    side = math.isqrt(tokens - prefix)
    return f"{side}x{side}" if side * side == tokens - prefix else f"{tokens - prefix} positions"


def _describe_change(backbone: nn.Module, leaf: str, before: torch.Tensor, after: torch.Tensor) -> str:
    """What a resampling did, in the terms of the tensor: a grid of positions, or a window of relative positions."""
    if leaf.endswith("pos_embed") and after.ndim == 4:  # (1, H, W, C)
        return f"grid {before.shape[1]}x{before.shape[2]} -> {after.shape[1]}x{after.shape[2]}"
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    if leaf.endswith("pos_embed") and after.ndim == 3 and grid is not None:
        prefix = max(after.shape[1] - math.prod(grid), 0)  # tokens without a grid position (a class token)
        kept = f" (+{prefix} class token{'s' if prefix > 1 else ''}, kept)" if prefix else ""
        return f"grid {_token_grid(before.shape[1], prefix)} -> {_token_grid(after.shape[1], prefix)}{kept}"
    old, new = _table_window(before.shape[0]), _table_window(after.shape[0])
    if leaf == "relative_position_bias_table" and old and new:
        extra = f", +{new[1]} class-token rows" if new[1] else ""
        return f"window {old[0]} -> {new[0]} ({before.shape[0]} -> {after.shape[0]} rows{extra})"
    return f"{tuple(before.shape)} -> {tuple(after.shape)}"


# the tensors the adaptation resamples to a new grid or window; others may change shape only in layout (timm's
# filter reshapes a flattened patch projection), which is not a resampling
RESAMPLED = ("pos_embed", "relative_position_bias_table")
OPENAI_POSITIONS = "visual.positional_embedding"  # OpenAI CLIP's (tokens, width), timm's filter makes it pos_embed


def _before_adaptation(key: str, before: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The file's tensor that became `key`: the same key, or OpenAI CLIP's position embedding (as (1, tokens, width))
    for timm's `pos_embed`."""
    if key in before:
        return before[key]
    if key == "pos_embed" and OPENAI_POSITIONS in before and before[OPENAI_POSITIONS].ndim == 2:
        return before[OPENAI_POSITIONS].unsqueeze(0)
    return None


def log_resampled(
    backbone: nn.Module, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], source: str
) -> list[str]:
    """Logs (and returns) each kind of position tensor the adaptation resampled: which, and from what to what."""
    changes: dict[tuple[str, str], list[str]] = {}
    for key, value in after.items():
        module, _, leaf = key.rpartition(".")
        if not leaf.endswith(RESAMPLED):
            continue
        old = _before_adaptation(key, before)
        if old is None or old.shape == value.shape:
            continue
        changes.setdefault((leaf, _describe_change(backbone, leaf, old, value)), []).append(module)
    lines = [f"{leaf}{' of ' + ', '.join(modules) if any(modules) else ''}: {change}"
             for (leaf, change), modules in changes.items()]  # fmt: skip
    for line in lines:
        log.info("%s: resampled %s", source, line)
    return lines


def adapt_vision_state(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A state dict for `backbone` (converted by timm's filter, positions resampled to its grid and windows);
    logs what was resampled. `source` names where the weights came from."""
    adapted = _resample_position_embeddings(backbone, timm_filter(backbone, dict(state), source))
    log_resampled(backbone, state, adapted, source)
    return adapted


def load_vision_weights(backbone: nn.Module, path: Path) -> None:
    name = architecture(backbone)
    if is_torchscript_archive(path):  # torch's own refusal advises weights_only=False: running the file's code
        raise DataError(torchscript_refused(path))
    try:
        state = load_state_dict(str(path))
    except Exception as error:  # a truncated file, a pickle that is not a plain state dict, ...
        raise DataError(f"{path}: cannot read vision weights: {unpickler_reason(error)}") from None
    _check_patch_size(backbone, state, path, name)
    state = adapt_vision_state(backbone, state, str(path))
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
    built = len(getattr(backbone, "blocks", ()))
    deeper = [k for k in result.unexpected_keys if (_block_index(k) or -1) >= built]
    inside = [k for k in result.unexpected_keys if k not in deeper and _block_index(k) is not None]
    if inside:  # a block of the file holds what the encoder's blocks lack (layer scale): another variant of it
        raise DataError(f"{path}: its blocks hold {len(inside)} weights {name}'s blocks do not have, e.g. "
                        f"{inside[:3]}: a checkpoint of another variant (layer scale?); build the encoder it is "
                        "(model.vision.timm_kwargs) or give weights of this one")  # fmt: skip
    if deeper:  # a shallower encoder than the file's: METER builds 11 of CLIP-ViT's 12 blocks
        blocks = sorted({_block_index(k) for k in deeper})
        log.info("%s: %s is built with %d blocks; the file's blocks %s are not used", path, name, blocks[0],
                 ", ".join(map(str, blocks)))  # fmt: skip
    others = [k for k in result.unexpected_keys if k not in deeper]
    if others:
        log.warning("%s: %d weights not used by %s, e.g. %s", path, len(others), name, others[:3])
    log.info("vision weights: %s (%d tensors)", path, len(state))


PATCH_KERNELS = ("patch_embed.proj.weight", "visual.conv1.weight", "conv1.weight")  # timm's, OpenAI CLIP's


def _check_patch_size(backbone: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """A file of another patch size is refused: timm's filter would resample its patch projection (FlexiViT), an
    encoder that is neither the file's nor the one named (official METER never resamples it)."""
    own = backbone.state_dict().get("patch_embed.proj.weight")
    given = next((state[key] for key in PATCH_KERNELS if key in state), None)
    if own is None or given is None or given.ndim != 4 or given.shape[-2:] == own.shape[-2:]:
        return
    raise DataError(f"{path}: its patches are {given.shape[-1]} px; they do not fit {name}, whose patches are "
                    f"{own.shape[-1]} px (give the file of the encoder named, or name the encoder of the file)"
                    )  # fmt: skip


def _block_index(key: str) -> int | None:
    """The block number of a ViT-style key (`blocks.11.attn.qkv.weight` -> 11), else None."""
    match = re.match(r"blocks\.(\d+)\.", key)
    return int(match.group(1)) if match else None
