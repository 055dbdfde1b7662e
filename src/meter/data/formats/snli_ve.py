"""SNLI-VE reader: the official JSON-lines files (`snli_ve_{train,dev,test}.jsonl`) over Flickr30k images.

The premise is the image `Flickr30K_ID`; the hypothesis is `sentence2` (`sentence1`, the caption SNLI was written
from, is not an input of the visual task). Lines without a gold label (SNLI's "-") are left out.

Class indices follow the official METER code (contradiction 0, neutral 1, entailment 2: its `write_snli.py`), so
the rows of an official checkpoint's classifier mean what meter's do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from meter.data.formats.common import json_field, numbered_json_lines, require
from meter.errors import DataError

log = logging.getLogger(__name__)
SNLI_VE_LABELS = ("contradiction", "neutral", "entailment")  # the class index of each label (official order)
NO_CONSENSUS = "-"


@dataclass(frozen=True)
class SnliVeRecord:
    pair_id: str
    image_id: str
    hypothesis: str
    image: Path
    label: int  # an index into SNLI_VE_LABELS


def read_snli_ve(path: str | Path, image_dir: str | Path, image_pattern: str = "{image_id}.jpg") -> list[SnliVeRecord]:
    """Images at `image_dir / image_pattern.format(image_id=Flickr30K_ID)`. Each line is checked: a DataError names
    the file, the line, the pair and the field."""
    records, unlabelled = [], 0
    first_line: dict[str, int] = {}
    for number, (line, row) in enumerate(numbered_json_lines(path, "SNLI-VE file"), 1):
        where = f"{path}:{line}: example {number}"
        pair_id = json_field(row, "pairID", (str, int), where, optional=True)
        where += "" if pair_id is None else f" (pairID {pair_id})"
        pair_id = str(number if pair_id is None else pair_id)
        if pair_id in first_line:  # the predictions file names each example by it: a join would pick either
            raise DataError(f"{where}: pairID {pair_id} is listed again (first on line {first_line[pair_id]})")
        first_line[pair_id] = line
        require(row, ("Flickr30K_ID", "sentence2", "gold_label"), where)
        gold_label = json_field(row, "gold_label", str, where)
        if gold_label == NO_CONSENSUS:
            unlabelled += 1
            continue
        if gold_label not in SNLI_VE_LABELS:
            raise DataError(f"{where}: gold_label {gold_label!r}; expected one of {', '.join(SNLI_VE_LABELS)}")
        image_id = str(json_field(row, "Flickr30K_ID", (str, int), where))
        hypothesis = json_field(row, "sentence2", str, where).strip()  # as official (base_dataset.py:73)
        if not hypothesis:
            raise DataError(f"{where}: 'sentence2' (the hypothesis) is empty")
        records.append(
            SnliVeRecord(
                pair_id=pair_id,
                image_id=image_id,
                hypothesis=hypothesis,
                image=Path(image_dir) / image_pattern.format(image_id=image_id),
                label=SNLI_VE_LABELS.index(gold_label),
            )
        )
    if unlabelled:
        log.info("%s: left out %d lines without a gold label", path, unlabelled)
    return records
