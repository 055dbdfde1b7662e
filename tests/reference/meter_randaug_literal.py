"""A literal re-statement of official METER's RandAugment (meter/transforms/randaug.py: the ops of `augment_list`
and `RandAugment.__call__`), written independently of meter.data.randaugment_official to cross-check it. Python's
`random` is replaced by explicit choices: `ops` the indices `random.choices` picked, `flips` what each
`random.random() > 0.5` of a geometric op said, in order. (`np.int` of SolarizeAdd is gone from numpy; int64 here.)"""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageOps


def augment(img: PIL.Image.Image, n: int, m: int, ops: list[int], flips: list[bool]) -> PIL.Image.Image:
    flips = list(flips)

    def flip() -> bool:
        return flips.pop(0)

    def shear_x(img, v):
        if flip():
            v = -v
        return img.transform(img.size, PIL.Image.AFFINE, (1, v, 0, 0, 1, 0))

    def shear_y(img, v):
        if flip():
            v = -v
        return img.transform(img.size, PIL.Image.AFFINE, (1, 0, 0, v, 1, 0))

    def translate_x_abs(img, v):
        if flip():
            v = -v
        return img.transform(img.size, PIL.Image.AFFINE, (1, 0, v, 0, 1, 0))

    def translate_y_abs(img, v):
        if flip():
            v = -v
        return img.transform(img.size, PIL.Image.AFFINE, (1, 0, 0, 0, 1, v))

    def rotate(img, v):
        if flip():
            v = -v
        return img.rotate(v)

    def solarize_add(img, addition=0, threshold=128):
        img_np = np.array(img).astype(np.int64)
        img_np = img_np + addition
        img_np = np.clip(img_np, 0, 255)
        img_np = img_np.astype(np.uint8)
        img = PIL.Image.fromarray(img_np)
        return PIL.ImageOps.solarize(img, threshold)

    def posterize(img, v):
        v = int(v)
        v = max(1, v)
        return PIL.ImageOps.posterize(img, v)

    augment_list = [
        (lambda img, _: PIL.ImageOps.autocontrast(img), 0, 1),
        (lambda img, _: PIL.ImageOps.equalize(img), 0, 1),
        (rotate, 0, 30),
        (posterize, 0, 4),
        (lambda img, v: PIL.ImageOps.solarize(img, v), 0, 256),
        (solarize_add, 0, 110),
        (lambda img, v: PIL.ImageEnhance.Color(img).enhance(v), 0.1, 1.9),
        (lambda img, v: PIL.ImageEnhance.Contrast(img).enhance(v), 0.1, 1.9),
        (lambda img, v: PIL.ImageEnhance.Brightness(img).enhance(v), 0.1, 1.9),
        (lambda img, v: PIL.ImageEnhance.Sharpness(img).enhance(v), 0.1, 1.9),
        (shear_x, 0.0, 0.3),
        (shear_y, 0.0, 0.3),
        (translate_x_abs, 0.0, 100),
        (translate_y_abs, 0.0, 100),
    ]
    assert len(ops) == n
    for op, minval, maxval in (augment_list[i] for i in ops):
        val = (float(m) / 30) * float(maxval - minval) + minval
        img = op(img, val)
    return img
