"""A validation split for VQA carved out of the training split, for the tuned table to select on.

The tuned table picks each variant's best setting by a score on a validation split; picking it by the score the
table then reports would flatter every row. VQAv2 (and the shapes world) gives train2014 and val2014: the table
reports val2014, so the selection happens on a part of train2014 held out of training. A fixed fraction of its
images, with all of their questions, goes to `<split>-select`; the rest is `<split>-fit`, the training split of every
run of the task in the study, uniform and tuned alike (so the two tables differ only in the selection). The files
are written once into the study's folder, in the VQAv2 format, beside links to the original files of every other
split; the runs read them through vqa.questions / vqa.annotations, with vqa.image_splits pointing both new splits
at the training images.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter.config import Config
from meter.errors import ConfigError, DataError

FIT, SELECT = "fit", "select"


@dataclass(frozen=True)
class Holdout:
    train: list[str]  # overrides for every run of the task: train on the rest of the split
    select: list[str]  # and for its selection evaluation: the held-out questions


def file_pattern(pattern: str, key: str) -> str:
    name = Path(pattern).name
    if "{split}" not in name:
        raise ConfigError(
            f"{key} = {pattern!r}: the VQA splits a study writes (select.holdout, unseen) need "
            "{split} in the file name"
        )
    return name


def vqa_holdout(cfg: Config, fraction: float, folder: Path, key: str, write: bool = True) -> Holdout:
    """The overrides that train `cfg`'s VQA runs on all but `fraction` of the training split's images and select
    on the rest; with `write`, writes the split files into `folder`."""
    if cfg.task != "vqa":
        raise ConfigError(
            f"{key}.select.holdout is for VQA (its data has no validation split apart from the reported one); "
            f"task {cfg.task!r} has its own: give {key}.select.overrides, e.g. {cfg.task}.eval_split=dev"
        )
    if len(cfg.vqa.train_splits) != 1:
        raise ConfigError(
            f"{key}.select.holdout carves one training split; vqa.train_splits = {cfg.vqa.train_splits} "
            "(set it to one split, or select on another split with select.overrides)"
        )
    split = cfg.vqa.train_splits[0]
    questions = file_pattern(cfg.vqa.questions, "vqa.questions")
    annotations = file_pattern(cfg.vqa.annotations, "vqa.annotations")
    fit, select = f"{split}-{FIT}", f"{split}-{SELECT}"
    if write:
        write_holdout(cfg, split, fraction, folder, questions, annotations)
    image_split = cfg.vqa.image_splits.get(split, split)
    image_splits = {**cfg.vqa.image_splits, fit: image_split, select: image_split}
    common = [f"vqa.questions={folder / questions}", f"vqa.annotations={folder / annotations}",
              f"vqa.image_splits={json.dumps(image_splits)}"]  # fmt: skip
    return Holdout(train=[*common, f"vqa.train_splits={json.dumps([fit])}"], select=[f"vqa.eval_split={select}"])


def held_out_images(image_ids: set[int], fraction: float, split: str) -> set[int]:
    """A fixed sample of the images (at least one), the same for every run and every study."""
    ordered = sorted(image_ids)
    count = min(len(ordered) - 1, max(1, round(fraction * len(ordered))))
    if count < 1:
        raise DataError(f"vqa split {split} has {len(ordered)} image(s): too few to hold any out")
    return set(random.Random(f"meter-holdout:{split}").sample(ordered, count))


def write_if_changed(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data)
    if not path.is_file() or path.read_text() != text:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(path)


def read_split_file(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path} not found: {what}")
    return json.loads(path.read_text())


def write_holdout(cfg: Config, split: str, fraction: float, folder: Path, questions: str, annotations: str) -> None:
    root = Path(cfg.data.root)
    question_path = root / cfg.vqa.questions.format(split=split)
    annotation_path = root / cfg.vqa.annotations.format(split=split)
    what = "the held-out VQA split is carved from it"
    question_data, annotation_data = read_split_file(question_path, what), read_split_file(annotation_path, what)
    held = held_out_images({q["image_id"] for q in question_data["questions"]}, fraction, split)
    folder.mkdir(parents=True, exist_ok=True)
    for part, keep in ((FIT, lambda image: image not in held), (SELECT, lambda image: image in held)):
        name = f"{split}-{part}"
        write_split(folder, (questions, question_data), (annotations, annotation_data), name, keep)
    link_other_files(folder, {question_path.parent, annotation_path.parent}, folder.parent.parent)  # OUT/holdout/TASK


def write_split(folder: Path, questions: tuple[str, dict[str, Any]], annotations: tuple[str, dict[str, Any]],
                name: str, keep: Callable[[int], bool]) -> None:  # fmt: skip
    """Writes split `name` into `folder`: the questions and annotations (file pattern, data) of the images `keep`
    keeps, in the VQAv2 format."""
    for (pattern, data), items in ((questions, "questions"), (annotations, "annotations")):
        write_if_changed(folder / pattern.format(split=name), {
            **data, "data_subtype": name, items: [item for item in data[items] if keep(item["image_id"])]})  # fmt: skip


def link_other_files(folder: Path, source_folders: set[Path], study: Path) -> None:
    """Links (or copies) into `folder` the JSON files of `source_folders` that it lacks: every other split, as it
    is, for runs that read all their splits from `folder`. A link to a file of the `study` folder (another split
    the study wrote) is relative, so that it holds when the study's folder moves; a link (or copy) of another file
    than the one wanted now is made again."""
    study = study.resolve()
    for source_folder in sorted(source_folders):
        for source in sorted(source_folder.glob("*.json")):
            link = folder / source.name
            target = source.resolve()
            wanted = os.path.relpath(target, folder.resolve()) if target.is_relative_to(study) else str(target)
            if link.is_symlink():
                if os.readlink(link) == wanted:
                    continue
                link.unlink()  # to another file: an earlier data.root, or a folder that moved
            elif link.exists():  # a copy, on a file system without links
                if filecmp.cmp(source, link, shallow=False):
                    continue
                link.unlink()
            try:
                os.symlink(wanted, link)
            except OSError:  # a file system without links
                shutil.copyfile(source, link)
