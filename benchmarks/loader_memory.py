"""Memory of the streaming loader over a whole epoch of a large shard set, and of reading an arrow file in slices
against loading it whole (what runs the official code out of RAM). Linux only (reads /proc).

    python benchmarks/loader_memory.py [--images 30000] [--workers 2]

Writes two sources into shards (images x 1 caption, and images/6 x 5 captions: about 55,000 pairs for the
default), streams one full epoch through ShardStream with the given workers, and samples the memory of the
main process and its workers every few batches: proportional set size (PSS: shared pages split between the
processes that share them) and anonymous memory (the heap; file pages of the shards are not counted there).
Flat means the last sample is close to the first one taken after warm-up: that ratio is printed.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from meter.data.datasets import ImageReader
from meter.data.formats.arrow import ArrowSource
from meter.data.formats.common import RawSample
from meter.data.images import image_transform
from meter.data.shard_manifest import read_manifest
from meter.data.shard_stream import ShardCorpus, ShardStream
from meter.data.shard_writer import write_shards


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return {"pss": fields["Pss"], "anonymous": fields["Anonymous"], "rss": fields["Rss"]}


def family(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(c for child in children for c in family(int(child)))]


def total_memory_mib(pid: int) -> dict[str, float]:
    totals = {"pss": 0, "anonymous": 0, "rss": 0}
    for member in family(pid):
        try:
            for key, value in memory_kib(member).items():
                totals[key] += value
        except FileNotFoundError:  # a worker that just exited
            pass
    return {k: v / 1024 for k, v in totals.items()} | {"processes": len(family(pid))}


def small_jpeg(rng: np.random.Generator) -> bytes:
    coarse = rng.random((3, 3, 3)) * 255
    image = Image.fromarray(coarse.astype(np.uint8)).resize((64, 64), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


class GeneratedSource:
    """Images made on the fly, as a RawSource (the writer's input) with `captions` captions each."""

    missing_images_expected = False

    def __init__(self, name: str, images: int, captions: int, seed: int) -> None:
        self.name, self.images, self.captions, self.seed = name, images, captions, seed
        self.description = {"generated": images}

    def __len__(self) -> int:
        return self.images

    def samples(self, start: int = 0) -> Iterator[RawSample]:
        rng = np.random.default_rng(self.seed)
        for i in range(start, self.images):
            texts = tuple(f"{self.name} image {i} caption {j} with a few words" for j in range(self.captions))
            yield RawSample(f"{i:09d}", small_jpeg(rng), texts, f"{self.name}#{i}")


def loader_epoch(root: Path, workers: int, batch: int, every: int) -> None:
    sources = [(read_manifest(root / "single"), 1.0), (read_manifest(root / "multi"), 1.0)]
    corpus = ShardCorpus(sources, ImageReader(image_transform(64, (0.5,) * 3, (0.5,) * 3), 64), shuffle_buffer=1000,
                         open_shards=4, streams_per_rank=4)  # fmt: skip
    batches = len(corpus) // batch
    print(f"one epoch: {len(corpus):,} pairs in {sum(len(m.shards) for m, _ in sources)} shards, {batches} batches "
          f"of {batch}, {workers} workers, shuffle_buffer 1000 x 4 streams")  # fmt: skip
    print(f"{'batch':>6} {'processes':>9} {'PSS MiB':>8} {'anon MiB':>9} {'RSS MiB':>8}")
    stream = ShardStream(corpus, batch, lambda s: torch.stack([x["pixels"] for x in s]), num_workers=workers)
    samples, start = [], time.perf_counter()
    for index, _ in enumerate(stream, start=1):
        if index % every == 0 or index == batches:
            m = total_memory_mib(os.getpid())
            samples.append(m)
            print(f"{index:>6} {m['processes']:>9} {m['pss']:>8.1f} {m['anonymous']:>9.1f} {m['rss']:>8.1f}")
        if index == batches:
            break
    elapsed = time.perf_counter() - start
    warm = samples[min(2, len(samples) - 1)]  # after every worker has filled its blocks
    peak = max(s["pss"] for s in samples)
    print(f"PSS: after warm-up {warm['pss']:.1f} MiB, peak {peak:.1f}, end {samples[-1]['pss']:.1f} MiB "
          f"(end / warm-up = {samples[-1]['pss'] / warm['pss']:.3f}); anonymous end / warm-up = "
          f"{samples[-1]['anonymous'] / warm['anonymous']:.3f}; {batches * batch / elapsed:.0f} pairs/s")  # fmt: skip


def arrow_comparison(root: Path, rows: int) -> None:
    rng = np.random.default_rng(1)
    blob = [rng.bytes(20_000) for _ in range(64)]  # the bytes only travel; nothing decodes them here
    table = pa.table({"image": pa.array([blob[i % 64] for i in range(rows)], pa.binary()),
                      "caption": pa.array([[f"caption {i}"] * 5 for i in range(rows)]),
                      "image_id": pa.array([str(i) for i in range(rows)])})  # fmt: skip
    path = root / "arrows/big.arrow"
    path.parent.mkdir()
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)  # one record batch, as ViLT's writers leave it
    del table, blob
    size = path.stat().st_size / 2**20
    before = memory_kib(os.getpid())
    peak = 0
    for i, _ in enumerate(ArrowSource(root / "arrows").samples()):
        if i % 500 == 0:
            peak = max(peak, memory_kib(os.getpid())["anonymous"])
    sliced = (peak - before["anonymous"]) / 1024
    before = memory_kib(os.getpid())
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    try:  # what the official code does; without pandas, the same rows as Python objects
        whole_table, how = table.to_pandas(), "read_all().to_pandas()"
    except ImportError:
        whole_table, how = table.to_pylist(), "read_all().to_pylist() (pandas is not installed)"
    whole = (memory_kib(os.getpid())["anonymous"] - before["anonymous"]) / 1024
    del whole_table, table
    print(f"\narrow file of {rows:,} rows, {size:.0f} MiB: anonymous memory added by reading it in slices "
          f"{sliced:.1f} MiB, by {how} {whole:.1f} MiB (ratio {whole / max(sliced, 0.1):.0f}x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=30_000, help="images of the one-caption source")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--every", type=int, default=40, help="sample memory every this many batches")
    parser.add_argument("--arrow-rows", type=int, default=20_000)
    parser.add_argument("--keep", help="write the shards here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(args.keep or folder)
        start = time.perf_counter()
        write_shards(GeneratedSource("single", args.images, 1, 0), root / "single", shard_size=500, progress=False)
        write_shards(GeneratedSource("multi", args.images // 6, 5, 1), root / "multi", shard_size=500, progress=False)
        print(f"shards written in {time.perf_counter() - start:.0f} s")
        loader_epoch(root, args.workers, args.batch, args.every)
        arrow_comparison(root, args.arrow_rows)


if __name__ == "__main__":
    main()
