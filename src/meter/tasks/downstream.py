"""The downstream tasks `meter finetune` and `meter evaluate` know, by the name a config's `task` gives.

Each task module registers a `Downstream`: how to set up fine-tuning from a config, and how to evaluate a model
folder (writing its leaderboard files). `meter.tasks.catalog` imports the modules that fill the registry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from meter.atomic_files import write_text_atomically
from meter.config import Config
from meter.data.collate import Collate
from meter.registry import Registry

log = logging.getLogger(__name__)


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
    before writing leaves no folder); the marker names the model and task the files are of."""
    before = _files(out)
    try:
        return downstream.evaluate(cfg, checkpoint, out)
    finally:  # what it wrote (a run folder has files of its own before): new or changed files, not a time compared
        if out.is_dir() and _files(out).items() - before.items():  # with a file server's clock, which may be behind
            made_by = {"checkpoint": str(Path(checkpoint).resolve()), "task": cfg.task}
            write_text_atomically(out / EVALUATION_MARKER, json.dumps(made_by) + "\n")


def warn_other_evaluation(out: Path, checkpoint: str | Path, task: str) -> None:
    """Said when `out` holds the files of another model's evaluation of `task`, which this one replaces (a second
    checkpoint evaluated into the same --out replaced the first's leaderboard file without a word)."""
    try:
        made_by = json.loads((out / EVALUATION_MARKER).read_text())
    except (OSError, ValueError):  # none, or an older empty marker: nothing known to compare
        return
    if not isinstance(made_by, dict):
        return
    earlier, model = made_by.get("checkpoint"), Path(checkpoint).resolve()
    if made_by.get("task") != task or not isinstance(earlier, str) or not earlier:
        return
    # resolved on both sides: a symlink or a `..` names the same model (a marker written before holds the absolute,
    # unresolved path)
    if Path(earlier).resolve() != model:
        log.warning("%s holds the %s evaluation of %s; this evaluation of %s replaces its files", out, task, earlier,
                    model)  # fmt: skip


def _files(folder: Path) -> dict[str, tuple[int, int, int]]:
    """The files of `folder` with what tells a rewritten one (inode, size, modification time in ns)."""
    if not folder.is_dir():
        return {}
    stats = {path.name: path.stat() for path in folder.iterdir() if path.is_file()}
    return {name: (stat.st_ino, stat.st_size, stat.st_mtime_ns) for name, stat in stats.items()}
