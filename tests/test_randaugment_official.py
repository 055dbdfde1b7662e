"""data.augment=randaugment-official (the recipes'): official METER's RandAugment(2, 9), pixel for pixel against a
literal re-statement of meter/transforms/randaug.py given the same choices of operations and signs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from meter.data.randaugment_official import OPERATIONS, OfficialRandAugment, operation_value
from tests.reference import meter_randaug_literal

GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXabs", "TranslateYabs"}  # the ops that draw a sign


@pytest.fixture(scope="module")
def pictures(shapes_world: Path) -> list[Image.Image]:
    """A shapes-world image and a noisy photograph-like one of another size (colour gradients plus noise)."""
    rng = np.random.default_rng(0)
    noisy = np.linspace(0, 255, 70)[None, :, None] * rng.uniform(0.2, 1, (1, 1, 3)) + rng.normal(0, 20, (50, 70, 3))
    world = next((shapes_world / "images/train2014").glob("*.png"))
    return [Image.open(world).convert("RGB"), Image.fromarray(noisy.clip(0, 255).astype(np.uint8))]


def _replayed_choices(seed: int, num_ops: int) -> tuple[list[int], list[bool]]:
    """The operations and signs the seeded generator gives, drawn in the order the augmentation draws them."""
    generator = torch.Generator().manual_seed(seed)
    ops = torch.randint(len(OPERATIONS), (num_ops,), generator=generator).tolist()
    flips = [torch.rand((), generator=generator).item() > 0.5 for op in ops if OPERATIONS[op][0] in GEOMETRIC]
    return ops, flips


@pytest.mark.parametrize("index", range(len(OPERATIONS)))
@pytest.mark.parametrize("flip_seed", [0, 3])
def test_each_operation_at_magnitude_9_is_the_official_one(pictures, index: int, flip_seed: int):
    name, op, low, high = OPERATIONS[index]
    for picture in pictures:
        torch.manual_seed(flip_seed)
        flips = [torch.rand(()).item() > 0.5] if name in GEOMETRIC else []
        torch.manual_seed(flip_seed)
        ours = op(picture, operation_value(low, high, 9))
        official = meter_randaug_literal.augment(picture, 1, 9, [index], flips)
        assert np.array_equal(np.asarray(ours), np.asarray(official)), name
        changed = not np.array_equal(np.asarray(ours), np.asarray(picture))
        assert changed or name in ("AutoContrast", "Equalize"), f"{name} at M=9 changes the image"


def test_two_operations_drawn_per_image_equal_the_official_given_the_same_draws(pictures):
    """The whole augmentation on uint8 tensors, as the training reader calls it, over seeds that reach every op."""
    augment = OfficialRandAugment(num_ops=2, magnitude=9)
    reached = set()
    for seed in range(60):
        ops, flips = _replayed_choices(seed, 2)
        reached.update(ops)
        picture = pictures[seed % 2]
        torch.manual_seed(seed)
        ours = augment(v2.functional.pil_to_tensor(picture))
        official = meter_randaug_literal.augment(picture, 2, 9, ops, flips)
        assert ours.dtype == torch.uint8 and torch.equal(ours, v2.functional.pil_to_tensor(official)), (seed, ops)
    assert reached == set(range(len(OPERATIONS)))


def test_at_magnitude_9_the_enhancements_only_weaken_and_posterize_keeps_one_bit(pictures):
    """What sets the official policy apart from torchvision's (random-signed 1 +- 0.27, 7 bits)."""
    values = {name: operation_value(low, high, 9) for name, _, low, high in OPERATIONS}
    assert all(values[name] == pytest.approx(0.64) for name in ("Color", "Contrast", "Brightness", "Sharpness"))
    posterized = next(op for name, op, _, _ in OPERATIONS if name == "Posterize")(pictures[1], values["Posterize"])
    assert set(np.unique(np.asarray(posterized))) <= {0, 128}
