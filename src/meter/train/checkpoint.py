"""Checkpoints: a model folder plus the training state, written atomically, the last N kept.

    checkpoints/step_00000100/
        model.safetensors, config.json, text_encoder/, tokenizer files   (a model folder: loads anywhere)
        task.safetensors    the task's own pretraining-only weights (the MIM pixel decoder), when it has any
        training_state.pt   optimizer (by parameter name), scheduler, every process's RNG states (tensors, numbers
                            and strings only: loads with weights_only)
        progress.json       step, batches seen (the data position), the global batch, and whatever the task keeps

Every process takes part in a save (under FSDP2 the weights are gathered from their shards; the RNG states of all
processes are collected) and rank 0 writes. A checkpoint is written to a hidden temporary folder, synced, and renamed
into place; old ones are renamed away before they are deleted. So a folder named step_* is always complete, whenever
the run was killed, and `--resume latest` picks the newest complete one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from meter.errors import DataError
from meter.models.class_rows import require_current_order
from meter.models.folder import WEIGHTS, export_model_folder, read_model_folder, save_model_folder
from meter.train.distributed import full_model_state, full_optimizer_state, gather_objects, load_full_state
from meter.train.runtime import Runtime

log = logging.getLogger(__name__)
TRAINING_STATE = "training_state.pt"
TASK_WEIGHTS = "task.safetensors"
PROGRESS = "progress.json"
PREFIX = "step_"
MODEL = "model."  # the task's weights under this prefix are the model's


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    batches_seen: int = 0  # micro-batches drawn from the data stream (per process)
    nonfinite_in_a_row: int = 0
    global_batch: int = 0  # samples per micro-batch over all processes, when the checkpoint was written
    extra: dict[str, Any] = field(default_factory=dict)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def split_weights(weights: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A task's weights as (the model's, under their names in the model; the task's own)."""
    model = {k.removeprefix(MODEL): v for k, v in weights.items() if k.startswith(MODEL)}
    return model, {k: v for k, v in weights.items() if not k.startswith(MODEL)}


def export_final_model(
    task: nn.Module, tokenizer: PreTrainedTokenizerBase, path: Path, source: str, runtime: Runtime
) -> None:
    """Every process calls this (under FSDP2 the weights are gathered); rank 0 writes the model folder."""
    weights, _ = split_weights(full_model_state(task))
    if runtime.is_main:
        description = dataclasses.replace(task.describe(), source=source)
        export_model_folder(path, task.model, tokenizer, description, weights)


class Checkpoints:
    def __init__(self, folder: str | Path, keep_last: int = 2) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last

    def path(self, step: int) -> Path:
        return self.folder / f"{PREFIX}{step:08d}"

    def all(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(
            p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / PROGRESS).is_file()
        )

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(
        self,
        task: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        progress: Progress,
        runtime: Runtime,
    ) -> Path:
        """Every process calls this; rank 0 writes. Returns the checkpoint's folder."""
        weights = full_model_state(task)
        optimizer_state = full_optimizer_state(task, optimizer)
        rngs = gather_objects(rng_state())
        final = self.path(progress.step)
        if runtime.is_main:
            training_state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rngs}
            self._write(final, weights, task, tokenizer, training_state, progress)
        return final

    def _write(
        self, final: Path, weights: dict[str, Tensor], task: nn.Module, tokenizer: PreTrainedTokenizerBase,
        training_state: dict[str, Any], progress: Progress,
    ) -> None:  # fmt: skip
        self._remove_leftovers()
        temporary = self.folder / f".{final.name}.tmp"
        model_weights, task_weights = split_weights(weights)
        save_model_folder(temporary, task.model, tokenizer, task.describe(), model_weights)
        if task_weights:
            save_file({k: v.contiguous() for k, v in task_weights.items()}, str(temporary / TASK_WEIGHTS))
        torch.save(training_state, temporary / TRAINING_STATE)
        (temporary / PROGRESS).write_text(json.dumps(asdict(progress)))
        _fsync_tree(temporary)
        if final.exists():  # a resumed run re-saving a step it had saved before
            self._delete(final)
        os.replace(temporary, final)
        _fsync_folder(self.folder)
        for old in self.all()[: -self.keep_last] if self.keep_last > 0 else []:
            self._delete(old)

    def _delete(self, path: Path) -> None:
        """Renamed away first, so that a kill during the deletion leaves no half-deleted step_* folder."""
        doomed = self.folder / f".{path.name}.deleting"
        os.replace(path, doomed)
        shutil.rmtree(doomed)

    def _remove_leftovers(self) -> None:
        """Temporary and half-deleted folders of a run that was killed while writing or pruning."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in self.folder.iterdir():
            if path.name.startswith(f".{PREFIX}"):
                shutil.rmtree(path, ignore_errors=True)

    def resolve(self, which: str) -> Path:
        """'latest' or a path to a checkpoint folder."""
        if which == "latest":
            found = self.latest()
            if found is None:
                raise DataError(f"no checkpoint to resume from in {self.folder}")
            return found
        path = Path(which)
        if not (path / TRAINING_STATE).is_file():
            raise DataError(f"{path}: not a checkpoint folder (no {TRAINING_STATE})")
        return path

    @staticmethod
    def load(
        path: Path,
        task: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        runtime: Runtime,
    ) -> Progress:
        """Every process calls this: it loads the whole state, keeps its shard, and takes its own RNG states."""
        require_current_order(read_model_folder(path).classes, str(path))
        weights = {MODEL + k: v for k, v in load_file(str(path / WEIGHTS)).items()}
        if (path / TASK_WEIGHTS).is_file():
            weights |= load_file(str(path / TASK_WEIGHTS))
        expected = list(task.state_dict())  # in the module's order: loading shards is collective, key by key
        missing = [k for k in expected if k not in weights]
        if missing:
            raise DataError(f"{path}: checkpoint lacks {len(missing)} weights of this model, e.g. {missing[:3]}")
        state = torch.load(path / TRAINING_STATE, weights_only=True, map_location="cpu")
        load_full_state(task, optimizer, {k: weights[k] for k in expected}, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rngs) == runtime.world:
            set_rng_state(rngs[runtime.rank])
        else:
            log.warning("%s was written by %d processes, this run has %d: dropout and other RNG draws restart "
                        "from fresh seeds (masks and data order do not depend on them)", path, len(rngs),
                        runtime.world)  # fmt: skip
        return Progress(**json.loads((path / PROGRESS).read_text()))
