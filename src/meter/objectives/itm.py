"""Image-text matching with in-batch negatives: a mismatched pair re-uses another sample's image tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def itm_pairing(image_ids: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Picks half the batch to get another sample's image (rolled by a random offset).

    Returns (index of the image each text is paired with, label 1 = matched). A pair whose borrowed image is the
    same image (two captions of one image in a batch) is labelled matched: the labels are always true.
    """
    batch = image_ids.shape[0]
    index = torch.arange(batch)
    if batch < 2:
        return index, torch.ones(batch, dtype=torch.long)
    negative = torch.randperm(batch, generator=generator)[: batch // 2]
    shift = int(torch.randint(1, batch, (1,), generator=generator))
    index[negative] = (negative + shift) % batch
    return index, (image_ids[index] == image_ids).long()


def itm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), labels)
