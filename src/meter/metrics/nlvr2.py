"""NLVR2 accuracy and consistency, as the official script (lil-lab/nlvr, nlvr2/eval/metrics.py) computes them.

- Predictions and labels compare case-insensitively ("true" == "True").
- Accuracy: correct / labelled examples. Every labelled example needs a prediction; extra predictions are ignored.
- Consistency: the examples are grouped by their identifier with the third field (the image pair) blanked, i.e.
  by split, set and sentence: one sentence judged against several image pairs. A group is consistent when all of
  its examples are correct; consistency is consistent groups / groups.
Both are reported in percent, unrounded; the CSV reader and writer follow the official file format.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

from meter.atomic_files import write_text_atomically
from meter.data.formats.common import json_field, numbered_json_lines
from meter.data.formats.nlvr2 import LABELS
from meter.errors import DataError


@dataclass(frozen=True)
class Nlvr2Score:
    accuracy: float  # percent
    consistency: float  # percent
    examples: int
    sentences: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def consistency_group(identifier: str) -> str:
    """The official grouping key: the identifier's fields with the third (the image pair) left empty."""
    fields = identifier.split("-")
    if len(fields) < 3:
        raise DataError(f"NLVR2 identifier {identifier!r} is not split-set-pair-sentence")
    fields[2] = ""
    return "-".join(fields)


def nlvr2_score(labels: dict[str, str], predictions: dict[str, str]) -> Nlvr2Score:
    """`labels`: identifier -> "True"/"False" for every labelled example; `predictions`: identifier -> prediction."""
    if not labels:
        raise DataError("NLVR2: no labelled examples to score")
    missing = [identifier for identifier in labels if identifier not in predictions]
    if missing:
        raise DataError(f"NLVR2: {len(missing)} of {len(labels)} examples have no prediction, e.g. {missing[0]!r}")
    correct = 0.0
    consistent: dict[str, bool] = {}
    for identifier, label in labels.items():
        group = consistency_group(identifier)
        consistent.setdefault(group, True)
        if predictions[identifier].lower() == label.lower():
            correct += 1.0
        else:
            consistent[group] = False
    return Nlvr2Score(
        accuracy=100 * (correct / len(labels)),
        consistency=100 * (sum(1.0 for ok in consistent.values() if ok) / len(consistent)),
        examples=len(labels),
        sentences=len(consistent),
    )


def write_nlvr2_predictions(predictions: dict[str, str], path: str | Path) -> None:
    """The leaderboard's file: one `identifier,prediction` line per example, no header."""
    write_text_atomically(Path(path), "".join(f"{identifier},{label}\n" for identifier, label in predictions.items()))


def read_nlvr2_predictions(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"NLVR2 predictions file not found: {path}")
    predictions: dict[str, str] = {}
    lines: dict[str, int] = {}
    # lines end at \n, \r or \r\n, as the official script reads them (str.splitlines() also ends one at \x1c-\x1e, \x85
    # and U+2028: a line holding one was two predictions here and one bad prediction there)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:  # as the labels file says it (it was an internal error)
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {data[error.start]:#04x})") from None
    text_lines = io.StringIO(text, newline=None).readlines()
    for number, line in enumerate(text_lines, 1):
        if number == 1 and line.startswith("\ufeff"):  # the official script reads it into the first identifier
            raise DataError(f"{path}: the file starts with a byte-order mark (BOM): save it as UTF-8 without one")
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if len(fields) < 2:
            raise DataError(f"{path}:{number}: expected identifier,prediction; got {line!r}")
        identifier, prediction = fields[0], fields[1]
        if prediction.lower() not in LABELS:
            raise DataError(f"{path}:{number}: prediction {prediction!r} for {identifier} must be True or False")
        if identifier in lines:
            raise DataError(f"{path}:{number}: {identifier} is predicted again (first on line {lines[identifier]})")
        predictions[identifier], lines[identifier] = prediction, number
    return predictions


def score_nlvr2_files(labels: str | Path, predictions: str | Path) -> Nlvr2Score:
    """Scores a leaderboard CSV against an NLVR2 JSON-lines file, as the official script does."""
    gold: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, (line, row) in enumerate(numbered_json_lines(labels, "NLVR2 file"), 1):
        where = f"{labels}:{line}: example {number}"
        identifier = json_field(row, "identifier", str, where)
        if identifier in first_line:
            first = first_line[identifier]
            raise DataError(f"{where}: identifier {identifier} is listed again (first on line {first})")
        first_line[identifier] = line
        label = json_field(row, "label", (str, bool), f"{where} ({identifier})")
        if str(label).lower() not in LABELS:
            raise DataError(f"{where} ({identifier}): label {label!r} must be 'True' or 'False'")
        gold[identifier] = str(label)
    predicted = read_nlvr2_predictions(predictions)
    try:
        return nlvr2_score(gold, predicted)
    except DataError as error:  # which files did not match
        raise DataError(f"scoring {predictions} against {labels}: {error.args[0]}") from None
