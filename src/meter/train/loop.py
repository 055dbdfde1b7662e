"""The training loop: plain PyTorch, read top to bottom. It knows tasks, never the model's insides."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
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
from meter.models.folder import EXPORT, ModelFolder, export_model_folder
from meter.train.checkpoint import Checkpoints, Progress
from meter.train.metrics_log import MetricsLog, plot_curves, read_metrics
from meter.train.optim import build_optimizer, warmup_linear
from meter.train.runtime import Runtime

log = logging.getLogger(__name__)
MAX_NONFINITE_IN_A_ROW = 5


class Task(Protocol):
    """A task is an nn.Module holding the model: `prepare` draws the step's randomness, `forward` computes."""

    model: nn.Module

    def prepare(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]: ...

    def __call__(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]: ...

    def describe(self) -> ModelFolder: ...


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def step_generator(seed: int, batch_index: int, rank: int) -> torch.Generator:
    """The randomness of one micro-batch (masks, pairings): a function of the run's seed and position only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + batch_index) * 1_009 + rank)


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
    model = task.model
    task.to(runtime.device)
    optimizer = build_optimizer(model, train, runtime.device)
    scheduler = warmup_linear(optimizer, train.max_steps, train.warmup_ratio)
    checkpoints = Checkpoints(out / "checkpoints", train.keep_last)
    progress = Progress()
    if resume:
        path = checkpoints.resolve(resume)
        progress = checkpoints.load(path, model, optimizer, scheduler)
        log.info("resumed from %s at step %d", path, progress.step)
    stream_type = getattr(dataset, "stream_type", BatchStream)  # a shard corpus brings its own stream
    stream = stream_type(
        dataset, train.batch_size, collate, seed=train.seed, rank=runtime.rank, world=runtime.world,
        start_batch=progress.batches_seen, num_workers=cfg.data.num_workers,
    )  # fmt: skip
    batches = iter(stream)
    budget = BadSampleBudget(cfg.data.max_bad_samples, len(dataset), out / "bad_samples.jsonl")
    metrics = MetricsLog(out, enabled=runtime.is_main)
    wrapped = _distribute(task, runtime)
    bar = tqdm(total=train.max_steps, initial=progress.step, desc=f"{cfg.task} {out.name}", unit="step",
               disable=not (train.progress and runtime.is_main), dynamic_ncols=True)  # fmt: skip
    window: dict[str, list[float]] = defaultdict(list)
    window_start, window_samples = time.perf_counter(), 0
    task.train()
    last_step = min(train.stop_at, train.max_steps) if train.stop_at > 0 else train.max_steps
    for step in range(progress.step, last_step):
        step_losses: dict[str, float] = defaultdict(float)
        finite = True
        for _ in range(train.grad_accum):
            batch = next(batches)
            for bad in batch["bad"]:
                budget.record(bad)
            if batch["size"] == 0:
                continue
            generator = step_generator(train.seed, stream.batches_seen, runtime.rank)
            batch = to_device(task.prepare(batch, generator), runtime.device)
            with runtime.autocast():
                losses, report = wrapped(batch)
            loss = sum(losses.values()) / train.grad_accum
            if not torch.isfinite(loss):
                finite = False
                break
            loss.backward()
            window_samples += batch["size"] * runtime.world
            for key, value in {**{k: v.item() for k, v in losses.items()}, **report}.items():
                step_losses[key] += value / train.grad_accum
        if finite:
            if train.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip_grad)
            optimizer.step()
            progress.nonfinite_in_a_row = 0
        else:
            progress.nonfinite_in_a_row += 1
            log.warning("step %d: non-finite loss, step skipped (%d in a row)", step, progress.nonfinite_in_a_row)
            if progress.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                raise MeterError(
                    f"{progress.nonfinite_in_a_row} non-finite losses in a row at step {step}: lower train.lr,"
                    " check the data, or use train.precision=fp32"
                )
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        progress.step = step + 1
        progress.batches_seen = stream.batches_seen
        for key, value in step_losses.items():
            window[key].append(value)
        if progress.step % train.log_every == 0 or progress.step == train.max_steps:
            elapsed = time.perf_counter() - window_start
            values = {k: sum(v) / len(v) for k, v in window.items()}
            values |= {"lr": scheduler.get_last_lr()[0], "samples_per_s": window_samples / max(elapsed, 1e-9),
                       "epoch": stream.epoch}  # fmt: skip
            metrics.write(progress.step, values)
            bar.set_postfix(loss=f"{sum(values.get(k, 0) for k in losses):.3f}",
                            sps=f"{values['samples_per_s']:.0f}")  # fmt: skip
            window.clear()
            window_start, window_samples = time.perf_counter(), 0
        bar.update(1)
        if runtime.is_main and (progress.step % train.checkpoint_every == 0 or progress.step == last_step):
            checkpoints.save(model, tokenizer, task.describe(), optimizer, scheduler, progress)
    bar.close()
    metrics.close()
    if runtime.is_main and train.export and last_step == train.max_steps:
        source = f"Trained with meter: `{cfg.task}` run `{out}`, {last_step} steps."
        export_model_folder(out / EXPORT, model, tokenizer, dataclasses.replace(task.describe(), source=source))
    if budget.bad:
        log.warning("data: %s", budget.summary())
    if runtime.is_main:
        records = read_metrics(out / "metrics.jsonl")
        keys = sorted({k for r in records for k in r if k.endswith("_loss")})
        if keys:
            plot_curves({out.name: records}, keys, out / "loss_curves.png", title=f"{cfg.task}: {out.name}")
    return checkpoints.path(last_step)


def _distribute(task: nn.Module, runtime: Runtime) -> nn.Module:
    if not runtime.distributed:
        return task
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(task, device_ids=device_ids)
