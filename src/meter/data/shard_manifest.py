"""The manifest of a shard set: what `meter prepare` wrote (or indexed) and what the streaming loader plans with.

    OUT/manifest.json      {"format": "meter-shards", "source": "coco", "samples": ..., "pairs": ...,
                            "captions": {...statistics...}, "shards": [{"path": "00000.tar", "samples", "pairs"}]}
    OUT/00000.tar ...      the shards (or, for img2dataset shards indexed in place, paths to them)
    OUT/progress/00000.json  one record per finished shard: the preparation resumes from these

A *pair* is one (image, caption): an image with 5 captions is one sample and 5 pairs. The loader's unit is the
pair, as in METER's pretraining (every caption of COCO and every region phrase of Visual Genome is a sample).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meter.atomic_files import write_text_atomically
from meter.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "meter-shards"
VERSION = 1


@dataclass
class CaptionCounts:
    """Histograms from which the caption statistics are computed exactly, and merged shard by shard."""

    words: Counter[int] = field(default_factory=Counter)  # caption length in words -> captions
    per_sample: Counter[int] = field(default_factory=Counter)  # captions of a sample -> samples

    def add(self, captions: tuple[str, ...]) -> None:
        self.per_sample[len(captions)] += 1
        for caption in captions:
            self.words[len(caption.split())] += 1

    def merge(self, other: CaptionCounts) -> None:
        self.words.update(other.words)
        self.per_sample.update(other.per_sample)

    def to_json(self) -> dict[str, dict[str, int]]:
        return {"words": {str(k): v for k, v in sorted(self.words.items())},
                "per_sample": {str(k): v for k, v in sorted(self.per_sample.items())}}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, dict[str, int]]) -> CaptionCounts:
        return cls(Counter({int(k): v for k, v in data["words"].items()}),
                   Counter({int(k): v for k, v in data["per_sample"].items()}))  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return {
            "captions": sum(self.words.values()),
            "words": _describe(self.words),
            "captions_per_sample": _describe(self.per_sample),
        }


def _describe(histogram: Counter[int]) -> dict[str, float]:
    total = sum(histogram.values())
    if total == 0:
        return {}
    values = sorted(histogram.items())

    def quantile(q: float) -> int:
        seen = 0
        for value, count in values:
            seen += count
            if seen >= q * total:
                return value
        return values[-1][0]

    mean = sum(v * c for v, c in values) / total
    return {"min": values[0][0], "mean": round(mean, 2), "p50": quantile(0.5), "p95": quantile(0.95),
            "max": values[-1][0]}  # fmt: skip


@dataclass
class ShardRecord:
    """One finished shard: written by the preparation, read back to resume it and to build the manifest."""

    path: str  # relative to the manifest's folder, or absolute (shards indexed in place)
    first: int  # index of its first record in the source
    records: int  # source records it covers (written or skipped)
    samples: int
    pairs: int
    bad: int = 0
    not_downloaded: int = 0
    captions: dict[str, dict[str, int]] = field(default_factory=dict)  # CaptionCounts.to_json()
    first_missing: str | None = None  # the image file of its first record not downloaded, named if most are missing
    bytes: int = 0  # the shard file's size as written (0: recorded by an older meter), checked when a rerun keeps it
    listed: int = -1  # the samples it found bad, in bad_samples.jsonl (-1: recorded by an older meter)
    bad_samples: list[str] | None = None  # those samples by name, as listed (None: recorded by an older meter)


@dataclass(frozen=True)
class ShardEntry:
    path: Path  # resolved
    samples: int
    pairs: int
    bytes: int = 0  # its size when prepared (0: not recorded then)


@dataclass(frozen=True)
class Manifest:
    folder: Path
    source: str
    shards: tuple[ShardEntry, ...]
    data: dict[str, Any]

    @property
    def pairs(self) -> int:
        return sum(s.pairs for s in self.shards)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def write_json_atomically(path: Path, data: Any) -> None:
    # escaped: a path of a folder named in another encoding than UTF-8 (Latin-1, say) holds undecodable bytes, which
    # Python keeps as lone surrogates that UTF-8 cannot write, and JSON's escapes give back as they were
    write_text_atomically(path, json.dumps(data, indent=1, ensure_ascii=True))


def build_manifest(out: Path, source: str, description: dict[str, Any], records: list[ShardRecord]) -> dict:
    counts = CaptionCounts()
    for record in records:
        counts.merge(CaptionCounts.from_json(record.captions))
    return {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "description": description,
        "records": sum(r.records for r in records),
        "samples": sum(r.samples for r in records),
        "pairs": sum(r.pairs for r in records),
        "bad": sum(r.bad for r in records),
        "not_downloaded": sum(r.not_downloaded for r in records),
        "captions": counts.summary(),
        "shards": [_entry(r) for r in records],
    }


def read_shard_record(path: Path) -> ShardRecord:
    return ShardRecord(**json.loads(path.read_text()))


def write_shard_record(path: Path, record: ShardRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, asdict(record))


def _entry(record: ShardRecord) -> dict[str, Any]:
    """A shard as the manifest lists it: with its size when prepared, checked when a run opens the corpus."""
    return {"path": record.path, "samples": record.samples, "pairs": record.pairs,
            **({"bytes": record.bytes} if record.bytes else {})}  # fmt: skip


def changed_shards(manifest: Manifest) -> list[str]:
    """The shards whose size is not the one `meter prepare` read (an img2dataset shard indexed in place while its
    download still wrote it, a shard replaced or cut short since): training would read them by the wrong counts."""
    changed = []
    for shard in manifest.shards:
        if not shard.bytes:
            continue
        try:
            size = shard.path.stat().st_size
        except FileNotFoundError:  # a shard gone: its samples are counted as bad ones as they are met
            continue
        if size != shard.bytes:
            changed.append(f"{shard.path} ({size:,} bytes, {shard.bytes:,} when prepared)")
    return changed


def read_manifest(path: str | Path) -> Manifest:
    """A manifest.json, or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise DataError(f"shard manifest not found: {path} (write one with `meter prepare SOURCE --out ...`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if data.get("format") != FORMAT or "shards" not in data:
        raise DataError(f"{path}: not a manifest written by `meter prepare` (format {FORMAT!r})")
    folder = path.parent
    shards = tuple(ShardEntry(folder / s["path"], int(s["samples"]), int(s["pairs"]), int(s.get("bytes") or 0))
                   for s in data["shards"])  # fmt: skip
    return Manifest(folder, str(data.get("source", folder.name)), shards, data)
