import json
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from meter.data.bad_samples import BadSample
from meter.data.datasets import ImageReader
from meter.data.formats.captions import coco_source
from meter.data.formats.conceptual_captions import ConceptualCaptionsSource
from meter.data.formats.webdataset import WebdatasetSource
from meter.data.images import image_transform, load_image
from meter.data.shard_manifest import read_manifest
from meter.data.shard_plan import EpochPlan, balanced_range, epoch_visits
from meter.data.shard_stream import ShardCorpus, ShardStream
from meter.data.shard_writer import index_shards, write_shards
from tests.corpora import (
    DAMAGED,
    cc_file,
    write_coco,
    write_conceptual_captions,
    write_damaged_shard,
    write_img2dataset,
    write_latin1_shard,
)

TRANSFORM = image_transform(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def record(samples: list[dict[str, Any] | BadSample]) -> dict[str, Any]:
    """A collate that keeps what identifies each pair (the training collate tokenizes instead)."""
    good = [s for s in samples if isinstance(s, dict)]
    return {
        "pairs": [s["pair"] for s in good],
        "texts": [s["text"] for s in good],
        "pixels": [s["pixels"] for s in good],
        "bad": [(s.path, s.reason) for s in samples if isinstance(s, BadSample)],
    }


def corpus(*folders: Path, weights: tuple[float, ...] | None = None, **options: int) -> ShardCorpus:
    options = {"shuffle_buffer": 7, "open_shards": 2, "streams_per_rank": 2} | options
    sources = [(read_manifest(f), w) for f, w in zip(folders, weights or [1.0] * len(folders), strict=True)]
    return ShardCorpus(sources, ImageReader(TRANSFORM, 16), **options)


def take(data: ShardCorpus, batches: int, batch_size: int = 5, **stream: int) -> list[dict[str, Any]]:
    iterator = iter(ShardStream(data, batch_size, record, seed=stream.pop("seed", 0), **stream))
    return [next(iterator) for _ in range(batches)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw COCO (8 train/restval images x 5 captions) and CC (24 rows: 2 bad, 2 not downloaded) -> shards: 60 pairs."""
    root = tmp_path_factory.mktemp("corpora")
    write_coco(root / "coco", images=16)
    urls = write_conceptual_captions(root / "cc", rows=24)
    (root / "cc/training" / cc_file(urls[5])).unlink()
    (root / "cc/training" / cc_file(urls[17])).unlink()
    (root / "cc/training" / cc_file(urls[9])).write_bytes(b"GIF89a broken")
    tsv = root / "cc/Train_GCC-training.tsv"
    tsv.write_bytes(tsv.read_bytes().replace(b"a photo number 11 of something", b"   "))
    write_shards(coco_source(root / "coco", "karpathy/dataset_coco.json"), root / "coco-shards", shard_size=3,
                 progress=False)  # fmt: skip
    write_shards(ConceptualCaptionsSource(root / "cc"), root / "cc-shards", shard_size=5, max_bad=0.2, progress=False)
    return root


def expected_pairs(root: Path) -> dict[str, Path]:
    """Caption -> image file of every valid pair of the raw corpora."""
    coco = {f"image {i} caption {j} of a scene": root / f"coco/train2014/COCO_train2014_{i:012d}.jpg"
            for i in range(1, 17) if i % 4 in (0, 1) for j in range(5)}  # fmt: skip
    urls = [line.split("\t")[1] for line in (root / "cc/Train_GCC-training.tsv").read_text().splitlines()]
    cc = {f"a photo number {i} of something": root / "cc/training" / cc_file(urls[i])
          for i in range(24) if i not in (5, 17, 9, 11)}  # fmt: skip
    return coco | cc


def test_raw_corpora_stream_every_valid_pair_exactly_once_per_epoch_across_2_ranks_x_2_workers(prepared: Path):
    data = corpus(prepared / "coco-shards", prepared / "cc-shards")
    assert len(data) == 60  # 4 streams x 3 batches of 5 = one epoch
    epochs = [Counter(), Counter()]
    for rank in range(2):
        batches = take(data, 12, rank=rank, world=2, num_workers=2)
        for i, batch in enumerate(batches):
            assert not batch["bad"]
            epochs[i // 6].update(batch["texts"])
            for text, pixels in zip(batch["texts"], batch["pixels"], strict=True):
                assert torch.equal(pixels, TRANSFORM(load_image(expected_pairs(prepared)[text])))
    expected = set(expected_pairs(prepared))
    for seen in epochs:
        assert set(seen) == expected and set(seen.values()) == {1}


def test_batches_are_the_same_whatever_the_number_of_workers(prepared: Path):
    data = corpus(prepared / "coco-shards", prepared / "cc-shards", streams_per_rank=4, shuffle_buffer=5)
    alone = take(data, 10, batch_size=3, num_workers=0)
    for workers in (1, 2):
        assert [b["pairs"] for b in take(data, 10, batch_size=3, num_workers=workers)] == [b["pairs"] for b in alone]


@pytest.mark.parametrize("start", [1, 5, 6, 13])
def test_a_restarted_stream_resumes_at_the_batch_where_it_stopped(prepared: Path, start: int):
    data = corpus(prepared / "coco-shards", prepared / "cc-shards")
    straight = take(data, 20, rank=1, world=2, num_workers=2, seed=4)
    resumed = take(data, 20 - start, rank=1, world=2, num_workers=2, seed=4, start_batch=start)
    assert [b["pairs"] for b in resumed] == [b["pairs"] for b in straight[start:]]


def test_the_epoch_a_stream_reports_is_the_pairs_read_over_the_pairs_of_an_epoch(prepared: Path):
    """A shard stream drops no incomplete step at an epoch's end: its epoch is pairs read / pairs (counted in whole
    steps, 2 of 24 pairs in the 60, it said 1.25 when every pair had been read once)."""
    data = corpus(prepared / "coco-shards", prepared / "cc-shards", streams_per_rank=1)
    streams = [ShardStream(data, 6, record, rank=rank, world=2, grad_accum=2) for rank in range(2)]
    read: Counter[str] = Counter()
    for stream in streams:
        batches = iter(stream)
        for _ in range(5):
            read.update(next(batches)["pairs"])
        assert stream.epoch == 1.0
        for _ in range(2):
            next(batches)
        assert stream.epoch == pytest.approx(7 * 6 * 2 / 60)
    assert len(read) == 60 and set(read.values()) == {1}  # 5 batches of each rank: the epoch, every pair once


def test_weights_repeat_a_source_or_take_its_shards_in_turn_over_epochs(prepared: Path):
    sources = [(read_manifest(prepared / "coco-shards"), 2.0), (read_manifest(prepared / "cc-shards"), 0.5)]
    coco_shards, cc_shards = sources[0][0].shards, sources[1][0].shards
    visits = [epoch_visits(sources, seed=1, epoch=e) for e in range(2)]
    for epoch in visits:
        assert Counter(v.shard for v in epoch if v.source == 0) == {s: 2 for s in coco_shards}
        assert len([v for v in epoch if v.source == 1]) in (2, 3)  # half of 5 shards, in turn
    assert Counter(v.shard for e in visits for v in e if v.source == 1) == {s: 1 for s in cc_shards}
    data = corpus(prepared / "coco-shards", prepared / "cc-shards", weights=(2.0, 0.5))
    total = EpochPlan(visits[0]).total
    seen = Counter()
    for rank in range(2):  # one epoch: each rank takes the pairs of its two streams, one a batch
        batches = sum(balanced_range(total, 4, 2 * rank + s)[1] for s in range(2))
        seen.update(t for b in take(data, batches, batch_size=1, rank=rank, world=2, seed=1) for t in b["texts"])
    assert {seen[t] for t in seen if "scene" in t} == {2} and len([t for t in seen if "scene" in t]) == 40
    cc_pairs = sum(v.shard.pairs for v in visits[0] if v.source == 1)
    assert sum(seen[t] for t in seen if "photo" in t) == cc_pairs and {seen[t] for t in seen if "photo" in t} == {1}


def test_damaged_samples_are_skipped_and_named_while_every_good_pair_comes_once(tmp_path: Path):
    write_img2dataset(tmp_path / "web", shards=2, per_shard=6)
    good = write_damaged_shard(tmp_path / "web/00002.tar")
    index_shards(tmp_path / "web", tmp_path / "index", max_bad=1.0, progress=False)
    data = corpus(tmp_path / "index", streams_per_rank=1)  # 20 pairs = 1 stream x 4 batches of 5
    batches = take(data, 4, num_workers=1)
    texts = Counter(t for b in batches for t in b["texts"])
    assert set(texts.values()) == {1}
    assert len(texts) == 12 + len(good)
    bad = {path.rpartition("/")[2].partition(".")[0]: reason for b in batches for path, reason in b["bad"]}
    assert set(bad) == set(DAMAGED)
    assert all(DAMAGED[key] in reason.lower() for key, reason in bad.items()), bad


def test_a_shard_shorter_than_its_manifest_fills_its_places_with_named_bad_pairs(tmp_path: Path):
    write_img2dataset(tmp_path / "web", shards=3, per_shard=5)
    index_shards(tmp_path / "web", tmp_path / "index", progress=False)
    shard = tmp_path / "web/00001.tar"
    with tarfile.open(shard) as tar:
        cut = tar.getmember("000010002.jpg").offset
    shard.write_bytes(shard.read_bytes()[:cut])  # its first 2 samples remain, 3 are lost
    batches = take(corpus(tmp_path / "index", streams_per_rank=1, open_shards=1), 3, num_workers=0)
    texts = Counter(t for b in batches for t in b["texts"])
    assert set(texts.values()) == {1} and len(texts) == 12
    assert not any(t.startswith("web caption 1 ") and t[-1] in "234" for t in texts)
    reasons = [reason for b in batches for _, reason in b["bad"]]
    assert len(reasons) == 3 and all("fewer pairs than its manifest" in r for r in reasons)


def test_shards_with_member_names_that_are_not_utf8_are_read_whole_by_a_data_worker(tmp_path: Path):
    """A Latin-1 `café.jpg` was indexed and copied, then the worker died hashing its name (UnicodeEncodeError)."""
    captions = write_latin1_shard(tmp_path / "web/00000.tar", ["café", "crème brûlée", "plain"])
    index_shards(tmp_path / "web", tmp_path / "index", progress=False)
    write_shards(WebdatasetSource(tmp_path / "web"), tmp_path / "copy", progress=False)
    with tarfile.open(tmp_path / "copy/00000.tar", encoding="utf-8", errors="strict") as tar:  # names any tool reads
        assert {m.name.partition(".")[0] for m in tar} == {
            "00000_caf\\xe9",
            "00000_cr\\xe8me br\\xfbl\\xe9e",
            "00000_plain",
        }
    for folder in ("index", "copy"):
        [batch] = take(corpus(tmp_path / folder, streams_per_rank=1), 1, batch_size=3, num_workers=1)
        assert not batch["bad"] and sorted(batch["texts"]) == captions
        assert len({pair.rpartition("#")[0] for pair in batch["pairs"]}) == 3


@pytest.mark.slow
def test_a_killed_stream_consumer_resumes_without_losing_or_repeating_a_pair(prepared: Path, tmp_path: Path):
    def consumer(out: Path, step_seconds: float) -> subprocess.Popen:
        command = [
            sys.executable,
            "-m",
            "tests.stream_consumer",
            "--shards",
            str(prepared / "coco-shards"),
            "--out",
            str(out),
            "--batches",
            "24",
            "--rank",
            "1",
            "--world",
            "2",
            "--step-seconds",
            str(step_seconds),
        ]
        return subprocess.Popen(command, cwd=Path(__file__).parent.parent)  # fmt: skip

    assert consumer(tmp_path / "straight", 0).wait(timeout=120) == 0
    killed = consumer(tmp_path / "killed", 0.2)
    log = tmp_path / "killed/pairs.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 8) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    written = len(log.read_text().splitlines())
    committed = json.loads((tmp_path / "killed/position.json").read_text())["batches_seen"]
    assert 6 <= committed < 24 and written > committed  # killed mid-run, with batches past the last commit
    assert consumer(tmp_path / "killed", 0).wait(timeout=120) == 0
    straight = (tmp_path / "straight/pairs.jsonl").read_text().splitlines()
    resumed = log.read_text().splitlines()
    assert resumed == straight
    first_epoch = [p for line in straight[:5] for p in json.loads(line)]  # rank 1 has 2 streams of 10 pairs
    assert len(set(first_epoch)) == 20
