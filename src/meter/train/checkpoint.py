"""Checkpoints: a model folder plus the training state, written atomically, the last N kept.

    checkpoints/step_00000100/
        model.safetensors, config.json, text_encoder/, tokenizer files   (a model folder: loads anywhere)
        training_state.pt   optimizer, scheduler, RNG states (tensors and numbers only: loads with weights_only)
        progress.json       step, batches seen, and whatever the task keeps

A checkpoint is written to a hidden temporary folder and renamed into place: a folder named step_* is always
complete, whenever the run was killed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from meter.errors import DataError
from meter.models.folder import WEIGHTS, ModelFolder, load_weights, save_model_folder

log = logging.getLogger(__name__)
TRAINING_STATE = "training_state.pt"
PROGRESS = "progress.json"
PREFIX = "step_"


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    batches_seen: int = 0  # micro-batches drawn from the data stream
    nonfinite_in_a_row: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
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


class Checkpoints:
    def __init__(self, folder: str | Path, keep_last: int = 2) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last

    def path(self, step: int) -> Path:
        return self.folder / f"{PREFIX}{step:08d}"

    def all(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        description: ModelFolder,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        progress: Progress,
    ) -> Path:
        final = self.path(progress.step)
        temporary = self.folder / f".{final.name}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        save_model_folder(temporary, model, tokenizer, description)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
            temporary / TRAINING_STATE,
        )
        (temporary / PROGRESS).write_text(json.dumps(asdict(progress)))
        _fsync_tree(temporary)
        if final.exists():  # a resumed run re-saving a step it had saved before
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in self.all()[: -self.keep_last] if self.keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final

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
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> Progress:
        missing = load_weights(model, path / WEIGHTS)
        if missing:
            raise DataError(f"{path}: checkpoint lacks {len(missing)} weights of this model, e.g. {missing[:3]}")
        state = torch.load(path / TRAINING_STATE, weights_only=True, map_location="cpu")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        return Progress(**json.loads((path / PROGRESS).read_text()))
