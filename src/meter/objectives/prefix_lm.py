"""PrefixLM (SimVLM's objective): the encoder reads the image and the first words of a caption, the decoder writes
the rest.

    encoder: [CLS] a red circle [SEP]          (prefix of k words, k uniform in 0 .. words - 1)
    decoder: is left of the square [SEP]

With k = 0 it is captioning from the image alone. The split falls between words (the tokenizer's word ids), so a
BPE word is never cut in half. A new split is drawn every time a sample is seen.
"""

from __future__ import annotations

import torch

from meter.objectives.seq2seq import Seq2SeqBatch, pack, words_of


def split_prefix(
    input_ids: torch.Tensor,
    word_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    generator: torch.Generator,
    start_id: int,
    end_id: int,
    pad_id: int,
    max_target: int,
) -> Seq2SeqBatch:
    encoder_rows, target_rows = [], []
    for row in words_of(input_ids, word_ids, attention_mask):
        words = max((w for _, w in row), default=-1) + 1
        split = int(torch.randint(max(words, 1), (1,), generator=generator))
        encoder_rows.append([token for token, word in row if word < split])  # special tokens (-1) stay
        target_rows.append([token for token, word in row if word >= split] + [end_id])
    return pack(encoder_rows, target_rows, start_id, pad_id, max_target)
