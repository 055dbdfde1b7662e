"""Which pairs each stream reads, as arithmetic on the manifests' counts: nothing here opens a shard.

An epoch is a sequence of shard *visits*: each source's shards, as many times as its weight says (weight 2: every
shard twice; 0.5: half of them, the next half in the following epoch), shuffled together by (seed, epoch). The
pairs of the visits, one after another, are the epoch's pairs. They are cut into `streams` contiguous ranges of
equal length (to one pair), one per stream (rank x stream of that rank), so every pair of the epoch is read by
exactly one stream and all streams go through epochs at the same pace. A stream reads its range through `lanes`
readers at once (contiguous sub-ranges, taken in turn: position p comes from lane p % lanes), so a batch mixes
several shards and sources, and shuffles it in blocks. Every position is computable, which is what makes a
restart resume exactly where the run stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from meter.data.shard_manifest import Manifest, ShardEntry


@dataclass(frozen=True)
class Visit:
    shard: ShardEntry
    source: int  # index of its source in the corpus


class EpochPlan:
    """The epoch's pairs in order: the pairs of each visit, visit after visit."""

    def __init__(self, visits: list[Visit]) -> None:
        self.visits = visits
        self.starts = np.concatenate([[0], np.cumsum([v.shard.pairs for v in visits], dtype=np.int64)])

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    def locate(self, pair: int) -> tuple[int, int]:
        """(visit, pair offset inside that visit's shard) of the epoch's pair `pair` (< total)."""
        visit = int(np.searchsorted(self.starts, pair, side="right")) - 1
        return visit, pair - int(self.starts[visit])


def rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([abs(k) for k in key]))


def epoch_visits(sources: list[tuple[Manifest, float]], seed: int, epoch: int, shuffle: bool = True) -> list[Visit]:
    visits = []
    for index, (manifest, weight) in enumerate(sources):
        shards = manifest.shards
        whole, fraction = math.floor(weight), weight - math.floor(weight)
        visits += [Visit(shard, index) for _ in range(whole) for shard in shards]
        if fraction > 0:
            # a fixed order of the source's shards, walked a fraction at a time: every shard gets its turn
            order = rng(seed, index, 17).permutation(len(shards)) if shuffle else np.arange(len(shards))
            first, last = math.floor(epoch * fraction * len(shards)), math.floor((epoch + 1) * fraction * len(shards))
            visits += [Visit(shards[order[i % len(shards)]], index) for i in range(first, last)]
    if shuffle:
        visits = [visits[i] for i in rng(seed, epoch, 29).permutation(len(visits))]
    return visits


def balanced_range(total: int, parts: int, index: int) -> tuple[int, int]:
    """(start, length) of part `index` when `total` items are cut into `parts` contiguous runs differing by <= 1."""
    size, longer = divmod(total, parts)
    return index * size + min(index, longer), size + (index < longer)


def lane_offsets(position: int, lanes: int) -> list[int]:
    """How many pairs each lane has given once the stream has given `position` (position p is lane p % lanes)."""
    return [(position + lanes - 1 - lane) // lanes for lane in range(lanes)]


def slot_batch_start(start_batch: int, stream: int, streams_per_rank: int) -> int:
    """How many batches stream `stream` of a rank has given once the rank has given `start_batch` (batch n of a
    rank comes from its stream n % streams_per_rank)."""
    return (start_batch + streams_per_rank - 1 - stream) // streams_per_rank
