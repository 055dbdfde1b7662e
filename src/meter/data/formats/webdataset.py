"""Webdataset tar shards, as img2dataset writes them (`00000.tar` holding `key.jpg`, `key.txt`, `key.json`) and as
`meter prepare` writes them (the same, with every caption of the image in `key.json`'s "captions").

A sample is a run of consecutive members sharing a key (the member name up to the first dot of its file name,
webdataset's rule). Headers are read first and member bytes only when asked for, so skipping through a shard
reads little more than its headers. A damaged header is stepped over (`ignore_zeros`): the members after it are
still read, and a sample that lost its image or caption that way is reported as a problem, not an exception.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meter.data.formats.common import (
    IMAGE_EXTENSIONS,
    RawSample,
    Unusable,
    caption_sample,
    clean_captions,
    files_matching,
)
from meter.errors import DataError


def split_member_name(name: str) -> tuple[str, str]:
    """('dir/key', 'ext') for 'dir/key.ext' or 'dir/key.a.b' (extension 'a.b'), as webdataset splits names."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def utf8_name(name: str) -> str:
    """A member name as valid UTF-8: tarfile reads the bytes of a name that is not (a Latin-1 `café.jpg`) as lone
    surrogates, which a shard written with them passes on to every tool that reads it; here they are `\\xe9`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class TarSample:
    key: str
    members: dict[str, tarfile.TarInfo] = field(default_factory=dict)  # extension -> member
    scattered: bool = False  # its key's members came before another key's too: the tar is not in name order

    @property
    def image_member(self) -> tarfile.TarInfo | None:
        return next((self.members[e] for e in IMAGE_EXTENSIONS if e in self.members), None)


@dataclass(frozen=True)
class SampleText:
    captions: tuple[str, ...]  # empty when the sample has no usable caption
    problem: str | None = None  # why, then
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def pairs(self) -> int:
        """How many (image, caption) pairs the sample stands for: a sample without captions still takes one place."""
        return max(1, len(self.captions))


class TarShard:
    """One tar file read sample by sample. Member bytes are fetched by offset, so any member can be read later."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = self.path.open("rb")
        try:
            self.tar = tarfile.open(fileobj=self.file, mode="r:", ignore_zeros=True)  # noqa: SIM115 (closed in close)
        except (tarfile.TarError, OSError) as error:
            self.file.close()
            raise DataError(f"{self.path}: not a tar file ({error})") from None

    def __enter__(self) -> TarShard:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.tar.close()
        self.file.close()

    def _members(self) -> Iterator[tarfile.TarInfo]:
        while True:
            try:
                info = self.tar.next()
            except (tarfile.TarError, OSError):
                return  # a damaged end: what was read so far stands
            self.tar.members = []  # tarfile keeps every header it has read; a long shard would fill memory
            if info is None:
                return
            if info.isfile() and not _macos_metadata(info.name):
                yield info

    def samples(self) -> Iterator[TarSample]:
        current: TarSample | None = None
        keys: set[str] = set()
        for info in self._members():
            key, extension = split_member_name(info.name)
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = TarSample(key, scattered=key in keys)
                keys.add(key)
            current.members.setdefault(extension, info)
        if current is not None:
            yield current

    def read(self, info: tarfile.TarInfo) -> bytes | None:
        """The member's bytes, or None when the file ends inside them (a truncated shard)."""
        self.file.seek(info.offset_data)
        data = self.file.read(info.size)
        return data if len(data) == info.size else None

    def name(self, sample: TarSample, extension: str | None = None) -> str:
        """The sample's (or member's) name; a key met again after another's is a sample of its own (listed apart)."""
        again = " (again, after another key's)" if sample.scattered else ""
        return f"{self.path}/{sample.key}" + (f".{extension}" if extension else "") + again

    def text(self, sample: TarSample) -> SampleText:
        """The sample's captions: `.json` "captions" (meter), else `.txt` (img2dataset), else `.json` "caption"."""
        if sample.scattered:  # `tar cf x.tar *.jpg *.txt`: each image and its caption became two samples
            return SampleText((), f"{self.name(sample)}: its members are not next to each other in the tar (another "
                              "key's came between): pack the files sorted by name (`tar --sort=name`), as "
                              "img2dataset does")  # fmt: skip
        meta: dict[str, Any] = {}
        if "json" in sample.members:
            raw = self.read(sample.members["json"])
            try:
                meta = json.loads(raw.decode("utf-8")) if raw is not None else None
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                return SampleText((), f"{self.name(sample, 'json')}: unreadable ({type(error).__name__}: {error})")
            if not isinstance(meta, dict):
                return SampleText((), f"{self.name(sample, 'json')}: truncated or not a JSON object")
            if isinstance(meta.get("captions"), list):
                captions = [c for c in meta["captions"] if c is not None]  # a missing caption, as Arrow's null
                wrong = next((c for c in captions if not isinstance(c, str)), None)
                if wrong is not None:  # token ids or a number are not a caption (str(7) trained on "7")
                    return SampleText((), f"{self.name(sample, 'json')}: 'captions' holds a {type(wrong).__name__} "
                                      f"({str(wrong)[:40]}), not a string", meta)  # fmt: skip
                return self._captions(sample, captions, meta)
        if "txt" in sample.members:
            raw = self.read(sample.members["txt"])
            if raw is None:
                return SampleText((), f"{self.name(sample, 'txt')}: truncated member")
            try:
                return self._captions(sample, [raw.decode("utf-8")], meta)
            except UnicodeDecodeError as error:
                where = f"{error.reason} at byte {error.start}"
                return SampleText((), f"{self.name(sample, 'txt')}: caption is not UTF-8 ({where})", meta)
        if isinstance(meta.get("caption"), str):
            return self._captions(sample, [meta["caption"]], meta)
        return SampleText((), f"{self.name(sample)}: no caption member (.txt or .json)", meta)

    def _captions(self, sample: TarSample, captions: list[str], meta: dict[str, Any]) -> SampleText:
        cleaned = clean_captions(captions)
        return SampleText(cleaned, None if cleaned else f"{self.name(sample)}: empty caption", meta)


def _macos_metadata(name: str) -> bool:
    """A macOS tar's resource-fork file (`._photo.jpg`) or its `__MACOSX/` folder: no sample's member."""
    return name.rpartition("/")[2].startswith("._") or name.startswith("__MACOSX/") or "/__MACOSX/" in name


def find_shards(root: str | Path, pattern: str = "*.tar") -> list[Path]:
    root = Path(root)
    shards = files_matching(root, pattern, "--pattern")
    if not shards:
        raise DataError(f"no shards matching {pattern!r} in {root}")
    return shards


class WebdatasetSource:
    """The samples of existing shards, for re-writing them (`meter prepare webdataset --copy`)."""

    name = "webdataset"
    missing_images_expected = False

    def __init__(self, root: str | Path, pattern: str = "*.tar") -> None:
        self.shards = find_shards(root, pattern)
        self.counts = [sum(1 for _ in _samples_of(path)) for path in self.shards]
        self.description = {"root": str(root), "pattern": pattern, "shards": len(self.shards)}
        self.files = tuple(self.shards)  # known by size and mtime (source_files.py): a changed shard is seen

    def __len__(self) -> int:
        return sum(self.counts)

    def samples(self, start: int = 0) -> Iterator[RawSample | Unusable]:
        index = 0
        for shard_index, (path, count) in enumerate(zip(self.shards, self.counts, strict=True)):
            if index + count <= start:
                index += count
                continue
            with TarShard(path) as shard:
                for sample in shard.samples():
                    index += 1
                    if index <= start:
                        continue
                    yield _raw_sample(shard, sample, shard_index)


def _samples_of(path: Path) -> Iterator[TarSample]:
    with TarShard(path) as shard:
        yield from shard.samples()


def _raw_sample(shard: TarShard, sample: TarSample, shard_index: int) -> RawSample | Unusable:
    text = shard.text(sample)
    if text.problem:
        return Unusable(shard.name(sample), text.problem)
    member = sample.image_member
    if member is None:
        return Unusable(shard.name(sample), f"{shard.name(sample)}: no image member")
    image = shard.read(member)
    if image is None:
        return Unusable(shard.name(sample), f"{shard.path}/{member.name}: truncated member")
    key = f"{shard_index:05d}_{sample.key.replace('/', '_')}"
    meta = {k: v for k, v in text.meta.items() if k != "captions"} | {"original": utf8_name(shard.name(sample))}
    return caption_sample(key, image, text.captions, f"{shard.path}/{member.name}", meta)
