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
