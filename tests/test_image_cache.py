from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meter.data.datasets import ImageReader
from meter.data.images import image_transform
from meter.errors import DataError

TRANSFORM = image_transform(512, (0.5,) * 3, (0.5,) * 3)  # 512 px float32: 3 MiB per image


def _images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_cached_images_equal_freshly_read_ones_and_the_budget_holds(tmp_path: Path):
    first, second = _images(tmp_path, 2)
    plain = ImageReader(TRANSFORM, 512)
    cached = ImageReader(TRANSFORM, 512, cache_mb=5)  # room for one image
    a = cached(first)
    assert torch.equal(a, plain(first))
    assert cached(first) is a  # served from memory
    b = cached(second)
    assert torch.equal(b, plain(second))
    assert cached(second) is not b  # over the budget: read again
    assert plain(first) is not plain(first)  # no cache by default


def test_a_missing_image_is_still_an_error_naming_it_with_a_cache(tmp_path: Path):
    cached = ImageReader(TRANSFORM, 512, cache_mb=64)
    missing = tmp_path / "missing.png"
    with pytest.raises(DataError, match=str(missing)):
        cached(missing)
    assert cached.cache == {}
