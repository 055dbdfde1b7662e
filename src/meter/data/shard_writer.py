"""`meter prepare SOURCE`: a corpus in its published layout -> webdataset shards and a manifest, resumable.

Shard i holds the usable samples among source records [i * shard_size, (i + 1) * shard_size), so what each shard
holds depends on nothing but the source: a run killed at any moment is resumed by skipping the shards that have
their record in `progress/` and rewriting the others. A shard is written to a temporary name and renamed into
place before its record is written; a record therefore always names a complete shard.

Each sample is `key.<jpg|png|...>` (the image bytes, unchanged), `key.txt` (its first caption, for tools that
read one) and `key.json` ({"captions": [...], plus what the source knows: image_id, split, url, ...}).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import webdataset
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from meter.atomic_files import OUT_OF_SPACE, cannot_write
from meter.data.bad_samples import BadSample, BadSampleBudget, continued_list
from meter.data.formats.common import DECODE_ERRORS, IMAGE_FORMATS, NOT_AN_IMAGE, READ_FORMATS, RawSample, Unusable
from meter.data.formats.webdataset import TarShard, find_shards, utf8_name
from meter.data.shard_manifest import (
    MANIFEST,
    CaptionCounts,
    ShardRecord,
    build_manifest,
    read_shard_record,
    write_json_atomically,
    write_shard_record,
)
from meter.data.source_files import fingerprint
from meter.errors import DataError
from meter.output_folder import check_own_folder, holding_folder

log = logging.getLogger(__name__)
PROGRESS = "progress"
SETTINGS = "prepare.json"
PREPARE_LOCK = ".meter-prepare.lock"  # held by the `meter prepare` writing the folder
SOURCE_FILES = "source_files"
BAD_SAMPLES = "bad_samples.jsonl"
SHOWN = 6  # differences a refused resume names (every shard of a rewritten corpus differs)


class RawSource(Protocol):
    """A corpus in its published layout (formats/): records in a fixed order, readable from any index."""

    name: str
    description: dict[str, object]
    missing_images_expected: bool  # images never downloaded (CC, SBU) are counted apart, not as bad data
    files: tuple[Path, ...] | list[Path]  # what lists the records: a rerun over another version of them is refused

    def __len__(self) -> int: ...

    def samples(self, start: int = 0) -> Iterator[RawSample | Unusable]: ...


def check_image(data: bytes, name: str, decode: bool) -> tuple[str | None, str | None]:
    """(file extension, None) for a usable image, else (None, what is wrong). Without `decode` only the header and
    the end marker are checked (truncated JPEG and PNG files lack theirs), and an image without its marker near
    the end is decoded whole before it is called bad (web and phone JPEGs often carry bytes after it: a motion
    photo's video, padding); the loader decodes and skips the rest."""
    try:
        with Image.open(io.BytesIO(data), formats=READ_FORMATS) as image:
            kind = image.format
            if decode or not _end_marker_near_end(kind, data):
                image.load()  # PIL raises on a truncated JPEG or PNG
    except UnidentifiedImageError:
        return None, f"{name}: {NOT_AN_IMAGE}"
    except (*DECODE_ERRORS, Image.DecompressionBombError) as error:
        return None, f"{name}: unreadable image ({type(error).__name__}: {error})"
    return IMAGE_FORMATS[kind], None


def _end_marker_near_end(kind: str | None, data: bytes) -> bool:
    if kind == "JPEG":
        return b"\xff\xd9" in data[-1024:]
    if kind == "PNG":
        return b"IEND" in data[-64:]
    return True


class ShardBuilder:
    """Writes one shard from its records and counts what went in and what was left out."""

    def __init__(self, out: Path, index: int, first: int, budget: BadSampleBudget, missing_expected: bool,
                 decode: bool) -> None:  # fmt: skip
        self.name = f"{index:05d}.tar"
        self.record = ShardRecord(self.name, first, 0, 0, 0)
        self.path = out / self.name
        self.temporary = out / f".{self.name}.tmp"
        self.budget = budget
        self.missing_expected = missing_expected
        self.decode = decode
        self.counts = CaptionCounts()
        self.keys: set[str] = set()

    def write(self, records: Iterator[RawSample | Unusable]) -> ShardRecord:
        self.record.bad_samples = []
        try:
            with self.temporary.open("wb") as f:
                writer = webdataset.TarWriter(f, mtime=0)  # a fixed mtime: a rewritten shard is byte-identical
                try:
                    for record in records:
                        self.record.records += 1
                        sample = self._sample(record)
                        if sample is not None:
                            writer.write(sample)
                finally:
                    writer.close()
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.temporary, self.path)
            self.record.bytes = self.path.stat().st_size
        except OSError as error:
            # what it needs: at least what it had written, about as much as the largest shard before it
            sizes = [path.stat().st_size for path in (self.temporary, *self.path.parent.glob("*.tar")) if path.exists()]
            self.temporary.unlink(missing_ok=True)  # the space it took back: the shard is written again on resume
            if error.errno not in OUT_OF_SPACE:
                raise
            raise DataError(f"shard not written: {cannot_write(self.path, error, max(sizes, default=0))}; free some "
                            "space and run the same command again (it resumes at this shard)") from None  # fmt: skip
        except BaseException:  # the bad-sample budget spent, Ctrl-C: the half-written shard is not left behind
            self.temporary.unlink(missing_ok=True)
            raise
        self.record.captions = self.counts.to_json()
        # every one it met, also those a rerun restored to the budget from the list (a shard written again)
        self.record.listed = len(self.record.bad_samples)
        return self.record

    def _bad(self, name: str, reason: str) -> None:
        self.record.bad += 1
        bad = BadSample(name, reason)
        if bad.sample not in self.record.bad_samples:
            self.record.bad_samples.append(bad.sample)
        self.budget.record(bad)

    def _sample(self, record: RawSample | Unusable) -> dict[str, object] | None:
        if isinstance(record, Unusable):
            self._bad(record.name, record.reason)
            return None
        data = record.image
        if isinstance(data, Path):
            try:
                data = data.read_bytes()
            except FileNotFoundError:
                if self.missing_expected:
                    self.record.not_downloaded += 1
                    self.record.first_missing = self.record.first_missing or str(record.image)
                else:
                    self._bad(str(record.image), f"{record.image}: image not found")
                return None
            except OSError as error:
                self._bad(str(record.image), f"{record.image}: unreadable ({error})")
                return None
        extension, problem = check_image(data, str(record.image) if isinstance(record.image, Path) else record.name,
                                         self.decode)  # fmt: skip
        if problem:
            self._bad(record.name, problem)
            return None
        unwritable = next((c for c in record.captions if not _utf8(c)), None)
        if unwritable is not None:  # half of a character (a lone surrogate): no UTF-8 text holds it
            self._bad(record.name, f"{record.name}: a caption is not text that UTF-8 can hold ({unwritable[:40]!r})")
            return None
        key = utf8_name(record.key.replace(".", "_").replace("/", "_"))
        if key in self.keys:  # a reader groups a tar's files by key: the two samples would merge into a damaged one
            self._bad(record.name, f"{record.name}: its sample key {key!r} is an earlier sample's in this shard")
            return None
        self.keys.add(key)
        self.record.samples += 1
        self.record.pairs += len(record.captions)
        self.counts.add(record.captions)
        meta = {"captions": list(record.captions), **record.meta}
        return {"__key__": key, extension: data, "txt": record.captions[0], "json": meta}


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_settings(out: Path, settings: dict[str, object]) -> None:
    """Records the settings of a new preparation; refuses to resume one of other settings or other source files
    (its shards would mix two versions of the corpus), naming what differs. Called holding the prepare lock: two
    preparations of other settings started at once would both find no settings and both write into the folder."""
    path = out / SETTINGS
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{path} is not the record of a `meter prepare` ({error}); choose another --out") from None
        if not isinstance(before, dict):
            raise DataError(f"{path} is not the record of a `meter prepare`; choose another --out")
        # written before meter recorded them (or, for tar shards, recorded none)
        older = not before.get(SOURCE_FILES) and SOURCE_FILES in settings
        compared = {k: v for k, v in settings.items() if k != SOURCE_FILES} if older else settings
        resolved = {**before, "description": _resolved_root(before.get("description"))}
        found = _differences(resolved, compared)
        if found:
            differences = "; ".join(found[:SHOWN]) + (f"; and {len(found) - SHOWN:,} more" if found[SHOWN:] else "")
            raise DataError(f"{out} holds a preparation of another source or with other settings ({differences}): "
                            "resume with the same source and options, or choose another --out")  # fmt: skip
        if older and settings[SOURCE_FILES]:
            log.warning(
                "%s: written by an older meter, without its source files' fingerprint: recorded now (an edit "
                "of them before today is not seen; its shards keep an image's repeated captions)",
                path,
            )
            write_json_atomically(path, {**before, SOURCE_FILES: settings[SOURCE_FILES]})
    else:  # the folder was found to be prepare's own (or new) when the lock was taken
        write_json_atomically(path, settings)


def _resolved_root(description: object) -> object:
    """A description with its root as an absolute path: a resume from another working directory (a requeued job)
    names the same folder."""
    if isinstance(description, dict) and isinstance(description.get("root"), str):
        return {**description, "root": str(Path(description["root"]).resolve())}
    return description


def _differences(before: object, now: object, key: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(now, dict):
        keys = [*now, *(k for k in before if k not in now)]
        return [d for k in keys for d in _differences(before.get(k), now.get(k), f"{key}.{k}" if key else k)]
    if isinstance(before, list) and isinstance(now, list) and len(before) == len(now):
        return [d for i, (b, n) in enumerate(zip(before, now, strict=True)) for d in _differences(b, n, f"{key}[{i}]")]
    if before == now:
        return []
    return [f"{key}: {_short(before)} then, {_short(now)} now"]


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _resume_budget(out: Path, max_bad: float, total: int, keep: int | set[str] = -1) -> BadSampleBudget:
    """The budget, with the bad samples an interrupted run already found (their shards are not read again); `keep`:
    those of the shards kept, by name or (>= 0) the first listed (the rest were of a shard written again)."""
    budget = BadSampleBudget(max_bad, total, out / BAD_SAMPLES, setting="--max-bad")
    budget.restore(continued_list(out / BAD_SAMPLES, resumed=True, keep=keep))  # a line cut short by a kill: dropped
    return budget


def _listed_by(done: dict[int, ShardRecord]) -> int | set[str]:
    """The samples the kept shards listed: by name where each recorded them; else their number, where they are the
    first shards and each recorded its count (the list's first lines); else -1, the whole list. The rest are of a
    shard left unfinished or written again, which meets its own again (an image found since is no longer bad). A
    count alone lost lines: a shard written again while the whole list was restored counted none of its own."""
    if all(record.bad_samples is not None for record in done.values()):
        return {name for record in done.values() for name in record.bad_samples or ()}
    if sorted(done) != list(range(len(done))) or any(record.listed < 0 for record in done.values()):
        return -1
    return sum(record.listed for record in done.values())


def _finished(out: Path, shards: int) -> dict[int, ShardRecord]:
    done = {}
    for index in range(shards):
        path = out / PROGRESS / f"{index:05d}.json"
        if path.is_file():
            try:
                done[index] = read_shard_record(path)
            except (ValueError, TypeError) as error:  # left empty by a crash of the machine, or not meter's
                log.warning("%s: not a shard record (%s); its shard is written again", path, error)
    return done


def _still_written(out: Path, done: dict[int, ShardRecord]) -> dict[int, ShardRecord]:
    """The finished shards whose file is still there, of the size it was written at: one deleted or cut short since
    is written again (kept, the manifest would list samples that are not there, and training would skip them)."""
    kept = {}
    for index, record in done.items():
        path = out / record.path
        size = path.stat().st_size if path.is_file() else None
        if size is None or (record.bytes and size != record.bytes):
            state = "gone" if size is None else f"{size:,} bytes, written as {record.bytes:,}"
            log.warning("%s: %s; written again", path, state)
            continue
        kept[index] = record
    return kept


def _finish(out: Path, name: str, description: dict[str, object], records: list[ShardRecord],
            budget: BadSampleBudget) -> dict:  # fmt: skip
    manifest = build_manifest(out, name, description, records)
    write_json_atomically(out / MANIFEST, manifest)
    log.debug(
        "%s: %s records -> %s samples, %s pairs in %d shards; %s bad%s; %s not downloaded",
        name, f"{manifest['records']:,}", f"{manifest['samples']:,}", f"{manifest['pairs']:,}", len(records),
        f"{manifest['bad']:,}", f" (see {budget.log_file})" if manifest["bad"] else "",
        f"{manifest['not_downloaded']:,}",
    )  # fmt: skip
    return manifest


def write_shards(source: RawSource, out: str | Path, shard_size: int = 1000, max_bad: float = 0.01,
                 decode: bool = False, progress: bool = True) -> dict:  # fmt: skip
    """Writes (or finishes writing) the shards of `source` into `out`; returns the manifest."""
    if shard_size < 1:
        raise DataError(f"--shard-size = {shard_size} must be at least 1")
    out = Path(out)
    total = len(source)
    if total == 0:
        raise DataError(f"{source.name}: the source holds no records ({source.description})")
    description = _resolved_root(source.description)
    settings = {"source": source.name, "description": description, "records": total, "shard_size": shard_size,
                SOURCE_FILES: fingerprint(source.files)}  # fmt: skip
    with _prepare_lock(out):
        _check_settings(out, settings)
        shards = -(-total // shard_size)
        done = _still_written(out, _finished(out, shards))
        if done:
            log.info("%s: %d of %d shards were written before: kept, their images not read again (their bad samples "
                     "stay bad: prepare into another --out to read a fixed image)", out, len(done), shards)  # fmt: skip
        budget = _resume_budget(out, max_bad, total, keep=_listed_by(done))
        first_todo = next((i for i in range(shards) if i not in done), shards)
        bar = tqdm(total=total, initial=sum(r.records for r in done.values()), unit="record",
                   desc=f"prepare {source.name}", disable=not progress, dynamic_ncols=True)  # fmt: skip
        records = source.samples(first_todo * shard_size)
        for index in range(first_todo, shards):
            chunk = itertools.islice(records, shard_size)
            if index in done:
                for _ in chunk:  # a shard finished before the interruption, past one that was not
                    pass
                continue
            builder = ShardBuilder(out, index, index * shard_size, budget, source.missing_images_expected, decode)
            done[index] = builder.write(_counted(chunk, bar))
            write_shard_record(out / PROGRESS / f"{index:05d}.json", done[index])
        bar.close()
        written = [done[i] for i in range(shards)]
        _check_images_found(out, source.name, written)
        return _finish(out, source.name, description, written, budget)


def _check_images_found(out: Path, name: str, records: list[ShardRecord]) -> None:
    """Images in another layout than meter's (CC's named `{row}_{crc32}`, say) read as never downloaded: a run left
    with no sample is refused and forgotten (fixed, the same command reads every record again), and one missing
    most images is warned of, naming where the first missing one was looked for."""
    total, missing = sum(r.records for r in records), sum(r.not_downloaded for r in records)
    first = next((r.first_missing for r in records if r.first_missing), None)
    looked = f"; the first image not found was looked for at {first}" if first else ""
    if sum(r.samples for r in records) == 0:
        for record in records:
            (out / record.path).unlink(missing_ok=True)
            (out / PROGRESS / f"{Path(record.path).stem}.json").unlink(missing_ok=True)
        raise DataError(f"{name}: no usable sample in {total:,} records ({missing:,} images not found, "
                        f"{sum(r.bad for r in records):,} bad){looked}: nothing written; check where the images are "
                        "and how they are named, then run the same command again")  # fmt: skip
    if 2 * missing > total:
        log.warning("%s: %s of %s records not downloaded (their image file not found)%s: are the images where and "
                    "as meter looks for them?", name, f"{missing:,}", f"{total:,}", looked)  # fmt: skip


@contextlib.contextmanager
def _prepare_lock(out: Path) -> Iterator[None]:
    """One `meter prepare` at a time in a folder: a second would rename the first one's half-written shards away.
    A folder of the user's is refused before the lock file is written into it."""
    check_own_folder(out, (SETTINGS,), "meter prepare", "--out", ignored=(PREPARE_LOCK,))
    with holding_folder(out, PREPARE_LOCK, "another meter prepare (one at a time in a folder)"):
        yield


def _counted(records: Iterator[RawSample | Unusable], bar: tqdm) -> Iterator[RawSample | Unusable]:
    for record in records:
        yield record
        bar.update(1)


def index_shards(root: str | Path, out: str | Path, pattern: str = "*.tar", max_bad: float = 0.01,
                 progress: bool = True) -> dict:  # fmt: skip
    """A manifest for existing shards (img2dataset's), read in place: samples and pairs counted from the headers and
    captions, the images not read. Bad samples found here are counted; the loader skips them again when it reads."""
    out = Path(out)
    shards = [path.resolve() for path in find_shards(root, pattern)]
    description = {"root": str(Path(root).resolve()), "pattern": pattern, "in_place": True}
    with _prepare_lock(out):
        _check_settings(out, {"source": "webdataset", "description": description, "records": len(shards),
                              SOURCE_FILES: fingerprint(shards)})  # fmt: skip
        done = _finished(out, len(shards))
        found = _resume_budget(out, 1.0, 1 << 62)  # logs what it finds; the budget is checked once the total is known
        for index, path in enumerate(tqdm(shards, unit="shard", desc="index shards", disable=not progress)):
            if index not in done:
                done[index] = _index_shard(path, index, found)
                write_shard_record(out / PROGRESS / f"{index:05d}.json", done[index])
        records = [done[i] for i in range(len(shards))]
        total = sum(r.samples for r in records)
        if total == 0:
            raise DataError(f"{root}: the shards matching {pattern!r} hold no samples")
        budget = BadSampleBudget(max_bad, total, found.log_file, setting="--max-bad")
        budget.log_file = None  # already written
        for name, reason in found.bad.items():
            budget.record(BadSample(name, reason))
        return _finish(out, "webdataset", description, records, found)


def _ends_whole(path: Path, size: int) -> bool:
    """Whether the tar ends with its two zero blocks, as every finished tar does (tarfile, GNU tar, img2dataset)."""
    with path.open("rb") as f:
        f.seek(max(0, size - 1024))
        return f.read(1024) == bytes(1024)


def _index_shard(path: Path, index: int, budget: BadSampleBudget) -> ShardRecord:
    record, counts = ShardRecord(str(path), index, 0, 0, 0, bytes=path.stat().st_size), CaptionCounts()
    # img2dataset writes a shard under its final name: one it still writes ends early, or holds nothing yet
    if record.bytes < 512:  # not a tar's first header: no sample to index (tarfile stopped the whole folder on it)
        record.bad += 1
        budget.record(BadSample(str(path), f"{path}: {record.bytes} bytes, no sample yet (still being downloaded?)"))
        record.captions = counts.to_json()
        return record
    if not _ends_whole(path, record.bytes):
        record.bad += 1
        budget.record(BadSample(str(path), f"{path}: ends without a tar's closing blocks (still being downloaded, or "
                                "cut short): indexed as far as it goes"))  # fmt: skip
    with TarShard(path) as shard:
        for sample in shard.samples():
            text = shard.text(sample)
            record.records += 1
            record.samples += 1
            record.pairs += text.pairs
            problem = text.problem or (None if sample.image_member else f"{shard.name(sample)}: no image member")
            if problem:
                record.bad += 1
                budget.record(BadSample(shard.name(sample), problem))
            else:
                counts.add(text.captions)
    record.captions = counts.to_json()
    return record
