"""Masked language modelling: dynamic whole-word masking (80/10/10) and the loss at masked positions only.

Words are the tokenizer's own word ids (`BatchEncoding.word_ids`), so whole-word masking is right for WordPiece
(`##` continuations) and byte-level BPE (`Ġ`-prefixed word starts) alike. Masks are drawn from the generator the
caller passes, fresh every time a sample is seen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def mask_tokens(
    input_ids: Tensor,
    word_ids: Tensor,
    mask_token_id: int,
    replacement_ids: Tensor,
    probability: float,
    generator: torch.Generator,
    whole_word: bool = True,
) -> tuple[Tensor, Tensor]:
    """Returns (masked input ids, labels with IGNORE where not masked).

    `word_ids` is (B, L) with the word index of each token and -1 for special and padding tokens. Every sequence
    with at least one word gets at least one masked word. Of the masked tokens, 80% become `mask_token_id`,
    10% a random id from `replacement_ids`, 10% stay.
    """
    valid = word_ids >= 0
    if not whole_word:  # every token its own word
        word_ids = torch.where(valid, torch.cumsum(valid.long(), dim=1) - 1, word_ids)
    words_per_row = (word_ids.max(dim=1).values + 1).clamp(min=0)
    max_words = max(int(words_per_row.max()), 1)
    chosen = torch.rand(input_ids.shape[0], max_words, generator=generator) < probability
    chosen &= torch.arange(max_words)[None, :] < words_per_row[:, None]
    # rows where nothing was drawn: mask one random word so that every caption teaches something
    fallback = (torch.rand(input_ids.shape[0], generator=generator) * words_per_row).long()
    empty = ~chosen.any(dim=1) & (words_per_row > 0)
    chosen[empty, fallback[empty]] = True

    masked = chosen.gather(1, word_ids.clamp(min=0)) & valid
    labels = torch.where(masked, input_ids, torch.full_like(input_ids, IGNORE))
    roll = torch.rand(input_ids.shape, generator=generator)
    random_ids = replacement_ids[torch.randint(len(replacement_ids), input_ids.shape, generator=generator)]
    out = torch.where(masked & (roll < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    out = torch.where(masked & (roll >= 0.8) & (roll < 0.9), random_ids, out)
    return out, labels


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """`logits` only at the masked positions (N, vocab); `labels` the N original ids."""
    return F.cross_entropy(logits.float(), labels)
