"""The training loop: plain PyTorch, read top to bottom. It knows tasks, never the model's insides.

One optimizer step: draw `grad_accum` micro-batches and their randomness (masks, pairings: drawn per sample for the
whole step, see `meter.objectives.randomness`); agree across processes on each loss's denominator (its item count
over the whole step); forward and backward each micro-batch, gradients reduced across processes on the last one;
clip; and step, unless a loss or the gradient norm is non-finite on any process. So one process with batch 2b, two
with b, and one with b accumulating 2 compute the same step, up to float rounding.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from meter.config import Config, save_config
from meter.data.bad_samples import BadSampleBudget
from meter.data.collate import Collate
from meter.data.stream import BatchStream
from meter.errors import MeterError
from meter.models.folder import EXPORT, ModelFolder
from meter.objectives.randomness import SampleRandomness, StepRandomness, stream_seed
from meter.train.checkpoint import Checkpoints, Progress, export_final_model
from meter.train.distributed import all_reduce, distribute, gradient_sync, local
from meter.train.metrics_log import MetricsLog, plot_curves, read_metrics
from meter.train.optim import build_optimizer, warmup_linear
from meter.train.runtime import Runtime

log = logging.getLogger(__name__)


class Task(Protocol):
    """A task is an nn.Module holding the model: `prepare` draws the step's randomness, `forward` computes.

    Optionally `loss_counts(batch) -> {loss name: items}`: then the loop gives `forward` the step's denominators in
    `batch["loss_denominators"]` (see `meter.tasks.pretrain`)."""

    model: nn.Module

    def prepare(self, batch: dict[str, Any], random: SampleRandomness) -> dict[str, Any]: ...

    def __call__(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor | float]]: ...

    def describe(self) -> ModelFolder: ...


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def draw_step(
    task: nn.Module, batches: Iterator[dict[str, Any]], budget: BadSampleBudget, random: StepRandomness,
    train_batch: int, grad_accum: int, runtime: Runtime,
) -> list[dict[str, Any]]:  # fmt: skip
    """The step's micro-batches, prepared on the CPU. A batch whose samples were all unreadable is replaced by the
    next one, so that every process runs the same number of forward and backward passes."""
    prepared = []
    for micro in range(grad_accum):
        batch = next(batches)
        while True:
            for bad in batch["bad"]:
                budget.record(bad)
            if batch["size"] > 0:
                break
            batch = next(batches)
        offset = (micro * runtime.world + runtime.rank) * train_batch
        prepared.append(task.prepare(batch, random.rows(offset, batch["size"])))
    return prepared


def loss_denominators(task: nn.Module, micro_batches: list[dict[str, Any]], runtime: Runtime) -> dict[str, float]:
    """Each loss's item count over the whole step (all micro-batches, all processes), divided by micro-batches x
    processes: a loss that divides its sum by this makes the accumulated, averaged gradient the mean over the step."""
    counter = getattr(task, "loss_counts", None)
    if counter is None:
        return {}
    counts = [counter(batch) for batch in micro_batches]
    keys = sorted(counts[0])
    device = runtime.device if runtime.distributed else torch.device("cpu")  # alone: no trip to the GPU and back
    totals = torch.tensor([sum(c[k] for c in counts) for k in keys], dtype=torch.float64, device=device)
    parts = len(micro_batches) * runtime.world
    return {k: max(v, 1.0) / parts for k, v in zip(keys, all_reduce(totals).tolist(), strict=True)}


def all_finite(loss: Tensor, grad_norm: Tensor) -> bool:
    """True when the loss and the gradient norm are finite on every process (all skip a step, or none)."""
    bad = torch.stack([~torch.isfinite(loss), ~torch.isfinite(grad_norm)]).any().float()
    return all_reduce(bad, op="max").item() == 0


class Window:
    """Step values summed on the device between two log lines; one reduction across processes per log line."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.steps = 0
        self.samples = 0
        self.skipped = 0
        self.start = time.perf_counter()

    def add(self, values: dict[str, Tensor], samples: int) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0) + value
        self.steps += 1
        self.samples += samples

    def reduce(self, runtime: Runtime) -> dict[str, float]:
        """Means over the window's steps and over processes; samples/s over all processes."""
        keys = sorted(self.sums)
        device = runtime.device
        local_values = [self.sums[k].float().to(device) for k in keys]
        counts = torch.tensor([self.steps, self.samples, self.skipped], dtype=torch.float32, device=device)
        totals = all_reduce(torch.cat([torch.stack(local_values) if keys else counts[:0], counts])).tolist()
        steps, samples, skipped = totals[len(keys) :]
        values = {k: v / max(steps, 1) for k, v in zip(keys, totals, strict=False)}
        values["samples_per_s"] = samples / max(time.perf_counter() - self.start, 1e-9)
        if skipped:
            values["nonfinite_steps"] = skipped / runtime.world
        return values


def _detached(value: Tensor | float, device: torch.device) -> Tensor:
    return value.detach().float() if isinstance(value, Tensor) else torch.tensor(float(value), device=device)


def fit(
    cfg: Config,
    task: nn.Module,
    dataset: Dataset,
    collate: Collate,
    tokenizer: PreTrainedTokenizerBase,
    runtime: Runtime,
    resume: str | None = None,
) -> Path:
    """Trains `task` for cfg.train.max_steps optimizer steps; returns the final checkpoint folder."""
    train = cfg.train
    out = Path(train.out)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    task.to(runtime.device)
    wrapped = distribute(task, runtime, train)
    optimizer = build_optimizer(task, train, runtime.device)
    scheduler = warmup_linear(optimizer, train.max_steps, train.warmup_ratio)
    checkpoints = Checkpoints(out / "checkpoints", train.keep_last)
    global_batch = train.batch_size * runtime.world
    torch.manual_seed(stream_seed(train.seed, "process", runtime.rank))  # dropout: a stream of its own per process
    progress = Progress(global_batch=global_batch)
    if resume:
        path = checkpoints.resolve(resume)
        progress = checkpoints.load(path, task, optimizer, scheduler, runtime)
        if progress.global_batch not in (0, global_batch):
            log.warning("resuming with a global batch of %d samples instead of %d: the data position is rounded",
                        global_batch, progress.global_batch)  # fmt: skip
            progress.batches_seen = progress.batches_seen * progress.global_batch // global_batch
            progress.global_batch = global_batch
        log.info("resumed from %s at step %d", path, progress.step)
    stream_type = getattr(dataset, "stream_type", BatchStream)  # a shard corpus brings its own stream
    stream = stream_type(
        dataset, train.batch_size, collate, seed=train.seed, rank=runtime.rank, world=runtime.world,
        start_batch=progress.batches_seen, num_workers=cfg.data.num_workers,
        pin_memory=runtime.device.type == "cuda",
    )  # fmt: skip
    batches = iter(stream)
    bad_file = out / "bad_samples.jsonl" if runtime.is_main else None
    budget = BadSampleBudget(cfg.data.max_bad_samples, len(dataset), bad_file)
    metrics = MetricsLog(out, enabled=runtime.is_main, resume_step=progress.step if resume else None)
    last_step = min(train.stop_at, train.max_steps) if train.stop_at > 0 else train.max_steps
    bar = tqdm(total=train.max_steps, initial=progress.step, desc=f"{cfg.task} {out.name}", unit="step",
               disable=not (train.progress and runtime.is_main), dynamic_ncols=True)  # fmt: skip
    max_norm = train.clip_grad if train.clip_grad > 0 else math.inf  # inf: measure the norm, do not clip
    window = Window()
    task.train()
    for step in range(progress.step, last_step):
        random = StepRandomness(train.seed, step, global_batch * train.grad_accum)
        micro_batches = draw_step(task, batches, budget, random, train.batch_size, train.grad_accum, runtime)
        denominators = loss_denominators(task, micro_batches, runtime)
        step_values: dict[str, Tensor] = {}
        loss_keys: list[str] = []
        for index, batch in enumerate(micro_batches):
            batch = to_device(batch, runtime.device) | {"loss_denominators": denominators}
            with gradient_sync(wrapped, index == len(micro_batches) - 1):
                with runtime.autocast():
                    losses, report = wrapped(batch)
                (sum(losses.values()) / train.grad_accum).backward()
            loss_keys = list(losses)
            for key, value in (losses | report).items():
                step_values[key] = step_values.get(key, 0) + _detached(value, runtime.device) / train.grad_accum
        grad_norm = local(torch.nn.utils.clip_grad_norm_(task.parameters(), max_norm))
        if all_finite(sum(step_values[k] for k in loss_keys), grad_norm):
            optimizer.step()
            progress.nonfinite_in_a_row = 0
            window.add(step_values | {"grad_norm": grad_norm.detach().float()},
                       sum(b["size"] for b in micro_batches))  # fmt: skip
        else:
            progress.nonfinite_in_a_row += 1
            window.skipped += 1
            log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", step + 1,
                        progress.nonfinite_in_a_row)  # fmt: skip
            if progress.nonfinite_in_a_row >= train.max_nonfinite_steps:
                raise MeterError(
                    f"{progress.nonfinite_in_a_row} non-finite losses in a row at step {step + 1} "
                    f"(train.max_nonfinite_steps): lower train.lr, check the data, or use train.precision=fp32"
                )
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        progress.step = step + 1
        progress.batches_seen = stream.batches_seen
        if progress.step % train.log_every == 0 or progress.step == last_step:
            group = optimizer.param_groups[0]
            values = window.reduce(runtime) | {"lr": train.lr * group["lr"] / group["initial_lr"],
                                               "epoch": stream.epoch}  # fmt: skip
            metrics.write(progress.step, values)
            loss = sum(values.get(k, math.nan) for k in loss_keys)
            bar.set_postfix(loss=f"{loss:.3f}", samples_per_s=f"{values['samples_per_s']:.1f}", refresh=False)
            window = Window()
        bar.update(1)
        if progress.step % train.checkpoint_every == 0 or progress.step == last_step:
            checkpoints.save(task, tokenizer, optimizer, scheduler, progress, runtime)
    bar.close()
    metrics.close()
    if train.export and last_step == train.max_steps:
        source = f"Trained with meter: `{cfg.task}` run `{out}`, {last_step} steps."
        export_final_model(task, tokenizer, out / EXPORT, source, runtime)
    if budget.bad:
        log.warning("data: %s", budget.summary())
    if runtime.is_main:
        records = read_metrics(out / "metrics.jsonl")
        keys = sorted({k for r in records for k in r if k.endswith("_loss")})
        if keys:
            plot_curves({out.name: records}, keys, out / "loss_curves.png", title=f"{cfg.task}: {out.name}")
    return checkpoints.path(last_step)
