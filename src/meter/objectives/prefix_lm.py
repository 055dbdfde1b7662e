"""PrefixLM (SimVLM's objective): the encoder reads the image and the first words of a caption, the decoder writes
the rest.

    encoder: [CLS] a red circle [SEP]          (prefix of k words, k uniform in 0 .. words - 1)
    decoder: is left of the square [SEP]

With k = 0 it is captioning from the image alone. The split falls between words (the tokenizer's word ids), so a
BPE word is never cut in half. A new split is drawn every time a sample is seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from meter.objectives.seq2seq import Caption, Seq2SeqBatch, Targets, pack


def split_prefix(captions: list[Caption], generators: Sequence[torch.Generator], targets: Targets) -> Seq2SeqBatch:
    """Each caption split with its own generator."""
    encoder_rows, target_rows = [], []
    for caption, generator in zip(captions, generators, strict=True):
        split = int(torch.randint(max(caption.words, 1), (1,), generator=generator))
        encoder_rows.append([token for token, word in caption.tokens if word < split])  # special tokens (-1) stay
        target_rows.append([token for token, word in caption.tokens if word >= split] + [targets.end_id])
    return pack(encoder_rows, target_rows, targets)
