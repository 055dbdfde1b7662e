"""Map-style datasets over records from the format readers. A sample that cannot be read becomes a BadSample."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from meter.data.augment import Augmentation, Draw
from meter.data.bad_samples import BadSample
from meter.data.formats.captions import CaptionRecord
from meter.data.formats.common import distinct
from meter.data.formats.vqa import VqaRecord
from meter.data.images import load_image, to_rgb
from meter.errors import DataError

Transform = Callable[[Image.Image], Tensor]


class ImageReader:
    """Loads and transforms images; in blind mode every image is the same constant (the dataset mean).

    With `augment`, an image read with a `Draw` (a training sample: see TrainingDraws) is augmented before the
    transform; one read without (evaluation, prediction) never is.

    With `cache_mb`, images read from files are kept in memory until that budget is full: transformed ones (the
    transform is deterministic), or with `augment` the decoded ones (uint8), augmented and transformed at each read.
    A small corpus such as the shapes world is decoded once, not once per question. Each DataLoader worker holds its
    own cache.
    """

    def __init__(
        self, transform: Transform, image_size: int, blind: bool = False, cache_mb: int = 0,
        augment: Augmentation | None = None, max_pixels: int | None = None,
    ) -> None:  # fmt: skip
        self.transform = transform
        self.image_size = image_size  # the transform's size: a large image may be decoded smaller (never below it)
        self.max_pixels = max_pixels  # data.max_image_pixels: a larger image is a bad sample, refused undecoded
        self.blind = blind
        self.augment = augment
        self.blank = torch.zeros(3, image_size, image_size)  # zero after normalisation = the mean colour
        self.upright = False  # files turned as their EXIF orientation says (predicting: see decode_image)
        self.cache: dict[str, Tensor] = {}
        self.cache_left = cache_mb << 20  # bytes

    def __call__(self, path: Any, draw: Draw | None = None) -> Tensor:
        if self.blind:
            return self.blank
        if self.augment is not None and draw is None:  # an augmenting reader's evaluation read: as a plain reader's
            image = load_image(path, at_least=self.image_size, max_pixels=self.max_pixels, upright=self.upright)
            return self.transform(image)
        key = str(path)
        if (pixels := self.cache.get(key)) is None:
            # augmenting, the whole image: official RandAugment's shifts are in pixels (30 of the photo as stored), and
            # would move a reduced copy 2-8x further
            at_least = self.image_size if self.augment is None else None
            image = load_image(path, at_least=at_least, max_pixels=self.max_pixels, upright=self.upright)
            # augmenting: the cache holds the decoded image, and every read draws afresh
            pixels = self.transform(image) if self.augment is None else v2.functional.to_image(image)
            size = pixels.numel() * pixels.element_size()
            if size <= self.cache_left:
                self.cache[key], self.cache_left = pixels, self.cache_left - size
        return pixels if self.augment is None else self.finish(pixels, draw)

    def decoded(self, image: Image.Image) -> Tensor:
        """The transform of an image decoded elsewhere (a caller's PIL image, an upload), in any PIL mode; turned as
        its EXIF orientation says when this reader turns files (`upright`), as the same photo given by its path."""
        if self.blind:  # as a file is read: a blind baseline sees the constant image (serve's uploads, explain)
            return self.blank
        if self.upright:
            image = ImageOps.exif_transpose(image)
        return self.finish(to_rgb(image, "image", self.image_size), None)

    def finish(self, image: Image.Image | Tensor, draw: Draw | None) -> Tensor:
        """The transform of a decoded image, after its augmentation when there is one and `draw` names it."""
        if self.augment is not None and draw is not None:
            image = self.augment(v2.functional.to_image(image), draw)
        return self.transform(image)


class TrainingDraws:
    """A dataset whose images are augmented in training: the training stream sets the epoch before each epoch
    (BatchStream), and sample `index` then draws by (epoch, index). A dataset never given an epoch (evaluation) draws
    nothing, even with an augmenting ImageReader."""

    epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self, index: int, image: int = 0) -> Draw | None:
        return None if self.epoch is None else Draw(self.epoch, index, image)


class CaptionPairs(Dataset, TrainingDraws):
    """Every (image, caption) pair of the records, an image's repeated caption once (as official METER trains)."""

    def __init__(self, records: list[CaptionRecord], images: ImageReader) -> None:
        self.records = records
        self.images = images
        self.captions = [distinct(record.captions) for record in records]
        self.pairs = [(i, j) for i, captions in enumerate(self.captions) for j in range(len(captions))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        i, j = self.pairs[index]
        record = self.records[i]
        try:
            pixels = self.images(record.image, self.draw(index))
        except DataError as error:
            return BadSample(str(record.image), str(error), key=f"{record.image}#{j}")
        return {"pixels": pixels, "text": self.captions[i][j], "image_id": record.image_id}


class VqaQuestions(Dataset, TrainingDraws):
    """VQA questions with their images and soft answer targets (label, score) pairs."""

    # what a sample reads of its record (the fingerprint a checkpoint records): the ten annotators' answers enter
    # through `targets`, and their details would take seconds a million questions to hash
    fingerprint_fields = ("question_id", "question", "image")

    def __init__(
        self, records: list[VqaRecord], images: ImageReader, targets: list[list[tuple[int, float]]] | None = None
    ) -> None:
        self.records = records
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        record = self.records[index]
        try:
            pixels = self.images(record.image, self.draw(index))
        except DataError as error:
            return BadSample(str(record.image), str(error), key=f"question {record.question_id}")
        sample = {"pixels": pixels, "text": record.question, "question_id": record.question_id}
        if self.targets is not None:
            sample["targets"] = self.targets[index]
        return sample
