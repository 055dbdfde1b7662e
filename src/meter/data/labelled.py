"""Labelled examples of one or more images and a text (SNLI-VE: one image; NLVR2: a left and a right image)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from meter.data.bad_samples import BadSample
from meter.data.datasets import ImageReader
from meter.errors import DataError

UNLABELLED = -1


@dataclass(frozen=True)
class Example:
    images: tuple[Path, ...]
    text: str
    label: int = UNLABELLED  # a class index; UNLABELLED for a test set without labels


class LabelledExamples(Dataset):
    """Samples `{"pixels", "text", "label", "index"}`; pixels are (3, H, W) for one image, (K, 3, H, W) for K."""

    def __init__(self, examples: list[Example], images: ImageReader) -> None:
        self.examples = examples
        self.images = images

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        example = self.examples[index]
        try:
            loaded = [self.images(path) for path in example.images]
        except DataError as error:
            return BadSample(str(example.images[0]), str(error))
        pixels = loaded[0] if len(loaded) == 1 else torch.stack(loaded)
        return {"pixels": pixels, "text": example.text, "label": example.label, "index": index}
