"""Streaming pretraining data from shards: sources mixed by weight, split by rank and worker, shuffled in blocks,
decoded and augmented in the workers, resumable at any batch. A drop-in for `stream.BatchStream`.

Each rank has `streams_per_rank` independent pair streams (shard_plan.py says which pairs each reads); batch n of a
rank is the next `batch_size` pairs of its stream n % streams_per_rank. Data workers share a rank's streams
(worker w serves the streams s with s % num_workers == w), so the batches are the same whatever the number of
workers, and a restart at batch n recomputes where every stream stands: nothing is replayed.

Memory is a block of encoded images per stream (`shuffle_buffer` pairs; the pairs of one image share its bytes)
and `open_shards` open files per stream, whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from meter.config import DataConfig
from meter.data.augment import Draw
from meter.data.bad_samples import BadSample
from meter.data.datasets import ImageReader
from meter.data.formats.webdataset import TarShard
from meter.data.images import decode_image
from meter.data.loader_watch import WORKER_TIMEOUT, note_reading, watched_batches
from meter.data.shard_manifest import Manifest, ShardEntry, changed_shards, read_manifest
from meter.data.shard_plan import (
    EpochPlan,
    balanced_range,
    epoch_visits,
    lane_offsets,
    rng,
    slot_batch_start,
)
from meter.errors import ConfigError, DataError


@dataclass(frozen=True)
class Pair:
    """One (image, caption) of the stream, not yet decoded."""

    key: str  # shard path/key#caption: names this pair in every source (the pairs of one image share its bytes)
    name: str  # the image member, for messages
    image: bytes | None
    caption: str
    image_id: int
    problem: str | None = None  # set when this place of the stream holds a bad sample
    epoch: int = 0
    position: int = 0  # its place in the epoch's plan: the sample index its augmentation draws by


def image_id(shard: ShardEntry, key: str) -> int:
    """A 63-bit id of the image: ITM knows two captions of one image by it."""
    # a member name that is not UTF-8 (a Latin-1 `café.jpg`) reads as lone surrogates: hashed as its bytes
    digest = hashlib.blake2b(f"{shard.path}/{key}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def shard_pairs(shard: ShardEntry, skip: int, take: int) -> Iterator[Pair]:
    """Pairs [skip, skip + take) of a shard. A shard that holds fewer than its manifest says (damaged, or changed
    since it was indexed) fills the missing places with bad pairs, so the positions of the stream stay exact."""
    given, first = 0, skip
    try:
        with TarShard(shard.path) as tar:
            for sample in tar.samples():
                text = tar.text(sample)
                if skip >= text.pairs:
                    skip -= text.pairs
                    continue
                member = sample.image_member
                name = tar.name(sample, member.name.rpartition(".")[2] if member else None)
                problem = text.problem or (None if member else f"{tar.name(sample)}: no image member")
                image = tar.read(member) if member and not problem else None
                if member and not problem and image is None:
                    problem = f"{name}: truncated tar member"
                ident = image_id(shard, sample.key)
                for index in range(skip, text.pairs):
                    caption = text.captions[index] if text.captions else ""
                    yield Pair(f"{shard.path}/{sample.key}#{index}", name, image, caption, ident, problem)
                    given += 1
                    if given == take:
                        return
                skip = 0
            missing = f"{shard.path}: holds fewer pairs than its manifest says (damaged or changed since indexed)"
    except DataError as error:
        missing = str(error)
    except FileNotFoundError:
        missing = f"{shard.path}: shard not found"
    except OSError as error:  # a failing disk or network file system: the rest of this shard is lost, not the run
        missing = f"{shard.path}: unreadable ({error})"
    for index in range(first + given, first + take):  # named by their place in the shard: each counts once
        yield Pair(f"{shard.path}#{index}", f"{shard.path}#{index}", None, "", -1, missing)


def lane_pairs(plan: EpochPlan, epoch: int, start: int, length: int) -> Iterator[Pair]:
    """Pairs [start, start + length) of the epoch, read visit after visit."""
    if length <= 0:
        return
    visit, offset = plan.locate(start)
    while length > 0:
        shard = plan.visits[visit].shard
        take = min(shard.pairs - offset, length)
        pairs = shard_pairs(shard, offset, take)
        for _ in range(take):
            note_reading(shard.path)  # before each read: a worker that dies or hangs is named with its shard
            yield replace(next(pairs), epoch=epoch, position=start)  # where it stands whatever the ranks and streams
            start += 1
        length -= take
        visit, offset = visit + 1, 0


class SlotStream:
    """The endless pair stream of one stream slot (rank x stream): its range of each epoch, epoch after epoch."""

    def __init__(self, corpus: ShardCorpus, slot: int, slots: int, seed: int, shuffle: bool, position: int) -> None:
        self.corpus, self.slot, self.slots, self.seed, self.shuffle = corpus, slot, slots, seed, shuffle
        self.position = position  # pairs this stream had given before this run started

    def _range(self, epoch: int) -> tuple[EpochPlan, int, int]:
        plan = self.corpus.plan(self.seed, epoch, self.shuffle)
        return plan, *balanced_range(plan.total, self.slots, self.slot)

    def __iter__(self) -> Iterator[Pair]:
        epoch, offset, empty = 0, self.position, 0
        while True:
            plan, start, length = self._range(epoch)
            if offset < length:
                yield from self._epoch(plan, epoch, start, length, offset)
                offset, empty = 0, 0
            else:
                offset -= length
                empty = empty + 1 if length == 0 else 0
                if empty > 100:
                    raise DataError("the data sources give this stream no pairs: fewer pairs than streams")
            epoch += 1

    def _epoch(self, plan: EpochPlan, epoch: int, start: int, length: int, offset: int) -> Iterator[Pair]:
        lanes, block = self.corpus.open_shards, self.corpus.shuffle_buffer
        first_block = offset // block
        lane_range = [balanced_range(length, lanes, lane) for lane in range(lanes)]
        begun = lane_offsets(first_block * block, lanes)
        readers = [lane_pairs(plan, epoch, start + lane_start + done, lane_length - done)
                   for (lane_start, lane_length), done in zip(lane_range, begun, strict=True)]  # fmt: skip
        for b in range(first_block, math.ceil(length / block)):
            end = min((b + 1) * block, length)
            pairs = [next(readers[p % lanes]) for p in range(b * block, end)]
            order = rng(self.seed, epoch, self.slot, b).permutation(len(pairs)) if self.shuffle else range(len(pairs))
            skip = offset - b * block if b == first_block else 0
            for i in list(order)[skip:]:
                yield pairs[i]


def to_sample(pair: Pair, images: ImageReader) -> dict[str, Any] | BadSample:
    """Decodes, augments (a training draw by epoch and place in the epoch's plan) and transforms the pair's image:
    runs in the data workers."""
    if pair.problem:
        return BadSample(pair.name, pair.problem, key=pair.key)
    if images.blind:
        pixels = images.blank
    else:
        try:
            # the transform's output size: decode no larger than needed; augmenting, the whole image, as a file is
            # read (official RandAugment's shifts are in pixels of the photo as stored)
            size = images.blank.shape[-1] if images.augment is None else None
            image = decode_image(io.BytesIO(pair.image), pair.name, at_least=size, max_pixels=images.max_pixels)
            pixels = images.finish(image, Draw(pair.epoch, pair.position))
        except DataError as error:
            return BadSample(pair.name, str(error), key=pair.key)
    return {"pixels": pixels, "text": pair.caption, "image_id": pair.image_id, "pair": pair.key}


class RankBatches(IterableDataset):
    """The batches of one rank from batch `start_batch` on; in a DataLoader each worker gives every W-th."""

    def __init__(self, corpus: ShardCorpus, batch_size: int, collate: Callable[[list[Any]], dict[str, Any]],
                 seed: int, rank: int, world: int, start_batch: int, workers: int, shuffle: bool) -> None:  # fmt: skip
        self.corpus, self.batch_size, self.collate, self.seed = corpus, batch_size, collate, seed
        self.rank, self.world, self.start_batch, self.workers, self.shuffle = rank, world, start_batch, workers, shuffle

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        # the loader takes batches from worker 0, 1, ... in turn: worker 0 must serve batch start_batch
        role = ((info.id if info else 0) + self.start_batch) % self.workers
        streams_per_rank = self.corpus.streams_per_rank
        streams = {
            s: iter(SlotStream(self.corpus, self.rank * streams_per_rank + s, self.world * streams_per_rank,
                               self.seed, self.shuffle,
                               slot_batch_start(self.start_batch, s, streams_per_rank) * self.batch_size))
            for s in range(streams_per_rank) if s % self.workers == role
        }  # fmt: skip
        batch = self.start_batch + (role - self.start_batch) % self.workers
        while True:
            pairs = streams[batch % streams_per_rank]
            yield self.collate([to_sample(next(pairs), self.corpus.images) for _ in range(self.batch_size)])
            batch += self.workers


class ShardStream:
    """Yields batches forever, like BatchStream: batch k of a rank is the same whatever the restarts and the number
    of workers (which must divide data.streams_per_rank); the world size must stay the same across a restart."""

    def __init__(
        self,
        dataset: ShardCorpus,
        batch_size: int,
        collate: Callable[[list[Any]], dict[str, Any]],
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
        num_workers: int = 0,
        shuffle: bool = True,
        pin_memory: bool = False,
        worker_timeout: float = WORKER_TIMEOUT,
        grad_accum: int = 1,  # BatchStream's; unused: a shard stream drops no incomplete step at an epoch's end
    ) -> None:
        streams = dataset.streams_per_rank
        if num_workers > 0 and streams % num_workers:
            raise ConfigError(f"data.num_workers = {num_workers} must divide data.streams_per_rank = {streams}")
        if len(dataset) < batch_size * world * streams:
            raise DataError(f"the data sources hold {len(dataset):,} pairs, fewer than one batch for each stream "
                            f"({batch_size} x {world} ranks x {streams} data.streams_per_rank)")  # fmt: skip
        self.dataset, self.batch_size, self.collate, self.seed = dataset, batch_size, collate, seed
        self.rank, self.world, self.num_workers, self.shuffle = rank, world, num_workers, shuffle
        self.pin_memory = pin_memory  # page-locked batches: the copy to the GPU runs asynchronously
        self.worker_timeout = worker_timeout  # a worker silent this long is ended and the run stops, naming it
        self.batches_seen = start_batch
        # a rank's batches in an epoch, rounded up (the loop's measure of batches in a row that were all unreadable)
        self.batches_per_epoch = -(-len(dataset) // (batch_size * world))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = RankBatches(self.dataset, self.batch_size, self.collate, self.seed, self.rank, self.world,
                              self.batches_seen, max(1, self.num_workers), self.shuffle)  # fmt: skip
        # its own generator: a loader seeds its workers from the global RNG otherwise (dropout would shift on resume)
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.batches_seen)
        loader = watched_batches(batches, self.num_workers, self.worker_timeout, batch_size=None, generator=generator,
                                 pin_memory=self.pin_memory)  # fmt: skip
        for batch in loader:
            self.batches_seen += 1
            yield batch

    @property
    def epoch(self) -> float:
        """Epochs read: pairs read over all ranks / pairs in an epoch (the streams cross an epoch's end wherever it
        falls in a batch: no incomplete step is dropped, so counted in whole steps of the epoch it ran high)."""
        return self.batches_seen * self.batch_size * self.world / len(self.dataset)


class ShardCorpus:
    """Shard sets mixed by weight: what `fit` streams from when `data.sources` is set (see loop.py)."""

    def __init__(self, sources: list[tuple[Manifest, float]], images: ImageReader, shuffle_buffer: int = 1000,
                 open_shards: int = 4, streams_per_rank: int = 8) -> None:  # fmt: skip
        self.sources = sources
        self.images = images
        self.shuffle_buffer = shuffle_buffer
        self.open_shards = open_shards
        self.streams_per_rank = streams_per_rank
        self._plans: dict[tuple[int, int, bool], EpochPlan] = {}

    stream_type = ShardStream  # `fit` builds this in place of BatchStream

    def __len__(self) -> int:
        """Pairs in an epoch (on average over epochs when a weight is fractional)."""
        return round(sum(manifest.pairs * weight for manifest, weight in self.sources))

    @property
    def distinct_samples(self) -> int:
        """Distinct pairs, each once whatever its source's weight (a pair is known by its shard, so a shard in two
        sources counts once): what a step and the bad-sample budget count."""
        shards = {shard.path: shard.pairs for manifest, _ in self.sources for shard in manifest.shards}
        return sum(shards.values())

    def describe(self) -> str:
        return ", ".join(f"{m.source} ({m.pairs:,} pairs x {w:g})" for m, w in self.sources)

    def fingerprint(self) -> str:
        """What a stream's place in the epoch is counted on: each source's shards (by name) and their pairs, and its
        weight; a corpus prepared again with other shards has another (its folder may move)."""
        shards = [[m.source, w, [[s.path.name, s.samples, s.pairs] for s in m.shards]] for m, w in self.sources]
        text = json.dumps(shards)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def plan(self, seed: int, epoch: int, shuffle: bool) -> EpochPlan:
        key = (seed, epoch, shuffle)
        if key not in self._plans:
            if len(self._plans) >= 4:  # streams of one process are at most an epoch apart
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = EpochPlan(epoch_visits(self.sources, seed, epoch, shuffle))
        return self._plans[key]


def open_corpus(data: DataConfig, images: ImageReader) -> ShardCorpus:
    """The corpus of `data.sources` (manifest folders, relative to data.root) with their weights."""
    sources = []
    for i, source in enumerate(data.sources):
        if source.weight < 0:
            raise ConfigError(f"data.sources[{i}].weight = {source.weight} must be 0 or more")
        if not source.path:
            raise ConfigError(f"data.sources[{i}].path is empty; give a folder written by `meter prepare`")
        manifest = read_manifest(Path(data.root) / source.path)
        changed = changed_shards(manifest)
        if changed:
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            raise DataError(
                f"data.sources[{i}]: {changed[0]}{more} changed since `meter prepare` wrote or read it (cut short, "
                f"replaced, or a download still writing it): run the `meter prepare` command that made {source.path} "
                "again (it writes a changed shard of its own again; shards indexed in place need a new --out)"
            )
        if source.weight > 0:
            sources.append((manifest, source.weight))
    if not sources or sum(m.pairs * w for m, w in sources) == 0:
        raise ConfigError("data.sources: no source with pairs and a weight above 0")
    for key in ("shuffle_buffer", "open_shards", "streams_per_rank"):
        if getattr(data, key) < 1:
            raise ConfigError(f"data.{key} = {getattr(data, key)} must be at least 1")
    return ShardCorpus(sources, images, data.shuffle_buffer, data.open_shards, data.streams_per_rank)
