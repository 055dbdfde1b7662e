"""Which class each row of a classifier head stands for, as a model folder records it (`"classes"` in config.json).

Meter numbers SNLI-VE as the official METER code does (contradiction, neutral, entailment). Folders written before
it did carry no record, and their rows are in meter's earlier order (entailment, neutral, contradiction), except
those imported from an official checkpoint, whose rows were copied as the checkpoint has them. Loading a folder
puts the rows in today's order, so an old folder keeps predicting what it was trained to (and an old import
predicts the official labels it always should have).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from meter.data.formats.snli_ve import SNLI_VE_LABELS
from meter.errors import DataError

CLASSES = {"snli_ve": SNLI_VE_LABELS}  # head -> the class of each output row today
OUTPUT_LAYER = "3"  # the last Linear of models.heads.classifier: the layer with one row per class
SNLI_VE_BEFORE_RECORD = ("entailment", "neutral", "contradiction")  # meter's order before folders recorded it
IMPORTED_SOURCE = "Imported from the official METER checkpoint"  # how imported folders' `source` starts


def current_classes(heads: Mapping[str, int]) -> dict[str, list[str]]:
    """The classes of today's rows for each head that has named classes."""
    return {head: list(CLASSES[head]) for head in heads if head in CLASSES}


def saved_classes(data: Mapping[str, Any], where: str) -> dict[str, list[str]]:
    """The row classes a folder's config.json records, or what a folder from before the record holds."""
    heads = data.get("heads", {})
    if "classes" in data:
        recorded = data["classes"]
        for head, names in recorded.items():
            if head in CLASSES and sorted(names) != sorted(CLASSES[head]):
                raise DataError(f"{where}: classes.{head} = {names}; expected an order of {', '.join(CLASSES[head])}")
        return {head: list(names) for head, names in recorded.items()}
    if "snli_ve" in heads and not str(data.get("source", "")).startswith(IMPORTED_SOURCE):
        return {"snli_ve": list(SNLI_VE_BEFORE_RECORD)}
    return current_classes(heads)


def in_current_order(weights: dict[str, Tensor], saved: Mapping[str, list[str]]) -> dict[str, Tensor]:
    """`weights` with each classifier's output rows moved from the saved order to today's."""
    reordered = dict(weights)
    for head, names in saved.items():
        today = CLASSES.get(head)
        if today is None or list(names) == list(today):
            continue
        rows = [list(names).index(name) for name in today]
        for part in ("weight", "bias"):
            key = f"heads.{head}.{OUTPUT_LAYER}.{part}"
            if key in reordered:
                reordered[key] = reordered[key][rows]
    return reordered


def require_current_order(saved: Mapping[str, list[str]], where: str) -> None:
    """A training checkpoint resumes only in today's order: its optimizer state follows the rows too."""
    for head, names in saved.items():
        today = CLASSES.get(head)
        if today is not None and list(names) != list(today):
            raise DataError(
                f"{where}: its {head} rows are in the order {', '.join(names)}, but meter's are now"
                f" {', '.join(today)}; a run cannot resume across that change: fine-tune from it instead"
                f" (train.init_from={where} reorders the rows on load), or finish the run with the meter that began it"
            )


def rows_by_answer(
    weights: dict[str, Tensor], saved: list[str], wanted: list[str], fresh: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], int]:
    """`weights` with the VQA classifier's rows moved from the answers of the folder (`saved`, one per row) to the
    run's vocabulary (`wanted`): an answer the folder has keeps its row, another starts at its `fresh` row. A folder
    whose rows name no answers (an import without --vqa-answers) gives none: its rows cannot be matched. Returns
    the weights and how many answers kept their row."""
    index = {answer: row for row, answer in enumerate(saved)}
    kept = [(row, index[answer]) for row, answer in enumerate(wanted) if answer in index]
    moved = dict(weights)
    for key in (f"heads.vqa.{OUTPUT_LAYER}.weight", f"heads.vqa.{OUTPUT_LAYER}.bias"):
        if key not in moved:
            continue
        if len(saved) != len(moved[key]):  # unnamed or mismatched rows: none can be trusted, none is kept
            del moved[key]
            kept = []
            continue
        rows = fresh[key].detach().clone()
        for row, old in kept:
            rows[row] = moved[key][old]
        moved[key] = rows
    return moved, len(kept)
