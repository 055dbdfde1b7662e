"""What the decoder objectives share: an encoder input, a teacher-forced decoder input and its labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from meter.objectives.mlm import IGNORE
from meter.objectives.positions import positions_of


@dataclass(frozen=True)
class Targets:
    """How decoder sequences are written: start and end tokens, padding, and the decoder's positions."""

    start_id: int
    end_id: int
    pad_id: int
    max_length: int
    # the encoder's text padded to a multiple of it: with CUDA graphs, a few lengths to record a graph for, not one
    # for every length a span-corrupted or cut caption has (as the loop pads the batch's text: TEXT_LENGTH_MULTIPLE)
    encoder_multiple: int = 1
    encoder_max_length: int = 0  # the padding stops there (the text's max_length; 0: no limit), as the loop's does

    @staticmethod
    def of(tokenizer: PreTrainedTokenizerBase, max_length: int, encoder_multiple: int = 1,
           encoder_max_length: int = 0) -> Targets:  # fmt: skip
        """[CLS]/<s> starts, [SEP]/</s> ends: the tokenizer's own sequence markers."""
        return Targets(tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, max_length,
                       encoder_multiple, encoder_max_length)  # fmt: skip


@dataclass
class Seq2SeqBatch:
    input_ids: Tensor  # (B, L) what the text encoder reads
    attention_mask: Tensor  # (B, L)
    decoder_input_ids: Tensor  # (B, T) the start token, then the targets shifted right
    labels: Tensor  # (B, T) the targets; IGNORE at padding
    positions: Tensor  # (N, 2) where labels are not IGNORE (see `objectives/positions.py`)

    def store(self, batch: dict[str, Any], prefix: str) -> None:
        """Into the batch as flat tensors (`{prefix}_input_ids`, ...), so that the loop moves them to the device."""
        for key, value in vars(self).items():
            batch[f"{prefix}_{key}"] = value

    @staticmethod
    def load(batch: dict[str, Any], prefix: str) -> Seq2SeqBatch:
        return Seq2SeqBatch(**{key: batch[f"{prefix}_{key}"] for key in Seq2SeqBatch.__dataclass_fields__})


@dataclass
class Caption:
    tokens: list[tuple[int, int]]  # (token id, word id) without padding; special tokens have word id -1
    words: int


def captions_of(input_ids: Tensor, word_ids: Tensor, attention_mask: Tensor) -> list[Caption]:
    """The batch's captions as token and word ids, read once for every decoder objective."""
    captions = []
    for ids, words, mask in zip(input_ids.tolist(), word_ids.tolist(), attention_mask.tolist(), strict=True):
        tokens = [(token, word) for token, word, keep in zip(ids, words, mask, strict=True) if keep]
        captions.append(Caption(tokens, max((w for _, w in tokens), default=-1) + 1))
    return captions


def pack(encoder_rows: list[list[int]], target_rows: list[list[int]], targets: Targets) -> Seq2SeqBatch:
    """Pads the rows into tensors; a target row longer than the decoder's positions is cut. Each target row ends
    with the end token already."""
    start_id, pad_id = targets.start_id, targets.pad_id
    target_rows = [row[: targets.max_length] for row in target_rows]
    batch, longest, steps = len(encoder_rows), max(map(len, encoder_rows)), max(map(len, target_rows))
    length = -(-longest // targets.encoder_multiple) * targets.encoder_multiple
    if targets.encoder_max_length:
        length = max(longest, min(length, targets.encoder_max_length))
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    decoder_input_ids = torch.full((batch, steps), pad_id, dtype=torch.long)
    labels = torch.full((batch, steps), IGNORE, dtype=torch.long)
    for i, (encoder, target) in enumerate(zip(encoder_rows, target_rows, strict=True)):
        input_ids[i, : len(encoder)] = torch.tensor(encoder)
        attention_mask[i, : len(encoder)] = 1
        decoder_input_ids[i, : len(target)] = torch.tensor([start_id, *target[:-1]])
        labels[i, : len(target)] = torch.tensor(target)
    return Seq2SeqBatch(input_ids, attention_mask, decoder_input_ids, labels, positions_of(labels != IGNORE))
