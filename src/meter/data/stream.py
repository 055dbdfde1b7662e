"""An endless, resumable stream of batches: epoch-seeded shuffles, split by rank, restartable at any batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from meter.data.datasets import TrainingDraws
from meter.data.loader_watch import WORKER_TIMEOUT, NotedReads, watched_batches


def epoch_order(size: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(size))
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


def micro_batches_per_epoch(samples: int, batch_size: int, world: int, grad_accum: int) -> int:
    """Micro-batches each process reads in an epoch: whole optimizer steps of the epoch (the last incomplete step's
    samples are dropped), so that a step is the same samples however it is split (4 x 1, 2 x 2, 1 x 4)."""
    return samples // (batch_size * world * grad_accum) * grad_accum


class BatchStream:
    """Yields batches forever. Batch `k` of the whole run is the same whatever the restarts and worker count, and so
    are its images' augmentations (drawn by epoch and sample index: see TrainingDraws).

    Each epoch is a seeded permutation; rank r of w takes every w-th batch-sized slice of it, so w processes with
    batch b see exactly what one process with batch w * b sees, and a step of `grad_accum` micro-batches what one
    micro-batch that many times larger sees. The samples of a last incomplete step are dropped.
    """

    def __init__(
        self,
        dataset: Dataset,
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
        grad_accum: int = 1,
    ) -> None:
        self.dataset = dataset
        self.worker_timeout = worker_timeout  # a worker silent this long is ended and the run stops, naming it
        self.pin_memory = pin_memory  # page-locked batches: the copy to the GPU runs asynchronously
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.rank = rank
        self.world = world
        self.num_workers = num_workers
        self.shuffle = shuffle
        samples = len(dataset)  # type: ignore[arg-type]
        self.batches_per_epoch = micro_batches_per_epoch(samples, batch_size, world, grad_accum)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(dataset)} samples are fewer than one step's {batch_size * world * grad_accum}")
        self.batches_seen = start_batch

    def _epoch_batches(self, epoch: int, skip: int) -> list[list[int]]:
        order = epoch_order(len(self.dataset), self.seed, epoch, self.shuffle)  # type: ignore[arg-type]
        global_batch = self.batch_size * self.world
        batches = []
        for b in range(skip, self.batches_per_epoch):
            start = b * global_batch + self.rank * self.batch_size
            batches.append(order[start : start + self.batch_size])
        return batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            epoch, skip = divmod(self.batches_seen, self.batches_per_epoch)
            if isinstance(self.dataset, TrainingDraws):
                self.dataset.set_epoch(epoch)  # augmentation draws by (epoch, sample); the workers start after this
            batches = watched_batches(
                NotedReads(self.dataset) if self.num_workers else self.dataset,  # a dead worker names its sample
                self.num_workers,
                self.worker_timeout,
                batch_sampler=self._epoch_batches(epoch, skip),
                collate_fn=self.collate,
                persistent_workers=False,
                pin_memory=self.pin_memory,
                # its own generator: a new loader must not draw from the global RNG (dropout would shift on resume)
                generator=torch.Generator().manual_seed(self.seed * 7919 + epoch),
            )
            for batch in batches:
                self.batches_seen += 1
                yield batch

    @property
    def epoch(self) -> float:
        return self.batches_seen / self.batches_per_epoch
