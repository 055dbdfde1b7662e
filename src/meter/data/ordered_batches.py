"""Evaluation's reading: a dataset's batches in order, decoded by `data.num_workers` watched workers as training's
are (a dead or silent worker stops the evaluation naming what it read), so that scoring on a GPU is not bound by one
CPU core decoding images. Order and content are those of a read in the main process: only who decodes changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset
from tqdm import tqdm

from meter.data.loader_watch import WORKER_TIMEOUT, NotedReads, watched_batches


@dataclass(frozen=True)
class EvalReading:
    """How an evaluation reads its samples: `batch_size` at a time (train.eval_batch_size), decoded by `num_workers`
    processes (data.num_workers; 0: the main process), each ended after `worker_timeout` seconds without a batch;
    `pin_memory` for asynchronous copies to a GPU; a progress bar when `progress`."""

    batch_size: int
    num_workers: int = 0
    worker_timeout: float = WORKER_TIMEOUT
    pin_memory: bool = False
    progress: bool = False


def ordered_batches(
    dataset: Dataset, collate: Callable[[list[Any]], Any], reading: EvalReading, desc: str
) -> Iterator[Any]:
    """`collate` of each run of `reading.batch_size` samples of `dataset`, in order."""
    workers = reading.num_workers
    batches = watched_batches(NotedReads(dataset) if workers else dataset, workers, reading.worker_timeout,
                              batch_size=reading.batch_size, shuffle=False, collate_fn=collate,
                              pin_memory=reading.pin_memory)  # fmt: skip
    total = math.ceil(len(dataset) / reading.batch_size)  # type: ignore[arg-type]
    try:
        yield from tqdm(batches, desc=desc, unit="batch", total=total, disable=not reading.progress)
    finally:
        batches.close()  # the workers are shut down when the caller stops early, not when this is collected
