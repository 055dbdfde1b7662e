"""What the decoder objectives share: an encoder input, a teacher-forced decoder input and its labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from meter.objectives.mlm import IGNORE


@dataclass
class Seq2SeqBatch:
    input_ids: Tensor  # (B, L) what the text encoder reads
    attention_mask: Tensor  # (B, L)
    decoder_input_ids: Tensor  # (B, T) the start token, then the targets shifted right
    labels: Tensor  # (B, T) the targets; IGNORE at padding

    def store(self, batch: dict[str, Any], prefix: str) -> None:
        """Into the batch as flat tensors (`{prefix}_input_ids`, ...), so that the loop moves them to the device."""
        for key, value in vars(self).items():
            batch[f"{prefix}_{key}"] = value

    @staticmethod
    def load(batch: dict[str, Any], prefix: str) -> Seq2SeqBatch:
        return Seq2SeqBatch(**{key: batch[f"{prefix}_{key}"] for key in Seq2SeqBatch.__dataclass_fields__})


def words_of(input_ids: Tensor, word_ids: Tensor, attention_mask: Tensor) -> list[list[tuple[int, int]]]:
    """Per row, its (token id, word id) pairs without padding; special tokens have word id -1."""
    rows = []
    for ids, words, mask in zip(input_ids.tolist(), word_ids.tolist(), attention_mask.tolist(), strict=True):
        rows.append([(token, word) for token, word, keep in zip(ids, words, mask, strict=True) if keep])
    return rows


def pack(
    encoder_rows: list[list[int]], target_rows: list[list[int]], start_id: int, pad_id: int, max_target: int
) -> Seq2SeqBatch:
    """Pads the rows into tensors; targets longer than `max_target` (the decoder's positions) are cut."""
    target_rows = [row[:max_target] for row in target_rows]
    batch, length, steps = len(encoder_rows), max(map(len, encoder_rows)), max(map(len, target_rows))
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    decoder_input_ids = torch.full((batch, steps), pad_id, dtype=torch.long)
    labels = torch.full((batch, steps), IGNORE, dtype=torch.long)
    for i, (encoder, target) in enumerate(zip(encoder_rows, target_rows, strict=True)):
        input_ids[i, : len(encoder)] = torch.tensor(encoder)
        attention_mask[i, : len(encoder)] = 1
        decoder_input_ids[i, : len(target)] = torch.tensor([start_id, *target[:-1]])
        labels[i, : len(target)] = torch.tensor(target)
    return Seq2SeqBatch(input_ids, attention_mask, decoder_input_ids, labels)
