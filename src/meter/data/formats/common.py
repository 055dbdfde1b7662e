"""Helpers shared by the readers of real dataset formats."""

from __future__ import annotations

import codecs
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from meter.errors import DataError

# the raster formats meter reads (Pillow's names), with the extension a shard stores each under (MPO: a camera's
# JPEG with a second picture). Pillow's other plugins are never tried: EPS runs Ghostscript on the file, ICO decodes
# its pixels while it is opened (before any pixel limit), damaged BLP and DDS files raise outside Pillow's errors
IMAGE_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "AVIF": "avif", "GIF": "gif", "BMP": "bmp",
                 "TIFF": "tif", "PPM": "ppm"}  # fmt: skip
Image.init()  # every plugin registered: AVIF's only where Pillow was built with libavif
# Image.open's names for them (its JPEG opener gives MPO too)
READ_FORMATS = tuple(kind for kind in IMAGE_FORMATS if kind != "MPO" and kind in Image.OPEN)
# the extensions of an image member of a shard, the first found taken (img2dataset's, and those `meter prepare` writes)
IMAGE_EXTENSIONS = tuple(dict.fromkeys(["jpg", "jpeg", *IMAGE_FORMATS.values(), "tiff"]))
READABLE = "JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF or PPM"
NOT_AN_IMAGE = f"unreadable image (not a {READABLE}: a web page, an empty or damaged file?)"
# what a damaged file of those formats raises while it is decoded
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, NotImplementedError, struct.error)


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
    return [row for _, row in numbered_json_lines(path, what)]


def numbered_json_lines(path: str | Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each line of a JSON-lines file that is not blank."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    rows = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}:{number}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: each line of a {what} is a JSON object")
            rows.append((number, row))
    return rows


def require(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Raises a DataError naming `where` and the keys a row lacks."""
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{where}: missing {', '.join(repr(k) for k in missing)}")


KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
              dict: "an object"}  # fmt: skip


def describe_json(value: Any) -> str:
    """How a message shows a JSON value that is not what it should be."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "an object" if isinstance(value, dict) else type(value).__name__


def json_field(row: Any, key: str, kinds: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    """row[key], checked to be of one of `kinds` (JSON's: int, float, str, bool, list, dict), or a DataError naming
    `where` (the file and the record), the key, and what was found. An integer is never a bool, as in JSON.
    `optional`: a missing key (or null) gives None."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: should be a JSON object, not {describe_json(row)}")
    if optional and row.get(key) is None:
        return None
    if key not in row:
        raise DataError(f"{where}: missing {key!r}")
    value = row[key]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if (bool not in kinds and isinstance(value, bool)) or not isinstance(value, kinds):
        expected = " or ".join(KIND_NAMES[k] for k in kinds)
        raise DataError(f"{where}: {key!r} should be {expected}, not {describe_json(value)}")
    return value


def listed(data: Any, key: str, path: str | Path, what: str) -> list[Any]:
    """The list under `key` of a file's top-level object, or a DataError saying what the file should hold."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: a {what} is a JSON object with a {key!r} list")
    return data[key]


@dataclass(frozen=True)
class RawSample:
    """One image and its captions as a corpus publishes them, on the way into shards (`meter prepare`)."""

    key: str  # unique within the source; becomes the sample's key in the shards (no dots, no slashes)
    image: Path | bytes  # an image file, or its encoded bytes (arrow files, tar shards)
    captions: tuple[str, ...]  # cleaned: stripped, none empty
    name: str  # how a message names it: the image file, or file#row
    meta: dict[str, Any] = field(default_factory=dict)  # kept in the sample's .json (image_id, split, url, ...)


@dataclass(frozen=True)
class Unusable:
    """A record of the source that cannot become a sample, and why (a bad caption, a malformed line)."""

    name: str
    reason: str


def clean_captions(captions: Iterable[str]) -> tuple[str, ...]:
    """Strips each caption and folds runs of whitespace (TSV captions carry stray tabs); drops empty ones and keeps
    an image's repeated caption once (see `distinct`)."""
    return distinct(text for text in (" ".join(c.split()) for c in captions) if text)


def distinct(captions: Iterable[str]) -> tuple[str, ...]:
    """The captions of one image, each once, in their order: official METER trains on `set(texts)` of each image
    (base_dataset.py:64-69, for every caption corpus), so a phrase Visual Genome repeats is one pair, not three."""
    return tuple(dict.fromkeys(captions))


def decode_caption(raw: bytes, name: str) -> str | Unusable:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return Unusable(name, f"{name}: caption is not UTF-8 ({error.reason} at byte {error.start})")


def text_lines(path: Path, what: str, start: int = 0) -> Iterator[tuple[int, str, str | Unusable]]:
    """(row, `path:line` for messages, the line's text or why it is unusable) from row `start` on. Lines are read
    as bytes and decoded one by one, so one line that is not UTF-8 cannot stop the reading."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    with path.open("rb") as f:
        for row, line in enumerate(f):
            if row >= start:
                name = f"{path}:{row + 1}"
                yield row, name, decode_caption(line.rstrip(b"\r\n"), name)


def caption_sample(
    key: str, image: Path | bytes, captions: Iterable[str], name: str, meta: dict[str, Any]
) -> RawSample | Unusable:
    """A RawSample, or Unusable when no caption is left after cleaning."""
    cleaned = clean_captions(captions)
    if not cleaned:
        return Unusable(name, f"{name}: empty caption")
    return RawSample(key, image, cleaned, name, meta)


def iter_json_array(path: Path, what: str, chunk_size: int = 1 << 20) -> Iterator[Any]:
    """The elements of a file holding one JSON array, parsed one at a time: memory follows one element, not the
    file (Visual Genome's region_descriptions.json is over 700 MB, several GB once loaded whole)."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    decoder = json.JSONDecoder()
    text_decoder = codecs.getincrementaldecoder("utf-8")()
    buffer, position, started, at_end = "", 0, False, False
    with path.open("rb") as f:
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n,":
                position += 1
            if not started and position < len(buffer):
                if buffer[position] != "[":
                    raise DataError(f"{path}: {what} must hold a JSON list")
                started, position = True, position + 1
                continue
            if started and position < len(buffer) and buffer[position] == "]":
                return
            if position < len(buffer):
                try:
                    element, end = decoder.raw_decode(buffer, position)
                except json.JSONDecodeError as error:
                    if at_end:
                        raise DataError(f"{path}: not valid JSON ({error})") from None
                else:
                    # An element ends where a separator follows: a number cut by the chunk (`12`, `-0.`) may go on.
                    if end < len(buffer) and buffer[end] in " \t\r\n,]":
                        yield element
                        position = end
                        continue
                    if at_end and end < len(buffer):
                        raise DataError(f"{path}: not valid JSON ({buffer[end]!r} after an element of {what})")
            if at_end:
                raise DataError(f"{path}: {what} ends before its list is closed")
            chunk = f.read(chunk_size)
            at_end = not chunk
            try:
                buffer = buffer[position:] + text_decoder.decode(chunk, final=at_end)
            except UnicodeDecodeError as error:
                raise DataError(f"{path}: not valid UTF-8 ({error})") from None
            position = 0


def files_matching(root: Path, pattern: str, option: str) -> list[Path]:
    """The files under `root` that `pattern` (the value of `option`) matches: a path inside `root` written whole
    (absolute) counts as the pattern relative to it; an empty pattern, or one outside `root`, is named."""
    if not pattern.strip():
        raise DataError(f"{option} is empty: give file names or patterns under --root {root} (e.g. '*.tar')")
    if Path(pattern).is_absolute():
        try:
            pattern = str(Path(pattern).relative_to(root.absolute()))
        except ValueError:
            raise DataError(f"{option} {pattern} is not under --root {root}: give it relative to --root") from None
    return sorted(path for path in root.glob(pattern) if path.is_file())  # `**` matches folders: "Is a directory"
