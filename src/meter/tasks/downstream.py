"""The downstream tasks `meter finetune` and `meter evaluate` know, by the name a config's `task` gives.

Each task module registers a `Downstream`: how to set up fine-tuning from a config, and how to evaluate a model
folder (writing its leaderboard files). `meter.tasks.catalog` imports the modules that fill the registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from meter.config import Config
from meter.data.collate import Collate
from meter.registry import Registry


@dataclass
class Finetuning:
    """What the training loop needs to fine-tune one task."""

    task: nn.Module
    dataset: Dataset
    collate: Collate
    tokenizer: PreTrainedTokenizerBase


@dataclass(frozen=True)
class Downstream:
    setup: Callable[[Config], Finetuning]
    # (config for data paths, model folder, output folder) -> metrics; writes predictions / leaderboard files
    evaluate: Callable[[Config, str | Path, Path], dict[str, Any]]
    # (config, split) -> its records: reads a split as the evaluation does (a missing file is named before training)
    read_split: Callable[[Config, str], list[Any]]
    # the metrics -> the one number the best checkpoint is chosen by (official METER's `val/the_metric`)
    selection_score: Callable[[dict[str, Any]], float]
    selection_metric: str  # what that number is, in words


DOWNSTREAM: Registry[Downstream] = Registry("downstream task")
# in each folder an evaluation wrote into: `meter evaluate --out` writes only into a new or empty folder, a run's, or
# one an evaluation filled (a folder of the user's could hold a vqa_predictions_val2014.json of their own)
EVALUATION_MARKER = ".meter-evaluation"


def evaluate_into(downstream: Downstream, cfg: Config, checkpoint: str | Path, out: Path) -> dict[str, Any]:
    """`downstream.evaluate`, then the marker in `out` when the evaluation wrote anything there (one that failed
    before writing leaves no folder)."""
    started = time.time()
    try:
        return downstream.evaluate(cfg, checkpoint, out)
    finally:  # what it wrote: a run folder has files of its own before
        if out.is_dir() and any(path.stat().st_mtime >= started - 1 for path in out.iterdir() if path.is_file()):
            (out / EVALUATION_MARKER).touch()
