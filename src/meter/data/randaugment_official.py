"""RandAugment as official METER fine-tunes with it (`clip_transform_randaug`: RandAugment(2, 9) of
meter/transforms/randaug.py, the EfficientNet policy): the same 14 operations, ranges and PIL calls, so that a
recipe's images are the official ones in distribution.

At magnitude M (of 30) an operation of range [low, high] gets the value low + (high - low) M / 30, always: at M=9
Color, Contrast, Brightness and Sharpness enhance by 0.64 (they only ever weaken), Posterize keeps int(1.2) = 1 bit,
Solarize inverts from 77 up, SolarizeAdd adds 33 then inverts from 128, Rotate turns 9 degrees, Shear 0.09, and
Translate moves 30 pixels; rotation, shear and translation take a random sign. N operations are picked with
replacement. The draws come from torch's CPU generator (seeded per sample by `meter.data.augment.Augmentation`)
where the official code uses Python's `random`: the same distribution, reproducible whatever the workers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch import Tensor
from torchvision.transforms import v2

from meter.config import RANDAUGMENT_MAX_MAGNITUDE

MAX_MAGNITUDE = RANDAUGMENT_MAX_MAGNITUDE
Op = Callable[[Image.Image, float], Image.Image]


def _signed(value: float) -> float:
    """The official ops flip the sign of a geometric value half the time."""
    return -value if torch.rand(()).item() > 0.5 else value


def _affine(image: Image.Image, coefficients: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, coefficients)


def _solarize_add(image: Image.Image, addition: float) -> Image.Image:
    added = np.clip(np.asarray(image).astype(np.int64) + int(addition), 0, 255).astype(np.uint8)
    return ImageOps.solarize(Image.fromarray(added), 128)


OPERATIONS: list[tuple[str, Op, float, float]] = [  # name, op(image, value), range: as randaug.py's augment_list
    ("AutoContrast", lambda image, _: ImageOps.autocontrast(image), 0, 1),
    ("Equalize", lambda image, _: ImageOps.equalize(image), 0, 1),
    ("Rotate", lambda image, v: image.rotate(_signed(v)), 0, 30),
    ("Posterize", lambda image, v: ImageOps.posterize(image, max(1, int(v))), 0, 4),
    ("Solarize", lambda image, v: ImageOps.solarize(image, v), 0, 256),
    ("SolarizeAdd", _solarize_add, 0, 110),
    ("Color", lambda image, v: ImageEnhance.Color(image).enhance(v), 0.1, 1.9),
    ("Contrast", lambda image, v: ImageEnhance.Contrast(image).enhance(v), 0.1, 1.9),
    ("Brightness", lambda image, v: ImageEnhance.Brightness(image).enhance(v), 0.1, 1.9),
    ("Sharpness", lambda image, v: ImageEnhance.Sharpness(image).enhance(v), 0.1, 1.9),
    ("ShearX", lambda image, v: _affine(image, (1, _signed(v), 0, 0, 1, 0)), 0.0, 0.3),
    ("ShearY", lambda image, v: _affine(image, (1, 0, 0, _signed(v), 1, 0)), 0.0, 0.3),
    ("TranslateXabs", lambda image, v: _affine(image, (1, 0, _signed(v), 0, 1, 0)), 0.0, 100),
    ("TranslateYabs", lambda image, v: _affine(image, (1, 0, 0, 0, 1, _signed(v))), 0.0, 100),
]


def operation_value(low: float, high: float, magnitude: int) -> float:
    return magnitude / MAX_MAGNITUDE * (high - low) + low


class OfficialRandAugment:
    """uint8 image tensor (C, H, W) in, uint8 image tensor out: `num_ops` operations of OPERATIONS at `magnitude`,
    each applied to the RGB image with PIL as the official code applies it."""

    def __init__(self, num_ops: int, magnitude: int) -> None:
        self.num_ops = num_ops
        self.magnitude = magnitude

    def choose(self) -> list[int]:
        return torch.randint(len(OPERATIONS), (self.num_ops,)).tolist()

    def __call__(self, image: Tensor) -> Tensor:
        picture = v2.functional.to_pil_image(image).convert("RGB")
        for index in self.choose():
            _, op, low, high = OPERATIONS[index]
            picture = op(picture, operation_value(low, high, self.magnitude))
        return v2.functional.pil_to_tensor(picture)
