"""Conceptual Captions (CC3M) as published and downloaded: the TSV of `caption<TAB>url` lines
(`Train_GCC-training.tsv`, no header) and the images in a folder.

The image layout is the one of the downloader ViLBERT published and VOLTA and LAVIS reuse
(`download_data.py`): `training/{crc32(url)}` (an unsigned decimal number, no extension; `{crc32}.jpg` is found
too). URLs that failed to download have no file: they are counted as not downloaded, not as bad data.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

from meter.data.formats.common import RawSample, Unusable, caption_sample, text_lines
from meter.errors import DataError

TSV = "Train_GCC-training.tsv"
IMAGES = "training"


def url_file_name(url: str) -> str:
    """The downloader's file name for a URL: the CRC32 of its UTF-8 bytes as an unsigned decimal number."""
    return str(zlib.crc32(url.encode("utf-8")) & 0xFFFFFFFF)


def find_image(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file() and (folder / f"{name}.jpg").is_file():
        return folder / f"{name}.jpg"
    return path


def count_lines(path: Path) -> int:
    if not path.is_file():
        raise DataError(f"caption file not found: {path}")
    lines, last = 0, b"\n"
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            lines, last = lines + chunk.count(b"\n"), chunk[-1:]
    return lines + (last != b"\n")  # a last line without its newline counts too


class ConceptualCaptionsSource:
    """One sample per TSV line with a downloaded image; keyed by the line number."""

    name = "cc"
    missing_images_expected = True  # a share of the URLs is always dead at download time

    def __init__(self, root: str | Path, tsv: str = TSV, images: str = IMAGES) -> None:
        self.root = Path(root)
        self.tsv = self.root / tsv
        self.images = self.root / images
        if not self.images.is_dir():
            raise DataError(f"Conceptual Captions image folder not found: {self.images}")
        self.lines = count_lines(self.tsv)
        self.description = {"root": str(self.root), "tsv": tsv, "images": images}
        self.files = (self.tsv,)

    def __len__(self) -> int:
        return self.lines

    def samples(self, start: int = 0) -> Iterator[RawSample | Unusable]:
        for row, name, text in text_lines(self.tsv, "Conceptual Captions TSV", start):
            if isinstance(text, Unusable):
                yield text
                continue
            caption, tab, url = text.rpartition("\t")
            if not tab or not url.strip():
                yield Unusable(name, f"{name}: not a 'caption<TAB>url' line")
                continue
            url = url.strip()
            image = find_image(self.images, url_file_name(url))
            yield caption_sample(f"{row:09d}", image, [caption], name, {"url": url, "row": row})
