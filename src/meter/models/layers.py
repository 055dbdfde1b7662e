"""Transformer building blocks of the fusion module and the decoder, all attention through SDPA.

Parameter names follow the BERT layout the official METER checkpoints use (attention.self.query, ...,
attention.output.LayerNorm, intermediate.dense, output.dense), so that importing them is a rename-free load.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYER_NORM_EPS = 1e-12  # BERT's, and the official METER fusion layers'


class KeyValues(NamedTuple):
    """Keys and values of one attention, split into heads: (B, heads, L, head_width) each."""

    keys: Tensor
    values: Tensor

    def select(self, rows: Tensor) -> KeyValues:
        return KeyValues(self.keys[rows], self.values[rows])


def key_padding_mask(mask: Tensor | None) -> Tensor | None:
    """(B, L) 1/0 key mask -> the boolean (B, 1, 1, L) mask SDPA broadcasts; None when nothing is padded. On an
    accelerator, or under torch.compile, the mask is kept as it is: looking would cost a host sync (or a graph
    break), and an all-true mask gives the same attention."""
    if mask is None or (mask.device.type == "cpu" and not torch.compiler.is_compiling() and bool(mask.all())):
        return None
    return mask.bool()[:, None, None, :]


class SelfProjections(nn.Module):
    """The query, key and value maps (BERT's `attention.self`)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, context: Tensor) -> KeyValues:
        return KeyValues(self._split(self.key(context)), self._split(self.value(context)))

    def attend(self, x: Tensor, context: KeyValues, mask: Tensor | None, causal: bool = False) -> Tensor:
        """Queries from `x` over keys/values already projected (a decoder caches them between steps)."""
        out = F.scaled_dot_product_attention(
            self._split(self.query(x)), context.keys, context.values, attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0, is_causal=causal and mask is None,
        )  # fmt: skip
        return out.transpose(1, 2).flatten(2)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None, causal: bool = False) -> Tensor:
        return self.attend(x, self.keys_values(context), mask, causal)


class ResidualOutput(nn.Module):
    """Dense, dropout, then LayerNorm of the residual sum (BERT's `*.output`)."""

    def __init__(self, inner: int, width: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(inner, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    """Multi-head attention with a post-LayerNorm residual; self-attention when `context` is `x`."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self = SelfProjections(width, heads, dropout)
        self.output = ResidualOutput(width, width, dropout)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None, causal: bool = False) -> Tensor:
        return self.output(self.self(x, context, mask, causal), x)


class Intermediate(nn.Module):
    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, inner)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class TransformerLayer(nn.Module):
    """Self-attention, optional cross-attention to another sequence, feed-forward; each post-LN residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, cross: bool) -> None:
        super().__init__()
        inner = int(width * mlp_ratio)
        self.attention = Attention(width, heads, dropout)
        self.crossattention = Attention(width, heads, dropout) if cross else None
        self.intermediate = Intermediate(width, inner)
        self.output = ResidualOutput(inner, width, dropout)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        x = self.attention(x, x, mask, causal)
        if self.crossattention is not None:
            x = self.crossattention(x, context, context_mask)
        return self.output(self.intermediate(x), x)

    def step(
        self, x: Tensor, past: KeyValues | None, context: KeyValues, context_mask: Tensor | None
    ) -> tuple[Tensor, KeyValues]:
        """Decodes positions `x` that follow the cached ones (`past`: this layer's self-attention keys/values so
        far; `context`: the cross-attention keys/values of the encoder output). Returns the outputs and the
        self-attention keys/values to cache. The first call may hold several positions (decoded causally); later
        calls add one."""
        if past is not None and x.shape[1] != 1:
            raise ValueError("after the first step, a decoder step adds one position")
        new = self.attention.self.keys_values(x)
        if past is not None:
            new = KeyValues(torch.cat([past.keys, new.keys], dim=2), torch.cat([past.values, new.values], dim=2))
        x = self.attention.output(self.attention.self.attend(x, new, None, causal=past is None), x)
        x = self.crossattention.output(self.crossattention.self.attend(x, context, context_mask), x)
        return self.output(self.intermediate(x), x), new


class Pooler(nn.Module):
    """Linear + tanh on the first token."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation, used for every randomly initialised part (as the official code does)."""
    if isinstance(module, nn.Linear | nn.Embedding):
        module.weight.data.normal_(mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
