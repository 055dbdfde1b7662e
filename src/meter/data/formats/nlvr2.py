"""NLVR2 reader: the official JSON-lines files (`train.json`, `dev.json`, `test1.json`) and their image pairs.

An identifier is `{split}-{set}-{pair}-{sentence}`; the pair's images are `{split}-{set}-{pair}-img0.png` (left)
and `-img1.png` (right), in `image_dir/{directory}/` when the line has a `directory` (train), else in `image_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meter.data.formats.common import json_field, numbered_json_lines
from meter.errors import DataError

LABELS = {"true": True, "false": False}


@dataclass(frozen=True)
class Nlvr2Record:
    identifier: str
    sentence: str
    left: Path
    right: Path
    label: bool | None  # None where the file has no labels (the hidden test set)


def pair_name(identifier: str) -> str:
    """The image pair of an example: its identifier without the trailing sentence index."""
    return identifier.rsplit("-", 1)[0]


def read_nlvr2(path: str | Path, image_dir: str | Path) -> list[Nlvr2Record]:
    """Each example checked: a DataError names the file, the line, the identifier and the field."""
    records = []
    first_line: dict[str, int] = {}
    for number, (line, row) in enumerate(numbered_json_lines(path, "NLVR2 file"), 1):
        where = f"{path}:{line}: example {number}"
        identifier = json_field(row, "identifier", str, where)
        if identifier.count("-") < 3:
            raise DataError(f"{where}: identifier {identifier!r} is not split-set-pair-sentence")
        if identifier in first_line:  # the official script counts every line; scoring by identifier would not
            first = first_line[identifier]
            raise DataError(f"{where}: identifier {identifier} is listed again (first on line {first})")
        first_line[identifier] = line
        where += f" ({identifier})"
        sentence = json_field(row, "sentence", str, where)
        if not sentence.strip():
            raise DataError(f"{where}: 'sentence' is empty")
        label = row.get("label")
        if label is not None and str(label).lower() not in LABELS:
            raise DataError(f"{where}: label {label!r} must be 'True' or 'False'")
        directory = json_field(row, "directory", (int, str), where, optional=True)
        folder = Path(image_dir) / str(directory) if directory is not None else Path(image_dir)
        name = pair_name(identifier)
        records.append(
            Nlvr2Record(
                identifier=identifier,
                sentence=sentence,
                left=folder / f"{name}-img0.png",
                right=folder / f"{name}-img1.png",
                label=None if label is None else LABELS[str(label).lower()],
            )
        )
    return records
