"""Data workers that die, hang or read a corrupt shard: real worker processes (killed with SIGKILL, stopped with
SIGSTOP, blocked on a shard that is a FIFO nobody writes to) and real shards on disk."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from meter.config import load_config
from meter.data.bad_samples import BadSample, BadSampleBudget
from meter.data.datasets import CaptionPairs, ImageReader
from meter.data.formats.captions import CaptionRecord
from meter.data.images import image_transform
from meter.data.shard_manifest import read_manifest
from meter.data.shard_stream import ShardCorpus, ShardStream
from meter.data.shard_writer import index_shards
from meter.data.stream import BatchStream
from meter.errors import ConfigError, DataError
from meter.validate import validate
from tests.corpora import DAMAGED, image_bytes, truncated, write_damaged_shard, write_img2dataset
from tests.runner import environment, pretrain_args

TRANSFORM = image_transform(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def record(samples: list[dict[str, Any] | BadSample]) -> dict[str, Any]:
    """A collate that keeps the captions and the bad samples (the training collate tokenizes instead)."""
    return {"texts": [s["text"] for s in samples if isinstance(s, dict)],
            "bad": [s for s in samples if isinstance(s, BadSample)]}  # fmt: skip


def shard_corpus(root: Path, shards: int = 4, per_shard: int = 6) -> ShardCorpus:
    write_img2dataset(root / "web", shards=shards, per_shard=per_shard)
    index_shards(root / "web", root / "index", max_bad=1.0, progress=False)
    return ShardCorpus([(read_manifest(root / "index"), 1.0)], ImageReader(TRANSFORM, 16), shuffle_buffer=4,
                       open_shards=2, streams_per_rank=2)  # fmt: skip


def children() -> set[int]:
    """The live child processes of this test process (its data workers)."""
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            found |= {int(pid) for pid in (task / "children").read_text().split()}
        except FileNotFoundError:  # a thread that ended after the listing (CI saw one): it has no children
            continue
    return found


def state(pid: int) -> str:
    """The process state letter (R, S, T, Z, ...), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return "gone"


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fails the test instead of hanging it (a loader without a timeout waits for a stopped worker forever)."""

    def expire(*_: object) -> None:
        raise TimeoutError(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def started_workers(batches: Iterator[dict[str, Any]]) -> list[int]:
    """Takes the first two batches (one from each worker: both have read something then) and returns the pids of
    the workers they started."""
    before = children()
    next(batches), next(batches)
    workers = sorted(children() - before)
    assert len(workers) == 2
    return workers


def fault_after(batches: Iterator[dict[str, Any]], limit: float) -> tuple[DataError, float]:
    """Reads on until the stream fails; returns the error and how long that took."""
    start = time.monotonic()
    with deadline(limit), pytest.raises(DataError) as caught:
        for _ in range(1000):
            next(batches)
    return caught.value, time.monotonic() - start


def test_a_killed_shard_worker_stops_the_stream_naming_the_worker_and_its_shard(tmp_path: Path):
    data = shard_corpus(tmp_path)
    batches = iter(ShardStream(data, 3, record, num_workers=2))
    victim = started_workers(batches)[1]
    os.kill(victim, signal.SIGKILL)
    error, took = fault_after(batches, limit=30)
    assert took < 10
    message = str(error)
    assert re.search(rf"data worker [01] \(pid {victim}\) was killed by SIGKILL", message), message
    shard = re.search(r"while reading (\S+);", message)
    assert shard and Path(shard[1]) in {s.path for s in data.sources[0][0].shards}, message


def test_a_killed_worker_of_a_map_style_stream_names_its_sample(shapes_world: Path):
    records = [
        CaptionRecord(path, (f"caption of {path.stem}",), i, "train")
        for i, path in enumerate(sorted((shapes_world / "images").rglob("*.png")))
    ]
    dataset = CaptionPairs(records, ImageReader(TRANSFORM, 16))
    batches = iter(BatchStream(dataset, 2, record, num_workers=2))
    victim = started_workers(batches)[0]
    os.kill(victim, signal.SIGKILL)
    error, took = fault_after(batches, limit=30)
    assert took < 10
    assert re.search(rf"data worker [01] \(pid {victim}\) was killed by SIGKILL .* while reading sample \d+ of "
                     rf"CaptionPairs", str(error)), str(error)  # fmt: skip


def test_a_stopped_worker_is_ended_after_the_worker_timeout_and_named(tmp_path: Path):
    data = shard_corpus(tmp_path)
    batches = iter(ShardStream(data, 3, record, num_workers=2, worker_timeout=2))
    victim = started_workers(batches)[0]
    os.kill(victim, signal.SIGSTOP)
    error, took = fault_after(batches, limit=60)
    assert 2 <= took < 15
    message = str(error)
    assert re.search(rf"data worker [01] \(pid {victim}, stopped\) held up a batch for 2 s \(data.worker_timeout\) "
                     rf"while reading \S+/web/\d{{5}}\.tar", message), message  # fmt: skip
    for _ in range(50):  # ended, not left stopped (an exit would wait for it forever)
        if state(victim) in ("Z", "gone"):
            break
        time.sleep(0.1)
    assert state(victim) in ("Z", "gone")


def test_a_shard_whose_read_blocks_times_out_naming_that_shard(tmp_path: Path):
    data = shard_corpus(tmp_path)
    blocked = tmp_path / "web/00002.tar"
    blocked.unlink()
    os.mkfifo(blocked)  # indexed as a shard, now a pipe with no writer: opening it blocks, as a dead mount can
    batches = iter(ShardStream(data, 3, record, num_workers=2, worker_timeout=2))
    error, took = fault_after(batches, limit=60)
    assert took < 30
    assert re.search(rf"data worker [01] \(pid \d+, sleeping\) held up a batch for 2 s \(data.worker_timeout\) while "
                     rf"reading {re.escape(str(blocked))};", str(error)), str(error)  # fmt: skip


def failing_on_shard_2(samples: list[dict[str, Any] | BadSample]) -> dict[str, Any]:
    if any(isinstance(s, dict) and s["text"].startswith("web caption 2 ") for s in samples):
        raise ValueError("a collate that fails on shard 2")
    return record(samples)


def test_an_exception_in_a_worker_comes_with_what_each_worker_was_reading(tmp_path: Path):
    batches = iter(ShardStream(shard_corpus(tmp_path), 3, failing_on_shard_2, num_workers=2))
    with deadline(60), pytest.raises(ValueError, match="a collate that fails on shard 2") as caught:
        for _ in range(100):
            next(batches)
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert re.fullmatch(r"data workers were reading: 0: \S+/web/\d{5}\.tar; 1: \S+/web/\d{5}\.tar", notes), notes


def corrupt_corpus(root: Path) -> ShardCorpus:
    """Three good shards, one with five damaged samples, one truncated in its middle after it was indexed."""
    write_img2dataset(root / "web", shards=4, per_shard=6)
    write_damaged_shard(root / "web/00004.tar")
    index_shards(root / "web", root / "index", max_bad=1.0, progress=False)
    cut = root / "web/00001.tar"
    cut.write_bytes(truncated(cut.read_bytes()))
    return ShardCorpus([(read_manifest(root / "index"), 1.0)], ImageReader(TRANSFORM, 16), shuffle_buffer=4,
                       open_shards=2, streams_per_rank=2)  # fmt: skip


def counted(data: ShardCorpus, workers: int, batches: int, budget: BadSampleBudget) -> tuple[Counter, int]:
    """Feeds the bad samples of `batches` batches to the budget as the training loop does; returns the captions
    read and the batch at which the budget stopped the stream (or `batches`)."""
    stream = iter(ShardStream(data, 4, record, num_workers=workers, worker_timeout=60))
    texts: Counter = Counter()
    for index in range(batches):
        batch = next(stream)
        texts.update(batch["texts"])
        try:
            for bad in batch["bad"]:
                budget.record(bad)
        except DataError as error:
            budget.stopped = str(error)  # type: ignore[attr-defined]
            return texts, index
    return texts, batches


def test_a_corrupt_shard_read_by_two_workers_counts_as_in_the_main_process(tmp_path: Path):
    data = corrupt_corpus(tmp_path)
    epoch = len(data) // 4  # 32 pairs (each damaged sample takes one place): 8 batches of 4
    results = {}
    for workers in (0, 2):
        budget = BadSampleBudget(1.0, len(data), tmp_path / f"bad_{workers}.jsonl")
        results[workers] = counted(data, workers, epoch, budget), budget.bad
    assert results[2] == results[0]
    (texts, _), bad = results[0]
    damaged = {Path(pair.partition("#")[0]).stem for pair in bad if "00004.tar" in pair}  # shard/key#caption
    assert damaged == set(DAMAGED) and sum(texts.values()) == len(data) - len(bad)  # every place read once
    assert any("00001.tar" in path and "fewer pairs than its manifest" in why for path, why in bad.items()), bad
    assert (tmp_path / "bad_2.jsonl").read_text() == (tmp_path / "bad_0.jsonl").read_text()


def test_every_pair_of_a_missing_shard_counts_once_whatever_reads_it(tmp_path: Path):
    """A shard deleted after it was indexed: each of its places is a bad pair, named by its place in the shard (they
    were numbered from where each read began, so reads of parts of it by several streams shared names: a third
    of them were counted)."""
    sources = []
    for name in ("cc", "sbu"):  # two sources whose shards have the same names (img2dataset's)
        write_img2dataset(tmp_path / name, shards=4, per_shard=6)
        index_shards(tmp_path / name, tmp_path / f"{name}-index", max_bad=1.0, progress=False)
        sources.append((read_manifest(tmp_path / f"{name}-index"), 1.0))
        (tmp_path / name / "00002.tar").unlink()
    data = ShardCorpus(sources, ImageReader(TRANSFORM, 16), shuffle_buffer=4, open_shards=2, streams_per_rank=4)
    budget = BadSampleBudget(1.0, len(data))
    counted(data, 0, 2 * len(data) // 4, budget)  # two epochs: each stream has been through its part
    assert len(budget.bad) == 12 and all("00002.tar" in pair and "shard not found" in why for pair, why in
                                         budget.bad.items())  # fmt: skip


def test_the_bad_sample_budget_stops_at_the_same_batch_with_the_same_message_with_two_workers(tmp_path: Path):
    data = corrupt_corpus(tmp_path)
    stops = []
    for workers in (0, 2):
        budget = BadSampleBudget(0.1, len(data))
        (_, stopped_at) = counted(data, workers, 20, budget)
        stops.append((stopped_at, budget.stopped))  # type: ignore[attr-defined]
    assert stops[0][0] < 20 and "more than the budget" in stops[0][1]
    assert stops[1] == stops[0]


def test_a_corrupt_image_read_by_two_workers_counts_as_in_the_main_process(tmp_path: Path):
    (tmp_path / "images").mkdir()
    records = []
    for i in range(12):
        path = tmp_path / "images" / f"{i}.jpg"
        data = image_bytes(i)
        path.write_bytes(truncated(data) if i in (3, 8) else b"not an image" if i == 5 else data)
        records.append(CaptionRecord(path, (f"caption {i}", f"another caption {i}"), i, "train"))
    seen = {}
    for workers in (0, 2):
        stream = iter(BatchStream(CaptionPairs(records, ImageReader(TRANSFORM, 16)), 4, record, num_workers=workers))
        budget = BadSampleBudget(1.0, 24)
        texts: Counter = Counter()
        for _ in range(6):
            batch = next(stream)
            texts.update(batch["texts"])
            for bad in batch["bad"]:
                budget.record(bad)
        seen[workers] = texts, budget.bad
    assert seen[2] == seen[0]
    assert sorted(Path(p).name for p in seen[0][1]) == [f"{i}.jpg#{j}" for i in (3, 5, 8) for j in (0, 1)]  # pairs
    assert sum(seen[0][0].values()) == 24 - 6


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_a_worker_timeout_that_is_not_above_zero_is_a_config_error_naming_the_key(value: str):
    with pytest.raises(ConfigError, match=r"data.worker_timeout = .* must be above 0"):
        validate(load_config(None, [f"data.worker_timeout={value}"]))


@pytest.mark.slow
@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_training_run_whose_data_worker_dies_or_hangs_stops_with_a_message(shapes_world: Path, tmp_path: Path,
                                                                             fault: signal.Signals):  # fmt: skip
    out = tmp_path / "run"
    args = pretrain_args(shapes_world, out, "train.device=cpu", "train.max_steps=100000", "data.num_workers=2",
                         "data.worker_timeout=5", "train.checkpoint_every=100000")  # fmt: skip
    run = subprocess.Popen([sys.executable, "-m", "meter", *args], env=environment(), stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # training has begun: a few steps logged (an epoch is 30 steps: the same workers)
            if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        workers = [int(p) for p in Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()]
        assert len(workers) == 2
        os.kill(workers[0], fault)
        start = time.monotonic()
        stderr = run.communicate(timeout=90)[1]
        took = time.monotonic() - start
    finally:
        run.kill()
    assert run.returncode == 2, stderr[-3000:]
    assert took < 30
    what = r"\) was killed by SIGKILL" if fault == signal.SIGKILL else r", stopped\) held up a batch for 5 s"
    assert re.search(rf"meter: data: data worker [01] \(pid {workers[0]}{what}.* while reading sample \d+ of "
                     rf"CaptionPairs", stderr), stderr[-3000:]  # fmt: skip


def test_a_list_of_bad_images_written_before_pairs_were_counted_goes_on_counting_each_image_once(tmp_path: Path):
    """A run resumed across the upgrade: its list names images (one line each); their pairs met again are not new."""
    from meter.data.bad_samples import continued_list

    listed = tmp_path / "bad_samples.jsonl"
    listed.write_text('{"path": "images/7.jpg", "reason": "images/7.jpg: image not found"}\n')
    budget = BadSampleBudget(1.0, 100, listed)
    budget.restore(continued_list(listed, resumed=True))
    for caption in range(5):
        budget.record(BadSample("images/7.jpg", "images/7.jpg: image not found", key=f"images/7.jpg#{caption}"))
    budget.record(BadSample("images/8.jpg", "images/8.jpg: image not found", key="images/8.jpg#0"))
    assert budget.count == 2 and len(listed.read_text().splitlines()) == 2


def test_a_budget_allows_the_fraction_it_names_of_the_samples():
    """`int(0.29 * 100)` is 28: a budget of 0.29 over 100 samples stopped at the 29th bad one."""
    assert [BadSampleBudget(fraction, 100).allowed for fraction in (0.29, 0.57, 0.01, 0.015)] == [29, 57, 1, 1]
