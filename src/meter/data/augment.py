"""Training-time image augmentation: RandAugment (METER fine-tunes with N=2, M=9 before the CLIP transform), as
official METER draws it (`randaugment-official`, the recipes': meter.data.randaugment_official) or torchvision's.

An image's draw is seeded by (train.seed, epoch, sample index, image slot) alone, so a sample gets the same pixels in
an epoch whatever the number of DataLoader workers or processes, and a resumed run draws what a straight run drew.
torchvision's RandAugment draws from the global torch RNG: each call runs on a forked CPU generator seeded with the
draw's seed, which leaves the training's own stream (dropout) untouched. The augmented image is the batch's pixels:
MIM's targets are cut from them, so the model regresses exactly what it was shown.

Official METER (meter/transforms/randaug.py, the EfficientNet policy) against torchvision's RandAugment:
- ops: both AutoContrast, Equalize, Rotate, Posterize, Solarize, Color, Contrast, Brightness, Sharpness, ShearX/Y,
  TranslateX/Y; METER adds SolarizeAdd, torchvision adds Identity (a no-op draw); both leave out Invert and Cutout
  (METER comments them out). Both pick N ops with replacement; nearest-neighbour geometry, black fill.
- magnitudes (M of 30, values at M=9): METER's Color/Contrast/Brightness/Sharpness factor is 0.1 + 1.8 M/30 (0.64,
  always weakening), torchvision's 1 +- 0.9 M/30 (1 +- 0.27, random sign); Posterize keeps int(4 M/30) bits in METER
  (1), 8 - round(4 M/30) in torchvision (7); the Solarize threshold is 256 M/30 (77) against 255 (1 - M/30) (178);
  METER translates by 100 M/30 pixels of the original image (30), torchvision by 150/331 M/30 of its size (13.6%).
  Rotate (9 degrees) and Shear (0.09) agree, but METER shears about the corner, torchvision about the centre.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import v2

from meter.config import AugmentConfig
from meter.data.randaugment_official import OfficialRandAugment
from meter.errors import ConfigError

# randaugment-official: METER's own policy (the recipes'); randaugment: torchvision's, milder (compared above)
AUGMENTATIONS = ("none", "randaugment-official", "randaugment")


@dataclass(frozen=True)
class Draw:
    """Which augmentation an image gets: the epoch, the sample's index in its training set, the image of the sample
    (NLVR2's left and right images draw apart)."""

    epoch: int
    sample: int
    image: int = 0


def draw_seed(seed: int, draw: Draw) -> int:
    key = f"{seed}:augment:{draw.epoch}:{draw.sample}:{draw.image}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") & (2**63 - 1)


class Augmentation:
    """A random image transform made a function of (run seed, draw): uint8 image tensor in, uint8 image out."""

    def __init__(self, transform: Callable[[Tensor], Tensor], seed: int) -> None:
        self.transform = transform
        self.seed = seed

    def __call__(self, image: Tensor, draw: Draw) -> Tensor:
        with torch.random.fork_rng(devices=[]), one_thread():
            # the CPU generator only: torch.manual_seed would also reseed CUDA's, which fork_rng(devices=[]) keeps
            torch.default_generator.manual_seed(draw_seed(self.seed, draw))
            return self.transform(image)


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread, as in a DataLoader worker: the float reductions of some ops (Contrast's mean) then sum in
    the same order in the main process (data.num_workers=0) as in a worker, and the tiny ops of one image do not wait
    on a thread pool (on a busy machine two threads made one image's RandAugment 20x slower)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_augmentation(cfg: AugmentConfig, seed: int) -> Augmentation | None:
    """data.augment's transform with train.seed; None for `none`. Ranges are checked in validate.py."""
    if cfg.name == "none":
        return None
    if cfg.name == "randaugment":
        return Augmentation(v2.RandAugment(num_ops=cfg.num_ops, magnitude=cfg.magnitude), seed)
    if cfg.name == "randaugment-official":
        return Augmentation(OfficialRandAugment(cfg.num_ops, cfg.magnitude), seed)
    raise ConfigError(f"data.augment = {cfg.name!r}; choose one of: {', '.join(AUGMENTATIONS)}")
