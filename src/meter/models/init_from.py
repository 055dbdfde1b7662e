"""Fine-tuning from a model folder: which of the config's model settings apply, and the folder's weights fitted to them.

What only changes how the same weights are used comes from the fine-tuning config, as in the official code: the
image resolution (position embeddings and Swin's windows are resampled, as METER's `adapt_position_encoding` does),
dropout, drop path, and the text length within the position table (text dropout: when model.text.hf_kwargs holds
it). Everything else is the folder's: its architecture (encoders and their sizes, widths, depths, heads, fusion,
vocabulary) and the initialisation of its fresh parts. The config "asks for" another value of such a setting when
its value differs from the setting's default and from the folder's: that is a warning, and the folder's is kept
(recipes name the architecture too, and a recipe that leaves a setting at its default asks for nothing).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers import PretrainedConfig

from meter.config import ModelConfig
from meter.errors import ConfigError
from meter.models.meter import Meter
from meter.models.text import position_offset
from meter.models.vision import resolve_vision
from meter.models.vision_weights import adapt_vision_state

log = logging.getLogger(__name__)
Weights = dict[str, torch.Tensor]

# settings (below model.) that change no weight's shape, or whose weights are resampled to the new value
CHANGEABLE = {"vision.image_size", "vision.drop_path", "text.max_length", "fusion.dropout", "decoder.dropout"}
TIMM_CHANGEABLE = {"window_size", "drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate",
                   "patch_drop_rate"}  # fmt: skip
TEXT_CHANGEABLE = {"hidden_dropout_prob", "attention_probs_dropout_prob"}
STARTING_POINTS = {"vision.weights", "text.weights", "text.tokenizer"}  # replaced by the folder's weights and tokenizer
VISION_PREFIX = "vision.backbone."


def set_by_the_run(key: str) -> bool:
    """Whether a `model.*` setting (dotted, as config_differences names it) of a fine-tuning run from a model folder
    is the run's own (its resolution, dropout, text length), not the folder's."""
    setting = key.removeprefix("model.")
    for mapping, keys in (("vision.timm_kwargs.", TIMM_CHANGEABLE), ("text.hf_kwargs.", TEXT_CHANGEABLE)):
        if setting.startswith(mapping):
            return setting.removeprefix(mapping) in keys
    return setting in CHANGEABLE


def _settings(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Every plain setting of a config section by its dotted path; mappings (timm_kwargs, hf_kwargs) are skipped."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value, path = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(_settings(value, f"{path}."))
        elif not isinstance(value, dict):
            out[path] = value
    return out


def _assign(cfg: Any, path: str, value: Any) -> None:
    *sections, name = path.split(".")
    for section in sections:
        cfg = getattr(cfg, section)
    setattr(cfg, name, value)


def _keep(setting: str, folder_value: Any, requested: Any, source: str) -> None:
    log.warning(
        "train.init_from: model.%s = %r is ignored: the model of %s has %s = %r, which fine-tuning keeps",
        setting, requested, source, setting, folder_value,
    )  # fmt: skip


def _differing(requested: dict[str, Any], folder: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in requested.items() if v != folder.get(k)}


def _check_text_length(cfg: ModelConfig, text_config: PretrainedConfig, source: str) -> None:
    positions = getattr(text_config, "max_position_embeddings", None)
    if not positions:
        return
    usable = positions - position_offset(text_config.model_type)  # the folder's: embedding-only may be a RoBERTa's
    if cfg.text.max_length > usable:
        raise ConfigError(
            f"model.text.max_length = {cfg.text.max_length}: the text encoder of {source} has a position table of"
            f" {usable} tokens: model.text.max_length can be at most {usable}"
        )


def finetune_model_config(
    saved: ModelConfig, requested: ModelConfig, text_config: PretrainedConfig, source: str
) -> ModelConfig:
    """The model config of a fine-tuning run from folder `source`: `saved` (the folder's) with the config's values of
    the changeable settings; warns of the others it asks for. Sets the text dropout it names on `text_config` (the
    folder's text encoder) too."""
    result = copy.deepcopy(saved)
    result.vision.weights = result.text.weights = None
    with_decoder = saved.architecture == "encoder-decoder"
    folder, defaults = _settings(saved), _settings(ModelConfig())
    changed = []
    for setting, value in _settings(requested).items():
        if setting in STARTING_POINTS and value:  # a study row's pretraining weights reach its fine-tuning too
            log.warning("train.init_from: model.%s = %r is not read: the weights and the tokenizer are %s's",
                        setting, value, source)  # fmt: skip
        if setting in STARTING_POINTS or (setting.startswith("decoder.") and not with_decoder):
            continue
        if setting in CHANGEABLE:
            if value != folder[setting]:
                changed.append(f"model.{setting} {folder[setting]!r} -> {value!r}")
                _assign(result, setting, value)
        elif value != defaults[setting] and value != folder[setting]:
            _keep(setting, folder[setting], value, source)
    folder_timm = resolve_vision(saved.vision).kwargs
    for key, value in _differing(requested.vision.timm_kwargs, folder_timm).items():
        if key in TIMM_CHANGEABLE:
            changed.append(f"model.vision.timm_kwargs.{key} {folder_timm.get(key)!r} -> {value!r}")
            result.vision.timm_kwargs[key] = value
        else:
            _keep(f"vision.timm_kwargs.{key}", folder_timm.get(key), value, source)
    folder_text = {k: getattr(text_config, k, saved.text.hf_kwargs.get(k)) for k in requested.text.hf_kwargs}
    for key, value in _differing(requested.text.hf_kwargs, folder_text).items():
        if key in TEXT_CHANGEABLE:
            changed.append(f"model.text.hf_kwargs.{key} {folder_text[key]!r} -> {value!r}")
            result.text.hf_kwargs[key] = value
            setattr(text_config, key, value)
        else:
            _keep(f"text.hf_kwargs.{key}", folder_text[key], value, source)
    if "window_size" not in requested.vision.timm_kwargs:  # a window asked for is taken as asked, above
        changed += _windows_follow_image(saved, result)
    _check_text_length(result, text_config, source)
    if changed:
        log.info("train.init_from: %s fine-tuned with %s", source, ", ".join(changed))
    if saved.vision.drop_path and not result.vision.drop_path:
        log.warning("train.init_from: %s was trained with model.vision.drop_path = %s and is fine-tuned without it "
                    "(this config's 0); official METER keeps the pretraining's drop path in fine-tuning (Swin's "
                    "0.1): set model.vision.drop_path to keep it", source, saved.vision.drop_path)  # fmt: skip
    return result


def _windows_follow_image(saved: ModelConfig, result: ModelConfig) -> list[str]:
    """A Swin folder whose window is written in it (an imported official one: window = image size / 32) at another
    resolution: the window follows the image, as the official code sets it and as a Swin of meter's own sizes does
    (it kept the old window: the paper's VQA at 576 px ran with 384 px's window 12, not 18)."""
    kwargs = resolve_vision(saved.vision).kwargs
    pinned = saved.vision.timm_kwargs.get("window_size")
    old, new = saved.vision.image_size, result.vision.image_size
    if pinned is None or "depths" not in kwargs or "patch_size" not in kwargs or old == new:
        return []
    stride = kwargs["patch_size"] * 2 ** (len(kwargs["depths"]) - 1)
    if pinned != old // stride:  # a window of its own choosing, not its image's grid: kept
        return []
    if new % stride:
        raise ConfigError(f"model.vision.image_size = {new}: this Swin's window is its last stage's grid (image "
                          f"size / {stride}); give a multiple of {stride}, or set model.vision.timm_kwargs.window_size"
                          )  # fmt: skip
    result.vision.timm_kwargs["window_size"] = new // stride
    return [f"model.vision.timm_kwargs.window_size {pinned} -> {new // stride}"]


def vision_adapter(model: Meter, source: str) -> Callable[[Weights], Weights]:
    """Fits a folder's weights to `model`: its vision encoder's through the same adaptation as pretrained vision
    weights (position embeddings and relative-position tables resampled to the model's resolution and windows)."""

    def adapt(weights: Weights) -> Weights:
        vision = {k.removeprefix(VISION_PREFIX): v for k, v in weights.items() if k.startswith(VISION_PREFIX)}
        adapted = adapt_vision_state(model.vision.backbone, vision, f"{source} (train.init_from)")
        others = {k: v for k, v in weights.items() if not k.startswith(VISION_PREFIX)}
        return {**others, **{VISION_PREFIX + k: v for k, v in adapted.items()}}

    return adapt
