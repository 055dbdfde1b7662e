"""Conceptual Captions (CC3M) as published and downloaded: the TSV of `caption<TAB>url` lines
(`Train_GCC-training.tsv`, no header) and the images in a folder.

The image layout is the one of the downloader ViLBERT published and VOLTA and LAVIS reuse
(`download_data.py`): `training/{crc32(url)}` (an unsigned decimal number, no extension; `{crc32}.jpg` is found
too). URLs that failed to download have no file: they are counted as not downloaded, not as bad data.

CRC32 has 2^32 values: CC3M's 3.3 million URLs give about 1,300 pairs of different URLs one file name, and the file
holds whichever image the downloader wrote last. Every row of such a URL is a bad sample (which of the images the file
holds is unknown), not a caption paired with another URL's image.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

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


def caption_and_url(text: str) -> tuple[str, str] | None:
    """The caption and URL of a `caption<TAB>url` line, or None when the line has no URL."""
    caption, tab, url = text.rpartition("\t")
    return (caption, url.strip()) if tab and url.strip() else None


def shared_file_names(tsv: Path) -> dict[str, list[int]]:
    """The file names the downloader gives to more than one distinct URL of the TSV, each with the rows (0-based) of
    those URLs. One pass over the file; memory is 16 bytes a line (numbers, not the URLs)."""
    rows, names, urls = array("q"), array("I"), array("q")
    with tsv.open("rb") as f:
        for row, line in enumerate(f):
            try:
                fields = caption_and_url(line.rstrip(b"\r\n").decode("utf-8"))
            except UnicodeDecodeError:
                continue  # the row is unusable anyway
            if fields is not None:
                url = fields[1]
                rows.append(row)
                names.append(zlib.crc32(url.encode("utf-8")) & 0xFFFFFFFF)
                urls.append(hash(url))  # tells distinct URLs apart (within this process)
    name, url = np.frombuffer(names, np.uint32), np.frombuffer(urls, np.int64)
    order = np.lexsort((url, name))
    name_sorted, url_sorted = name[order], url[order]
    another_url = (name_sorted[1:] == name_sorted[:-1]) & (url_sorted[1:] != url_sorted[:-1])
    shared = np.isin(name, np.unique(name_sorted[1:][another_url]))
    found: dict[str, list[int]] = {}
    for row, file_name in zip(np.frombuffer(rows, np.int64)[shared].tolist(), name[shared].tolist(), strict=True):
        found.setdefault(str(file_name), []).append(row)
    return found


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
        shared = shared_file_names(self.tsv)
        for row, name, text in text_lines(self.tsv, "Conceptual Captions TSV", start):
            if isinstance(text, Unusable):
                yield text
                continue
            fields = caption_and_url(text)
            if fields is None:
                yield Unusable(name, f"{name}: not a 'caption<TAB>url' line")
                continue
            caption, url = fields
            file_name = url_file_name(url)
            image = find_image(self.images, file_name)
            if file_name in shared and image.is_file():
                lines = ", ".join(str(other + 1) for other in shared[file_name])
                yield Unusable(name, f"{name}: {image} is the download of more than one URL (lines {lines} of the "
                               "TSV: their CRC32 file names collide), and which image it holds is unknown")  # fmt: skip
                continue
            yield caption_sample(f"{row:09d}", image, [caption], name, {"url": url, "row": row})
