"""Reading images, and the transforms of DESIGN.md (resize, centre crop, the encoder's normalisation).

`decode_image` is the one way in for image bytes (files, shard members, uploads): it refuses an image with more
pixels than a limit from its header, before any pixel is decoded; decodes a large JPEG at a reduced scale and
box-reduces any other large image right after decoding, when the caller says how small it may get; and converts
every PIL mode to 8-bit RGB (`to_rgb`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2

from meter.data.formats.common import DECODE_ERRORS, NOT_AN_IMAGE, READ_FORMATS
from meter.errors import ConfigError, DataError

PIXEL_LIMIT_SETTING = "data.max_image_pixels"
REDUCE_GAP = 2  # box-reduce only while the short side stays this many times the target: close to a fair resize
SIXTEEN_BIT_MAX = 65535
EXACT_MODE_OF = {"1": "L", "PA": "RGBA", "La": "LA", "RGBa": "RGBA"}  # PIL converts these without loss; others: RGB


def load_image(path: str | Path, at_least: int | None = None, max_pixels: int | None = None, upright: bool = False
               ) -> Image.Image:  # fmt: skip
    """Reads an image file as RGB, or raises a DataError naming the path and what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder, not an image file; give one image file")
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    return decode_image(path, str(path), at_least, max_pixels, upright=upright)


def decode_image(
    source: Path | BinaryIO, name: str, at_least: int | None = None, max_pixels: int | None = None,
    setting: str = PIXEL_LIMIT_SETTING, upright: bool = False,
) -> Image.Image:  # fmt: skip
    """Decodes a file or an in-memory image (a shard member, an upload) as RGB; a DataError names `name` if it
    cannot, or if its header declares more than `max_pixels` pixels (`setting` is the option that sets the limit).

    With `at_least`, a large image may come back smaller, both sides still at least twice that long (REDUCE_GAP):
    a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling: a 4032x3024 photo for 384 px decodes at
    2016x1512), and any image with sides beyond twice that is box-reduced by a whole factor once decoded, so that
    the later resize works on a small copy (a 12000x12000 PNG for 224 px: 462x462). An image under twice the size
    on a side (COCO's 640x480 at 288 to 576 px) decodes whole, as the official pipeline decodes it.

    `upright`: turned as its EXIF orientation says (a phone photo taken sideways), as a browser or a viewer shows it:
    what `meter predict`, `meter serve` and `meter explain` answer about. Training and evaluation read the pixels as
    stored, as the official pipeline (and the datasets' annotators' tools) did.
    """
    if isinstance(source, Path):
        try:
            file = source.open("rb")  # our handle, not PIL's: the returned image stays usable once it is closed
        except OSError as error:
            raise DataError(f"{name}: cannot be opened ({error.strerror})") from None
        with file:
            return decode_image(file, name, at_least, max_pixels, setting, upright)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours to set
            image = Image.open(source, formats=READ_FORMATS)
        check_pixels(image.size, name, max_pixels, setting)
        if at_least and min(image.size) >= 2 * REDUCE_GAP * at_least:  # (a draft of scale 1 changes the decode)
            image.draft("RGB", (REDUCE_GAP * at_least, REDUCE_GAP * at_least))
        image.load()
        if upright:
            image = ImageOps.exif_transpose(image)
        return to_rgb(image, name, at_least)
    except UnidentifiedImageError:
        raise DataError(f"{name}: {NOT_AN_IMAGE}") from None  # PIL's message names a BytesIO object
    except Image.DecompressionBombError as error:  # past Pillow's own guard, which no setting of ours lifts
        raise DataError(f"{name}: too many pixels to decode ({error})") from None
    except DECODE_ERRORS as error:
        raise DataError(f"{name}: unreadable image ({type(error).__name__}: {error})") from None


def pillow_pixel_guard() -> int | None:
    """The most pixels Pillow opens (more raise its DecompressionBombError): twice Image.MAX_IMAGE_PIXELS."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def check_pixel_limit(limit: int, setting: str = PIXEL_LIMIT_SETTING) -> None:
    """A limit above Pillow's guard would promise images that Pillow refuses anyway: say so before any work."""
    guard = pillow_pixel_guard()
    if limit < 1 or (guard is not None and limit > guard):
        upper = f"{guard:,} (Pillow refuses larger images as decompression bombs)" if guard else "any size"
        raise ConfigError(f"{setting} = {limit} must be in 1..{upper}")


def check_pixels(size: tuple[int, int], name: str, max_pixels: int | None, setting: str = PIXEL_LIMIT_SETTING) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise DataError(
            f"{name}: {width}x{height} is {width * height:,} pixels, more than {setting} = {max_pixels:,}"
            " (raise it to read this image)"
        )


def to_rgb(image: Image.Image, name: str = "image", at_least: int | None = None) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit and 32-bit integer samples (I;16, I;16B, I) scaled from 0..65535, floats
    (F) from 0..1, transparent pixels (RGBA, LA, PA, P with transparency) composited on white, palette, CMYK, YCbCr,
    1-bit and the rest through PIL's conversions. With `at_least`, a large image is box-reduced first (see
    `decode_image`). Returns `image` itself when it is already RGB and small enough."""
    image = _exact_mode(image, name)
    if at_least:
        factor = min(image.size) // (REDUCE_GAP * at_least)
        if factor >= 2:
            image = image.reduce(factor)  # LA and RGBA are premultiplied while they are reduced: no dark fringes
    if image.mode == "I":
        image = _eight_bits(np.clip(np.asarray(image), 0, SIXTEEN_BIT_MAX).astype(np.uint32), SIXTEEN_BIT_MAX)
    elif image.mode == "F":
        image = _eight_bits(np.nan_to_num(np.asarray(image), nan=0.0).clip(0, 1), 1)
    if image.mode in ("LA", "RGBA"):
        shown = Image.new(image.mode[:-1], image.size, "white")  # as an image viewer or a web page shows them
        shown.paste(image, mask=image.getchannel("A"))
        image = shown
    return image if image.mode == "RGB" else image.convert("RGB")


def _exact_mode(image: Image.Image, name: str) -> Image.Image:
    """The image in one of L, LA, RGB, RGBA, I, F without losing anything: the modes the rest of `to_rgb` knows
    (and `Image.reduce` averages correctly: a palette index or a CMYK sample is not a brightness)."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "I", "F"):
        return image
    if mode.startswith("I;16"):
        return image.convert("I")  # PIL's own I;16 -> L clips at 255: a 16-bit image would come out white
    if mode == "P":
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    try:
        return image.convert(EXACT_MODE_OF.get(mode, "RGB"))
    except ValueError as error:
        raise DataError(f"{name}: images of mode {mode} cannot be read ({error})") from None


def _eight_bits(values: np.ndarray, full_scale: float) -> Image.Image:
    """A greyscale image from samples in 0..full_scale, rounded to the nearest of 0..255."""
    if values.dtype.kind == "u":  # exact integer rounding: 257 -> 1, 65535 -> 255
        scaled = (values * (2 * 255) + full_scale) // (2 * full_scale)
    else:
        scaled = np.rint(values * (255 / full_scale))
    return Image.fromarray(scaled.astype(np.uint8))


MAX_ASPECT = 16  # an image longer than this many times its width (or the reverse) is cut to its central band first


def central_band(image: torch.Tensor) -> torch.Tensor:
    """The central MAX_ASPECT:1 band of a more elongated image (a view). Resizing its short side would otherwise
    make the long side enormous (a 20000x1 image at 384 px: 7.7 million pixels a row, gigabytes) only for the centre
    crop to keep a square of it; cut first, the crop is the same square of the image (shifted by under a resized
    pixel where the cut falls between pixels of the resized grid). Images up to 16:1 (every photograph) pass
    unchanged."""
    height, width = image.shape[-2:]
    box = band_box(width, height)
    return image if box is None else image[..., box[1] : box[3], box[0] : box[2]]


def central_band_of(image: Image.Image) -> Image.Image:
    """`central_band` of a decoded image, before its pixels become a tensor: `meter serve` cuts it in the upload's
    thread, so that a 1 x 39,000,000 PNG does not hold the model's thread while the transform converts it whole."""
    box = band_box(*image.size)
    return image if box is None else image.crop(box)


def band_box(width: int, height: int) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the central MAX_ASPECT:1 band of an image more elongated than that, else None."""
    if width > MAX_ASPECT * height:
        start, keep = _band(width, height)
        return start, 0, start + keep, height
    if height > MAX_ASPECT * width:
        start, keep = _band(height, width)
        return 0, start, width, start + keep
    return None


def _band(long: int, short: int) -> tuple[int, int]:
    """(start, length) of the band: as many pixels cut on each side, so that its centre is the image's."""
    keep = MAX_ASPECT * short + (long - MAX_ASPECT * short) % 2
    return (long - keep) // 2, keep


def image_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """METER's evaluation transform: bicubic resize of the short side, centre crop, normalise (an image more
    elongated than 16:1 cut to its central band first: `central_band`)."""
    return v2.Compose(
        [
            v2.ToImage(),
            central_band,
            v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )
