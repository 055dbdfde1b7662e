"""The jobs behind the CLI: pretrain, fine-tune + evaluate. Each reads a Config and writes a run folder."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from meter.config import Config
from meter.data.collate import Collate
from meter.data.datasets import CaptionPairs
from meter.data.formats.captions import PRETRAIN_SPLITS, read_karpathy
from meter.data.shard_stream import open_corpus
from meter.data.stream import micro_batches_per_epoch
from meter.errors import ConfigError, DataError
from meter.tasks.best_checkpoint import BestCheckpoint, check_best_on, evaluated_weights
from meter.tasks.build import build_model, image_reader, task_tokenizer
from meter.tasks.catalog import DOWNSTREAM
from meter.tasks.downstream import Downstream, evaluate_into
from meter.tasks.pretrain import PretrainTask, pretrain_heads
from meter.tasks.vqa import UNANNOTATED_PREFIX, evaluate_vqa, read_vqa_split, whole_submission
from meter.train.checkpoint import Checkpoints
from meter.train.distributed import decided_on_main, main_alone, split_global_batch
from meter.train.loop import fit
from meter.train.run_folder import CHECKPOINTS, restarted_resume
from meter.train.runtime import Runtime, release_cached_memory, setup_runtime
from meter.validate import validate

log = logging.getLogger(__name__)


def run_pretrain(cfg: Config, resume: str | None = None) -> Path:
    """MLM + ITM on data.sources (shards), or else the Karpathy train (+ restval) captions; returns the final
    checkpoint."""
    validate(cfg)
    runtime = setup_runtime(cfg.train)
    split_global_batch(cfg.train, runtime.world)  # grad_accum for this run's processes
    resume = resumed(cfg, resume, runtime)
    built = built_from(cfg, resume, runtime)
    tokenizer = task_tokenizer(built)
    heads = pretrain_heads(tokenizer, cfg.objectives)
    model = build_model(built, tokenizer, heads)
    cfg.model, built.train.init_from = built.model, cfg.train.init_from
    if cfg.data.sources:  # shards from `meter prepare`, streamed (fit builds the corpus's own stream type)
        dataset = open_corpus(cfg.data, image_reader(cfg, model))
        log.info("pretraining on %s pairs an epoch from %s", f"{len(dataset):,}", dataset.describe())
    else:
        root = Path(cfg.data.root)
        records = read_karpathy(root / cfg.data.karpathy, root / cfg.data.images, PRETRAIN_SPLITS)
        dataset = CaptionPairs(records, image_reader(cfg, model))
        log.info("pretraining on %d captions of %d images", len(dataset), len(records))
    task = PretrainTask(model, tokenizer, cfg, heads)
    return fit(cfg, task, dataset, Collate(tokenizer, cfg.model.text.max_length), tokenizer, runtime, resume)


def run_finetune(cfg: Config, resume: str | None = None) -> dict[str, Any]:
    """Fine-tunes on the task's training split, then evaluates on its evaluation split (the final weights, or with
    train.best_on the best checkpoint on that split: see `meter.tasks.best_checkpoint`)."""
    validate(cfg)
    downstream = downstream_task(cfg.task)
    if cfg.train.best_on:
        check_best_on(cfg, downstream)
    read_eval_split(cfg, downstream)
    runtime = setup_runtime(cfg.train)
    split_global_batch(cfg.train, runtime.world)  # grad_accum for this run's processes
    resume = resumed(cfg, resume, runtime)
    built = built_from(cfg, resume, runtime)
    job = downstream.setup(built)
    cfg.model, built.train.init_from = built.model, cfg.train.init_from  # as the build resolved it: the run records it
    best = None
    if cfg.train.best_on:
        samples = len(job.dataset)  # type: ignore[arg-type]
        epoch = micro_batches_per_epoch(samples, cfg.train.batch_size, runtime.world, cfg.train.grad_accum)
        best = BestCheckpoint(cfg, downstream, batches_per_epoch=epoch)
    checkpoint = fit(cfg, job.task, job.dataset, job.collate, job.tokenizer, runtime, resume, best)
    del job, best  # the trained model leaves the device before the evaluation loads the saved weights
    release_cached_memory()
    return evaluate_run(cfg, evaluated_weights(cfg, checkpoint), Path(cfg.train.out))


def resumed(cfg: Config, resume: str | None, runtime: Runtime) -> str | None:
    """What the run resumes: `resume`, or for a process torchrun restarted the run's latest checkpoint (decided once,
    before the model is built: `built_from` needs it)."""
    return decided_on_main(lambda: restarted_resume(cfg, resume), runtime) or resume


def built_from(cfg: Config, resume: str | None, runtime: Runtime) -> Config:
    """The config the run's model and tokenizer are built by: its own; or, resuming a run that started from
    train.init_from, with the checkpoint it resumes as init_from: a model folder of the architecture, tokenizer and
    heads the run built from init_from at its start, whose weights the resume loads over the build in any case.
    init_from's folder may be gone since (a pretraining checkpoint its keep_last deleted, a folder moved) or hold
    another model (a pretraining run again into it): built from it, the run could not be resumed."""
    source = cfg.train.init_from
    if not resume or not source:
        return cfg
    checkpoint = decided_on_main(lambda: _resolved(Path(cfg.train.out) / CHECKPOINTS, resume), runtime)
    if checkpoint is None:  # nothing to resume: init_from is read (or named missing) as at a start
        return cfg
    if not Path(source).exists():
        log.warning("train.init_from %s is gone: the model is built from %s, the checkpoint the run resumes (its "
                    "weights are the run's own since its start)", source, checkpoint)  # fmt: skip
    built = copy.deepcopy(cfg)
    built.train.init_from = str(checkpoint)
    return built


def _resolved(folder: Path, resume: str) -> Path | None:
    try:
        return Checkpoints(folder).resolve(resume)
    except DataError:
        return None


def read_eval_split(cfg: Config, downstream: Downstream) -> None:
    """Reads the evaluation split once before training: a typo in `eval_split` (or a file of it missing) is named
    now, not after the last step (a finished run does not resume under another config). VQA's test splits are read
    without the annotations they never have."""
    split = getattr(cfg, cfg.task).eval_split
    try:
        if cfg.task == "vqa" and split.startswith(UNANNOTATED_PREFIX):  # and the larger split its submission answers
            whole_submission(cfg, split, read_vqa_split(cfg, split, with_annotations=False))
        else:
            downstream.read_split(cfg, split)
    except DataError as error:
        raise DataError(f"{cfg.task}.eval_split = {split!r}: {str(error).removeprefix('data: ')}") from None


def downstream_task(name: str) -> Downstream:
    if name == "pretrain":
        raise ConfigError(
            f"task = 'pretrain' is not a downstream task; use `meter pretrain`, or set task to one of: "
            f"{', '.join(DOWNSTREAM.names())}"
        )
    return DOWNSTREAM.get(name, key="task")


def evaluate_run(cfg: Config, checkpoint: str | Path, out: Path) -> dict[str, Any]:
    """Evaluates a model folder on cfg.task's evaluation split; writes predictions and leaderboard files to `out`.
    Under a launcher only the first process evaluates (the others would score the whole split again and write the
    same files at the same time); the others get {} when it is done (a study cell's next run needs them together).
    Every process joins the launcher's group first (`meter evaluate` and a requeued `finetune --resume latest` come
    here without training: the first process joined alone and waited for the others, gone)."""
    setup_runtime(cfg.train)
    return main_alone(lambda: evaluate_into(downstream_task(cfg.task), cfg, checkpoint, out), others={})


def evaluate_vqa_run(cfg: Config, checkpoint: str | Path, out: Path) -> dict[str, Any]:
    """Predicts the VQA evaluation split with a model folder; writes predictions and scores (if annotated)."""
    return evaluate_vqa(cfg, checkpoint, out)
