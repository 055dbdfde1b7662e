"""Batching: stack images, tokenize texts padded to the longest in the batch (or a multiple of a few tokens past
it), set bad samples aside."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from meter.data.bad_samples import BadSample


class Collate:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, num_labels: int | None = None,
                 pad_to_multiple_of: int | None = None) -> None:  # fmt: skip
        """`pad_to_multiple_of`: the text's length rounded up to a multiple (at most max_length), so that compiled
        code meets a few lengths only (CUDA graphs record one graph per length)."""
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_labels = num_labels
        self.pad_to_multiple_of = pad_to_multiple_of

    def bucketed(self, multiple: int) -> Collate:
        """The same batching with the text padded to a multiple of `multiple` tokens."""
        return Collate(self.tokenizer, self.max_length, self.num_labels, multiple)

    def _padded(self, input_ids: Tensor, attention_mask: Tensor, word_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Padded to the next multiple of pad_to_multiple_of, at most max_length (the tokenizer refuses a multiple
        that does not divide max_length), on the tokenizer's padding side."""
        length = input_ids.shape[1]
        multiple = self.pad_to_multiple_of or 1
        extra = min(self.max_length, -(-length // multiple) * multiple) - length
        if extra <= 0:
            return input_ids, attention_mask, word_ids
        where = (0, extra) if self.tokenizer.padding_side == "right" else (extra, 0)
        return (F.pad(input_ids, where, value=self.tokenizer.pad_token_id), F.pad(attention_mask, where, value=0),
                F.pad(word_ids, where, value=-1))  # fmt: skip

    def __call__(self, samples: list[dict[str, Any] | BadSample]) -> dict[str, Any]:
        good = [s for s in samples if not isinstance(s, BadSample)]
        batch: dict[str, Any] = {"bad": [s for s in samples if isinstance(s, BadSample)], "size": len(good)}
        if not good:
            return batch
        encoded = self.tokenizer(
            [s["text"] for s in good], padding="longest", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )  # fmt: skip
        special = set(self.tokenizer.all_special_ids) - {self.tokenizer.unk_token_id}
        word_ids = torch.tensor(
            [caption_words(encoded.word_ids(i), encoded["input_ids"][i].tolist(), special) for i in range(len(good))],
            dtype=torch.long,
        )
        batch["input_ids"], batch["attention_mask"], batch["word_ids"] = self._padded(
            encoded["input_ids"], encoded["attention_mask"], word_ids
        )
        first = good[0]["pixels"]
        if all(s["pixels"] is first for s in good):  # one image for all (the blind baseline): a view, encoded once
            batch["pixels"] = first.unsqueeze(0).expand(len(good), *first.shape)
        else:
            batch["pixels"] = torch.stack([s["pixels"] for s in good])
        for key in ("image_id", "question_id", "label", "index"):
            if key in good[0]:
                batch[key] = torch.tensor([s[key] for s in good], dtype=torch.long)
        if self.num_labels is not None and "targets" in good[0]:
            targets = torch.zeros(len(good), self.num_labels)
            for row, sample in enumerate(good):
                for label, score in sample["targets"]:
                    targets[row, label] = score
            batch["targets"] = targets
        return batch


def caption_words(word_ids: list[int | None], input_ids: list[int], special: set[int]) -> list[int]:
    """Each token's word, numbered 0..n-1 without gaps (MLM and span corruption draw among n words); -1 for the
    tokenizer's special tokens, those a caption's text spells ("</s>", "[MASK]") too: no objective targets them, and
    a decoder target does not end mid-caption. The unknown token is a word like any other."""
    words, last, count = [], None, 0
    for word, token in zip(word_ids, input_ids, strict=True):
        if word is None or token in special:
            words.append(-1)
            continue
        if word != last:
            count, last = count + 1, word
        words.append(count - 1)
    return words
