"""Helpers shared by the readers of real dataset formats."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meter.errors import DataError

NOT_AN_IMAGE = "unreadable image (not a format PIL knows: a web page, an empty or damaged file?)"


def read_json(path: str | Path, what: str) -> Any:
    """Reads a JSON file, or raises a DataError that names the path and what it should be."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


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
    """Strips each caption and folds runs of whitespace (TSV captions carry stray tabs); drops empty ones."""
    return tuple(text for text in (" ".join(c.split()) for c in captions) if text)


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
                    yield element
                    position = end
                    continue
            if at_end:
                raise DataError(f"{path}: {what} ends before its list is closed")
            chunk = f.read(chunk_size)
            at_end = not chunk
            try:
                buffer = buffer[position:] + text_decoder.decode(chunk, final=at_end)
            except UnicodeDecodeError as error:
                raise DataError(f"{path}: not valid UTF-8 ({error})") from None
            position = 0
