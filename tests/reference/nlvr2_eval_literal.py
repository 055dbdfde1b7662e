"""A literal re-statement of the official NLVR2 evaluation (lil-lab/nlvr, nlvr2/eval/metrics.py), written
independently of meter.metrics.nlvr2 to cross-check it: the same file parsing, the same loop over the labelled
examples, the same grouping (the third identifier field blanked). Returns (precision, consistency) as fractions;
None where the official script would print the missing predictions and exit."""

from __future__ import annotations

import json


def official_nlvr2(predictions_csv: str, labels_jsonl: str) -> tuple[float, float] | None:
    predictions = {}
    for line in open(predictions_csv).readlines():  # noqa: SIM115 (as the script reads it)
        if line:
            splits = line.strip().split(",")
            predictions[splits[0]] = splits[1]
    examples = [json.loads(line) for line in open(labels_jsonl).readlines() if line]  # noqa: SIM115
    total = len(examples)
    if len(predictions) < total:
        return None
    correct = 0.0
    consistency = {}
    for example in examples:
        anon = example["identifier"].split("-")
        anon[2] = ""
        anon = "-".join(anon)
        if anon not in consistency:
            consistency[anon] = True
        if predictions[example["identifier"]].lower() == example["label"].lower():
            correct += 1.0
        else:
            consistency[anon] = False
    consistent = 0.0
    for ok in consistency.values():
        if ok:
            consistent += 1
    return correct / total, consistent / len(consistency)
