"""Image-text matching with in-batch negatives: a mismatched pair re-uses another sample's image tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from meter.objectives.randomness import SampleRandomness


def itm_pairing(image_ids: Tensor, random: SampleRandomness, group_size: int) -> tuple[Tensor, Tensor]:
    """Pairs texts with images inside groups of `group_size` consecutive samples: in each group, half the texts
    (those with the lowest draws) get the image of another sample of the group, shifted by a random offset.

    Groups, not the whole batch, so that the pairing of a sample is the same however the step is split over
    processes and micro-batches, as long as the per-process batch is a multiple of `group_size` (the last group of
    a batch may be smaller). Returns (index of the image each text is paired with, label 1 = matched). A pair whose
    borrowed image is the same image (two captions of one image) is labelled matched: the labels are always true.
    """
    batch = image_ids.shape[0]
    rows = torch.arange(batch)
    start = rows // group_size * group_size
    size = (batch - start).clamp(max=group_size)
    select = random.uniform("itm_select")[:, 0]
    # each row's rank by its draw within its group; the lower half of every group becomes negatives
    order = torch.argsort(start.double() * 2 + select.double())
    rank = torch.empty_like(rows)
    rank[order] = rows - start[order]
    negative = (rank < size // 2) & (size >= 2)
    steps = (random.uniform("itm_shift")[:, 0] * (size - 1)).long()
    shift = 1 + torch.minimum(steps, (size - 2).clamp(min=0))  # 1 .. size - 1: never the row itself
    index = torch.where(negative, start + (rows - start + shift) % size, rows)
    return index, (image_ids[index] == image_ids).long()


def itm_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    return F.cross_entropy(logits.float(), labels, reduction=reduction)
