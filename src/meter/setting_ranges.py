"""The allowed range of every numeric setting of the config tree, checked before any work starts (validate.py).

Every int and float setting of `Config` has an entry in RANGES (tests/test_validate.py checks that none is missing,
so a new setting comes with its range). A float is never nan or infinite, whatever its range. Relations between
settings (heads that divide a width, an image size that fits the encoder's patch) are validate.py's.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union

from meter.config import RANDAUGMENT_MAX_MAGNITUDE, Config
from meter.errors import ConfigError


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # `low` itself is outside the range
    high_open: bool = False
    note: str = ""  # what a value means at the ends ("0: off")

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def describe(self, value: float) -> str:
        """What the range allows, as an error message says it: "at least 1", "in 0..30", "in [0, 1)"."""
        if self.low is None and self.high is None:
            text = "an integer" if isinstance(value, int) else "a finite number"
        elif self.high is None:
            text = f"{'above' if self.low_open else 'at least'} {_number(self.low)}"
            text += "" if math.isfinite(value) else " (and finite)"
        elif not (self.low_open or self.high_open):
            text = f"in {_number(self.low)}..{_number(self.high)}"
        else:
            low, high = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {low}{_number(self.low)}, {_number(self.high)}{high}"
        return f"{text} ({self.note})" if self.note else text


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else str(int(value or 0))


def at_least(low: float, note: str = "") -> Range:
    return Range(low=low, note=note)


def above(low: float, note: str = "") -> Range:
    return Range(low=low, low_open=True, note=note)


def fraction(low_open: bool = False, high_open: bool = False, note: str = "") -> Range:
    return Range(0, 1, low_open, high_open, note)


LOSS_WEIGHT = at_least(0, "a loss weight; 0: off")
MAX_BEAM = 32  # captions: beams beyond this cost memory (a copy of the decoder's cache each) and gain nothing
PROBABILITY = fraction(high_open=True)  # dropout, drop path: 1 would drop everything

# the rule of each numeric setting, by its dotted key; `[*]` stands for any item of a list
RANGES: dict[str, Range] = {
    "model.vision.image_size": at_least(1, "pixels"),
    "model.vision.drop_path": PROBABILITY,
    "model.text.max_length": at_least(3, "tokens: the start and end tokens and one more"),
    "model.fusion.layers": at_least(1),
    "model.fusion.width": at_least(1),
    "model.fusion.heads": at_least(1),
    "model.fusion.mlp_ratio": above(0),
    "model.fusion.dropout": PROBABILITY,
    "model.decoder.layers": at_least(1),
    "model.decoder.heads": at_least(1),
    "model.decoder.mlp_ratio": above(0),
    "model.decoder.dropout": PROBABILITY,
    "model.decoder.max_length": at_least(2, "the start token and one more"),
    "model.init_std": above(0),
    "data.num_workers": at_least(0, "0: load in the main process"),
    "data.worker_timeout": above(0, "seconds"),
    "data.max_bad_samples": fraction(note="the fraction of samples that may be skipped"),
    "data.image_cache_mb": at_least(0, "0: no cache"),
    "data.max_image_pixels": Range(note="1 to Pillow's own limit: validate.py asks data/images.py"),
    "data.augment.num_ops": at_least(1, "data.augment=none: no operations"),
    "data.augment.magnitude": Range(0, RANDAUGMENT_MAX_MAGNITUDE),
    "data.sources[*].weight": at_least(0, "passes per epoch; 0: unused"),
    "data.shuffle_buffer": at_least(1),
    "data.open_shards": at_least(1),
    "data.streams_per_rank": at_least(1),
    "objectives.mlm": LOSS_WEIGHT,
    "objectives.itm": LOSS_WEIGHT,
    "objectives.mim": LOSS_WEIGHT,
    "objectives.mlm_probability": fraction(low_open=True, high_open=True),
    "objectives.itm_group_size": at_least(2),
    "objectives.mim_mask_ratio": fraction(low_open=True, high_open=True),
    "objectives.span": LOSS_WEIGHT,
    "objectives.prefix_lm": LOSS_WEIGHT,
    "objectives.span_probability": fraction(low_open=True),
    "objectives.span_mean_length": at_least(1, "words"),
    "vqa.min_answer_count": at_least(1),
    "retrieval.max_eval_images": at_least(0, "0: all"),
    "retrieval.negatives": at_least(0),
    "retrieval.itc": LOSS_WEIGHT,
    "retrieval.temperature": above(0),
    "retrieval.negative_texts": at_least(1),
    "retrieval.itm": LOSS_WEIGHT,
    "retrieval.shortlist": at_least(0, "0: every pair"),
    "captioning.max_eval_images": at_least(0, "0: all"),
    "captioning.beam_size": Range(1, MAX_BEAM, note="1: greedy search; each beam keeps a copy of the decoder's cache"),
    "captioning.length_penalty": Range(),
    "captioning.max_length": at_least(0, "0: as many as the decoder has positions"),
    "train.max_steps": at_least(1),
    "train.stop_at": at_least(0, "0: train.max_steps"),
    "train.batch_size": at_least(1),
    "train.grad_accum": at_least(1),
    "train.global_batch": at_least(0),
    "train.lr": above(0),
    "train.lr_mult_cross_modal": at_least(0),
    "train.lr_mult_head": at_least(0),
    "train.weight_decay": at_least(0),
    "train.betas[*]": fraction(high_open=True),
    "train.eps": above(0),
    "train.warmup_ratio": fraction(high_open=True, note="the fraction of train.max_steps"),
    "train.clip_grad": at_least(0, "0: no clipping"),
    "train.checkpoint_every": at_least(1),
    "train.keep_last": at_least(1),
    "train.log_every": at_least(1),
    "train.seed": Range(0, 2**63 // 100_003 - 2**20),  # the data stream's seed, seed * 100,003 + epoch, in 64 bits
    "train.max_nonfinite_steps": at_least(1),
    "train.eval_batch_size": at_least(1),
    "train.best_every": at_least(0, "0: once an epoch"),
}


def _is_number_type(tp: Any) -> bool:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(_is_number_type(arg) for arg in typing.get_args(tp))
    return tp in (int, float)


def numeric_keys(cls: type = Config, prefix: str = "") -> Iterator[str]:
    """The rule key of every int or float setting that `cls` can hold, from its type annotations (lists of
    sections included); free-form mappings (timm_kwargs, hf_kwargs) are their libraries' to check."""
    for f in dataclasses.fields(cls):
        tp, key = typing.get_type_hints(cls)[f.name], f"{prefix}{f.name}"
        if typing.get_origin(tp) is list:
            tp, key = typing.get_args(tp)[0], f"{key}[*]"
        if dataclasses.is_dataclass(tp):
            yield from numeric_keys(tp, f"{key}.")
        elif _is_number_type(tp):
            yield key


def numeric_settings(section: Any, prefix: str = "", rule: str = "") -> Iterator[tuple[str, str, float]]:
    """(key, rule key, value) of every int or float value set below `section`."""
    for f in dataclasses.fields(section):
        yield from _numbers(getattr(section, f.name), f"{prefix}{f.name}", f"{rule}{f.name}")


def _numbers(value: Any, key: str, rule: str) -> Iterator[tuple[str, str, float]]:
    if dataclasses.is_dataclass(value):
        yield from numeric_settings(value, f"{key}.", f"{rule}.")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{key}[{i}]", f"{rule}[*]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield key, rule, value


def check_ranges(cfg: Config) -> None:
    """Raises a ConfigError naming the first numeric setting outside its range, and the range."""
    for key, rule_key, value in numeric_settings(cfg):
        rule = RANGES[rule_key]
        if not rule.allows(value):
            raise ConfigError(f"{key} = {value!r} must be {rule.describe(value)}")
