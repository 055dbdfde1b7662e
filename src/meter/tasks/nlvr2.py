"""NLVR2: is the sentence true of the image pair? Two fused passes, the right image with token type 2, and a
classifier on the two joint features concatenated (METER's "pair" setting)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from meter.atomic_files import write_text_atomically
from meter.config import Config
from meter.data.bad_samples import evaluation_budget, skipped_fields, warn_evaluation_skips
from meter.data.collate import Collate
from meter.data.datasets import ImageReader
from meter.data.formats.nlvr2 import Nlvr2Record, read_nlvr2
from meter.data.labelled import UNLABELLED, Example, LabelledExamples
from meter.errors import ConfigError, DataError
from meter.metrics.nlvr2 import nlvr2_score, write_nlvr2_predictions
from meter.models.heads import in_fp32
from meter.tasks.build import build_model, image_reader, task_tokenizer
from meter.tasks.classify import ClassificationTask, classify_split
from meter.tasks.downstream import DOWNSTREAM, Downstream, Finetuning

log = logging.getLogger(__name__)
CLASSES = ("False", "True")  # class index -> the label the official files use
TOKEN_TYPES = 3  # text, left image, right image


class Nlvr2Task(ClassificationTask):
    head = "nlvr2"
    token_types = TOKEN_TYPES

    def logits(self, batch: dict[str, Any]) -> Tensor:
        model = self.model
        mask = batch["attention_mask"]
        pixels = batch["pixels"]  # (B, 2, 3, H, W): left, right
        text = model.encode_text(batch["input_ids"], mask)  # one text pass serves both images
        images = model.encode_image(pixels.flatten(0, 1)).unflatten(0, pixels.shape[:2])
        left = model.fuse(text, mask, images[:, 0], image_token_type=1)
        right = model.fuse(text, mask, images[:, 1], image_token_type=2)
        return in_fp32(model.heads[self.head], torch.cat([left.joint, right.joint], dim=-1))


def read_nlvr2_split(cfg: Config, split: str) -> list[Nlvr2Record]:
    if split not in cfg.nlvr2.image_dirs:
        raise ConfigError(
            f"nlvr2.image_dirs has no folder for split {split!r}; it has: {', '.join(cfg.nlvr2.image_dirs)}"
        )
    root = Path(cfg.data.root)
    return read_nlvr2(root / cfg.nlvr2.file.format(split=split), root / cfg.nlvr2.image_dirs[split])


def nlvr2_dataset(records: list[Nlvr2Record], images: ImageReader) -> LabelledExamples:
    examples = [
        Example((r.left, r.right), r.sentence, UNLABELLED if r.label is None else int(r.label)) for r in records
    ]
    return LabelledExamples(examples, images)


def setup_nlvr2(cfg: Config) -> Finetuning:
    records = read_nlvr2_split(cfg, cfg.nlvr2.train_split)
    unlabelled = sum(r.label is None for r in records)
    if unlabelled:
        raise ConfigError(f"nlvr2.train_split = {cfg.nlvr2.train_split!r}: {unlabelled} examples have no label")
    tokenizer = task_tokenizer(cfg)
    model = build_model(cfg, tokenizer, {Nlvr2Task.head: len(CLASSES)}, token_types=TOKEN_TYPES)
    log.info("nlvr2: %d training examples", len(records))
    dataset = nlvr2_dataset(records, image_reader(cfg, model))
    collate = Collate(tokenizer, cfg.model.text.max_length)
    return Finetuning(Nlvr2Task(model, cfg, len(CLASSES)), dataset, collate, tokenizer)


def evaluate_nlvr2(cfg: Config, checkpoint: str | Path, out: Path) -> dict[str, Any]:
    """Predicts nlvr2.eval_split; writes the leaderboard CSV `nlvr2_predictions_{split}.csv` and, when the split is
    labelled, the official accuracy and consistency."""
    split = cfg.nlvr2.eval_split
    records = read_nlvr2_split(cfg, split)
    unlabelled = [r.identifier for r in records if r.label is None]
    if 0 < len(unlabelled) < len(records):  # before a whole split is predicted
        raise DataError(f"nlvr2 {split}: {len(unlabelled)} of {len(records)} examples have no label (the first: "
                        f"{unlabelled[0]}): a split is labelled whole (scored) or not at all (test2)")  # fmt: skip
    budget = evaluation_budget(cfg.data.max_bad_samples, len(records), out / f"nlvr2_bad_samples_{split}.jsonl")
    classes = classify_split(cfg, checkpoint, Nlvr2Task, len(CLASSES), lambda images: nlvr2_dataset(records, images),
                             budget)  # fmt: skip
    warn_evaluation_skips("nlvr2 eval", budget, f"the predictions file gives them {CLASSES[0]!r}, and the accuracy "
                          "is that file's")  # fmt: skip
    leaderboard = {r.identifier: CLASSES[classes.get(i, 0)] for i, r in enumerate(records)}  # a row for each
    predictions_file, accuracy_file = out / f"nlvr2_predictions_{split}.csv", out / f"nlvr2_accuracy_{split}.json"
    accuracy_file.unlink(missing_ok=True)  # first: killed before the new score, no old one stays beside new predictions
    write_nlvr2_predictions(leaderboard, predictions_file)
    if unlabelled:  # test2 (the hidden test set): the file is for the leaderboard
        log.info("nlvr2 %s: no labels; wrote the leaderboard file %s", split, predictions_file)
        return {"examples": len(records), "labelled": False} | skipped_fields(budget)
    labels = {r.identifier: CLASSES[int(r.label)] for r in records}
    score = nlvr2_score(labels, leaderboard).to_dict() | skipped_fields(budget)  # the official score of the file
    write_text_atomically(accuracy_file, json.dumps(score, indent=1))
    return score


DOWNSTREAM.add(
    "nlvr2",
    Downstream(setup_nlvr2, evaluate_nlvr2, read_nlvr2_split, lambda scores: scores["accuracy"], "accuracy"),
    "NLVR2: is the sentence true of the image pair",
)
