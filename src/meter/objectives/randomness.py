"""Per-sample random numbers that do not depend on how a step's samples are split over processes and micro-batches.

An optimizer step sees `total` samples: `grad_accum` micro-batches, each split over `world` processes. Sample
`(micro * world + rank) * batch_size + i` of the step is row `i` of that process's micro-batch. Every random stream
(a name such as "mlm_words") is drawn for all samples of the step, with a fixed number of columns, from a generator
seeded by (run seed, step, stream name), and each micro-batch takes its own rows. So a sample's MLM mask, ITM partner
and MIM mask are the same whether the step ran as one batch of 2b, two processes of b, or two accumulated
micro-batches of b, and switching one objective off does not change the draws of another.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def stream_seed(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class StepRandomness:
    """The random streams of one optimizer step, drawn once and shared by its micro-batches."""

    def __init__(self, seed: int, step: int, total: int) -> None:
        self.seed = seed
        self.step = step
        self.total = total
        self._streams: dict[tuple[str, int], Tensor] = {}

    def stream(self, name: str, columns: int) -> Tensor:
        """(total, columns) uniform numbers in [0, 1)."""
        key = (name, columns)
        if key not in self._streams:
            generator = torch.Generator().manual_seed(stream_seed(self.seed, self.step, name))
            self._streams[key] = torch.rand(self.total, columns, generator=generator)
        return self._streams[key]

    def rows(self, offset: int, count: int) -> SampleRandomness:
        if offset < 0 or offset + count > self.total:
            raise ValueError(f"rows {offset}..{offset + count} are outside the step's {self.total} samples")
        return SampleRandomness(self, offset, count)


class SampleRandomness:
    """The random numbers of one micro-batch: rows `offset` .. `offset + count` of the step's streams."""

    def __init__(self, step: StepRandomness, offset: int, count: int) -> None:
        self._step = step
        self.offset = offset
        self.count = count

    @classmethod
    def standalone(cls, seed: int, rows: int) -> SampleRandomness:
        """For one batch outside a training loop (tests, benchmarks, evaluation-time sampling)."""
        return StepRandomness(seed, 0, rows).rows(0, rows)

    def uniform(self, name: str, columns: int = 1) -> Tensor:
        """(count, columns) uniform numbers in [0, 1). Keep `columns` fixed per stream (e.g. the maximum text
        length, not the batch's) and slice: the numbers of a row depend on the column count."""
        return self._step.stream(name, columns)[self.offset : self.offset + self.count]

    def generators(self, name: str) -> list[torch.Generator]:
        """One generator per row, seeded by the row's place in the step: for per-sample draws of varying size and
        number (span lengths, split points) that do not fit a fixed-width stream."""
        step = self._step
        return [torch.Generator().manual_seed(stream_seed(step.seed, step.step, name, self.offset + row))
                for row in range(self.count)]  # fmt: skip
