"""The training loop: plain PyTorch, read top to bottom. It knows tasks, never the model's insides.

One optimizer step: draw `grad_accum` micro-batches and their randomness (masks, pairings: drawn per sample for the
whole step, see `meter.objectives.randomness`); agree across processes on each loss's denominator (its item count
over the whole step); forward and backward each micro-batch, gradients reduced across processes on the last one;
clip; and step, unless a loss or the gradient norm is non-finite on any process. So one process with batch 2b, two
with b, and one with b accumulating 2 compute the same step, up to float rounding.

The processes agree on each step in one small reduction: whether every loss and gradient was finite (all skip the
step, or none), and whether any process was asked to stop (all stop after it: see `meter.train.stop_signals`).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from meter.config import Config, TrainConfig
from meter.data.bad_samples import BadSampleBudget, continued_list
from meter.data.collate import Collate
from meter.data.shared_rows import to_device
from meter.data.stream import BatchStream
from meter.errors import ConfigError, DataError, MeterError
from meter.models.folder import EXPORT, ModelFolder, check_replaceable
from meter.objectives.randomness import SampleRandomness, StepRandomness, stream_seed
from meter.train.checkpoint import Checkpoints, Progress, export_final_model
from meter.train.distributed import (
    all_reduce,
    decided_on_main,
    distribute,
    gather_objects,
    gradient_sync,
    local,
    uses_cuda_graphs,
)
from meter.train.metrics_log import MetricsLog, plot_curves, read_metrics
from meter.train.optim import build_optimizer, warmup_linear
from meter.train.resumed_data import check_same_corpus, check_same_tokenizer, corpus_fingerprint
from meter.train.run_folder import (
    check_resumed_from,
    finish_run,
    first_data_root,
    open_run_folder,
    release_run_folder,
    restarted_resume,
)
from meter.train.runtime import Runtime
from meter.train.stop_signals import INTERRUPTED, PREEMPTED, RunStopped, StopAtOnce, StopRequests, signal_name

log = logging.getLogger(__name__)
TEXT_LENGTH_MULTIPLE = 8  # with CUDA graphs: text padded to a multiple of 8 tokens (also what tensor cores like)


class Task(Protocol):
    """A task is an nn.Module holding the model: `prepare` draws the step's randomness, `forward` computes.

    Optionally `loss_counts(batch) -> {loss name: items}`: then the loop gives `forward` the step's denominators in
    `batch["loss_denominators"]` (see `meter.tasks.pretrain`)."""

    model: nn.Module

    def prepare(self, batch: dict[str, Any], random: SampleRandomness) -> dict[str, Any]: ...

    def __call__(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor | float]]: ...

    def describe(self) -> ModelFolder: ...


class CheckpointHook(Protocol):
    """Told, on every process, where a run starts (`start`: its step, the checkpoint it resumed from, the batches
    each process had read) and of the checkpoints it saves at the steps the hook `wants`: what chooses the best
    checkpoint on a validation split (`meter.tasks.best_checkpoint`)."""

    def start(self, step: int, checkpoint: Path | None, batches_read: int) -> None: ...

    def wants(self, step: int) -> bool: ...

    def __call__(self, checkpoint: Path, step: int) -> None: ...


def draw_step(
    task: nn.Module, batches: Iterator[dict[str, Any]], budget: BadSampleBudget, random: StepRandomness,
    train_batch: int, grad_accum: int, runtime: Runtime, empty_limit: int,
) -> list[dict[str, Any]] | None:  # fmt: skip
    """The step's micro-batches, prepared on the CPU. A batch whose samples were all unreadable is replaced by the
    next one, so that every process runs the same number of forward and backward passes. None when this process
    cannot make its step: its own bad samples spend the budget, or `empty_limit` batches in a row were all
    unreadable; it then tells the others in `loss_denominators`, where every process stops."""
    prepared = []
    for micro in range(grad_accum):
        empty = 0
        while True:
            batch = next(batches)
            for bad in batch["bad"]:
                budget.record(bad)
            if batch["size"] > 0:
                break
            empty += 1
            if budget.spent_alone or empty >= empty_limit:  # else an endless loop, the others waiting for it
                return None
        offset = (micro * runtime.world + runtime.rank) * train_batch
        prepared.append(task.prepare(batch, random.rows(offset, batch["size"])))
    return prepared


LOSS_SLOTS = 8  # the most losses a task may count for its step's denominators (pretraining has up to 5)


def loss_denominators(
    task: nn.Module, micro_batches: list[dict[str, Any]] | None, runtime: Runtime,
    budget: BadSampleBudget | None = None, empty_limit: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Each loss's item count over the whole step (all micro-batches, all processes), divided by micro-batches x
    processes: a loss that divides its sum by this makes the accumulated, averaged gradient the mean over the step.

    With several processes the reduction runs at every step, a fixed table whatever the task (LOSS_SLOTS counts and
    a stop flag), so that a process that drew no step (`micro_batches` None: see `draw_step`) meets the others in
    it: then every process settles the bad samples noted so far and all raise the same DataError."""
    counter = getattr(task, "loss_counts", None)
    counts = [counter(batch) for batch in micro_batches] if counter is not None and micro_batches else []
    keys = sorted(counts[0]) if counts else []
    if len(keys) > LOSS_SLOTS:
        raise ValueError(f"{type(task).__name__} counts {len(keys)} losses; the step's reduction has {LOSS_SLOTS}")
    if not runtime.distributed:
        if micro_batches is None:  # alone, its budget was settled as it went: within it, the row of empty batches
            raise DataError(no_readable_batch([runtime.rank], runtime.world, empty_limit, budget))
        totals = [sum(c[k] for c in counts) for k in keys]  # no trip to the GPU and back
    else:
        table = torch.zeros(LOSS_SLOTS + 1, dtype=torch.float64, device=runtime.device)
        table[: len(keys)] = torch.tensor([float(sum(c[k] for c in counts)) for k in keys], dtype=torch.float64)
        table[LOSS_SLOTS] = float(micro_batches is None)
        reduced = all_reduce(table).tolist()
        if reduced[LOSS_SLOTS]:
            stop_drawing(micro_batches is None, runtime, budget, empty_limit)
        totals = reduced[: len(keys)]
    parts = len(micro_batches or ()) * runtime.world
    return {k: max(v, 1.0) / parts for k, v in zip(keys, totals, strict=True)}


def stop_drawing(stopped: bool, runtime: Runtime, budget: BadSampleBudget | None, empty_limit: int) -> NoReturn:
    """On every process, once some process drew no step: all settle every process's noted bad samples (raising the
    budget's error when they spend it), else all raise that the processes named found no readable batch."""
    gathered = gather_objects((stopped, budget.take_pending() if budget is not None else []))
    if budget is not None:
        budget.settle([sample for _, samples in gathered for sample in samples])
    ranks = [rank for rank, (stopped_there, _) in enumerate(gathered) if stopped_there]
    raise DataError(no_readable_batch(ranks, runtime.world, empty_limit, budget))


def no_readable_batch(ranks: list[int], world: int, empty_limit: int, budget: BadSampleBudget | None) -> str:
    who = f"process{'es' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {world}" if world > 1 else "the run"
    first = f" (the first: {next(iter(budget.bad.values()))})" if budget is not None and budget.bad else ""
    return (
        f"data: {who} found no readable batch in {empty_limit} in a row (two epochs of its batches): every sample "
        f"it read was unreadable{first}, within data.max_bad_samples; check that the data's files are all there "
        "(the run's bad_samples.jsonl lists the ones met), or lower data.max_bad_samples to stop on them sooner"
    )


def backward_step(
    wrapped: nn.Module,
    micro_batches: list[dict[str, Any]],
    denominators: dict[str, float],
    runtime: Runtime,
    cuda_graphs: bool,
) -> tuple[dict[str, Tensor], list[str]]:
    """Forward and backward of each micro-batch (`wrapped`: the task as `distribute` made it; `denominators`: see
    `loss_denominators`), the gradients reduced across processes on the last one; the step's losses and reports
    (detached, averaged over the micro-batches) and the losses' names."""
    parts = len(micro_batches)
    step_values: dict[str, Tensor] = {}
    loss_keys: list[str] = []
    for index, batch in enumerate(micro_batches):
        batch = to_device(batch, runtime.device) | {"loss_denominators": denominators}
        if cuda_graphs:  # the graphs' outputs of the last pass may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        with gradient_sync(wrapped, index == parts - 1):
            with runtime.autocast():
                losses, report = wrapped(batch)
            (sum(losses.values()) / parts).backward()
        loss_keys = list(losses)
        for key, value in (losses | report).items():
            step_values[key] = step_values.get(key, 0) + _detached(value, runtime.device) / parts
    return step_values, loss_keys


@dataclass
class StepVerdict:
    """What every process knows after a step's reduction."""

    nonfinite_loss: list[int]  # the processes whose loss was not finite
    nonfinite_gradient: list[int]  # ... whose gradient norm was not finite
    stop_signal: int  # a stop signal some process received (0: none)
    signalled: list[int]  # the processes that received one

    @property
    def finite(self) -> bool:
        return not (self.nonfinite_loss or self.nonfinite_gradient)

    def nonfinite(self, world: int) -> str:
        where = [("loss", self.nonfinite_loss), ("gradient", self.nonfinite_gradient)]
        parts = [f"the {what}" + (f" on process {', '.join(map(str, ranks))} of {world}" if world > 1 else "")
                 for what, ranks in where if ranks]  # fmt: skip
        return " and ".join(parts)


def agree_on_step(loss: Tensor, grad_norm: Tensor, stop_signal: int, runtime: Runtime,
                  budget: BadSampleBudget | None = None) -> StepVerdict:  # fmt: skip
    """One reduction: each process fills its row (loss non-finite, gradient non-finite, stop signal, bad samples met
    since the last step); the sum tells every process about all of them. When some process met bad samples, every
    process settles all of them into its `budget` (so that all stop together when it is spent)."""
    table = torch.zeros(runtime.world, 4, device=runtime.device)
    table[runtime.rank, :2] = torch.stack([~torch.isfinite(loss), ~torch.isfinite(grad_norm)]).float()
    table[runtime.rank, 2] = float(stop_signal)
    table[runtime.rank, 3] = float(len(budget.pending)) if budget is not None else 0.0
    rows = all_reduce(table).tolist()
    if budget is not None and any(row[3] for row in rows):  # rare: only then a second, larger exchange
        budget.settle([sample for samples in gather_objects(budget.take_pending()) for sample in samples])
    signalled = [rank for rank, row in enumerate(rows) if row[2]]
    return StepVerdict(
        nonfinite_loss=[rank for rank, row in enumerate(rows) if row[0]],
        nonfinite_gradient=[rank for rank, row in enumerate(rows) if row[1]],
        stop_signal=int(rows[signalled[0]][2]) if signalled else 0,
        signalled=signalled,
    )


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

    def state(self, runtime: Runtime) -> dict[str, Any]:
        """The window's sums and step counts over all processes (a collective), for a checkpoint; {} when empty."""
        keys = sorted(self.sums)
        counts = torch.tensor([self.steps, self.skipped], dtype=torch.float32, device=runtime.device)
        local_values = [self.sums[k].float().to(runtime.device) for k in keys]
        totals = all_reduce(torch.cat([torch.stack(local_values) if keys else counts[:0], counts])).tolist()
        steps, skipped = totals[len(keys) :]
        if not (steps or skipped):
            return {}
        # skipped steps once each (every process skips the same ones): a resume may have another number of processes
        return {"sums": dict(zip(keys, totals, strict=False)), "steps": steps, "skipped": skipped / runtime.world}

    @classmethod
    def resumed(cls, state: dict[str, Any], runtime: Runtime) -> Window:
        """A window that goes on from a checkpoint's `state`: the totals on the first process, zeros on the others
        (`reduce` sums over processes). Samples per second count from the resume."""
        window = cls()
        if state:
            main = runtime.is_main
            window.sums = {k: torch.tensor(v if main else 0.0, device=runtime.device) for k, v in state["sums"].items()}
            skipped = round(state["skipped"] * runtime.world)  # `reduce` divides the sum over processes by them
            window.steps, window.skipped = (int(state["steps"]), skipped) if main else (0, 0)
        return window

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
    hook: CheckpointHook | None = None,
) -> Path:
    """Trains `task` for cfg.train.max_steps optimizer steps; returns the final checkpoint folder. Raises RunStopped
    when a signal or Ctrl-C stops it (see `meter.train.stop_signals`)."""
    # rank 0 reads the folder for all: each reading its own (a file server's stale listing) could split the ranks
    # a process torchrun restarted goes on from train.out's latest checkpoint, whatever `--resume PATH` its command line
    # repeats (from PATH again, the checkpoints written since were set aside and their steps trained again)
    resume = decided_on_main(lambda: restarted_resume(cfg, resume), runtime) or resume
    check_one_step_fits(dataset, cfg.train, runtime.world)  # before the run folder: a refused run leaves none
    run = open_run_folder(cfg, resume, runtime)  # refuses a folder that holds anything but this run's files
    try:
        if cfg.train.export:  # what the final model folder will replace is refused now, not after the last step
            decided_on_main(lambda: check_replaceable(Path(cfg.train.out) / EXPORT), runtime)
        return _fit_in(run, cfg, task, dataset, collate, tokenizer, runtime, resume, hook)
    finally:
        if runtime.is_main:
            release_run_folder(cfg.train.out)


def _fit_in(
    run: str, cfg: Config, task: nn.Module, dataset: Dataset, collate: Collate, tokenizer: PreTrainedTokenizerBase,
    runtime: Runtime, resume: str | None, hook: CheckpointHook | None,
) -> Path:  # fmt: skip
    train = cfg.train
    out = Path(train.out)
    task.to(runtime.device)
    wrapped = distribute(task, runtime, train)
    optimizer = build_optimizer(task, train, runtime.device)
    scheduler = warmup_linear(optimizer, train.max_steps, train.warmup_ratio)
    checkpoints = Checkpoints(out / "checkpoints", train.keep_last, run=run)
    global_batch = train.batch_size * runtime.world
    torch.manual_seed(stream_seed(train.seed, "process", runtime.rank))  # dropout: a stream of its own per process
    corpus = decided_on_main(lambda: corpus_fingerprint(dataset, cfg.data.root), runtime)  # seconds for VQAv2
    first_root = decided_on_main(lambda: first_data_root(out), runtime) or cfg.data.root  # it may move on resume
    progress = Progress(global_batch=global_batch, grad_accum=train.grad_accum, corpus=corpus)
    path: Path | None = None  # the checkpoint resumed from
    if resume:
        path = checkpoints.resolve_everywhere(resume, runtime)
        check_resumed_from(path, cfg)
        decided_on_main(lambda: check_same_tokenizer(path, tokenizer), runtime)  # before its rows are loaded
        progress = checkpoints.load(path, task, optimizer, scheduler, runtime)
        written_by = len(progress.batches_per_process)
        if written_by not in (0, runtime.world) and hasattr(dataset, "stream_type"):
            raise ConfigError(
                f"{path} was written by {written_by} processes, this run has {runtime.world}: a shard corpus is "
                f"cut into slots per process, so its place in the epoch cannot be carried over (part of the epoch "
                f"would be read twice and part never); resume with {written_by} processes"
            )
        check_step_size(path, progress, train, runtime.world)
        check_same_corpus(path, progress.corpus, corpus, cfg.data.root, first_root)
        progress.corpus = corpus
        if progress.global_batch not in (0, global_batch) and hasattr(dataset, "stream_type"):
            raise ConfigError(
                f"{path} was written with train.batch_size = {progress.global_batch // runtime.world} (train."
                f"grad_accum = {progress.grad_accum}), this run has {train.batch_size} ({train.grad_accum}): a shard "
                "corpus's streams stand at whole batches of theirs, so its place in the epoch cannot be carried over "
                f"(part of the epoch would be read twice and part never); resume with train.batch_size="
                f"{progress.global_batch // runtime.world} train.grad_accum={progress.grad_accum}"
                + (" train.global_batch=0" if train.global_batch else "")  # else it sets grad_accum
            )
        # resumed from an earlier one than the newest: the newer ones are a continuation given up (after every check
        # that refuses the resume: a refused one left them set aside, and `--resume latest` went back to this one)
        if runtime.is_main:
            checkpoints.set_aside_after(progress.step)
        if progress.global_batch not in (0, global_batch):  # the same samples a step, split another way
            log.info("resumed with %d samples a micro-batch over all processes instead of %d, %d micro-batches a "
                     "step instead of %d", global_batch, progress.global_batch, train.grad_accum,
                     progress.grad_accum or train.grad_accum)  # fmt: skip
            progress.batches_seen = progress.batches_seen * progress.global_batch // global_batch
            progress.global_batch = global_batch
        progress.grad_accum = train.grad_accum
        log.info("resumed from %s at step %d", path, progress.step)
        if 0 < train.stop_at <= progress.step < train.max_steps:  # a chunk's stop the run has passed: nothing to do
            log.warning("train.stop_at = %d: the run is at step %d already; nothing to train (raise stop_at to go on)",
                        train.stop_at, progress.step)  # fmt: skip
            return path
    if hook is not None:
        hook.start(progress.step, path, progress.batches_seen)
    cuda_graphs = uses_cuda_graphs(train) and runtime.device.type == "cuda"
    if cuda_graphs:  # a graph is recorded for each text length met: a few lengths, not every one up to max_length
        collate = collate.bucketed(TEXT_LENGTH_MULTIPLE)
    # installed before the data workers start: forked, they inherit handlers that leave the signals to this process
    with StopRequests() as stop:
        stream_type = getattr(dataset, "stream_type", BatchStream)  # a shard corpus brings its own stream
        stream = stream_type(
            dataset, train.batch_size, collate, seed=train.seed, rank=runtime.rank, world=runtime.world,
            start_batch=progress.batches_seen, num_workers=cfg.data.num_workers, grad_accum=train.grad_accum,
            worker_timeout=cfg.data.worker_timeout, pin_memory=runtime.device.type == "cuda",
        )  # fmt: skip
        batches = iter(stream)
        empty_limit = 2 * stream.batches_per_epoch  # unreadable batches in a row that say a process's data is gone
        bad_file = out / "bad_samples.jsonl"
        budget = BadSampleBudget(cfg.data.max_bad_samples, distinct_samples(dataset), bad_file if runtime.is_main
                                 else None, shared=runtime.distributed, moved=(cfg.data.root, first_root))  # fmt: skip
        # resumed: the budget goes on from the samples skipped so far (every process's the same: all stop together)
        budget.restore(decided_on_main(lambda: continued_list(bad_file, resumed=path is not None,
                                                              keep=progress.bad_samples), runtime))  # fmt: skip
        # step 0 too: a run restarted before its first checkpoint drops the records its killed attempt logged
        metrics = MetricsLog(out, enabled=runtime.is_main, resume_step=progress.step)
        last_step = min(train.stop_at, train.max_steps) if train.stop_at > 0 else train.max_steps
        bar = tqdm(total=train.max_steps, initial=progress.step, desc=f"{cfg.task} {out.name}", unit="step",
                   disable=not (train.progress and runtime.is_main), dynamic_ncols=True)  # fmt: skip
        max_norm = train.clip_grad if train.clip_grad > 0 else math.inf  # inf: measure the norm, do not clip
        window = Window.resumed(progress.log_window, runtime)
        task.train()
        try:
            for step in range(progress.step, last_step):
                random = StepRandomness(train.seed, step, global_batch * train.grad_accum)
                micro_batches = draw_step(task, batches, budget, random, train.batch_size, train.grad_accum, runtime,
                                          empty_limit)  # fmt: skip
                denominators = loss_denominators(task, micro_batches, runtime, budget, empty_limit)
                assert micro_batches is not None  # None: loss_denominators raised on every process
                step_values, loss_keys = backward_step(wrapped, micro_batches, denominators, runtime, cuda_graphs)
                grad_norm = local(torch.nn.utils.clip_grad_norm_(task.parameters(), max_norm))
                verdict = agree_on_step(sum(step_values[k] for k in loss_keys), grad_norm, stop.received, runtime,
                                        budget)  # fmt: skip
                if verdict.finite:
                    optimizer.step()
                    progress.nonfinite_in_a_row = 0
                    window.add(step_values | {"grad_norm": grad_norm.detach().float()},
                               sum(b["size"] for b in micro_batches))  # fmt: skip
                else:
                    skip_step(verdict, progress, window, step + 1, train.max_nonfinite_steps, runtime.world)
                optimizer.zero_grad(set_to_none=True)
                # the rate this step trained at, the base group's (after `scheduler.step` the groups hold the next
                # step's; and a group at multiplier 0 has no ratio to the base)
                lr = train.lr * scheduler.lr_lambdas[0](step)
                with warnings.catch_warnings():  # a first step skipped: the schedule still counts it, as it should
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                    scheduler.step()
                progress.step = step + 1
                progress.batches_seen = stream.batches_seen
                if progress.step % train.log_every == 0 or progress.step == last_step:
                    values = window.reduce(runtime) | {"lr": lr, "epoch": stream.epoch}
                    metrics.write(progress.step, values)
                    loss = sum(values.get(k, math.nan) for k in loss_keys)
                    bar.set_postfix(loss=f"{loss:.3f}", samples_per_s=f"{values['samples_per_s']:.1f}", refresh=False)
                    window = Window()
                bar.update(1)
                stopping = bool(verdict.stop_signal)  # the last step too: not on to a best_on or a final evaluation
                hooked = hook is not None and hook.wants(progress.step)
                if progress.step % train.checkpoint_every == 0 or progress.step == last_step or stopping or hooked:
                    progress.log_window = window.state(runtime)
                    progress.bad_samples = budget.count
                    saved = checkpoints.save(task, tokenizer, optimizer, scheduler, progress, runtime)
                if hook is not None and hooked and not stopping:  # stopping: the hook hears of it on resuming
                    hook(saved, progress.step)
                if stopping:
                    raise RunStopped(preempted(verdict, progress.step, saved, runtime), PREEMPTED)
            bar.close()
            finish(cfg, task, tokenizer, runtime, last_step, budget)
            zero = torch.zeros((), device=runtime.device)
            late = agree_on_step(zero, zero, stop.received, runtime)  # asked during a best_on evaluation or the export
            if late.stop_signal:  # not on to the final evaluation (hours on a large split): resumed, it exports again
                raise RunStopped(f"stopped by {signal_name(late.stop_signal)} after the last step: "
                                 f"{last_checkpoint(checkpoints)}", PREEMPTED)  # fmt: skip
        except KeyboardInterrupt:
            where = f"at step {progress.step + 1}" if progress.step < last_step else "after the last step"
            raise RunStopped(f"interrupted (Ctrl-C) {where}: {last_checkpoint(checkpoints)}", INTERRUPTED) from None
        except StopAtOnce as again:
            raise RunStopped(f"stopped at once by a second {signal_name(again.signum)} (a checkpoint being written "
                             f"was dropped): {last_checkpoint(checkpoints)}", PREEMPTED) from None  # fmt: skip
        finally:
            bar.close()
            metrics.close()
    if runtime.is_main and last_step == train.max_steps:
        finish_run(out)
    return checkpoints.path(last_step)


def distinct_samples(dataset: Dataset) -> int:
    """The training data's distinct samples: a shard corpus's pairs once each, whatever its sources' weights (a
    pair read twice an epoch is one sample to a step and to the bad-sample budget)."""
    return getattr(dataset, "distinct_samples", None) or len(dataset)  # type: ignore[arg-type]


def check_one_step_fits(dataset: Dataset, train: TrainConfig, world: int) -> None:
    """Refuses training data with fewer samples than one optimizer step takes, naming the setting that sets it."""
    samples = distinct_samples(dataset)
    step = train.batch_size * world * train.grad_accum
    processes = f" x {world} processes" if world > 1 else ""
    if samples >= step:
        check_a_batch_for_each_stream(dataset, train, world)
        return
    if train.global_batch and samples >= train.batch_size * world:  # it sets train.grad_accum: the one to name
        setting, fix = f"train.global_batch = {train.global_batch}", "lower train.global_batch"
    elif train.global_batch:  # less than one micro-batch: no global batch (a multiple of it) would fit
        setting = (
            f"train.global_batch = {train.global_batch}, in micro-batches of train.batch_size = {train.batch_size}"
        )
        fix = "lower train.batch_size and train.global_batch"
    else:
        setting = f"train.batch_size = {train.batch_size}{processes} x train.grad_accum = {train.grad_accum}"
        fix = "lower train.batch_size or train.grad_accum"
    raise ConfigError(
        f"the training data holds {samples:,} samples, fewer than one optimizer step takes ({step:,}: {setting}); "
        f"{fix} to at most {samples:,} samples a step, or train on more data"
    )


def check_a_batch_for_each_stream(dataset: Dataset, train: TrainConfig, world: int) -> None:
    """A shard corpus's rank reads its streams in whole batches: an epoch must hold one for each (its stream refused
    it after the run folder was taken)."""
    streams = getattr(dataset, "streams_per_rank", 1)
    pairs = len(dataset)  # type: ignore[arg-type]
    if pairs < train.batch_size * world * streams:
        processes = f" x {world} processes" if world > 1 else ""
        raise ConfigError(
            f"the data sources hold {pairs:,} pairs an epoch, fewer than one batch for each stream (train.batch_size "
            f"= {train.batch_size}{processes} x data.streams_per_rank = {streams}); lower data.streams_per_rank or "
            "train.batch_size, or train on more data"
        )


def check_step_size(path: Path, progress: Progress, train: TrainConfig, world: int) -> None:
    """A run resumed on another number of processes (a job requeued on fewer GPUs) goes on only with the samples a
    step its checkpoint's steps took: the schedule, the learning rate and the data position were set for them.
    train.batch_size and train.grad_accum (or train.global_batch, which sets it) may change to keep it (each step
    then sees the same samples)."""
    if not progress.global_batch:  # written before the global batch was recorded
        return
    batch_size, grad_accum = train.batch_size, train.grad_accum
    before = progress.global_batch * (progress.grad_accum or grad_accum)
    now = batch_size * world * grad_accum
    if before == now:
        return
    if train.global_batch:  # it sets train.grad_accum: the one to name
        fits = [f"train.global_batch={before}"]
    else:
        fits = [f"train.grad_accum={before // (batch_size * world)}"] if before % (batch_size * world) == 0 else []
        fits += [f"train.batch_size={before // (world * grad_accum)}"] if before % (world * grad_accum) == 0 else []
    raise ConfigError(
        f"{path}: its steps took {before} samples; this run's take {now} (train.batch_size {batch_size} x {world} "
        f"process{'es' if world > 1 else ''} x train.grad_accum {grad_accum}): the schedule and the data position were "
        f"set for {before}; resume with " + (" or ".join(fits) if fits else f"a split of {before} samples a step")
    )


def skip_step(verdict: StepVerdict, progress: Progress, window: Window, step: int, budget: int, world: int) -> None:
    """A step with a non-finite loss or gradient on any process: no process applies it; too many in a row end the
    run."""
    progress.nonfinite_in_a_row += 1
    window.skipped += 1
    log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row): %s", step,
                progress.nonfinite_in_a_row, verdict.nonfinite(world))  # fmt: skip
    if progress.nonfinite_in_a_row >= budget:
        raise MeterError(
            f"{progress.nonfinite_in_a_row} steps in a row with a non-finite loss or gradient, the last at step {step} "
            f"(train.max_nonfinite_steps = {budget}): {verdict.nonfinite(world)}; lower train.lr or the loss weights, "
            "check the data, or use train.precision=fp32"
        )


def finish(
    cfg: Config, task: nn.Module, tokenizer: PreTrainedTokenizerBase, runtime: Runtime, last_step: int,
    budget: BadSampleBudget,
) -> None:  # fmt: skip
    """After the last step: the final model folder (when the run got to max_steps), the data summary, the plots."""
    out = Path(cfg.train.out)
    if cfg.train.export and last_step == cfg.train.max_steps:
        source = f"Trained with meter: `{cfg.task}` run `{out}`, {last_step} steps."
        export_final_model(task, tokenizer, out / EXPORT, source, runtime)
    if budget.bad:
        log.warning("data: %s", budget.summary())
    if runtime.is_main:
        records = read_metrics(out / "metrics.jsonl")
        keys = sorted({k for r in records for k in r if k.endswith("_loss")})
        if keys:
            plot_curves({out.name: records}, keys, out / "loss_curves.png", title=f"{cfg.task}: {out.name}")


def preempted(verdict: StepVerdict, step: int, checkpoint: Path, runtime: Runtime) -> str:
    who = f" (sent to process {', '.join(map(str, verdict.signalled))})" if runtime.distributed else ""
    return (
        f"stopped by {signal_name(verdict.stop_signal)}{who} after step {step}: checkpoint {checkpoint} written; "
        f"continue with --resume latest (exit status {PREEMPTED}: requeue the job)"
    )


def last_checkpoint(checkpoints: Checkpoints) -> str:
    latest = checkpoints.latest()
    if latest is None:
        return "no checkpoint was written yet"
    return f"the last checkpoint is {latest}; continue with --resume latest"
