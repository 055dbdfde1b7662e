"""What a map-style training dataset holds, as one string a checkpoint records: its samples' files (relative to
data.root), texts and labels. A resume checks the data it reads is the data the run counted its place in the epoch
on, wherever data.root now is (a requeued job's data copied to a node's own disk). The images' pixels are not read:
a file of the same name with other pixels is not seen."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

RECORDS = "records:"  # the fingerprint's prefix: records:<samples>:<hash>


def samples_fingerprint(dataset: Any, root: str | Path) -> str | None:
    """`records:<len(dataset)>:<hash of its records>`, or None for a dataset whose records are not known (its size
    is all a resume can check). A dataset's `fingerprint_fields` name the fields of a record its samples read (by
    default every field)."""
    rows = getattr(dataset, "records", None)
    if rows is None:
        rows = getattr(dataset, "examples", None)
    if rows is None or not all(dataclasses.is_dataclass(row) for row in rows[:1]):
        return None
    digest = hashlib.sha256()
    prefix = str(Path(root)).rstrip("/") + "/"
    names = getattr(dataset, "fingerprint_fields", None) or ([f.name for f in dataclasses.fields(rows[0])] if rows
                                                             else [])  # fmt: skip
    for row in rows:
        digest.update(repr(tuple(_relative(getattr(row, name), prefix) for name in names)).encode())
    for row_targets in getattr(dataset, "targets", None) or ():  # VQA's soft targets: the answer vocabulary's rows
        digest.update(repr(row_targets).encode())
    return f"{RECORDS}{len(dataset)}:{digest.hexdigest()[:16]}"


def _relative(value: Any, prefix: str) -> Any:
    """A path as its place under data.root (`prefix`: the root and a slash), by its text: pathlib's own is slow for
    a million records, and the records' paths are the root joined to their names."""
    if isinstance(value, Path):
        text = str(value)
        return text[len(prefix) :] if text.startswith(prefix) else text
    if isinstance(value, tuple) and value and isinstance(value[0], Path):  # NLVR2's image pair
        return tuple(_relative(path, prefix) for path in value)
    return value
