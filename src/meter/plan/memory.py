"""A back-of-envelope estimate of a training process's GPU memory: the activations autograd keeps for the backward
pass of one micro-batch, plus the weights, gradients and AdamW state.

Activations are counted per transformer layer, from the sizes of the tensors its backward pass needs. With T tokens
per sample, width h, feed-forward width f, p bytes per value a matmul writes (2 under bf16 autocast, 4 in fp32),
4 bytes per value of the fp32 residual stream (LayerNorm inputs), m = 1 byte per value of a dropout mask (0 without
dropout), and c = 3 copies of a LayerNorm output that autocast casts separately for the query, key and value maps
(1 in fp32: the same tensor):

    self-attention    T h ((c + 5) p + m + 4)    q/k/v inputs, q, k, v, SDPA output, output-map input, mask, LN input
    cross-attention   T h (4 p + m + 4) + T' h (2 + k) p     queries from these T tokens, keys/values from T' others
                                                 (k = 2 fresh casts of the other stream under autocast, else 0)
    feed-forward      T h (p + m + 4) + 2 T f p  its input, GELU input and output, mask, LN input

Every transformer part is counted with these (timm's ViT blocks too, whose fused q/k/v map keeps one input instead
of three). Attention probabilities are not kept: SDPA's flash and memory-efficient kernels recompute them (the CPU's
math kernel, used with attention dropout, does keep them: T^2 per head). On top: the images (3 H W p) and the vision
encoder's first and last residual values, the text embeddings (T h (4 + m)), the projections' inputs, the logits of
token heads kept in fp32 for the loss (positions x vocabulary x 4) with their transform, and under autocast one bf16
copy of every matrix weight (autocast caches it for the whole forward pass). Which passes a step runs (pretraining:
one vision pass, then a text and a fusion pass per objective; NLVR2: two images; retrieval: 1 + 2 x negatives fused
pairs per sample) comes from plan/tasks.py. On tiny models on the CPU, with every text at its longest and no dropout,
this lands within 10% of the bytes autograd's saved tensors hold (tests/test_plan.py checks a factor of 2).

State: fp32 weights (4 bytes a parameter), fp32 gradients (4), AdamW's two moments (8); DDP keeps its gradient
buckets as a second copy of the gradients (4) when there are several processes; FSDP shards all of it over them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FP32 = 4


@dataclass(frozen=True)
class Layers:
    """A stack of identical transformer layers: `count` of them, of `width` and feed-forward width `inner`."""

    count: int
    width: int
    inner: int
    dropout: bool = False


@dataclass(frozen=True)
class ModelShape:
    """What the estimate reads from the (meta-device) model: sizes, not weights."""

    vision_blocks: list[tuple[int, int, int]]  # per block of the vision encoder: (tokens, width, inner)
    image_pixels: int  # 3 * H * W
    image_tokens: int  # tokens the vision encoder hands to the fusion
    vision_width: int
    text: Layers
    fusion: Layers
    fusion_kind: str  # co-attention or merged
    decoder: Layers | None
    matmul_weights: int  # parameters of the Linear and convolution weights (autocast copies them)
    trainable: int  # parameters the optimizer updates (the task's own included)
    mim_patches: int = 0  # MIM's patch grid per image (pretraining with objectives.mim)


@dataclass(frozen=True)
class Forward:
    """What one training step's forward pass runs, per sample of the micro-batch."""

    images: float  # vision-encoder passes (NLVR2: 2 images)
    texts: list[int]  # text-encoder passes: the tokens of each
    fusions: list[tuple[float, int, bool]]  # fusion passes: (pairs per sample, text tokens, pooled)
    decoders: list[tuple[int, int]] = field(default_factory=list)  # decoder passes: (tokens, encoder text tokens)
    token_logits: list[tuple[float, int]] = field(default_factory=list)  # (labelled positions per sample, vocab)
    in_batch_mask_ratio: float = 0.0  # MIM's in-batch target: share of patches masked, each scored against all
    texts_together: float = 1.0  # text passes a sample runs as one batch (official retrieval's candidates)


@dataclass
class MemoryEstimate:
    activations: dict[str, int]  # bytes per micro-batch, by part
    state: dict[str, int]  # bytes per process: weights, gradients, optimizer moments, DDP buckets
    total: int
    assumptions: list[str]


def attention_bytes(tokens: float, width: int, p: int, autocast: bool, dropout: bool) -> float:
    copies = 3 if autocast else 1
    return tokens * width * ((copies + 5) * p + int(dropout) + FP32)


def cross_attention_bytes(tokens: float, others: float, width: int, p: int, autocast: bool, dropout: bool) -> float:
    casts = 2 if autocast else 0
    return tokens * width * (4 * p + int(dropout) + FP32) + others * width * (2 + casts) * p


def feed_forward_bytes(tokens: float, width: int, inner: int, p: int, dropout: bool) -> float:
    return tokens * width * (p + int(dropout) + FP32) + 2 * tokens * inner * p


def layer_bytes(tokens: float, layers: Layers, p: int, autocast: bool, cross: float | None = None) -> float:
    """One transformer layer; `cross`: the tokens its cross-attention reads (None: it has none)."""
    total = attention_bytes(tokens, layers.width, p, autocast, layers.dropout)
    if cross is not None:
        total += cross_attention_bytes(tokens, cross, layers.width, p, autocast, layers.dropout)
    return total + feed_forward_bytes(tokens, layers.width, layers.inner, p, layers.dropout)


def kept_layer_bytes(
    tokens: float, layers: Layers, p: int, autocast: bool, cross: float | None = None, recompute: bool = False
) -> float:
    """What one layer keeps for the backward: all of layer_bytes, or with train.activation_checkpointing its fp32
    input alone (its forward runs again in the backward)."""
    recomputed = recompute and layers.count > 1  # a stack of one layer is not wrapped (recompute.repeated_layers)
    return tokens * layers.width * FP32 if recomputed else layer_bytes(tokens, layers, p, autocast, cross)


def vision_bytes(shape: ModelShape, p: int, autocast: bool, recompute: bool = False) -> float:
    """One image through the vision encoder."""
    total = shape.image_pixels * p
    for tokens, width, inner in shape.vision_blocks:
        blocks = Layers(len(shape.vision_blocks), width, inner)  # one stack for recomputation's rule
        total += kept_layer_bytes(tokens, blocks, p, autocast, recompute=recompute)
    if shape.vision_blocks:
        (first, first_width, _), (last, last_width, _) = shape.vision_blocks[0], shape.vision_blocks[-1]
        total += FP32 * (first * first_width + last * last_width)
    return total


def text_bytes(tokens: int, text: Layers, p: int, autocast: bool, recompute: bool = False) -> float:
    embeddings = tokens * text.width * (FP32 + int(text.dropout))
    return embeddings + text.count * kept_layer_bytes(tokens, text, p, autocast, recompute=recompute)


def fusion_layers(shape: ModelShape, text_tokens: int) -> list[tuple[float, float | None]]:
    """One depth of the fusion, as (tokens, tokens its cross-attention reads): the merged layer, or the two
    co-attention layers (text and image side)."""
    image_tokens = shape.image_tokens
    if shape.fusion_kind == "merged":
        return [(text_tokens + image_tokens, None)]
    return [(text_tokens, image_tokens), (image_tokens, text_tokens)]


def fusion_bytes(shape: ModelShape, text_tokens: int, p: int, autocast: bool, recompute: bool = False) -> float:
    """One (text, image) pair through the projections and the fusion layers."""
    projections = (text_tokens * shape.text.width + shape.image_tokens * shape.vision_width) * p
    per_layer = sum(kept_layer_bytes(tokens, shape.fusion, p, autocast, cross, recompute)
                    for tokens, cross in fusion_layers(shape, text_tokens))  # fmt: skip
    return projections + shape.fusion.count * per_layer


def decoder_bytes(
    decoder: Layers, tokens: int, memory_tokens: int, p: int, autocast: bool, recompute: bool = False
) -> float:
    embeddings = tokens * decoder.width * (FP32 + int(decoder.dropout))
    return embeddings + decoder.count * kept_layer_bytes(tokens, decoder, p, autocast, memory_tokens, recompute)


def logits_bytes(positions: float, vocabulary: int, width: int, p: int) -> float:
    """A token head at labelled positions: its transform's inputs, and the fp32 log-probabilities of the loss."""
    return positions * (width * (3 * p + FP32) + vocabulary * FP32)


def in_batch_bytes(shape: ModelShape, mask_ratio: float, batch: int) -> float:
    """MIM's in-batch target (objectives.mim_target=in-batch): the fp32 log-probabilities of every masked patch of
    the micro-batch over every patch of it, and those patches' fp32 pixels (the candidates the product's gradient
    reads). Grows as batch^2."""
    masked = min(max(1, round(mask_ratio * shape.mim_patches)), shape.mim_patches)  # as draw_patch_mask
    return batch * masked * batch * shape.mim_patches * FP32 + batch * shape.image_pixels * FP32


def decoder_passes(shape: ModelShape, forward: Forward) -> list[tuple[float, int, int]]:
    """The decoder's passes per sample: (pairs, decoder tokens, memory tokens it reads)."""
    if shape.decoder is None:
        return []
    passes = [(1.0, tokens, text + shape.image_tokens) for tokens, text in forward.decoders]
    # a pooled pass of an encoder-decoder reads the decoder's class token: one position over the fused output
    return passes + [(pairs, 1, text + shape.image_tokens) for pairs, text, pooled in forward.fusions if pooled]


def largest_layer_bytes(shape: ModelShape, forward: Forward, p: int, autocast: bool) -> float:
    """All of the largest layer a step runs, per sample: what its recomputation holds in the backward. A pass of
    several pairs (or texts) a sample runs them as one batch through each layer."""
    layers = [layer_bytes(tokens, Layers(1, width, inner), p, autocast) for tokens, width, inner in shape.vision_blocks]
    if shape.text.count:
        layers += [forward.texts_together * layer_bytes(tokens, shape.text, p, autocast) for tokens in forward.texts]
    if shape.fusion.count:
        layers += [pairs * layer_bytes(tokens, shape.fusion, p, autocast, cross)
                   for pairs, text, _ in forward.fusions for tokens, cross in fusion_layers(shape, text)]  # fmt: skip
    if shape.decoder is not None and shape.decoder.count:
        layers += [
            pairs * layer_bytes(t, shape.decoder, p, autocast, m) for pairs, t, m in decoder_passes(shape, forward)
        ]
    return max(layers, default=0.0)


def activation_bytes(shape: ModelShape, forward: Forward, batch: int, p: int, recompute: bool = False
                     ) -> dict[str, int]:  # fmt: skip
    """Bytes autograd keeps for one micro-batch of `batch` samples, by part. `recompute`:
    train.activation_checkpointing (each repeated layer keeps its input, and one layer at a time is recomputed)."""
    autocast = p < FP32
    parts = {
        "vision": forward.images * vision_bytes(shape, p, autocast, recompute),
        "text": sum(text_bytes(tokens, shape.text, p, autocast, recompute) for tokens in forward.texts),
        "fusion": sum(
            pairs * fusion_bytes(shape, tokens, p, autocast, recompute) for pairs, tokens, _ in forward.fusions
        ),
        "decoder": sum(
            pairs * decoder_bytes(shape.decoder, tokens, memory, p, autocast, recompute)
            for pairs, tokens, memory in decoder_passes(shape, forward)
        ),
        "heads": sum(logits_bytes(n, vocab, shape.fusion.width, p) for n, vocab in forward.token_logits),
    }
    if recompute:
        parts["recomputed layer"] = largest_layer_bytes(shape, forward, p, autocast)
    result = {part: round(value * batch) for part, value in parts.items()}
    if forward.in_batch_mask_ratio and shape.mim_patches:
        result["heads"] += round(in_batch_bytes(shape, forward.in_batch_mask_ratio, batch))
    result["autocast weight copies"] = 2 * shape.matmul_weights if autocast else 0
    return result


def state_bytes(trainable: int, processes: int, parallel: str) -> dict[str, int]:
    shards = processes if parallel == "fsdp" else 1
    state = {
        "weights (fp32)": FP32 * trainable // shards,
        "gradients (fp32)": FP32 * trainable // shards,
        "AdamW moments (fp32)": 2 * FP32 * trainable // shards,
    }
    if processes > 1 and parallel == "ddp":
        state["DDP gradient buckets"] = FP32 * trainable
    return state


def estimate_memory(
    shape: ModelShape,
    forward: Forward,
    batch: int,
    p: int,
    processes: int,
    parallel: str,
    recompute: bool = False,
) -> MemoryEstimate:
    activations = activation_bytes(shape, forward, batch, p, recompute)
    state = state_bytes(shape.trainable, processes, parallel)
    assumptions = [
        f"{'bf16 autocast (2-byte activations)' if p < FP32 else 'fp32 (4-byte activations)'}; every sequence at "
        "its longest (text padded to model.text.max_length: batches pad to their longest, so less in practice)",
        "attention through SDPA's flash / memory-efficient kernels: attention probabilities are not kept "
        "(DeBERTa's eager attention would keep them)",
        "not counted: transient buffers (the largest logits before the loss, kernel workspaces), the CUDA "
        "context (~0.5 GiB) and allocator fragmentation; leave 10-20% headroom",
    ]
    if recompute:
        assumptions.append(
            "train.activation_checkpointing: each repeated layer keeps only its fp32 input and runs again in the "
            "backward, one at a time (the largest of them counted whole)"
        )
    if parallel == "fsdp" and processes > 1:
        assumptions.append(
            "FSDP: weights, gradients and AdamW state sharded over the processes (the gathered "
            "weights of the layers being computed are not counted)"
        )
    return MemoryEstimate(activations, state, sum(activations.values()) + sum(state.values()), assumptions)
