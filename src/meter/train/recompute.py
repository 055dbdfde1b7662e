"""Activation checkpointing (`train.activation_checkpointing`): each repeated layer of the encoders, the fusion and
the decoder keeps only its input for the backward and runs its forward again there. Memory for activations falls to
about one layer's worth per stack, for about a third more compute: what fine-tuning at 576 px with a large batch
needs.

The layers' forwards are wrapped in place (torch.utils.checkpoint, non-reentrant), so the module tree and the
state-dict keys stay as they are, and DDP, FSDP2 (whose units are the same layers) and torch.compile see the same
model. Dropout draws the same masks in the recomputation (the RNG state is kept), so the gradients are those of
the plain step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint


def repeated_layers(module: nn.Module) -> list[nn.Module]:
    """The repeated layers of every stack (timm blocks, transformers layers, fusion layers), innermost first: a
    stack is a ModuleList/Sequential of two or more modules of one class with parameters."""
    units = []
    for child in module.modules():
        if isinstance(child, nn.ModuleList | nn.Sequential) and len(child) > 1:
            layers = list(child)
            if len({type(layer) for layer in layers}) == 1 and any(True for _ in layers[0].parameters()):
                units += layers
    return units[::-1]


def innermost(layers: list[nn.Module]) -> list[nn.Module]:
    """The layers that hold none of the others (Swin's blocks, not the stages that hold them)."""
    ids = {id(layer) for layer in layers}
    return [layer for layer in layers if not any(id(m) in ids for m in layer.modules() if m is not layer)]


def _recomputed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def recompute_layers(task: nn.Module) -> int:
    """Wraps the forward of every innermost repeated layer of `task`; returns how many."""
    layers = innermost(repeated_layers(task))
    for layer in layers:
        layer.forward = functools.partial(_recomputed, layer.forward)
    return len(layers)
