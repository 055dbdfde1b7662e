"""Masked language modelling: dynamic whole-word masking (80/10/10) and the loss at masked positions only.

Words are the collate's word ids (`collate.caption_words`: the tokenizer's own, a special token a caption spells
left out, numbered 0..n-1), so whole-word masking is right for WordPiece (`##` continuations) and byte-level BPE
(`Ġ`-prefixed word starts) alike. Masks are drawn fresh every time a sample
is seen, from the step's per-sample random streams (`meter.objectives.randomness`): a sample's mask does not depend
on the batch it landed in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from meter.objectives.randomness import SampleRandomness

IGNORE = -100


def mask_tokens(
    input_ids: Tensor,
    word_ids: Tensor,
    mask_token_id: int,
    replacement_ids: Tensor,
    probability: float,
    random: SampleRandomness,
    max_length: int,
    whole_word: bool = True,
    at_least_one: bool = True,
) -> tuple[Tensor, Tensor]:
    """Returns (masked input ids, labels with IGNORE where not masked).

    `word_ids` is (B, L) with the word index of each token and -1 for special and padding tokens. With
    `at_least_one`, every sequence with at least one word gets at least one masked word. Of the masked tokens, 80%
    become `mask_token_id`, 10% a random id from `replacement_ids`, 10% stay. `max_length` (the tokenizer's, >= L)
    fixes the width of the random streams, so that a row's draws do not depend on the longest text of its batch.
    """
    length = input_ids.shape[1]
    if length > max_length:
        raise ValueError(f"texts of {length} tokens are longer than max_length {max_length}")
    valid = word_ids >= 0
    if not whole_word:  # every token its own word
        word_ids = torch.where(valid, torch.cumsum(valid.long(), dim=1) - 1, word_ids)
    words_per_row = (word_ids.max(dim=1).values + 1).clamp(min=0)
    max_words = max(int(words_per_row.max()), 1)
    chosen = random.uniform("mlm_words", max_length)[:, :max_words] < probability
    chosen &= torch.arange(max_words)[None, :] < words_per_row[:, None]
    # rows where nothing was drawn: mask one random word so that every caption teaches something
    fallback = (random.uniform("mlm_fallback")[:, 0] * words_per_row).long()
    empty = ~chosen.any(dim=1) & (words_per_row > 0) & at_least_one
    chosen[empty, fallback[empty]] = True

    masked = chosen.gather(1, word_ids.clamp(min=0)) & valid
    labels = torch.where(masked, input_ids, torch.full_like(input_ids, IGNORE))
    roll = random.uniform("mlm_roll", max_length)[:, :length]
    picks = (random.uniform("mlm_replacement", max_length)[:, :length] * len(replacement_ids)).long()
    random_ids = replacement_ids[picks.clamp(max=len(replacement_ids) - 1)]
    out = torch.where(masked & (roll < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    out = torch.where(masked & (roll >= 0.8) & (roll < 0.9), random_ids, out)
    return out, labels


def mlm_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """`logits` only at the masked positions (N, vocab); `labels` the N original ids."""
    return F.cross_entropy(logits.float(), labels, reduction=reduction)
