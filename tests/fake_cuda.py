"""A task's forward on CUDA tensors that hold no data, on a machine without a GPU (torch's FakeTensorMode, the
tensors torch.compile traces with): every operation whose result depends on the data on the host (a boolean mask's
selection, `.item()`, `float(tensor)`, `nonzero`) raises there, where on a real GPU it is a host sync that stalls
the training step until the device has caught up."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

CUDA = torch.device("cuda", 0)


def move_to_fake_cuda(module: nn.Module, mode: FakeTensorMode) -> None:
    """Replaces every parameter and buffer in place by a fake CUDA tensor of its shape (`.to()` cannot: it swaps
    tensors that fake ones hold weak references to). Call under `mode`."""
    for owner in module.modules():
        for name, parameter in list(owner._parameters.items()):
            if parameter is not None:
                fake = mode.from_tensor(parameter).detach().to(CUDA)
                owner._parameters[name] = nn.Parameter(fake, requires_grad=parameter.requires_grad)
        for name, buffer in list(owner._buffers.items()):
            if buffer is not None:
                owner._buffers[name] = mode.from_tensor(buffer).to(CUDA)


def forward_on_fake_cuda(task: nn.Module, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs `task(batch)` (in training mode) with the task and the batch's tensors on a fake CUDA device; raises
    torch's DynamicOutputShapeException or DataDependentOutputException at the first operation that would sync."""
    mode = FakeTensorMode()
    with mode:
        move_to_fake_cuda(task, mode)
        fake = {k: mode.from_tensor(v).to(CUDA) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return task.train()(fake)
