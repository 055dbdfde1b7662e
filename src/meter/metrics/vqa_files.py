"""Scoring a VQAv2 predictions file against the official annotation (and question) files."""

from __future__ import annotations

from pathlib import Path

from meter.data.formats.common import read_json
from meter.data.formats.vqa import read_vqa_annotations, read_vqa_questions
from meter.errors import DataError
from meter.metrics.vqa import DEFAULT_VQA_METRIC, VqaAccuracy, vqa_accuracy


def read_predictions(path: str | Path) -> dict[int, str]:
    rows = read_json(path, "VQA predictions file")
    if not isinstance(rows, list) or any(not isinstance(r, dict) or {"question_id", "answer"} - r.keys() for r in rows):
        raise DataError(f'{path}: predictions must be a list of {{"question_id": int, "answer": str}}')
    predictions = {int(r["question_id"]): str(r["answer"]) for r in rows}
    if len(predictions) != len(rows):
        raise DataError(f"{path}: {len(rows) - len(predictions)} questions are answered more than once")
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
        asked = {q["question_id"] for q in read_vqa_questions(questions)}
        unasked = [a["question_id"] for a in annotated if a["question_id"] not in asked]
        if unasked:
            raise DataError(f"{annotations}: {len(unasked)} annotated questions are not in {questions}")
    return vqa_accuracy(annotated, read_predictions(predictions), metric)
