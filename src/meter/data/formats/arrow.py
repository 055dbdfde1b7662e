"""The `.arrow` files of the official METER and ViLT code (`coco_caption_karpathy_train.arrow`, `vg.arrow`,
`conceptual_caption_train_0.arrow`, `sbu_0.arrow`, ...): Arrow IPC files with the columns `image` (the encoded
image: binary, or base64 text as some of the writers left it), `caption` (a list of strings, or one string),
`image_id` and, in most, `split`.

The files are memory-mapped and read a slice of rows at a time: a 10 GB file costs a few slices of memory, never
the whole table (`to_pandas` on these files is what runs the official code out of RAM).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from meter.data.formats.common import RawSample, Unusable, caption_sample
from meter.errors import DataError

ROWS_PER_SLICE = 64
REQUIRED = ("image", "caption")


def open_arrow(path: Path) -> pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader:
    """The IPC file (random access, what ViLT writes), else the IPC stream format."""
    if not path.is_file():
        raise DataError(f"arrow file not found: {path}")
    source = pa.memory_map(str(path), "r")
    try:
        return pa.ipc.open_file(source)
    except pa.ArrowInvalid:
        source.seek(0)
        try:
            return pa.ipc.open_stream(source)
        except pa.ArrowInvalid as error:
            raise DataError(f"{path}: not an Arrow IPC file ({error})") from None


def _batches(reader: pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader) -> Iterator[pa.RecordBatch]:
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    else:
        yield from reader


def count_rows(path: Path) -> int:
    reader = open_arrow(path)
    missing = [c for c in REQUIRED if c not in reader.schema.names]
    if missing:
        raise DataError(f"{path}: an arrow file of METER/ViLT has the columns {', '.join(REQUIRED)}; "
                        f"{', '.join(missing)} missing (it has {', '.join(reader.schema.names)})")  # fmt: skip
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    return sum(batch.num_rows for batch in reader)


def iter_rows(path: Path, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, {column: value}) from row `start` on, converting ROWS_PER_SLICE rows to Python at a time."""
    row = 0
    for batch in _batches(open_arrow(path)):
        if row + batch.num_rows <= start:
            row += batch.num_rows
            continue
        for offset in range(max(0, start - row), batch.num_rows, ROWS_PER_SLICE):
            rows = batch.slice(offset, ROWS_PER_SLICE).to_pylist()
            for i, values in enumerate(rows):
                yield row + offset + i, values
        row += batch.num_rows


def image_bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


class ArrowSource:
    """Every row of the files, one sample per image with its captions."""

    name = "arrow"
    missing_images_expected = False

    def __init__(self, root: str | Path, patterns: tuple[str, ...] = ("*.arrow",)) -> None:
        root = Path(root)
        self.files = sorted({path for pattern in patterns for path in root.glob(pattern)})
        if not self.files:
            raise DataError(f"no arrow files matching {', '.join(patterns)} in {root}")
        self.counts = [count_rows(path) for path in self.files]
        self.description = {"root": str(root), "files": [p.name for p in self.files]}

    def __len__(self) -> int:
        return sum(self.counts)

    def samples(self, start: int = 0) -> Iterator[RawSample | Unusable]:
        first = 0
        for file_index, (path, count) in enumerate(zip(self.files, self.counts, strict=True)):
            if first + count > start:
                for row, values in iter_rows(path, max(0, start - first)):
                    yield _sample(path, file_index, row, values)
            first += count


def _sample(path: Path, file_index: int, row: int, values: dict[str, Any]) -> RawSample | Unusable:
    name = f"{path}#{row}"
    image = image_bytes(values.get("image"))
    if image is None:
        return Unusable(name, f"{name}: the image column holds no image bytes")
    captions = values.get("caption")
    captions = [captions] if isinstance(captions, str) else [str(c) for c in captions or [] if c is not None]
    meta = {"image_id": str(values.get("image_id", "")), "split": values.get("split"), "file": path.name, "row": row}
    return caption_sample(f"{file_index:03d}_{row:09d}", image, captions, name, meta)
