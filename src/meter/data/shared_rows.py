"""A batch tensor whose rows are all one (the blind baseline's image, expanded over the batch with stride 0 by
`collate.py`) kept as one row on its way to the device, so that the model still encodes the image once.

torch pins a tensor by copying it into page-locked memory of the same strides, which cannot be written where a
dimension has stride 0; and `.to(device)` would copy every row. Such a tensor travels instead as its one row and a
count, and is expanded again where it arrives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.data._utils.collate import default_convert


def is_shared(tensor: Tensor) -> bool:
    """One row expanded over the first dimension."""
    return tensor.dim() > 0 and len(tensor) > 1 and tensor.stride(0) == 0


class SharedRows:
    """One row and how many rows it stands for; the data loader's pinning calls its `pin_memory`."""

    def __init__(self, row: Tensor, count: int) -> None:
        self.row, self.count = row, count

    def pin_memory(self, device: Any = None) -> SharedRows:
        return SharedRows(self.row.pin_memory(), self.count)

    def expand(self) -> Tensor:
        return self.row.expand(self.count, *self.row.shape[1:])


def _compact(make: Callable[[Any], Any], item: Any) -> Any:
    batch = make(item)
    if not isinstance(batch, dict):
        return batch
    return {k: SharedRows(v[:1], len(v)) if isinstance(v, Tensor) and is_shared(v) else v for k, v in batch.items()}


def compacting(collate: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """`collate` (default: the loader's own conversion) with shared-row tensors made `SharedRows`, for a loader
    that pins its batches (`restored` undoes it)."""
    return functools.partial(_compact, collate or default_convert)


def restored(batch: Any) -> Any:
    if not isinstance(batch, dict):
        return batch
    return {k: v.expand() if isinstance(v, SharedRows) else v for k, v in batch.items()}


def moved(tensor: Tensor, device: torch.device) -> Tensor:
    """`tensor` on `device` (asynchronously from page-locked memory); shared rows are copied once."""
    if is_shared(tensor):
        return tensor[:1].to(device, non_blocking=True).expand(tensor.shape)
    return tensor.to(device, non_blocking=True)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: moved(v, device) if isinstance(v, Tensor) else v for k, v in batch.items()}
