"""The best checkpoint on a validation split, kept as official METER keeps it (`ModelCheckpoint(save_top_k=1,
monitor="val/the_metric", mode="max")`, run.py): with `train.best_on=SPLIT` a fine-tuning run scores SPLIT with the
task's own evaluation after each epoch (or every `train.best_every` steps) and after its last step, and keeps the
weights that scored best as a model folder, which the run's final evaluation then scores.

    <out>/best/          the model folder of the best step so far (its files hard-linked from the checkpoint), with
                         best_step.json naming the step
    <out>/best.json      {"split", "metric", "scores": {step: score}, "best_step"}
    <out>/eval/step_N/   each of those evaluations' prediction and score files, as `meter evaluate` writes them

A tie keeps the earlier step (the official callback replaces its best only on a strictly better score). The
evaluation runs on the first process while the others wait; it leaves the random generators as it found them, so a
run trains the same with it as without. A run resumed from an earlier step forgets the scores of later steps, and
sets their best aside (renamed abandoned-best-step_N) when it was one of them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from meter.config import Config
from meter.data.shard_manifest import write_json_atomically
from meter.errors import ConfigError, DataError
from meter.models.checksums import ALGORITHM, CHECKSUMS
from meter.tasks.downstream import Downstream, evaluate_into
from meter.train.checkpoint import (
    ABANDONED,
    PREFIX,
    PROGRESS,
    TASK_WEIGHTS,
    TRAINING_STATE,
    free_name,
    rng_state,
    set_rng_state,
)
from meter.train.distributed import broadcast_object, main_alone
from meter.train.metrics_log import MetricsLog, read_metrics
from meter.train.runtime import release_cached_memory

log = logging.getLogger(__name__)
BEST = "best"
RECORD = "best.json"
EVALUATIONS = "eval"  # as `meter evaluate` names a run checkpoint's evaluation folder
HELD = "best_step.json"  # in best/: the step whose weights it holds
TRAINING_FILES = {TRAINING_STATE, TASK_WEIGHTS, PROGRESS, CHECKSUMS}  # a checkpoint's files that are no model's


def best_folder(out: str | Path) -> Path:
    return Path(out) / BEST


def evaluated_weights(cfg: Config, checkpoint: Path) -> Path:
    """What a run's evaluation scores: with train.best_on, its best checkpoint once the run got to its last step;
    else (or a run stopped early by train.stop_at) the checkpoint it ended at."""
    if not cfg.train.best_on or checkpoint.name != f"{PREFIX}{cfg.train.max_steps:08d}":
        return checkpoint
    record = Path(cfg.train.out) / RECORD
    chosen_on = json.loads(record.read_text()).get("split") if record.is_file() else None
    if chosen_on != cfg.train.best_on:
        raise ConfigError(f"train.best_on = {cfg.train.best_on!r}: {record} chose the best checkpoint on "
                          f"{chosen_on!r}; resume the run (--resume latest) to choose again")  # fmt: skip
    return best_folder(cfg.train.out)


def check_best_on(cfg: Config, downstream: Downstream) -> None:
    """Refuses a split the run trains on (its best would be the last) and reads the split once, so that a missing
    file is named before the first epoch rather than after it."""
    split = cfg.train.best_on
    section = getattr(cfg, cfg.task)
    trained = getattr(section, "train_splits", None) or [section.train_split]
    if split in trained:
        raise ConfigError(
            f"train.best_on = {split!r} is a split the run trains on ({', '.join(trained)}): its best would be the "
            "last; choose the best on a split it does not train on (dev, val)"
        )
    try:
        records = downstream.read_split(cfg, split)
    except DataError as error:  # its file missing: the message names the file, and here the setting that chose it
        raise DataError(f"train.best_on = {split!r}: {str(error).removeprefix('data: ')}") from None
    if not records:
        raise ConfigError(f"train.best_on = {split!r}: the split has no examples to choose the best checkpoint by")
    if any(getattr(record, "label", 0) is None for record in records):  # NLVR2's hidden test: no score after epoch 1
        raise ConfigError(f"train.best_on = {split!r}: the split's examples have no labels to score them by")


class BestCheckpoint:
    """The loop's CheckpointHook for `train.best_on` (see the module's docstring)."""

    def __init__(self, cfg: Config, downstream: Downstream, batches_per_epoch: int) -> None:
        self.cfg = cfg
        self.downstream = downstream
        # of each process (the loop's stream drops a last incomplete step; none at all is its error to give)
        self.batches_per_epoch = max(batches_per_epoch, 1)
        self.out = Path(cfg.train.out)
        self.origin = (0, 0)  # (a step, the batches every process had read by then): where epochs are counted from

    def wants(self, step: int) -> bool:
        """After the last step, and after each step that ends an epoch (or every `best_every` steps)."""
        train = self.cfg.train
        if step == train.max_steps:
            return True
        if train.best_every:
            return step % train.best_every == 0
        first, read = self.origin

        def epoch(at: int) -> int:  # of the data position after step `at` (a resume with another world rescales it)
            return (read + (at - first) * train.grad_accum) // self.batches_per_epoch

        return epoch(step) > epoch(step - 1)

    def start(self, step: int, checkpoint: Path | None, batches_read: int = 0) -> None:
        """The run trains from `step` on (resumed from `checkpoint` with `batches_read` of data read, or from
        scratch): scores of later steps are of a continuation given up; a resumed checkpoint is scored if it was due
        and was not (a run killed meanwhile)."""
        self.origin = (step, broadcast_object(batches_read))  # the first process's: all must agree on the epochs
        with untouched_random_state():
            main_alone(lambda: self._start(step, checkpoint), others=None)

    def __call__(self, checkpoint: Path, step: int) -> None:
        with untouched_random_state():
            main_alone(lambda: self._score(checkpoint, step), others=None)

    def _start(self, step: int, checkpoint: Path | None) -> None:
        best = best_folder(self.out)
        replaced = best.with_name(f".{BEST}.replaced")
        if replaced.is_dir() and not best.exists():  # killed between setting the old best aside and the new in place
            os.replace(replaced, best)
        shutil.rmtree(replaced, ignore_errors=True)  # killed while deleting it
        record = self._record()
        held = held_step(best)
        if held is not None and held != record["best_step"]:  # killed between replacing best/ and the record
            record["best_step"] = held
        later = [s for s in record["scores"] if int(s) > step]
        if later:
            log.warning("%s: forgetting the scores of steps %s, after step %d where this run trains on",
                        self.out / RECORD, ", ".join(later), step)  # fmt: skip
            record["scores"] = {s: v for s, v in record["scores"].items() if int(s) <= step}
        if record["best_step"] is not None and record["best_step"] > step:
            aside = free_name(self.out, f"{ABANDONED}{BEST}-step_{record['best_step']:08d}")
            if best.exists():
                os.replace(best, aside)
            log.warning("the best checkpoint so far (step %d) is after step %d, where this run trains on: set aside "
                        "as %s; the best is chosen again from here on", record["best_step"], step, aside)  # fmt: skip
            record["best_step"] = None
            record["scores"] = {}  # the weights of the earlier scores are gone: they cannot be chosen any more
        write_json_atomically(self.out / RECORD, record)
        if checkpoint is not None:
            self._score(checkpoint, step)

    def _score(self, checkpoint: Path, step: int) -> None:
        record = self._record()
        if not self.wants(step):
            return
        split = self.cfg.train.best_on
        curve = MetricsLog(self.out, tensorboard=False)  # beside the training's (official METER logs val/the_metric)
        if str(step) in record["scores"]:  # scored before a kill, which may have come before its curve's row
            logged = read_metrics(curve.path) if curve.path.is_file() else []
            if not any(row["step"] == step and f"best_on/{split}/score" in row for row in logged):
                curve.write(step, {"score": record["scores"][str(step)]}, prefix=f"best_on/{split}")
            return
        folder = self.out / EVALUATIONS / checkpoint.name
        scores = evaluate_into(self.downstream, self._split_config(), checkpoint, folder)
        release_cached_memory()  # the evaluation's model copy: its blocks back to the device for the training
        try:
            score = float(self.downstream.selection_score(scores))
        except KeyError as missing:
            raise DataError(f"train.best_on = {split!r}: the evaluation of {checkpoint} gave no {missing} to choose "
                            f"by (is the split annotated?)") from None  # fmt: skip
        best = record["best_step"]
        if best is None or better(score, record["scores"].get(str(best), math.nan)):
            keep_as_best(checkpoint, best_folder(self.out), step)
            record["best_step"] = step
        record["scores"][str(step)] = score
        write_json_atomically(self.out / RECORD, record)
        curve.write(step, {"score": score}, prefix=f"best_on/{split}")
        log.info("step %d: %s %s %.4g (the best: step %d, %.4g)", step, split, self.downstream.selection_metric,
                 score, record["best_step"], record["scores"][str(record["best_step"])])  # fmt: skip

    def _record(self) -> dict[str, Any]:
        path = self.out / RECORD
        fresh = {"split": self.cfg.train.best_on, "metric": self.downstream.selection_metric, "scores": {},
                 "best_step": None}  # fmt: skip
        if not path.is_file():
            return fresh
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise DataError(f"{path}: unreadable ({error}); delete it and {best_folder(self.out)} to choose the best "
                            "checkpoint again from the run's next evaluation") from None  # fmt: skip
        return record if record.get("split") == fresh["split"] else fresh

    def _split_config(self) -> Config:
        cfg = copy.deepcopy(self.cfg)
        getattr(cfg, cfg.task).eval_split = cfg.train.best_on
        return cfg


def better(score: float, best: float) -> bool:
    """Strictly better; a number beats no number (NaN)."""
    if math.isnan(score):
        return False
    return math.isnan(best) or score > best


def held_step(best: Path) -> int | None:
    """The step whose weights `best` holds (None: no best yet)."""
    marker = best / HELD
    return int(json.loads(marker.read_text())["step"]) if marker.is_file() else None


def keep_as_best(checkpoint: Path, best: Path, step: int) -> None:
    """The model folder of `checkpoint` (its files without the training state) becomes `best`, with the step it
    holds: built beside it, then swapped in, so that a kill at any moment leaves a whole best folder, the old or
    the new."""
    temporary = best.with_name(f".{best.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    recorded = _model_checksums(checkpoint)
    names = list(recorded) if recorded is not None else [
        str(p.relative_to(checkpoint)) for p in sorted(checkpoint.rglob("*"))
        if p.is_file() and str(p.relative_to(checkpoint)) not in TRAINING_FILES
    ]  # fmt: skip
    try:
        for name in names:
            target = temporary / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(checkpoint / name, target)  # no second copy of the weights on disk
            except OSError:
                shutil.copy2(checkpoint / name, target)
        if recorded is not None:
            (temporary / CHECKSUMS).write_text(json.dumps({"algorithm": ALGORITHM, "parts": {"model": recorded}}))
        (temporary / HELD).write_text(json.dumps({"step": step, "checkpoint": checkpoint.name}))
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        raise DataError(f"{best}: the best checkpoint could not be written ({error})") from None
    replaced = best.with_name(f".{best.name}.replaced")
    shutil.rmtree(replaced, ignore_errors=True)  # a kill while it was deleted last time
    if best.exists():
        os.replace(best, replaced)
    os.replace(temporary, best)
    shutil.rmtree(replaced, ignore_errors=True)


def _model_checksums(checkpoint: Path) -> dict[str, Any] | None:
    path = checkpoint / CHECKSUMS
    if not path.is_file():
        return None
    return json.loads(path.read_text())["parts"].get("model")


@contextmanager
def untouched_random_state() -> Iterator[None]:
    """The evaluation seeds (setup_runtime) and draws (a DataLoader's base seed) from the global generators: put
    back after it, so that training goes on as if it had not run."""
    saved = rng_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])
