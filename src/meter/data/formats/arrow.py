"""The `.arrow` files of the official METER and ViLT code (`coco_caption_karpathy_train.arrow`, `vg.arrow`,
`conceptual_caption_train_0.arrow`, `sbu_0.arrow`, ...): Arrow IPC files with the columns `image` (the encoded
image: binary, or base64 text as some of the writers left it), `caption` (a list of strings, or one string),
`image_id` and, in most, `split`.

Files of the held-out splits (`val`, `test`: `coco_caption_karpathy_test.arrow` holds the retrieval and captioning
test images, `conceptual_caption_val_0.arrow` CC's validation) are left out, as the official pretraining leaves
them out, so that `--files "*.arrow"` over a ViLT folder never trains on a downstream task's test images.

The files are memory-mapped and read a slice of rows at a time: a 10 GB file costs a few slices of memory, never
the whole table (`to_pandas` on these files is what runs the official code out of RAM).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections import Counter
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pyarrow as pa

from meter.data.formats.common import RawSample, Unusable, caption_sample, files_matching
from meter.errors import DataError

ROWS_PER_SLICE = 64
REQUIRED = ("image", "caption")
HELD_OUT = ("val", "test")
# the official folder's Flickr30k captions: in none of the paper's pretraining corpora (COCO, VG, SBU, CC; config.py
# `datasets`), and its images are the Flickr30k retrieval and captioning evaluation's corpus and SNLI-VE's
NOT_PRETRAINED = "f30k_*.arrow"
log = logging.getLogger(__name__)


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


def split_counts(path: Path) -> Counter[str | None]:
    """The number of rows of each value of the `split` column (None: rows of a file without one)."""
    reader = open_arrow(path)
    missing = [c for c in REQUIRED if c not in reader.schema.names]
    if missing:
        raise DataError(f"{path}: an arrow file of METER/ViLT has the columns {', '.join(REQUIRED)}; "
                        f"{', '.join(missing)} missing (it has {', '.join(reader.schema.names)})")  # fmt: skip
    counts: Counter[str | None] = Counter()
    for batch in _batches(reader):
        if "split" in batch.schema.names:
            for entry in batch.column("split").value_counts().to_pylist():
                counts[entry["values"]] += entry["counts"]
        else:
            counts[None] += batch.num_rows
    return counts


def image_ids(path: Path) -> list[str]:
    """The `image_id` column as text (the COCO file name in ViLT's COCO files, the image id in its others), read
    alone: the images stay on disk."""
    reader = open_arrow(path)
    if "image_id" not in reader.schema.names:
        raise DataError(f"{path}: no image_id column (it has {', '.join(reader.schema.names)})")
    return [str(value) for batch in _batches(reader) for value in batch.column("image_id").to_pylist()]


def _caption_type_ok(kind: pa.DataType) -> bool:
    """A string, or a list of strings: what ViLT's writers leave (to_pylist of any other type is no caption text)."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def check_caption_column(path: Path) -> None:
    """Refuses a `caption` column of another type: token ids gave the captions '101', '2023', a struct its field
    names, an integer column an internal error."""
    kind = open_arrow(path).schema.field("caption").type
    if not _caption_type_ok(kind):
        raise DataError(f"{path}: its caption column is of the Arrow type {kind}; meter reads captions of the type "
                        "string or large_string, or a list (list, large_list) of them")  # fmt: skip


def _asked_for(path: Path, patterns: tuple[str, ...]) -> bool:
    """Whether a pattern that names Flickr30k's files (`f30k_*.arrow`, the file itself) matches the file."""
    return any("f30k" in Path(pattern).name and fnmatch(path.name, Path(pattern).name) for pattern in patterns)


def _task_file(path: Path) -> bool:
    """A METER/ViLT arrow file of a downstream task (questions, hypotheses, ...: images, no `caption` column; NLVR2's
    hold image_0 and image_1)."""
    names = open_arrow(path).schema.names
    return "caption" not in names and any(name == "image" or name.startswith("image_") for name in names)


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
    """Every row of the files, one sample per image with its captions; files of the `held_out` splits are left
    out (a file mixing them with others is refused)."""

    name = "arrow"
    missing_images_expected = False

    def __init__(self, root: str | Path, patterns: tuple[str, ...] = ("*.arrow",),
                 held_out: tuple[str, ...] = HELD_OUT) -> None:  # fmt: skip
        root = Path(root)
        found = sorted({path for pattern in patterns for path in files_matching(root, pattern, "--files")})
        if not found:
            raise DataError(f"no arrow files matching {', '.join(patterns)} in {root}")
        self.files, self.counts, left_out = [], [], []
        flickr = [path for path in found if fnmatch(path.name, NOT_PRETRAINED) and not _asked_for(path, patterns)]
        if flickr:
            log.warning("left out %d arrow file(s) of Flickr30k, not in the official pretraining corpus (COCO, VG, "
                        "SBU, CC) and the images of the Flickr30k and SNLI-VE evaluations: %s (name one in --files to "
                        "keep it)", len(flickr), ", ".join(path.name for path in flickr))  # fmt: skip
            found = [path for path in found if path not in flickr]
        other_tasks = [path for path in found if _task_file(path)]
        if other_tasks:  # an official arrow folder holds the VQAv2, NLVR2 and SNLI-VE files beside the captions
            log.warning("left out %d arrow file(s) without a caption column (a task's, not captions): %s",
                        len(other_tasks), ", ".join(path.name for path in other_tasks))  # fmt: skip
        for path in (path for path in found if path not in other_tasks):
            splits = split_counts(path)
            held = sorted(str(split) for split in splits if split in held_out)
            if not held:
                check_caption_column(path)
                self.files.append(path)
                self.counts.append(sum(splits.values()))
            elif set(held) == set(splits):
                left_out.append(path.name)
            else:
                raise DataError(
                    f"{path}: rows of the held-out split(s) {', '.join(held)} (evaluation images) mixed with rows "
                    f"of {', '.join(sorted(str(s) for s in splits if s not in held_out))}: rewrite it without them, "
                    f"or pass --held-out '' to keep every row"
                )
        if left_out:
            log.warning("left out %d arrow file(s) of the held-out splits %s (evaluation images, never pretrained "
                        "on): %s", len(left_out), "/".join(held_out), ", ".join(left_out))  # fmt: skip
        if not self.files and not left_out:
            raise DataError(f"no arrow file matching {', '.join(patterns)} in {root} holds captions (a `caption` "
                            f"column): {', '.join(path.name for path in other_tasks)}")  # fmt: skip
        if not self.files:
            raise DataError(f"every arrow file matching {', '.join(patterns)} in {root} holds a held-out split "
                            f"({', '.join(left_out)}); pass --held-out '' to keep them")  # fmt: skip
        self.description: dict[str, object] = {"root": str(root), "files": [p.name for p in self.files]}
        if left_out:
            self.description["left_out"] = left_out

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
