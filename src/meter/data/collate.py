"""Batching: stack images, tokenize texts padded to the longest in the batch, set bad samples aside."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from meter.data.bad_samples import BadSample


class Collate:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, num_labels: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_labels = num_labels

    def __call__(self, samples: list[dict[str, Any] | BadSample]) -> dict[str, Any]:
        good = [s for s in samples if not isinstance(s, BadSample)]
        batch: dict[str, Any] = {"bad": [s for s in samples if isinstance(s, BadSample)], "size": len(good)}
        if not good:
            return batch
        encoded = self.tokenizer(
            [s["text"] for s in good], padding="longest", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )  # fmt: skip
        batch["input_ids"] = encoded["input_ids"]
        batch["attention_mask"] = encoded["attention_mask"]
        batch["word_ids"] = torch.tensor(
            [[-1 if w is None else w for w in encoded.word_ids(i)] for i in range(len(good))], dtype=torch.long
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
