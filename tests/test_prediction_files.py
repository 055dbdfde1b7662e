"""Prediction and label files with a wrong type are refused naming the entry, never converted and scored."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from meter.errors import DataError
from meter.metrics.nlvr2 import read_nlvr2_predictions, score_nlvr2_files
from meter.metrics.vqa_files import read_predictions

VAL = "vqa/v2_mscoco_val2014_annotations.json"


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"question_id": 7, "answer": 3}, "entry 1 (question_id 7): 'answer' should be a string, not the number 3"),
        ({"question_id": 7, "answer": None}, "entry 1 (question_id 7): 'answer' should be a string, not null"),
        ({"question_id": 7, "answer": ["yes"]}, "entry 1 (question_id 7): 'answer' should be a string, not a list"),
        ({"question_id": 7}, "entry 1 (question_id 7): missing 'answer'"),
        ({"question_id": 161000.7, "answer": "yes"}, "entry 1: 'question_id' should be an integer, not the number"),
        ({"question_id": None, "answer": "yes"}, "entry 1: 'question_id' should be an integer, not null"),
        ({"question_id": "12", "answer": "yes"}, "entry 1: 'question_id' should be an integer, not the string '12'"),
        ({"question_id": True, "answer": "yes"}, "entry 1: 'question_id' should be an integer, not true"),
        ("yes", "entry 1: should be a JSON object"),
        ({"question_id": 1, "answer": "no"}, "entry 1: question_id 1 is answered again (first in entry 0)"),
    ],
)
def test_a_vqa_prediction_of_the_wrong_type_is_named(tmp_path: Path, entry: object, message: str):
    path = _write(tmp_path / "predictions.json", [{"question_id": 1, "answer": "yes"}, entry])
    with pytest.raises(DataError, match=re.escape(f"{path}: {message}")):
        read_predictions(path)


def test_the_command_refuses_a_fractional_question_id_instead_of_scoring_it(shapes_world: Path, tmp_path: Path):
    rows = [{"question_id": a["question_id"], "answer": a["multiple_choice_answer"]}
            for a in json.loads((shapes_world / VAL).read_text())["annotations"]]  # fmt: skip
    rows[0]["question_id"] += 0.7  # was cut to the integer below it, and scored
    path = _write(tmp_path / "predictions.json", rows)
    result = subprocess.run([sys.executable, "-m", "meter", "evaluate", "vqa", "--annotations", str(shapes_world / VAL),
                             "--predictions", str(path)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert (
        f"{path}: entry 0: 'question_id' should be an integer, not the number {rows[0]['question_id']}" in result.stderr
    )


def test_an_nlvr2_prediction_that_is_not_true_or_false_is_named(tmp_path: Path):
    (tmp_path / "p.csv").write_text("dev-1-0-0,True\ndev-1-1-0,yes\n")
    with pytest.raises(DataError, match=r"p.csv:2: prediction 'yes' for dev-1-1-0 must be True or False"):
        read_nlvr2_predictions(tmp_path / "p.csv")


def test_an_nlvr2_example_predicted_twice_is_named(tmp_path: Path):
    (tmp_path / "p.csv").write_text("dev-1-0-0,True\ndev-1-1-0,False\ndev-1-0-0,False\n")
    with pytest.raises(DataError, match=r"p.csv:3: dev-1-0-0 is predicted again \(first on line 1\)"):
        read_nlvr2_predictions(tmp_path / "p.csv")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"identifier": "dev-1-1-0", "label": None},
            "example 2 (dev-1-1-0): 'label' should be a string or true or false",
        ),
        ({"identifier": "dev-1-1-0", "label": "yes"}, "example 2 (dev-1-1-0): label 'yes' must be 'True' or 'False'"),
        ({"identifier": None, "label": "True"}, "example 2: 'identifier' should be a string, not null"),
    ],
)
def test_an_nlvr2_label_or_identifier_of_the_wrong_type_is_named(tmp_path: Path, row: dict, message: str):
    labels = tmp_path / "dev.json"
    labels.write_text(json.dumps({"identifier": "dev-1-0-0", "label": "True"}) + "\n" + json.dumps(row) + "\n")
    (tmp_path / "p.csv").write_text("dev-1-0-0,True\ndev-1-1-0,False\n")
    with pytest.raises(DataError, match=re.escape(f"{labels}:2: {message}")):  # the line too
        score_nlvr2_files(labels, tmp_path / "p.csv")
