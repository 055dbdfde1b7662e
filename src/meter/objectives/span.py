"""T5-style span corruption: whole words in spans become sentinels; the decoder writes each sentinel and its span.

    encoder: [CLS] a red <extra_id_0> on the <extra_id_1> [SEP]
    decoder: <extra_id_0> circle is <extra_id_1> left [SEP]

Spans cover whole words (the tokenizer's word ids), so they are right for WordPiece and BPE alike. The number of
corrupted words is `probability` of the caption's words (at least one), in spans of `mean_length` words on
average, separated by at least one kept word. Sentinels are special tokens added to the tokenizer
(`add_sentinels`); the encoder-decoder architecture always has them, so its vocabulary does not depend on the
objectives.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from meter.errors import DataError
from meter.objectives.seq2seq import Caption, Seq2SeqBatch, Targets, pack

SENTINELS = 100  # as T5's vocabulary


def sentinel_tokens(count: int = SENTINELS) -> list[str]:
    return [f"<extra_id_{i}>" for i in range(count)]


def add_sentinels(tokenizer: PreTrainedTokenizerBase) -> None:
    """Adds the sentinel tokens as special tokens (nothing when the tokenizer has them already)."""
    tokenizer.add_special_tokens({"additional_special_tokens": sentinel_tokens()}, replace_extra_special_tokens=False)


def sentinel_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(sentinel_tokens())
    if tokenizer.unk_token_id in ids:
        raise DataError("the tokenizer has no sentinel tokens (<extra_id_N>); the encoder-decoder adds them")
    return ids


def _composition(total: int, parts: int, generator: torch.Generator) -> list[int]:
    """`total` split at random into `parts` positive lengths."""
    cuts = sorted((torch.randperm(total - 1, generator=generator)[: parts - 1] + 1).tolist())
    edges = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(edges)]


def span_mask(
    words: int, probability: float, mean_length: float, max_spans: int, generator: torch.Generator
) -> list[bool]:
    """Which of `words` words are corrupted: spans of noise with at least one kept word between two spans."""
    if words == 0:
        return []
    noisy = min(max(1, round(words * probability)), words)
    kept = words - noisy
    spans = min(max(1, round(noisy / mean_length)), noisy, max_spans, kept + 1)
    lengths = _composition(noisy, spans, generator)
    # spans + 1 gaps of kept words: the outer two may be empty, the inner ones hold at least one word
    gaps = [g - 1 for g in _composition(kept - (spans - 1) + spans + 1, spans + 1, generator)]
    gaps = [g + (0 < i < spans) for i, g in enumerate(gaps)]
    mask = []
    for gap, length in zip(gaps, lengths, strict=False):
        mask += [False] * gap + [True] * length
    return mask + [False] * gaps[-1]


def corrupt_spans(
    captions: list[Caption],
    sentinels: list[int],
    probability: float,
    mean_length: float,
    generators: Sequence[torch.Generator],
    targets: Targets,
) -> Seq2SeqBatch:
    """Corrupts each caption afresh (new spans every time a sample is seen), with its own generator."""
    encoder_rows, target_rows = [], []
    for caption, generator in zip(captions, generators, strict=True):
        noise = span_mask(caption.words, probability, mean_length, len(sentinels), generator)
        encoder, target, span, in_span = [], [], -1, False
        for token, word in caption.tokens:
            if word >= 0 and noise[word]:
                if not in_span:  # a new span: one sentinel stands for it in the encoder, and opens it in the target
                    span += 1
                    encoder.append(sentinels[span])
                    target.append(sentinels[span])
                target.append(token)
                in_span = True
            else:
                encoder.append(token)
                in_span = False
        encoder_rows.append(encoder)
        target_rows.append([*target, targets.end_id])
    return pack(encoder_rows, target_rows, targets)
