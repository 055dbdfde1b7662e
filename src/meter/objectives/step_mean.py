"""A loss averaged over the whole training step: a micro-batch of few labelled tokens weighs no more than one of
many, so a step split over micro-batches and processes computes the same gradient as one batch."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def step_mean(total: Tensor, name: str, count: int | Tensor, batch: dict[str, Any]) -> Tensor:
    """`total` over the step's denominator for loss `name` when the loop gave one (the task's `loss_counts`, summed
    over the step: see meter.train.loop.loss_denominators), else over `count` (at least 1)."""
    denominators = batch.get("loss_denominators", {})
    if name in denominators:
        return total / denominators[name]
    return total / (count.clamp(min=1) if isinstance(count, Tensor) else max(count, 1))
