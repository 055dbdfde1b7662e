"""Ranking a positive pair among negatives: the softmax cross-entropy of ViLT/METER's retrieval objective, and the
per-sample draw of random negatives from a pool."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from meter.objectives.randomness import SampleRandomness


def ranking_loss(positive: Tensor, negative: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the positive (column 0) among it and its negatives; returns (loss, per-row hit)."""
    candidates = torch.cat([positive[:, None], negative.masked_fill(~valid, -math.inf)], dim=1)
    target = torch.zeros(len(candidates), dtype=torch.long, device=candidates.device)
    return F.cross_entropy(candidates, target), candidates.argmax(1) == 0


def random_negatives(first: Tensor, count: Tensor, pool: int, random: SampleRandomness, k: int, stream: str) -> Tensor:
    """(rows, k) indices into a pool of `pool` items: for each row, `k` draws with replacement, uniform over the pool
    without the row's own block `first .. first + count` (the captions of its image, the positive among them).

    Each row draws from a generator seeded by its place in the step, so its negatives are the same however the
    step is split over processes and micro-batches, and after a resume."""
    rows = []
    for generator, start, own in zip(random.generators(stream), first.tolist(), count.tolist(), strict=True):
        others = pool - own
        if others < 1:
            raise ValueError(f"no negatives to draw: the block {start}..{start + own} is the whole pool of {pool}")
        draw = torch.randint(others, (k,), generator=generator)
        rows.append(draw + own * (draw >= start))  # skip the row's own block
    return torch.stack(rows) if rows else torch.zeros(0, k, dtype=torch.long)
