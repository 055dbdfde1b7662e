"""Checksums of the files a folder holds, so that a damaged file (truncated, a flipped byte, missing) is found before
it is loaded, and named.

    checksums.json   {"algorithm": "sha256", "parts": {"model": {"model.safetensors": {"bytes": 1234,
                      "sha256": "..."}, "text_encoder/config.json": {...}, ...}, "training": {...}}}

A folder's files are recorded in parts: a model folder has its `model` part; a checkpoint adds a `training` part (the
optimizer state, the data position). Loading a model verifies the model part; resuming verifies every part. A
folder without checksums.json (written before meter recorded them, or by hand) is loaded unverified.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from meter.errors import DataError

CHECKSUMS = "checksums.json"
ALGORITHM = "sha256"


class DamagedFolder(DataError):
    """A file of a folder differs from what its checksums.json recorded, is missing, or the record is unreadable."""


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, ALGORITHM).hexdigest()


def record_checksums(folder: str | Path, part: str, names: list[str] | None = None) -> None:
    """Records `names` (paths relative to `folder`; default: every file not recorded in another part) as `part`."""
    folder = Path(folder)
    record = _read(folder) if (folder / CHECKSUMS).is_file() else {"algorithm": ALGORITHM, "parts": {}}
    parts: dict[str, dict[str, Any]] = record["parts"]
    if names is None:
        others = {name for key, files in parts.items() if key != part for name in files}
        names = sorted(
            str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and p.name != CHECKSUMS and str(p.relative_to(folder)) not in others
        )  # fmt: skip
    parts[part] = {name: {"bytes": (folder / name).stat().st_size, ALGORITHM: file_digest(folder / name)}
                   for name in names}  # fmt: skip
    (folder / CHECKSUMS).write_text(json.dumps(record, indent=1))


def has_checksums(folder: str | Path) -> bool:
    return (Path(folder) / CHECKSUMS).is_file()


def verify_checksums(folder: str | Path, parts: tuple[str, ...] | None = None) -> bool:
    """Checks the recorded files of `parts` (default: all); raises DamagedFolder naming the first damaged file.
    False when the folder records no checksums (nothing to verify)."""
    folder = Path(folder)
    if not has_checksums(folder):
        return False
    recorded = _read(folder)["parts"]
    for part in parts if parts is not None else tuple(recorded):
        for name, expected in recorded.get(part, {}).items():
            path = folder / name
            signature = _signature(path, expected)
            if signature is None or _VERIFIED.get(path.resolve()) != signature:
                _verify_file(path, expected)
                _VERIFIED[path.resolve()] = signature
                if len(_VERIFIED) > VERIFIED_KEPT:  # a long process (serve, a study) verifies many folders
                    del _VERIFIED[next(iter(_VERIFIED))]
    return True


# files this process verified, by path: (size, mtime, inode, expected digest) then. A file is hashed again only
# when one of them changed (a fine-tuning run verifies its init_from folder once for the tokenizer and the weights)
_VERIFIED: dict[Path, tuple[int, int, int, str]] = {}
VERIFIED_KEPT = 256  # the oldest is forgotten beyond this: at worst a file is hashed again


def _signature(path: Path, expected: dict[str, Any]) -> tuple[int, int, int, str] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ino, expected[ALGORITHM]


def _verify_file(path: Path, expected: dict[str, Any]) -> None:
    if not path.is_file():
        raise DamagedFolder(f"{path}: missing (the folder's {CHECKSUMS} records it)")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise DamagedFolder(f"{path}: damaged: {size:,} bytes where {expected['bytes']:,} were written (truncated?)")
    if file_digest(path) != expected[ALGORITHM]:
        raise DamagedFolder(f"{path}: damaged: its {ALGORITHM} differs from the one recorded when it was written")


def _read(folder: Path) -> dict[str, Any]:
    path = folder / CHECKSUMS
    try:
        record = json.loads(path.read_text())
        if record.get("algorithm") != ALGORITHM or not isinstance(record.get("parts"), dict):
            raise ValueError(f'expected {{"algorithm": "{ALGORITHM}", "parts": {{...}}}}')
        return record
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise DamagedFolder(f"{path}: unreadable ({error})") from None
