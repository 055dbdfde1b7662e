"""Scoring a VQAv2 predictions file against the official annotation (and question) files."""

from __future__ import annotations

from pathlib import Path

from meter.data.formats.common import json_field, read_json
from meter.data.formats.vqa import read_vqa_annotations, read_vqa_questions, same_image
from meter.errors import DataError
from meter.metrics.vqa import DEFAULT_VQA_METRIC, VqaAccuracy, vqa_accuracy


def read_predictions(path: str | Path) -> dict[int, str]:
    """question_id -> answer of a leaderboard file; an entry of another shape or type is named, never converted (a
    question id 161000.7 is not question 161000, an answer null is not "None")."""
    rows = read_json(path, "VQA predictions file")
    if not isinstance(rows, list):
        raise DataError(f'{path}: predictions must be a list of {{"question_id": int, "answer": str}}')
    predictions: dict[int, str] = {}
    entries: dict[int, int] = {}
    for index, row in enumerate(rows):
        where = f"{path}: entry {index}"
        question_id = json_field(row, "question_id", int, where)
        predictions[question_id] = json_field(row, "answer", str, f"{where} (question_id {question_id})")
        if question_id in entries:
            raise DataError(
                f"{where}: question_id {question_id} is answered again (first in entry {entries[question_id]})"
            )
        entries[question_id] = index
    return predictions


def score_files(
    questions: str | Path | None,
    annotations: str | Path,
    predictions: str | Path,
    metric: str = DEFAULT_VQA_METRIC,
) -> VqaAccuracy:
    """The `metric` version of the official accuracy of a predictions file; the questions file, if given, must ask
    every annotated question."""
    annotated = read_vqa_annotations(annotations)
    if questions is not None:
        asked = {q["question_id"]: q for q in read_vqa_questions(questions)}
        unasked = [a["question_id"] for a in annotated if a["question_id"] not in asked]
        if unasked:
            raise DataError(f"{annotations}: {len(unasked)} annotated questions are not in {questions}")
        for annotation in annotated:
            same_image(asked[annotation["question_id"]], annotation, questions, annotations)
    predicted = read_predictions(predictions)
    try:
        return vqa_accuracy(annotated, predicted, metric)
    except DataError as error:  # which files did not match
        raise DataError(f"scoring {predictions} against {annotations}: {error.args[0]}") from None
