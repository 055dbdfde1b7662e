"""Task heads on the fused features; module names follow the official METER checkpoints."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meter.models.layers import LAYER_NORM_EPS


def in_fp32(head: Callable[[Tensor], Tensor], joint: Tensor) -> Tensor:
    """A head's output computed in fp32 whatever autocast is on: scores that are ranked (retrieval, the next token
    of a caption) or compared (the argmax over 3,129 answers) keep their resolution, where bf16's 8 bits would tie
    near ones and break the tie by position. Heads are small; the cost is nothing next to the encoders."""
    with torch.autocast(joint.device.type, enabled=False):
        return head(joint.float())


class MlmTransform(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class MlmHead(nn.Module):
    """Transform, then a vocabulary decoder; apply it to masked positions only."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = MlmTransform(width)
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x)) + self.bias


class ItmHead(nn.Module):
    def __init__(self, joint_width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(joint_width, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


def classifier(in_width: int, hidden: int, classes: int) -> nn.Sequential:
    """Linear, LayerNorm, GELU, Linear: the VQA / NLVR2 / SNLI-VE classifier of METER."""
    return nn.Sequential(
        nn.Linear(in_width, hidden), nn.LayerNorm(hidden, eps=1e-5), nn.GELU(), nn.Linear(hidden, classes)
    )


def build_head(kind: str, width: int, size: int, joint: int | None = None) -> nn.Module:
    """`size` is the vocabulary for mlm and the number of classes for classifiers; `joint` is the width of the
    joint feature the classifiers read (2 * width: pooled text and image; width: the decoder's class token)."""
    joint = joint or 2 * width
    if kind == "mlm":
        return MlmHead(width, size)
    if kind == "itm":
        return ItmHead(joint)
    if kind in ("vqa", "snli_ve"):
        return classifier(joint, joint, size)
    if kind == "nlvr2":
        return classifier(2 * joint, joint, size)
    if kind == "rank":  # retrieval: one matching score per pair (the official `rank_output`)
        return nn.Linear(joint, size)
    raise ValueError(f"no head of kind {kind!r}")
