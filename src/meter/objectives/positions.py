"""The labelled positions of a batch, found on the CPU when the batch is prepared, so that the step on the device
selects them without a host sync.

`x[mask]` with a boolean mask on a GPU must wait for the device to count the mask's true entries before it can
size its output (a sync in the middle of the forward, that stalls the host's queueing of the rest of the step);
indexing with the mask's (row, column) pairs, counted on the CPU beforehand, gives the same rows in the same order
with a size the host already knows.
"""

from __future__ import annotations

from torch import Tensor


def positions_of(mask: Tensor) -> Tensor:
    """A (B, L) boolean mask's true entries as (N, 2) (row, column) pairs, in row-major order (that of `x[mask]`)."""
    return mask.nonzero()


def at_positions(x: Tensor, positions: Tensor) -> Tensor:
    """`x[mask]` for the mask `positions` came from: the (N, ...) entries of x's first two dimensions."""
    return x[positions[:, 0], positions[:, 1]]
