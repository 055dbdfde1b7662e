"""The model section's relations, checked before any work starts (validate.py): heads that divide the width, an
image size that the vision encoder's patches tile, a text length within a pretrained encoder's position table.

The encoders are built on the meta device (no memory, no weights: a base-size model takes a fraction of a second),
so what timm or transformers would refuse at build time is refused here, named by its key. With train.init_from,
the run takes that folder's architecture (models/init_from.py): the checks then read the folder's, with the
settings a fine-tuning run may change (image size, text length) taken from the config. A folder or pretrained file
that cannot be read is not checked here: the run names it when it builds the model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from meter.config import Config, ModelConfig, VisionConfig
from meter.errors import ConfigError, MeterError
from meter.models.folder import TEXT_CONFIG, read_model_folder
from meter.models.init_from import TIMM_CHANGEABLE, _check_text_length
from meter.models.text import StrictDataclassError, build_text
from meter.models.vision import build_vision


def check_model(cfg: Config, with_decoder: bool) -> None:
    """`with_decoder`: the run builds model.decoder (an encoder-decoder, or captioning, which adds one)."""
    saved = _init_model(cfg)
    fusion = (saved or cfg.model).fusion
    _check_heads("model.fusion", fusion.width, fusion.heads, fusion.mlp_ratio)
    if with_decoder:  # a folder's own decoder, else a fresh one of model.decoder's sizes (tasks/build.py)
        with_own = saved is not None and saved.architecture == "encoder-decoder"
        decoder = saved.decoder if with_own else cfg.model.decoder
        _check_heads("model.decoder", fusion.width, decoder.heads, decoder.mlp_ratio)
    _check_image_size(_vision_to_build(cfg, saved))
    _check_text(cfg, saved)


def _check_heads(section: str, width: int, heads: int, mlp_ratio: float) -> None:
    if width % heads:
        raise ConfigError(
            f"{section}.heads = {heads} must divide the fusion width model.fusion.width = {width} (each head takes "
            f"width / heads channels): e.g. {', '.join(str(h) for h in _divisors(width, heads))}"
        )
    if int(width * mlp_ratio) < 1:
        raise ConfigError(f"{section}.mlp_ratio = {mlp_ratio} gives a feed-forward layer of 0 units at width {width}")


def _divisors(width: int, near: int) -> list[int]:
    """The three divisors of `width` nearest `near`: found in pairs up to its square root (a loop to `width` itself
    held `meter plan` for minutes at model.fusion.width=99999999999)."""
    small = [d for d in range(1, math.isqrt(width) + 1) if width % d == 0]
    divisors = set(small) | {width // d for d in small}
    return sorted(sorted(divisors, key=lambda d: (abs(d - near), d))[:3])


def _init_model(cfg: Config) -> ModelConfig | None:
    """The model config of train.init_from's folder, when there is one and it can be read."""
    if not cfg.train.init_from:
        return None
    try:
        return read_model_folder(cfg.train.init_from).config.model
    except MeterError:
        return None


def _vision_to_build(cfg: Config, saved: ModelConfig | None) -> VisionConfig:
    """The vision encoder the run builds: the config's, or the folder's with the config's image size (and the timm
    settings fine-tuning may change). Never with its weights: only the shapes matter here."""
    requested = cfg.model.vision
    if saved is None:
        return dataclasses.replace(requested, weights=None)
    changed = {k: v for k, v in requested.timm_kwargs.items() if k in TIMM_CHANGEABLE}
    return dataclasses.replace(
        saved.vision, image_size=requested.image_size, weights=None, timm_kwargs={**saved.vision.timm_kwargs, **changed}
    )


def encoder_stride(vision: VisionConfig) -> int | None:
    """The side in pixels of the image region one output token of the encoder covers (its patch, or for Swin its
    last stage's), built on the meta device; None when timm does not report it."""
    with torch.device("meta"):
        backbone = build_vision(vision).backbone
    info = getattr(backbone, "feature_info", None)
    if info and "reduction" in info[-1]:
        return int(info[-1]["reduction"])
    patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
    return int(patch[0]) if patch else None


def _check_image_size(vision: VisionConfig) -> None:
    stride = encoder_stride(vision)
    if stride is None or vision.image_size % stride == 0:
        return
    fits = [stride * k for k in (vision.image_size // stride, vision.image_size // stride + 1) if k > 0]
    raise ConfigError(
        f"model.vision.image_size = {vision.image_size} must be a multiple of {stride}, the side of the image region "
        f"one token of {vision.name} covers ({'smaller than one' if vision.image_size < stride else 'the rest'} "
        f"would be cut off): e.g. {' or '.join(map(str, fits))}"
    )


def _check_text(cfg: Config, saved: ModelConfig | None) -> None:
    """The text length against a pretrained position table; a text preset transformers can build."""
    text = cfg.model.text
    if cfg.train.init_from:
        pretrained = _read_text_config(Path(cfg.train.init_from) / TEXT_CONFIG)
        if saved is not None and pretrained is not None:
            requested = dataclasses.replace(saved, text=dataclasses.replace(saved.text, max_length=text.max_length))
            _check_text_length(requested, pretrained, str(cfg.train.init_from))
        return
    if text.weights:
        pretrained = _read_text_config(Path(text.weights))
        if pretrained is not None:
            _check_text_length(cfg.model, pretrained, text.weights)
        return
    try:
        with torch.device("meta"):
            build_text(text, vocab_size=1024, pad_token_id=0)  # the vocabulary is the tokenizer's: any size builds
    except StrictDataclassError as error:  # transformers 5's configs check each field's type: hidden_size "abc"
        raise ConfigError(_field_refused(text.hf_kwargs, error)) from None
    except (ValueError, TypeError, RuntimeError, KeyError, ZeroDivisionError) as error:  # hidden_size -1, act "foo"
        raise ConfigError(
            f"model.text.hf_kwargs = {text.hf_kwargs} (model.text = {text.name!r}, size {text.size}): transformers "
            f"cannot build that text encoder: {str(error).strip().splitlines()[0]}"
        ) from None


def _field_refused(hf_kwargs: dict, error: Exception) -> str:
    """The message for a value transformers' strict config refuses, naming the hf_kwargs key when the error names
    one of them (its text: "Validation error for field 'hidden_size':\n    TypeError: ... expected int, got str")."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    named = re.search(r"field '([^']+)'", str(error))
    if named and named.group(1) in hf_kwargs:
        key = named.group(1)
        return (f"model.text.hf_kwargs.{key} = {hf_kwargs[key]!r}: transformers refuses it ({reason}); give a value "
                "of the type it expects")  # fmt: skip
    return f"model.text.hf_kwargs = {hf_kwargs}: transformers refuses them ({reason})"


def _read_text_config(folder: Path) -> PretrainedConfig | None:
    if not (folder / "config.json").is_file():
        return None
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, StrictDataclassError):  # the run names the folder when it loads it
        return None
