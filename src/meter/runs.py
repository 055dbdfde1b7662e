"""The jobs behind the CLI: pretrain, fine-tune + evaluate. Each reads a Config and writes a run folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from meter.config import Config
from meter.data.collate import Collate
from meter.data.datasets import CaptionPairs
from meter.data.formats.captions import read_karpathy
from meter.data.shard_stream import open_corpus
from meter.errors import ConfigError
from meter.models.folder import load_model_folder, require_answers
from meter.tasks.build import build_model, image_reader, task_tokenizer
from meter.tasks.pretrain import PretrainTask, pretrain_heads
from meter.tasks.vqa import (
    VqaTask,
    answer_vocabulary,
    evaluate_predictions,
    predict_vqa,
    read_vqa_split,
    vqa_dataset,
    write_predictions,
)
from meter.train.loop import fit
from meter.train.runtime import setup_runtime
from meter.validate import validate

log = logging.getLogger(__name__)
PRETRAIN_SPLITS = ("train", "restval")


def run_pretrain(cfg: Config, resume: str | None = None) -> Path:
    """MLM + ITM on data.sources (shards), or else the Karpathy train (+ restval) captions; returns the final
    checkpoint."""
    validate(cfg)
    runtime = setup_runtime(cfg.train)
    tokenizer = task_tokenizer(cfg)
    heads = pretrain_heads(tokenizer, cfg.objectives)
    model = build_model(cfg, tokenizer, heads)
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
    """Fine-tunes on the task's training split, then evaluates on its evaluation split."""
    validate(cfg)
    if cfg.task == "pretrain":
        raise ConfigError("task = 'pretrain' is not a downstream task; use `meter pretrain`, or set task=vqa")
    runtime = setup_runtime(cfg.train)
    train_records = [r for split in cfg.vqa.train_splits for r in read_vqa_split(cfg, split)]
    answers = answer_vocabulary(train_records, cfg.vqa.min_answer_count)
    if not answers:
        raise ConfigError(
            f"vqa.min_answer_count = {cfg.vqa.min_answer_count}: no answer is that frequent in "
            f"{', '.join(cfg.vqa.train_splits)}; lower it"
        )
    tokenizer = task_tokenizer(cfg)
    model = build_model(cfg, tokenizer, {"vqa": len(answers)})
    images = image_reader(cfg, model)
    dataset = vqa_dataset(train_records, images, answers)
    log.info("vqa: %d training questions, %d answers in the vocabulary", len(dataset), len(answers))
    task = VqaTask(model, answers, cfg)
    collate = Collate(tokenizer, cfg.model.text.max_length, num_labels=len(answers))
    checkpoint = fit(cfg, task, dataset, collate, tokenizer, runtime, resume)
    return evaluate_vqa_run(cfg, checkpoint, Path(cfg.train.out))


def evaluate_vqa_run(cfg: Config, checkpoint: str | Path, out: Path) -> dict[str, Any]:
    """Predicts the evaluation split with a model folder; writes predictions and scores (if annotated)."""
    runtime = setup_runtime(cfg.train)
    model, tokenizer, description = load_model_folder(checkpoint)
    require_answers(description, checkpoint)
    cfg.model = description.config.model  # the model's own resolution, not the data config's default
    model.to(runtime.device)
    records = read_vqa_split(cfg, cfg.vqa.eval_split)
    task = VqaTask(model, description.answers, description.config)
    collate = Collate(tokenizer, description.config.model.text.max_length, num_labels=len(description.answers))
    images = image_reader(cfg, model)
    dataset = vqa_dataset(records, images, description.answers)
    predictions = predict_vqa(task, dataset, collate, runtime, cfg.train.eval_batch_size, cfg.train.progress)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(predictions, out / f"vqa_predictions_{cfg.vqa.eval_split}.json")
    accuracy = evaluate_predictions(records, predictions).to_dict()
    (out / f"vqa_accuracy_{cfg.vqa.eval_split}.json").write_text(json.dumps(accuracy, indent=1))
    return accuracy
