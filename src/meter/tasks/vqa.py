"""VQAv2 fine-tuning and evaluation: answer vocabulary, soft targets, BCE, the official accuracy."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meter.atomic_files import write_text_atomically
from meter.config import Config
from meter.data.bad_samples import BadSampleBudget, count_bad, evaluation_budget, skipped_fields, warn_evaluation_skips
from meter.data.collate import Collate
from meter.data.datasets import ImageReader, VqaQuestions
from meter.data.formats.vqa import VqaRecord, read_vqa
from meter.data.ordered_batches import EvalReading, ordered_batches
from meter.data.shared_rows import to_device
from meter.errors import ConfigError, DataError
from meter.metrics.vqa import VqaAccuracy, soft_score, vocabulary_form, vqa_accuracy, vqa_metric
from meter.models.finite_outputs import check_finite
from meter.models.folder import ModelFolder, load_model_folder, require_answers
from meter.models.heads import in_fp32
from meter.models.meter import Meter
from meter.objectives.randomness import SampleRandomness
from meter.objectives.step_mean import step_mean
from meter.tasks.build import build_model, eval_reading, image_reader, task_tokenizer
from meter.tasks.downstream import DOWNSTREAM, Downstream, Finetuning
from meter.train.runtime import Runtime, setup_runtime

log = logging.getLogger(__name__)


UNANNOTATED_PREFIX = "test"  # test-dev2015, test2015: published without annotations (scored by the leaderboard)


def annotations_path(cfg: Config, split: str) -> Path:
    return Path(cfg.data.root) / cfg.vqa.annotations.format(split=split)


def read_vqa_split(cfg: Config, split: str, with_annotations: bool = True) -> list[VqaRecord]:
    """A question split with its annotations; its images in the folder of vqa.image_splits[split] (else its own)."""
    root = Path(cfg.data.root)
    return read_vqa(
        questions=root / cfg.vqa.questions.format(split=split),
        annotations=annotations_path(cfg, split) if with_annotations else None,
        image_dir=root / cfg.data.images,
        image_pattern=cfg.vqa.image_pattern,
        split=split,
        image_split=cfg.vqa.image_splits.get(split, split),
    )


def answer_vocabulary(records: list[VqaRecord], min_count: int) -> list[str]:
    """Consensus answers in their vocabulary form given for at least `min_count` questions, most frequent first:
    write_vqa.py's answers (3,129 on VQAv2 train+val with the usual 9), "" among them as in official checkpoints
    (the form of consensus answers such as "a" or "?")."""
    counts = Counter(vocabulary_form(r.multiple_choice_answer) for r in records)
    kept = [(answer, n) for answer, n in counts.items() if n >= min_count]
    return [answer for answer, _ in sorted(kept, key=lambda item: (-item[1], item[0]))]


def vocabulary_splits(cfg: Config) -> list[str]:
    """The splits whose consensus answers make the vocabulary: vqa.answer_splits, else the training splits."""
    return cfg.vqa.answer_splits or cfg.vqa.train_splits


def config_vocabulary(cfg: Config, train_records: list[VqaRecord]) -> list[str]:
    """The answer vocabulary a config trains with (`train_records`: its training splits' questions, read already)."""
    splits = vocabulary_splits(cfg)
    records = train_records if splits == cfg.vqa.train_splits else [
        r for split in splits for r in read_vqa_split(cfg, split)
    ]  # fmt: skip
    return answer_vocabulary(records, cfg.vqa.min_answer_count)


def soft_targets(record: VqaRecord, index: dict[str, int], normalize: bool = False) -> list[tuple[int, float]]:
    """(label, score) for each vocabulary answer given by any annotator: 0.3 per annotator, 1.0 from four. The
    official recipe counts the answers as the annotators wrote them (write_vqa.py: "Two" or "two" is not "2"); with
    `normalize` (vqa.normalize_targets) in the vocabulary's form, as the vocabulary counts them."""
    counts = Counter(vocabulary_form(a["answer"]) if normalize else a["answer"] for a in record.answers)
    return [(index[answer], soft_score(n)) for answer, n in sorted(counts.items()) if answer in index]


class VqaTask(nn.Module):
    def __init__(self, model: Meter, answers: list[str], cfg: Config) -> None:
        super().__init__()
        self.model = model
        self.answers = answers
        self.cfg = cfg

    def describe(self) -> ModelFolder:
        heads = {"vqa": len(self.answers)}
        return ModelFolder(self.cfg, heads, answers=list(self.answers))

    def prepare(self, batch: dict[str, Any], random: SampleRandomness) -> dict[str, Any]:
        return batch

    def logits(self, batch: dict[str, Any]) -> Tensor:
        fused = self.model(batch["pixels"], batch["input_ids"], batch["attention_mask"])
        return in_fp32(self.model.heads["vqa"], fused.joint)

    def loss_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        """The questions the loss averages over in this batch: every question of the step weighs the same, however
        the step is split over micro-batches (a short last one) and processes."""
        return {"vqa_loss": batch["size"]}

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        logits = self.logits(batch)
        targets = batch["targets"]
        # METER/ViLT scale the mean BCE by the number of answers: a sum over answers, a mean over the step's questions
        total = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum")
        loss = step_mean(total, "vqa_loss", len(targets), batch)
        score = targets.gather(1, logits.argmax(-1, keepdim=True)).sum().detach()  # a tensor: reading it would sync
        return {"vqa_loss": loss}, {"vqa_score": step_mean(score, "vqa_loss", len(targets), batch)}


def vqa_dataset(records: list[VqaRecord], images: ImageReader, answers: list[str], normalize: bool = False
                ) -> VqaQuestions:  # fmt: skip
    index = {answer: i for i, answer in enumerate(answers)}
    return VqaQuestions(records, images, [soft_targets(r, index, normalize) for r in records])


def training_questions(cfg: Config, records: list[VqaRecord], answers: list[str]) -> list[VqaRecord]:
    """The questions a config trains on: without vqa.keep_untargeted, those with at least one annotator's answer in
    the vocabulary (write_vqa.py's filter; the others would teach only that no answer is right)."""
    if cfg.vqa.keep_untargeted:
        return records
    index = {answer: i for i, answer in enumerate(answers)}
    return [r for r in records if soft_targets(r, index, cfg.vqa.normalize_targets)]


@torch.no_grad()
def predict_vqa(
    task: VqaTask, source: object, dataset: VqaQuestions, collate: Collate, runtime: Runtime, reading: EvalReading,
    budget: BadSampleBudget | None = None,
) -> dict[int, str]:  # fmt: skip
    """question_id -> answer for every question whose image could be read; the others count against `budget`
    (without one, an unreadable image is an error). Logits that are not finite are a NonFiniteOutput naming `source`,
    the model folder, not the vocabulary's first answer to every question."""
    task.eval()
    predictions: dict[int, str] = {}
    for batch in ordered_batches(dataset, collate, reading, "vqa eval"):
        for bad in batch["bad"]:
            count_bad(budget, bad)
        if batch["size"] == 0:
            continue
        batch = to_device(batch, runtime.device)
        with runtime.autocast():
            logits = task.logits(batch)
        labels = check_finite(logits, task.model, source).argmax(-1).tolist()
        for question_id, label in zip(batch["question_id"].tolist(), labels, strict=True):
            predictions[question_id] = task.answers[label]
    task.train()
    return predictions


def annotations_of(records: list[VqaRecord]) -> list[dict[str, Any]]:
    return [
        {"question_id": r.question_id, "answers": list(r.answers), "question_type": r.question_type,
         "answer_type": r.answer_type}
        for r in records
    ]  # fmt: skip


def write_predictions(predictions: dict[int, str], path: str | Path) -> None:
    """The VQAv2 test-dev submission format: [{"question_id": int, "answer": str}, ...]."""
    rows = [{"question_id": q, "answer": a} for q, a in sorted(predictions.items())]
    write_text_atomically(Path(path), json.dumps(rows))


def check_submission(records: list[VqaRecord], predictions: dict[int, str]) -> None:
    """The leaderboard takes exactly one answer for every question of the split (question ids are unique: the
    reader checks)."""
    asked = {r.question_id for r in records}
    unanswered = sorted(asked - predictions.keys())
    unasked = sorted(predictions.keys() - asked)
    if unanswered or unasked:
        raise DataError(
            f"vqa submission: {len(unanswered)} questions without an answer (e.g. {unanswered[:3]}) and"
            f" {len(unasked)} answers to questions not in the split (e.g. {unasked[:3]})"
        )


def whole_submission(cfg: Config, split: str, records: list[VqaRecord]) -> list[VqaRecord] | None:
    """The questions the leaderboard's file for `split` must answer where that is a larger split's (test-dev2015:
    all of test2015, as EvalAI takes it); None where it is the split's own. Read before predicting: a missing file
    fails before the model runs."""
    whole = cfg.vqa.submission_splits.get(split)
    if not whole or whole == split:
        return None
    path = Path(cfg.data.root) / cfg.vqa.questions.format(split=whole)
    if not path.is_file():
        raise DataError(f"vqa: the leaderboard's file for {split} answers every question of {whole}, whose questions "
                        f"{path} were not found (they come with {split}'s in the official release); or set "
                        f"vqa.submission_splits={{}} to write {split}'s questions alone")  # fmt: skip
    questions = read_vqa_split(cfg, whole, with_annotations=False)
    outside = sorted({r.question_id for r in records} - {q.question_id for q in questions})
    if outside:
        raise DataError(f"vqa: {len(outside)} questions of {split} are not in {whole} ({path}), e.g. {outside[:3]}: "
                        f"the files are not of one release")  # fmt: skip
    return questions


def evaluate_predictions(records: list[VqaRecord], predictions: dict[int, str], metric: str) -> VqaAccuracy:
    return vqa_accuracy(annotations_of(records), predictions, metric)


def setup_vqa(cfg: Config) -> Finetuning:
    vqa_metric(cfg.vqa.metric)  # a typo in the metric's name fails now, not after training
    train_records = [r for split in cfg.vqa.train_splits for r in read_vqa_split(cfg, split)]
    answers = config_vocabulary(cfg, train_records)  # over all its splits together
    if cfg.vqa.eval_split in cfg.vqa.train_splits:
        log.warning("vqa.eval_split = %s is also a training split: its score measures fit, not generalisation"
                    " (the leaderboard's split is test-dev2015)", cfg.vqa.eval_split)  # fmt: skip
    if not answers:
        raise ConfigError(
            f"vqa.min_answer_count = {cfg.vqa.min_answer_count}: no answer is that frequent in "
            f"{', '.join(vocabulary_splits(cfg))}; lower it"
        )
    tokenizer = task_tokenizer(cfg)
    model = build_model(cfg, tokenizer, {"vqa": len(answers)}, answers=answers)
    images = image_reader(cfg, model)
    kept = training_questions(cfg, train_records, answers)
    dataset = vqa_dataset(kept, images, answers, cfg.vqa.normalize_targets)
    log.info("vqa: %d training questions, %d answers in the vocabulary", len(dataset), len(answers))
    if len(kept) < len(train_records):
        log.info("vqa: %d questions left out of training: no annotator's answer is in the vocabulary (as the "
                 "official recipe; vqa.keep_untargeted=true keeps them)", len(train_records) - len(kept))  # fmt: skip
    if not kept:
        raise ConfigError(f"vqa: none of the {len(train_records)} training questions has an annotator's answer in the "
                          "vocabulary; lower vqa.min_answer_count or check vqa.answer_splits")  # fmt: skip
    collate = Collate(tokenizer, cfg.model.text.max_length, num_labels=len(answers))
    return Finetuning(VqaTask(model, answers, cfg), dataset, collate, tokenizer)


def unscored(cfg: Config, submission: Path, questions: int) -> dict[str, Any]:
    """The result for a split without annotations (test-dev, test): the leaderboard file, and why no score."""
    reason = f"no annotations ({annotations_path(cfg, cfg.vqa.eval_split)} not found)"
    log.warning("vqa: could not score %s: %s; wrote the leaderboard submission %s", cfg.vqa.eval_split, reason,
                submission)  # fmt: skip
    return {"scored": False, "reason": reason, "split": cfg.vqa.eval_split, "questions": questions,
            "submission": str(submission)}  # fmt: skip


def evaluate_vqa(cfg: Config, checkpoint: str | Path, out: Path) -> dict[str, Any]:
    """Predicts the evaluation split with a model folder; writes the leaderboard submission, and scores it when the
    split has annotations (test-dev and test have none: then it says so instead; another split without its
    annotation file is an error naming it). Questions whose image cannot be read count against
    data.max_bad_samples; within it the submission, which needs every question, gives them the vocabulary's first
    answer, and the score is the official score of that submission (the result says how many were skipped)."""
    vqa_metric(cfg.vqa.metric)
    runtime = setup_runtime(cfg.train)
    model, tokenizer, description = load_model_folder(checkpoint)
    require_answers(description, checkpoint)
    cfg.model = description.config.model  # the model's own resolution, not the data config's default
    model.to(runtime.device)
    annotated = annotations_path(cfg, cfg.vqa.eval_split).is_file()  # test-dev and test splits have none
    if not annotated and not cfg.vqa.eval_split.startswith(UNANNOTATED_PREFIX):
        raise DataError(f"vqa.eval_split = {cfg.vqa.eval_split!r}: its annotations "
                        f"{annotations_path(cfg, cfg.vqa.eval_split)} not found (vqa.annotations under data.root; "
                        "only the test splits are published without them)")  # fmt: skip
    records = read_vqa_split(cfg, cfg.vqa.eval_split, with_annotations=annotated)
    whole = whole_submission(cfg, cfg.vqa.eval_split, records)
    task = VqaTask(model, description.answers, description.config)
    collate = Collate(tokenizer, description.config.model.text.max_length, num_labels=len(description.answers))
    images = image_reader(cfg, model)
    dataset = vqa_dataset(records, images, description.answers)
    split = cfg.vqa.eval_split
    budget = evaluation_budget(cfg.data.max_bad_samples, len(records), out / f"vqa_bad_samples_{split}.jsonl")
    predictions = predict_vqa(task, checkpoint, dataset, collate, runtime, eval_reading(cfg, runtime), budget)
    submission = {r.question_id: predictions.get(r.question_id, task.answers[0]) for r in records}
    check_submission(records, submission)
    warn_evaluation_skips("vqa eval", budget, f"the submission answers them {task.answers[0]!r} (the vocabulary's "
                          "first answer), and the score is that submission's")  # fmt: skip
    submission_file, accuracy_file = out / f"vqa_predictions_{split}.json", out / f"vqa_accuracy_{split}.json"
    accuracy_file.unlink(missing_ok=True)  # first: killed before the new score, no old one stays beside new predictions
    if whole is not None:  # predicted: the split's questions; the file: every question of the larger split
        write_predictions({q.question_id: submission.get(q.question_id, task.answers[0]) for q in whole},
                          submission_file)  # fmt: skip
        log.info("vqa: %s answers all %d questions of %s, as the leaderboard takes them: the %d of %s predicted, the "
                 "rest %r (not scored in the %s phase; submit it to that phase only)", submission_file, len(whole),
                 cfg.vqa.submission_splits[split], len(records), split, task.answers[0], split)  # fmt: skip
    else:
        write_predictions(submission, submission_file)
    if not annotated:
        covers = {"submission_split": cfg.vqa.submission_splits[split], "submission_questions": len(whole)} \
            if whole is not None else {}  # fmt: skip
        return unscored(cfg, submission_file, len(records)) | covers | skipped_fields(budget)
    # the submission's official score: a skipped question counts with the answer the file gives it
    accuracy = evaluate_predictions(records, submission, cfg.vqa.metric).to_dict() | skipped_fields(budget)
    write_text_atomically(accuracy_file, json.dumps(accuracy, indent=1))
    return accuracy


DOWNSTREAM.add(
    "vqa",
    Downstream(setup_vqa, evaluate_vqa, read_vqa_split, lambda scores: scores["overall"], "VQA score"),
    "VQAv2: answer a question about the image",
)
