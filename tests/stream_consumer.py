"""Consumes a shard stream as a training run would, for the kill-and-resume test: one line per batch (the pairs it
held) appended to pairs.jsonl, and every `--commit-every` batches the position committed to position.json, as a
checkpoint does. Started again, it resumes from the committed position and drops the lines written after it."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from meter.data.datasets import ImageReader
from meter.data.images import image_transform
from meter.data.shard_manifest import read_manifest
from meter.data.shard_stream import ShardCorpus, ShardStream


def pair_keys(samples: list) -> list[str]:
    return [s["pair"] if isinstance(s, dict) else f"bad:{s.path}" for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batches", type=int, required=True)
    parser.add_argument("--commit-every", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    position, log = out / "position.json", out / "pairs.jsonl"
    start = json.loads(position.read_text())["batches_seen"] if position.is_file() else 0
    kept = log.read_text().splitlines()[:start] if log.is_file() else []
    log.write_text("".join(line + "\n" for line in kept))  # what came after the last commit is lost, as in training
    images = ImageReader(image_transform(16, (0.5,) * 3, (0.5,) * 3), 16)
    sources = [(read_manifest(args.shards), 1.0)]
    corpus = ShardCorpus(sources, images, shuffle_buffer=16, open_shards=2, streams_per_rank=2)
    stream = ShardStream(corpus, 4, pair_keys, seed=3, rank=args.rank, world=args.world, start_batch=start,
                         num_workers=args.workers)  # fmt: skip
    with log.open("a") as f:
        for batch in stream:
            f.write(json.dumps(batch) + "\n")
            f.flush()
            os.fsync(f.fileno())
            if stream.batches_seen % args.commit_every == 0:
                temporary = out / ".position.tmp"
                temporary.write_text(json.dumps({"batches_seen": stream.batches_seen}))
                os.replace(temporary, position)
            if stream.batches_seen >= args.batches:
                break
            time.sleep(args.step_seconds)


if __name__ == "__main__":
    main()
