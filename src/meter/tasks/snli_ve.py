"""SNLI-VE: does the image entail, contradict, or leave open the hypothesis? Three classes on the joint feature."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import Tensor

from meter.atomic_files import write_text_atomically
from meter.config import Config
from meter.data.bad_samples import evaluation_budget, skipped_fields, warn_evaluation_skips
from meter.data.collate import Collate
from meter.data.datasets import ImageReader
from meter.data.formats.snli_ve import SNLI_VE_LABELS, SnliVeRecord, read_snli_ve
from meter.data.labelled import Example, LabelledExamples
from meter.errors import DataError
from meter.models.heads import in_fp32
from meter.tasks.build import build_model, image_reader, task_tokenizer
from meter.tasks.classify import ClassificationTask, classify_split
from meter.tasks.downstream import DOWNSTREAM, Downstream, Finetuning

log = logging.getLogger(__name__)


class SnliVeTask(ClassificationTask):
    head = "snli_ve"

    def logits(self, batch: dict[str, Any]) -> Tensor:
        fused = self.model(batch["pixels"], batch["input_ids"], batch["attention_mask"])
        return in_fp32(self.model.heads[self.head], fused.joint)


def read_snli_ve_split(cfg: Config, split: str) -> list[SnliVeRecord]:
    root = Path(cfg.data.root)
    return read_snli_ve(
        root / cfg.snli_ve.file.format(split=split), root / cfg.snli_ve.images, cfg.snli_ve.image_pattern
    )


def snli_ve_dataset(records: list[SnliVeRecord], images: ImageReader) -> LabelledExamples:
    return LabelledExamples([Example((r.image,), r.hypothesis, r.label) for r in records], images)


def setup_snli_ve(cfg: Config) -> Finetuning:
    records = read_snli_ve_split(cfg, cfg.snli_ve.train_split)
    tokenizer = task_tokenizer(cfg)
    model = build_model(cfg, tokenizer, {SnliVeTask.head: len(SNLI_VE_LABELS)})
    log.info("snli-ve: %d training examples", len(records))
    dataset = snli_ve_dataset(records, image_reader(cfg, model))
    collate = Collate(tokenizer, cfg.model.text.max_length)
    return Finetuning(SnliVeTask(model, cfg, len(SNLI_VE_LABELS)), dataset, collate, tokenizer)


def snli_ve_accuracy(records: list[SnliVeRecord], predictions: dict[int, int]) -> dict[str, Any]:
    """Accuracy in percent, overall and per gold label, over the examples that have a prediction (an evaluation
    gives every example one: the predictions file's)."""
    scored = [(i, r) for i, r in enumerate(records) if i in predictions]
    if not scored:
        raise DataError("snli-ve: no example to score")
    per_label = {}
    for label, name in enumerate(SNLI_VE_LABELS):
        indices = [i for i, r in scored if r.label == label]
        if indices:
            per_label[name] = 100 * sum(predictions[i] == label for i in indices) / len(indices)
    correct = sum(predictions[i] == r.label for i, r in scored)
    return {"accuracy": 100 * correct / len(scored), "per_label": per_label, "examples": len(scored)}


def evaluate_snli_ve(cfg: Config, checkpoint: str | Path, out: Path) -> dict[str, Any]:
    """Predicts snli_ve.eval_split; writes `snli_ve_predictions_{split}.jsonl` (pairID, predicted label) and the
    accuracy of that file. Examples whose image cannot be read count against data.max_bad_samples; the file gives
    them the first label, and the accuracy counts them so."""
    split = cfg.snli_ve.eval_split
    records = read_snli_ve_split(cfg, split)
    budget = evaluation_budget(cfg.data.max_bad_samples, len(records), out / f"snli_ve_bad_samples_{split}.jsonl")
    predictions = classify_split(cfg, checkpoint, SnliVeTask, len(SNLI_VE_LABELS),
                                 lambda images: snli_ve_dataset(records, images), budget)  # fmt: skip
    warn_evaluation_skips("snli-ve eval", budget, f"the predictions file gives them {SNLI_VE_LABELS[0]!r}, and the "
                          "accuracy is that file's")  # fmt: skip
    filled = {i: predictions.get(i, 0) for i in range(len(records))}
    lines = [json.dumps({"pairID": r.pair_id, "prediction": SNLI_VE_LABELS[filled[i]]}) + "\n"
             for i, r in enumerate(records)]  # fmt: skip
    accuracy_file = out / f"snli_ve_accuracy_{split}.json"
    accuracy_file.unlink(missing_ok=True)  # first: killed before the new score, no old one stays beside new predictions
    write_text_atomically(out / f"snli_ve_predictions_{split}.jsonl", "".join(lines))
    accuracy = snli_ve_accuracy(records, filled) | skipped_fields(budget)
    write_text_atomically(accuracy_file, json.dumps(accuracy, indent=1))
    return accuracy


DOWNSTREAM.add(
    "snli_ve",
    Downstream(setup_snli_ve, evaluate_snli_ve, read_snli_ve_split, lambda scores: scores["accuracy"], "accuracy"),
    "SNLI-VE: entailment, neutral, contradiction",
)
