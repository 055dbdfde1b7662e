"""VQAv2 reader: the official question and annotation JSON files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter.data.formats.common import read_json
from meter.errors import DataError


@dataclass(frozen=True)
class VqaRecord:
    question_id: int
    image_id: int
    question: str
    image: Path
    answers: tuple[dict[str, Any], ...] = ()  # the ten annotator answers; empty for test questions
    question_type: str = ""
    answer_type: str = ""
    multiple_choice_answer: str = ""


def read_vqa_annotations(path: str | Path) -> list[dict[str, Any]]:
    data = read_json(path, "VQAv2 annotation file")
    if "annotations" not in data:
        raise DataError(f"{path}: a VQAv2 annotation file has an 'annotations' list")
    return data["annotations"]


def read_vqa_questions(path: str | Path) -> list[dict[str, Any]]:
    data = read_json(path, "VQAv2 question file")
    if "questions" not in data:
        raise DataError(f"{path}: a VQAv2 question file has a 'questions' list")
    return data["questions"]


def read_vqa(
    questions: str | Path,
    annotations: str | Path | None,
    image_dir: str | Path,
    image_pattern: str,
    split: str,
    image_split: str | None = None,
) -> list[VqaRecord]:
    """Joins questions with their annotations (if given); images at `image_dir / image_pattern.format(...)`.

    `image_pattern` takes `{split}` and `{image_id}`, e.g. "{split}/COCO_{split}_{image_id:012d}.jpg"; `{split}` is
    `image_split` when given (test-dev2015 questions ask about test2015 images), else `split`.
    """
    by_id = {a["question_id"]: a for a in read_vqa_annotations(annotations)} if annotations else {}
    records, seen = [], set()
    for q in read_vqa_questions(questions):
        if q["question_id"] in seen:  # a leaderboard takes one answer per question
            raise DataError(f"{questions}: question_id {q['question_id']} appears more than once")
        seen.add(q["question_id"])
        image = Path(image_dir) / image_pattern.format(split=image_split or split, image_id=q["image_id"])
        a = by_id.get(q["question_id"])
        if annotations and a is None:
            raise DataError(f"{annotations}: no annotation for question {q['question_id']} of {questions}")
        records.append(
            VqaRecord(
                question_id=int(q["question_id"]),
                image_id=int(q["image_id"]),
                question=q["question"],
                image=image,
                answers=tuple(a["answers"]) if a else (),
                question_type=a["question_type"] if a else "",
                answer_type=a["answer_type"] if a else "",
                multiple_choice_answer=a["multiple_choice_answer"] if a else "",
            )
        )
    return records
