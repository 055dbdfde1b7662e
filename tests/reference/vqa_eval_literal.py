"""A deliberately literal re-statement of the official VQAv2 evaluation loop (GT-Vision-Lab/VQA vqaEval.py,
Python 3 version), written independently of meter.metrics.vqa to cross-check it: same data mutation order,
same dict-equality leave-one-out, same per-type bookkeeping. Normalisation tables come from the shared reference."""

from __future__ import annotations

import copy
import re
from pathlib import Path

_TABLE = Path(__file__).resolve().parents[2] / "src/meter/metrics/vqa_contractions.tsv"
CONTRACTIONS = dict(line.split("\t") for line in _TABLE.read_text().splitlines() if line)
NUMBERS = {
    w: str(i)
    for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])
}
NUMBERS["none"] = "0"
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def _punctuation(text):
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or re.search(r"(\d)(\,)(\d)", text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return re.compile(r"(?!<=\d)(\.)(?!\d)").sub("", out, 32)


def _digits_articles(text):
    words = []
    for word in text.lower().split():
        word = NUMBERS.get(word, word)
        if word not in ("a", "an", "the"):
            words.append(word)
    for i, word in enumerate(words):
        if word in CONTRACTIONS:
            words[i] = CONTRACTIONS[word]
    return " ".join(words)


def evaluate(annotations, predictions):
    gts = {a["question_id"]: copy.deepcopy(a) for a in annotations}
    acc_all, acc_qtype, acc_atype = [], {}, {}
    for qid, gt in gts.items():
        res = predictions[qid].replace("\n", " ").replace("\t", " ").strip()
        res = _digits_articles(_punctuation(res))
        for a in gt["answers"]:
            a["answer"] = a["answer"].replace("\n", " ").replace("\t", " ").strip()
        if len({a["answer"] for a in gt["answers"]}) > 1:
            for a in gt["answers"]:
                a["answer"] = _punctuation(a["answer"])
        accs = []
        for left in gt["answers"]:
            others = [a for a in gt["answers"] if a != left]
            accs.append(min(1, len([a for a in others if a["answer"] == res]) / 3))
        avg = sum(accs) / len(accs)
        acc_all.append(avg)
        acc_qtype.setdefault(gt["question_type"], []).append(avg)
        acc_atype.setdefault(gt["answer_type"], []).append(avg)
    return {
        "overall": round(100 * sum(acc_all) / len(acc_all), 2),
        "perQuestionType": {k: round(100 * sum(v) / len(v), 2) for k, v in acc_qtype.items()},
        "perAnswerType": {k: round(100 * sum(v) / len(v), 2) for k, v in acc_atype.items()},
    }
