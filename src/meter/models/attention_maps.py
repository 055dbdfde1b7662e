"""The fusion module's text-to-image attention weights, made explicit for explaining a prediction.

Training and prediction attend through SDPA, which never forms the weights. While `record_text_to_image_attention`
is active, forward hooks recompute each fusion layer's attention explicitly and return its output in place of
SDPA's (the same numbers up to float rounding), so that the weights are part of the graph: a gradient with respect
to them is what a gradient-weighted map (ALBEF's, BLIP's) needs. Leaving the context removes the hooks; nothing in
the model changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn

from meter.models.fusion import CoAttentionFusion, MergedAttentionFusion
from meter.models.layers import SelfProjections
from meter.models.meter import Meter


@dataclass
class AttentionRecord:
    """The attention weights of each fusion layer in the order they ran, (B, heads, queries, keys) each.

    Co-attention records the text stream's cross-attention (text queries, image keys); merged attention records
    each layer's self-attention over text + image, and `text_to_image` keeps its text-query, image-key block."""

    merged: bool
    weights: list[Tensor] = field(default_factory=list)

    def text_to_image(self, text_length: int, of: list[Tensor] | None = None) -> list[Tensor]:
        """(B, heads, text tokens, image tokens) per layer: of the weights, or of tensors shaped as they are (their
        gradients: taken with respect to the recorded weights themselves, which the score used, not to a slice)."""
        tensors = list(self.weights if of is None else of)
        if not self.merged:
            return tensors
        return [w[:, :, :text_length, text_length:] for w in tensors]


def explicit_attention(
    module: SelfProjections, x: Tensor, context: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """What `SelfProjections.forward` computes (without dropout: explaining runs in eval mode), and its weights."""
    queries = module._split(module.query(x))
    keys, values = module.keys_values(context)
    scores = queries @ keys.transpose(-2, -1) / math.sqrt(queries.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return (weights @ values).transpose(1, 2).flatten(2), weights


def _attentions(model: Meter) -> tuple[list[SelfProjections], bool]:
    fusion = model.fusion
    if isinstance(fusion, CoAttentionFusion):
        return [layer.crossattention.self for layer in fusion.text_layers], False
    if isinstance(fusion, MergedAttentionFusion):
        return [layer.attention.self for layer in fusion.layers], True
    raise TypeError(f"no text-to-image attention to record in a {type(fusion).__name__}")


@contextmanager
def record_text_to_image_attention(model: Meter) -> Iterator[AttentionRecord]:
    """Records the fusion's attention weights of every forward pass run inside the context."""
    modules, merged = _attentions(model)
    record = AttentionRecord(merged)

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        x, context, mask = args[:3]
        if len(args) > 3 and args[3]:
            raise ValueError("a causal fusion attention has no text-to-image map")
        out, weights = explicit_attention(module, x, context, mask)
        record.weights.append(weights)
        return out

    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def layer_count(model: Meter) -> int:
    return len(_attentions(model)[0])


def image_grid(image_tokens: int) -> tuple[int, int]:
    """(tokens before the patches, patches per side) of a fused image stream of `image_tokens` tokens: a summary
    token first (ViT's class token, the mean token the adapter prepends), or none (a grid a model mean-pools).
    n*n and n*n + 1 are both squares only for n = 0, so the count alone tells."""
    for prefix in (1, 0):
        side = math.isqrt(max(image_tokens - prefix, 0))
        if side and side * side == image_tokens - prefix:
            return prefix, side
    raise ValueError(f"{image_tokens} image tokens are neither a square grid nor one with a summary token")
