"""VQAv2 accuracy, computed exactly as the official evaluation (GT-Vision-Lab/VQA, vqaEval.py) computes it.

Two versions of the official code, selectable by name (`vqa.metric`, `meter evaluate vqa --metric`), quirks
included, because the leaderboard number is what users compare against:
- `official-2021` (the default; commit a013f00 "Fixed processing answers bug", March 2021, behind today's
  leaderboard): the prediction and the ten ground-truth answers are stripped; only when the ten are not all
  identical are both the ground truth and the prediction punctuation-processed, then lower-cased with number
  words mapped to digits, articles dropped and contractions restored. When all ten agree nothing is normalised.
- `official-2017` (commit a4f1afd, what papers before 2021 report): the prediction is always stripped and fully
  normalised; the ground truth is never stripped nor lower-cased, and is punctuation-processed only when the ten
  are not all identical.
Both: each annotator in turn is left out; the prediction scores min(1, matches among the other nine / 3); the
question's accuracy is the mean of the ten; overall, per question type and per answer type are means of those, in
percent, rounded to 2 decimals.

The official code runs on Python 2.7, whose Unicode (5.2) differs from Python 3's on a few characters an answer may
hold: its `lower()` maps 405 code points otherwise (`İ` to `i`, not `i` and a combining dot; Cherokee and some
Georgian letters not at all) and lowers a final sigma as any other, and its `split()` and `strip()` take U+180E
(the Mongolian vowel separator) for whitespace. Those are read as Python 2 reads them (`vqa_python2_lower.tsv`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from importlib import resources
from typing import Any

from meter.errors import DataError
from meter.registry import Registry


def _load_contractions() -> dict[str, str]:
    table = resources.files("meter.metrics").joinpath("vqa_contractions.tsv").read_text()
    return dict(line.split("\t") for line in table.splitlines() if line.strip())


CONTRACTIONS = _load_contractions()


def _load_python2_lower() -> dict[int, str]:
    """The code points whose lower case in Python 2.7 differs from Python 3's, each to Python 2's."""
    table = resources.files("meter.metrics").joinpath("vqa_python2_lower.tsv").read_text()
    rows = (line.split("\t") for line in table.splitlines() if line.strip())
    return {int(code, 16): "".join(chr(int(part, 16)) for part in lower.split()) for code, lower in rows}


PYTHON2_LOWER = _load_python2_lower()
PYTHON2_ONLY_SPACE = "\u180e"  # whitespace to Python 2's split() and strip(), not to Python 3's
PYTHON2_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace()) + PYTHON2_ONLY_SPACE


def python2_lower(text: str) -> str:
    """`text.lower()` as Python 2.7 computes it for a unicode string: character by character (no final-sigma rule),
    with its own table where Python 3's differs."""
    if text.isascii():
        return text.lower()
    return "".join(PYTHON2_LOWER.get(ord(c)) or c.lower() for c in text)


MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
# sic: '(?!<=' is the official pattern (not a lookbehind); \d is ASCII's 0-9 as in the official Python 2 code
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)", re.ASCII)
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
OFFICIAL_PERIOD_COUNT = re.UNICODE  # the official code passes re.UNICODE (32) as `count`: at most 32 periods go


def process_punctuation(text: str, comma_strip: re.Pattern = COMMA_STRIP, period_strip: re.Pattern = PERIOD_STRIP
                        ) -> str:  # fmt: skip
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or comma_strip.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return period_strip.sub("", out, count=OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    return digits_articles(python2_lower(text.replace(PYTHON2_ONLY_SPACE, " ")).split())


def digits_articles(words: list[str]) -> str:
    """Lower-cased words with number words as digits, without articles, contractions given their apostrophe."""
    words = [MANUAL_MAP.get(word, word) for word in words]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip(PYTHON2_WHITESPACE)


@lru_cache(maxsize=1 << 16)  # answers repeat: 10 per question, and a small vocabulary of them
def normalize_answer(text: str) -> str:
    """The full normal form of the official evaluation: stripped, punctuation, then digits/articles/contractions
    (the 2021 code's form of disagreeing answers and the 2017 code's form of every prediction; the answer
    vocabulary's is `vocabulary_form`)."""
    return process_digit_article(process_punctuation(clean_whitespace(text)))


# write_vqa.py runs under Python 3, the evaluation under Python 2: its \d is any decimal digit, its lower() Python 3's
COMMA_STRIP_PY3 = re.compile(COMMA_STRIP.pattern)
PERIOD_STRIP_PY3 = re.compile(PERIOD_STRIP.pattern)


@lru_cache(maxsize=1 << 16)  # as normalize_answer: vqa.normalize_targets reads every annotator's answer
def vocabulary_form(answer: str) -> str:
    """The answer vocabulary's form, write_vqa.py's `normalize_word`: the evaluation's punctuation, digit and article
    rules under Python 3, the raw string (not stripped first), and any comma left dropped. Answers of nothing but
    articles or punctuation ("a", "?") become "", which the official vocabulary keeps as an answer of its own."""
    text = process_punctuation(answer, COMMA_STRIP_PY3, PERIOD_STRIP_PY3)
    return digits_articles(text.lower().split()).replace(",", "")


def _leave_one_annotator_out(predicted: str, truth: list[dict[str, Any]]) -> float:
    scores = []
    for left_out in truth:
        others = [a for a in truth if a != left_out]  # sic: dict equality, as in the official code
        scores.append(min(1.0, sum(a["answer"] == predicted for a in others) / 3))
    return sum_in_order(scores) / len(scores)


def _accuracy_2021(prediction: str, answers: list[dict[str, Any]]) -> float:
    predicted = clean_whitespace(prediction)
    truth = [dict(a, answer=clean_whitespace(a["answer"])) for a in answers]
    if len({a["answer"] for a in truth}) > 1:  # unanimous annotators: nothing is normalised, on either side
        truth = [dict(a, answer=normalize_answer(a["answer"])) for a in truth]
        predicted = normalize_answer(predicted)
    return _leave_one_annotator_out(predicted, truth)


def _accuracy_2017(prediction: str, answers: list[dict[str, Any]]) -> float:
    predicted = normalize_answer(prediction)
    truth = list(answers)  # sic: the 2017 code never strips the ground truth
    if len({a["answer"] for a in truth}) > 1:
        truth = [dict(a, answer=process_punctuation(a["answer"])) for a in truth]
    return _leave_one_annotator_out(predicted, truth)


QuestionScorer = Callable[[str, list[dict[str, Any]]], float]
VQA_METRICS: Registry[QuestionScorer] = Registry("VQA metric")
VQA_METRICS.add("official-2021", _accuracy_2021, "GT-Vision-Lab/VQA a013f00 (2021), today's leaderboard")
VQA_METRICS.add("official-2017", _accuracy_2017, "GT-Vision-Lab/VQA a4f1afd (2017), papers before 2021")
DEFAULT_VQA_METRIC = "official-2021"


def vqa_metric(name: str) -> QuestionScorer:
    """The per-question scorer of a metric version; an unknown name is an error naming `vqa.metric`."""
    return VQA_METRICS.get(name, key="vqa.metric")


def question_accuracy(prediction: str, answers: list[dict[str, Any]], metric: str = DEFAULT_VQA_METRIC) -> float:
    """One question's accuracy in [0, 1] against its ten annotator answers (dicts with 'answer', 'answer_id')."""
    return vqa_metric(metric)(prediction, answers)


@dataclass
class VqaAccuracy:
    overall: float
    per_question_type: dict[str, float]
    per_answer_type: dict[str, float]
    per_question: dict[int, float] = field(repr=False)
    metric: str = DEFAULT_VQA_METRIC  # the official code's version that produced these numbers
    skipped: int = 0  # questions whose image an evaluation could not read (scored with the submission's answer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "overall": self.overall,
            "per_question_type": self.per_question_type,
            "per_answer_type": self.per_answer_type,
            "skipped": self.skipped,
        }


def round_as_python2(value: float, digits: int) -> float:
    """Python 2's round, which the official evaluation (Python 2 code) uses: the exact binary value rounded half away
    from zero (3.125 -> 3.13), where Python 3 rounds half to even (3.12)."""
    return float(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))  # half: away from 0


def sum_in_order(values: list[float]) -> float:
    """Left to right, as the official (Python 2) code adds: Python 3.12's sum() compensates the rounding, which
    moves a mean across a rounding boundary now and then (55.17 for the official 55.18 on 400 questions)."""
    total = 0.0
    for value in values:
        total += value
    return total


def _percent(values: list[float], digits: int) -> float:
    return round_as_python2(100 * sum_in_order(values) / len(values), digits)


def vqa_accuracy(
    annotations: list[dict[str, Any]], predictions: dict[int, str], metric: str = DEFAULT_VQA_METRIC, digits: int = 2
) -> VqaAccuracy:
    """Scores `predictions` (question_id -> answer) on VQAv2 `annotations` as the `metric` version of the official
    evaluation does. Like the official tool, it requires a prediction for every annotated question and none for
    any other. `annotations` are left as they are (the official code normalises its copy in place).
    """
    score = vqa_metric(metric)
    annotated = {a["question_id"] for a in annotations}
    missing, extra = annotated - predictions.keys(), predictions.keys() - annotated
    if missing or extra:
        raise DataError(
            f"predictions do not match the annotations: {len(missing)} annotated questions have no prediction"
            f" (e.g. {sorted(missing)[:3]}) and {len(extra)} predictions are for unknown questions"
            f" (e.g. {sorted(extra)[:3]})"
        )
    if not annotations:
        raise DataError("no annotated questions to score")
    overall: list[float] = []
    by_question_type: dict[str, list[float]] = defaultdict(list)
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    per_question = {}
    for annotation in annotations:
        accuracy = score(predictions[annotation["question_id"]], annotation["answers"])
        overall.append(accuracy)
        by_question_type[annotation["question_type"]].append(accuracy)
        by_answer_type[annotation["answer_type"]].append(accuracy)
        per_question[annotation["question_id"]] = round_as_python2(100 * accuracy, digits)
    return VqaAccuracy(
        overall=_percent(overall, digits),
        per_question_type={k: _percent(v, digits) for k, v in by_question_type.items()},
        per_answer_type={k: _percent(v, digits) for k, v in by_answer_type.items()},
        per_question=per_question,
        metric=metric,
    )


SOFT_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)


def soft_score(count: int) -> float:
    """The training target for an answer given by `count` annotators (0, 0.3, 0.6, 0.9, 1.0 as in METER/ViLT)."""
    return SOFT_SCORES[min(count, len(SOFT_SCORES) - 1)]
