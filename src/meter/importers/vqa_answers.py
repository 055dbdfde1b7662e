"""The answer of each row of an official VQA classifier.

Official METER numbers its answers in `write_vqa.py` and keeps the numbering in memory only: the consensus answers
(`multiple_choice_answer`) of the VQAv2 train2014 then val2014 annotations, in that file order, in its normal form
(`vocabulary_form`; "" among them), those given at least 9 times, in the order first met. `--vqa-answers` takes
that numbering as an answer-to-label JSON or a list, or rebuilds it from the folder that holds the two annotation
files.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from meter.errors import DataError
from meter.metrics.vqa import vocabulary_form

OFFICIAL_ANNOTATIONS = ("v2_mscoco_train2014_annotations.json", "v2_mscoco_val2014_annotations.json")
OFFICIAL_MIN_COUNT = 9  # write_vqa.py: answers given as the consensus of at least 9 questions


def official_answer_order(folder: Path) -> list[str]:
    """The official classifier's answers, row by row, rebuilt from the VQAv2 annotation files in `folder`."""
    files = [folder / name for name in OFFICIAL_ANNOTATIONS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"--vqa-answers {folder}: a folder must hold the VQAv2 annotations {' and '.join(OFFICIAL_ANNOTATIONS)}"
            f" (the official numbering is rebuilt from them); not found: {', '.join(missing)}"
        )
    counts: Counter[str] = Counter()  # insertion-ordered: the first time each answer is met
    for file in files:
        counts.update(vocabulary_form(answer) for answer in _consensus_answers(file))
    return [answer for answer, n in counts.items() if n >= OFFICIAL_MIN_COUNT]


def _consensus_answers(file: Path) -> list[str]:
    """Each question's `multiple_choice_answer`, in the file's order."""
    try:
        return [annotation["multiple_choice_answer"] for annotation in json.loads(file.read_text())["annotations"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{file}: not a VQAv2 annotation file ({type(error).__name__}: {error})") from None


def read_answers(path: str | Path, rows: int) -> list[str]:
    """The answer of each VQA classifier row: from the official answer-to-label JSON ({answer: label}), a list in
    row order, or a folder with the VQAv2 annotations the official numbering is rebuilt from."""
    path = Path(path)
    if path.is_dir():
        answers = official_answer_order(path)
        where = f"{path} (the official numbering of its annotations)"
    elif path.is_file():
        answers = _answers_file(path)
        where = str(path)
    else:
        raise DataError(f"--vqa-answers: file not found: {path}")
    if len(answers) != rows:
        raise DataError(f"{where}: {len(answers)} answers, but the checkpoint's VQA classifier has {rows} rows")
    return answers


def _answers_file(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a JSON file ({error})") from None
    if isinstance(data, dict):
        data = data.get("label2ans", data.get("ans2label", data))
    if isinstance(data, dict):
        labels = sorted(data.values()) if all(isinstance(v, int) for v in data.values()) else None
        if labels != list(range(len(data))):
            raise DataError(f"{path}: labels must be 0..{len(data) - 1}, each once (the classifier rows)")
        answers = [""] * len(data)
        for answer, label in data.items():
            answers[label] = answer
        return answers
    if isinstance(data, list) and all(isinstance(a, str) for a in data):
        return data
    raise DataError(f"{path}: expected {{answer: label}} (answer-to-label JSON) or a list of answers")
