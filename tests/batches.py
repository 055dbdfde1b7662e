"""A task and one prepared training batch of it, as the loop would hand them to the device."""

from __future__ import annotations

from typing import Any

from torch import nn

from meter.config import Config
from meter.data.collate import Collate
from meter.data.datasets import CaptionPairs
from meter.data.formats.captions import PRETRAIN_SPLITS
from meter.objectives.randomness import StepRandomness
from meter.tasks.build import build_model, image_reader, read_karpathy_splits, task_tokenizer
from meter.tasks.downstream import Finetuning
from meter.tasks.pretrain import PretrainTask, pretrain_heads


def prepared(task: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with the task's masks and pairings drawn, as at step 0."""
    return task.prepare(batch, StepRandomness(0, 0, batch["size"]).rows(0, batch["size"]))


def pretraining_batch(cfg: Config, rows: int) -> tuple[PretrainTask, dict[str, Any]]:
    tokenizer = task_tokenizer(cfg)
    heads = pretrain_heads(tokenizer, cfg.objectives)
    task = PretrainTask(build_model(cfg, tokenizer, heads), tokenizer, cfg, heads)
    pairs = CaptionPairs(read_karpathy_splits(cfg, "data", PRETRAIN_SPLITS), image_reader(cfg, task.model))
    return task, prepared(task, Collate(tokenizer, cfg.model.text.max_length)([pairs[i] for i in range(rows)]))


def finetuning_batch(job: Finetuning, rows: int) -> dict[str, Any]:
    return prepared(job.task, job.collate([job.dataset[i] for i in range(rows)]))
