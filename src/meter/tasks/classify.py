"""What the classification tasks (NLVR2, SNLI-VE) share: a cross-entropy step, and prediction over a dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from meter.config import Config
from meter.data.bad_samples import BadSampleBudget, count_bad
from meter.data.collate import Collate
from meter.data.datasets import ImageReader
from meter.data.ordered_batches import EvalReading, ordered_batches
from meter.data.shared_rows import to_device
from meter.errors import ConfigError
from meter.models.finite_outputs import check_finite
from meter.models.folder import ModelFolder
from meter.models.meter import Meter
from meter.objectives.randomness import SampleRandomness
from meter.objectives.step_mean import step_mean
from meter.tasks.build import eval_reading, load_for_eval
from meter.train.runtime import Runtime, setup_runtime

log = logging.getLogger(__name__)


class ClassificationTask(nn.Module):
    """A task whose head gives `classes` logits per example; subclasses say how the logits are computed."""

    head: str = ""
    token_types: int = 2

    def __init__(self, model: Meter, cfg: Config, classes: int) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.classes = classes

    def describe(self) -> ModelFolder:
        return ModelFolder(self.cfg, {self.head: self.classes}, token_types=self.token_types)

    def prepare(self, batch: dict[str, Any], random: SampleRandomness) -> dict[str, Any]:
        return batch

    def logits(self, batch: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def loss_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        """The examples the loss averages over in this batch: every example of the step weighs the same, however
        the step is split over micro-batches (a short last one) and processes."""
        return {f"{self.head}_loss": batch["size"]}

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        logits = self.logits(batch).float()
        labels = batch["label"]
        name = f"{self.head}_loss"
        loss = step_mean(F.cross_entropy(logits, labels, reduction="sum"), name, len(labels), batch)
        correct = (logits.argmax(-1) == labels).float().sum().detach()  # a tensor: reading it would sync
        return {name: loss}, {f"{self.head}_accuracy": step_mean(correct, name, len(labels), batch)}


def eval_batches(
    dataset: Dataset, collate: Collate, runtime: Runtime, reading: EvalReading, desc: str,
    budget: BadSampleBudget | None = None,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The dataset in order, batch by batch on the run's device; samples that cannot be read count against `budget`
    (without one, they are an error)."""
    for batch in ordered_batches(dataset, collate, reading, desc):
        for bad in batch["bad"]:
            count_bad(budget, bad)
        if batch["size"]:
            yield to_device(batch, runtime.device)


@torch.no_grad()
def predict_classes(
    task: ClassificationTask, source: object, dataset: Dataset, collate: Collate, runtime: Runtime,
    reading: EvalReading, budget: BadSampleBudget | None = None,
) -> dict[int, int]:  # fmt: skip
    """Example index -> predicted class, for every example whose images could be read (see `eval_batches`). Logits
    that are not finite are a NonFiniteOutput naming `source`, the model folder, not a class 0 for every example."""
    was_training = task.training
    task.eval()
    predictions: dict[int, int] = {}
    for batch in eval_batches(dataset, collate, runtime, reading, f"{task.head} eval", budget):
        with runtime.autocast():
            logits = task.logits(batch)
        labels = check_finite(logits, task.model, source).argmax(-1).tolist()
        predictions.update(zip(batch["index"].tolist(), labels, strict=True))
    task.train(was_training)
    return predictions


def classify_split(
    cfg: Config, checkpoint: str | Path, task_type: type[ClassificationTask], classes: int,
    examples: Callable[[ImageReader], Dataset], budget: BadSampleBudget,
) -> dict[int, int]:  # fmt: skip
    """Loads a model folder and predicts every example `examples(image_reader)` gives: index -> class, for the
    examples whose images could be read; the others count against `budget` (data.max_bad_samples)."""
    runtime = setup_runtime(cfg.train)
    loaded = load_for_eval(checkpoint, runtime.device, blind=cfg.data.blind, max_pixels=cfg.data.max_image_pixels)
    if task_type.head not in loaded.description.heads:
        raise ConfigError(
            f"{checkpoint}: the model has no {task_type.head} head (it has: "
            f"{', '.join(loaded.description.heads) or 'none'}); fine-tune it with task={task_type.head}"
        )
    task = task_type(loaded.model, loaded.description.config, classes)
    collate = Collate(loaded.tokenizer, loaded.description.config.model.text.max_length)
    dataset = examples(loaded.images)
    return predict_classes(task, checkpoint, dataset, collate, runtime, eval_reading(cfg, runtime), budget)
