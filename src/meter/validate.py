"""Checks a config's names against the registries before any work starts, so a typo fails in the first second."""

from __future__ import annotations

from meter.config import Config
from meter.data.augment import AUGMENTATIONS, MAX_MAGNITUDE
from meter.errors import ConfigError
from meter.models.catalog import ARCHITECTURES
from meter.models.fusion import FUSIONS
from meter.models.text import TEXT
from meter.models.vision import resolve_vision
from meter.tasks.catalog import DOWNSTREAM
from meter.tasks.pretrain import check_objectives
from meter.train.distributed import check_parallel
from meter.train.runtime import pick_device, pick_dtype

TASKS = ("pretrain", *DOWNSTREAM.names())


def validate(cfg: Config) -> None:
    if cfg.task not in TASKS:
        raise ConfigError(f"task = {cfg.task!r}; choose one of: {', '.join(TASKS)}")
    resolve_vision(cfg.model.vision)
    TEXT.get(cfg.model.text.name, key="model.text")
    FUSIONS.get(cfg.model.fusion.name, key="model.fusion")
    if cfg.model.architecture not in ARCHITECTURES:
        raise ConfigError(f"model.architecture = {cfg.model.architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
    for objective in ("span", "prefix_lm"):
        if getattr(cfg.objectives, objective) > 0 and cfg.model.architecture != "encoder-decoder":
            raise ConfigError(
                f"objectives.{objective} needs a decoder: set model.architecture=encoder-decoder"
                f" (or objectives.{objective}=0)"
            )
    if not 0 < cfg.objectives.span_probability <= 1 or cfg.objectives.span_mean_length < 1:
        raise ConfigError(
            f"objectives.span_probability = {cfg.objectives.span_probability} must be in (0, 1] and"
            f" objectives.span_mean_length = {cfg.objectives.span_mean_length} at least 1 (word)"
        )
    pick_dtype(cfg.train.precision, pick_device(cfg.train.device))
    check_parallel(cfg.train.parallel)
    if cfg.task == "pretrain":
        check_objectives(cfg.objectives)
    for key in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "max_nonfinite_steps"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"train.{key} = {getattr(cfg.train, key)} must be at least 1")
    if cfg.data.image_cache_mb < 0:
        raise ConfigError(f"data.image_cache_mb = {cfg.data.image_cache_mb} must be at least 0 (0: no cache)")
    augment = cfg.data.augment
    if augment.name not in AUGMENTATIONS:
        raise ConfigError(f"data.augment = {augment.name!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    if augment.num_ops < 1:
        raise ConfigError(f"data.augment.num_ops = {augment.num_ops} must be at least 1 (data.augment=none: no ops)")
    if not 0 <= augment.magnitude <= MAX_MAGNITUDE:
        raise ConfigError(f"data.augment.magnitude = {augment.magnitude} must be in 0..{MAX_MAGNITUDE}")
