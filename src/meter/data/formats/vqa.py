"""VQAv2 reader: the official question and annotation JSON files."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter.data.formats.common import json_field, listed, read_json
from meter.errors import DataError

log = logging.getLogger(__name__)
ANSWERS_PER_QUESTION = 10  # every question of the official files has ten annotators


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
    """The annotations of an official annotation file, each checked (a DataError names the file, the annotation
    and the field): ids are integers, the answers a non-empty list of {"answer": str}, one annotation per question.
    A number of answers other than ten (the official files' count) is allowed, with one warning; so are identical
    answer records (a file without `answer_id`s), with a warning of their own: the official scoring leaves one
    annotator out by comparing whole records, so identical ones are left out together and a right answer scores
    less. Scored as the official code scores them all the same: the number must be the official one."""
    annotations = listed(read_json(path, "VQAv2 annotation file"), "annotations", path, "VQAv2 annotation file")
    seen: dict[int, int] = {}
    unusual: list[tuple[int, int]] = []  # (question_id, number of answers) where it is not ten
    repeated: list[int] = []  # questions with identical answer records
    for index, annotation in enumerate(annotations):
        where = f"{path}: annotations[{index}]"
        question_id = json_field(annotation, "question_id", int, where)
        where += f" (question_id {question_id})"
        if question_id in seen:
            raise DataError(f"{where}: annotated twice (also annotations[{seen[question_id]}])")
        seen[question_id] = index
        json_field(annotation, "image_id", int, where, optional=True)  # checked against the question's (same_image)
        json_field(annotation, "multiple_choice_answer", str, where, optional=True)  # required to train on
        for key in ("question_type", "answer_type"):
            json_field(annotation, key, str, where)
        answers = json_field(annotation, "answers", list, where)
        if not answers:
            raise DataError(f"{where}: 'answers' is empty; each annotated question has its annotators' answers")
        for number, answer in enumerate(answers):
            json_field(answer, "answer", str, f"{where}: answers[{number}]")
        if len(answers) != ANSWERS_PER_QUESTION:
            unusual.append((question_id, len(answers)))
        if len({json.dumps(answer, sort_keys=True) for answer in answers}) < len(answers):
            repeated.append(question_id)
    if unusual:
        log.warning("%s: %d of %d annotations have a number of answers other than %d (question %d has %d); the "
                    "accuracy averages over however many there are", path, len(unusual), len(annotations),
                    ANSWERS_PER_QUESTION, *unusual[0])  # fmt: skip
    if repeated:
        log.warning("%s: %d of %d annotations have identical answer records (question %d; no answer_id?): the "
                    "official scoring, which meter follows, leaves identical records out together, so a right answer "
                    "scores less there; give each answer its answer_id (1-10) for the usual score", path,
                    len(repeated), len(annotations), repeated[0])  # fmt: skip
    return annotations


def read_vqa_questions(path: str | Path) -> list[dict[str, Any]]:
    """The questions of an official question file, each checked (a DataError names the file, the question and the
    field); a question id asked twice is an error, since a leaderboard takes one answer per question."""
    questions = listed(read_json(path, "VQAv2 question file"), "questions", path, "VQAv2 question file")
    seen: dict[int, int] = {}
    for index, question in enumerate(questions):
        where = f"{path}: questions[{index}]"
        question_id = json_field(question, "question_id", int, where)
        if question_id in seen:
            raise DataError(f"{path}: question_id {question_id} appears more than once (questions[{seen[question_id]}]"
                            f" and [{index}])")  # fmt: skip
        seen[question_id] = index
        where += f" (question_id {question_id})"
        json_field(question, "image_id", int, where)
        if not json_field(question, "question", str, where).strip():  # as NLVR2's and SNLI-VE's empty texts
            raise DataError(f"{where}: 'question' is empty")
    return questions


def same_image(
    question: dict[str, Any], annotation: dict[str, Any], questions: str | Path, annotations: str | Path
) -> None:
    """An annotation that names an image names its question's: another is a question file and an annotation file of
    two sets (abstract scenes and COCO, two releases merged), whose answers are about another image."""
    if "image_id" in annotation and annotation["image_id"] != question["image_id"]:
        raise DataError(f"{annotations}: question {question['question_id']} is annotated for image "
                        f"{annotation['image_id']}, but {questions} asks it of image {question['image_id']}: files of "
                        "two different sets?")  # fmt: skip


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
    records = []
    for q in read_vqa_questions(questions):
        image = Path(image_dir) / image_pattern.format(split=image_split or split, image_id=q["image_id"])
        a = by_id.get(q["question_id"])
        if annotations and a is None:
            raise DataError(f"{annotations}: no annotation for question {q['question_id']} of {questions}")
        if a is not None:
            same_image(q, a, questions, annotations)
        if a is not None and "multiple_choice_answer" not in a:
            raise DataError(f"{annotations}: the annotation of question {q['question_id']} has no "
                            "'multiple_choice_answer' (the consensus answer the vocabulary is made of)")  # fmt: skip
        records.append(
            VqaRecord(
                question_id=q["question_id"],
                image_id=q["image_id"],
                question=q["question"],
                image=image,
                answers=tuple(a["answers"]) if a else (),
                question_type=a["question_type"] if a else "",
                answer_type=a["answer_type"] if a else "",
                multiple_choice_answer=a["multiple_choice_answer"] if a else "",
            )
        )
    if annotations and len(by_id) > len(records):  # every question is annotated (checked above): the rest are not asked
        log.warning("%s: %d annotated questions are not in %s: only its %d questions are read (and scored)",
                    annotations, len(by_id) - len(records), questions, len(records))  # fmt: skip
    return records
