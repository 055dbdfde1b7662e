"""Labelled examples of one or more images and a text (SNLI-VE: one image; NLVR2: a left and a right image), and
plain image lists (retrieval and captioning evaluation)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from meter.data.bad_samples import BadSample, BadSampleBudget, count_bad
from meter.data.datasets import ImageReader, TrainingDraws
from meter.data.ordered_batches import EvalReading, ordered_batches
from meter.errors import DataError

UNLABELLED = -1


@dataclass(frozen=True)
class Example:
    images: tuple[Path, ...]
    text: str
    label: int = UNLABELLED  # a class index; UNLABELLED for a test set without labels


class LabelledExamples(Dataset, TrainingDraws):
    """Samples `{"pixels", "text", "label", "index"}`; pixels are (3, H, W) for one image, (K, 3, H, W) for K.
    In training each of the K images draws its own augmentation."""

    def __init__(self, examples: list[Example], images: ImageReader) -> None:
        self.examples = examples
        self.images = images

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        example = self.examples[index]
        loaded = []
        for k, path in enumerate(example.images):
            try:
                loaded.append(self.images(path, self.draw(index, k)))
            except DataError as error:
                # the image that failed (NLVR2's right one, say), counted as this example
                return BadSample(str(path), str(error), key=f"example {index}")
        pixels = loaded[0] if len(loaded) == 1 else torch.stack(loaded)
        return {"pixels": pixels, "text": example.text, "label": example.label, "index": index}


class ImageFiles(Dataset):
    """Samples `(index, pixels)`, or `(index, BadSample)` for an image that cannot be read; batch with `list`."""

    def __init__(self, paths: list[Path], images: ImageReader) -> None:
        self.paths = paths
        self.images = images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor | BadSample]:
        try:
            return index, self.images(self.paths[index])
        except DataError as error:
            return index, BadSample(str(self.paths[index]), str(error))


def stack_readable(samples: list[tuple[int, Tensor | BadSample]]) -> tuple[list[int], Tensor | None, list[BadSample]]:
    """A batch of `ImageFiles` samples: the readable ones' indices and stacked pixels (None if none), and the bad
    ones (stacked in the worker that read them, so that a pinned batch is copied to the GPU as it is)."""
    good = [(index, pixels) for index, pixels in samples if not isinstance(pixels, BadSample)]
    bad = [pixels for _, pixels in samples if isinstance(pixels, BadSample)]
    return [index for index, _ in good], torch.stack([pixels for _, pixels in good]) if good else None, bad


def image_batches(
    paths: list[Path], images: ImageReader, reading: EvalReading, desc: str, budget: BadSampleBudget | None = None
) -> Iterator[tuple[list[int], Tensor]]:
    """The readable images in order, batch by batch: (their indices, stacked pixels). An unreadable image counts
    against `budget` and is left out (without a budget, it is an error)."""
    for indices, pixels, bad in ordered_batches(ImageFiles(paths, images), stack_readable, reading, desc):
        for sample in bad:
            count_bad(budget, sample)
        if pixels is not None:
            yield indices, pixels
