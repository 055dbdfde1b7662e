"""VQA's reported split without the images that the study's pretraining saw (a task's `unseen: true`).

The paper reports VQAv2 test-dev, whose images (test2015) no pretraining corpus holds. A study reports val2014,
whose answers are published, but the 4M corpus holds most val2014 images (Karpathy's restval, and Visual Genome's
COCO images). `<split>-unseen` keeps the questions on the images that no pretraining of the study saw
(`meter.data.seen_images`); every cell of the study, with and without VLP, reports it, so the rows compare on
the same questions. The files are written into the study's folder in the VQAv2 format (unseen.json records the
counts), beside links to every other split; the runs read them through vqa.questions / vqa.annotations, with
vqa.image_splits pointing the new split at the reported split's images. Each run records which corpora the split
leaves out, so that a study whose corpora change refuses the runs scored on the old split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from meter.config import Config
from meter.errors import ConfigError, DataError
from meter.study.holdout import file_pattern, link_other_files, read_split_file, write_if_changed, write_split

UNSEEN = "unseen"
RECORD = "unseen.json"  # what was written: the split and its counts
log = logging.getLogger(__name__)


def vqa_unseen(cfg: Config, seen: set[int] | None, folder: Path, key: str) -> list[str]:
    """The overrides that report `cfg`'s VQA runs on `<vqa.eval_split>-unseen`; with `seen` (the COCO ids that the
    pretraining saw), writes that split's files into `folder` (None: plans without reading or writing data)."""
    if cfg.task != "vqa":
        raise ConfigError(f"{key}.unseen is for VQA (whose evaluation images the pretraining corpus holds); task "
                          f"{cfg.task!r} evaluates on its own held-out images")  # fmt: skip
    split = cfg.vqa.eval_split
    questions = file_pattern(cfg.vqa.questions, "vqa.questions")
    annotations = file_pattern(cfg.vqa.annotations, "vqa.annotations")
    name = f"{split}-{UNSEEN}"
    if seen is not None:
        write_unseen(cfg, split, seen, folder, questions, annotations)
    image_splits = {**cfg.vqa.image_splits, name: cfg.vqa.image_splits.get(split, split)}
    return [f"vqa.questions={folder / questions}", f"vqa.annotations={folder / annotations}",
            f"vqa.image_splits={json.dumps(image_splits)}", f"vqa.eval_split={name}"]  # fmt: skip


def write_unseen(cfg: Config, split: str, seen: set[int], folder: Path, questions: str, annotations: str) -> None:
    root = Path(cfg.data.root)
    question_path = root / cfg.vqa.questions.format(split=split)
    annotation_path = root / cfg.vqa.annotations.format(split=split)
    what = f"the reported split's answers (unseen: true reports {split} without the images pretraining saw)"
    question_data = read_split_file(question_path, "the questions of the reported split")
    annotation_data = read_split_file(annotation_path, what)
    images = {q["image_id"] for q in question_data["questions"]}
    kept = images - seen
    if not kept:
        raise DataError(f"every one of the {len(images):,} images of VQA {split} ({question_path}) is in the study's "
                        "pretraining corpus: no question is left to report on (leave out unseen: true, or pretrain "
                        "on a corpus without them)")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{split}-{UNSEEN}"
    write_split(folder, (questions, question_data), (annotations, annotation_data), name, lambda image: image in kept)
    link_other_files(folder, {question_path.parent, annotation_path.parent}, folder.parent.parent)  # OUT/unseen/TASK
    count, total = sum(q["image_id"] in kept for q in question_data["questions"]), len(question_data["questions"])
    write_if_changed(folder / RECORD, {"split": name, "from": split, "images": len(kept), "questions": count,
                                       "questions_of_the_split": total})  # fmt: skip
    log.info("VQA %s: %s of the %s questions of %s, on the %s of its %s images that no pretraining of the study "
             "saw", name, f"{count:,}", f"{total:,}", split, f"{len(kept):,}", f"{len(images):,}")  # fmt: skip
