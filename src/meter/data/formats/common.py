"""Helpers shared by the readers of real dataset formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meter.errors import DataError


def read_json(path: str | Path, what: str) -> Any:
    """Reads a JSON file, or raises a DataError that names the path and what it should be."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


def read_json_lines(path: str | Path, what: str) -> list[dict[str, Any]]:
    """Reads a JSON-lines file (one object per line; blank lines allowed), naming the line of any error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: each line of a {what} is a JSON object")
            rows.append(row)
    return rows


def require(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Raises a DataError naming `where` and the keys a row lacks."""
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
