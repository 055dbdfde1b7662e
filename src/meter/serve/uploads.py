"""Uploaded images and texts, checked before the model sees them; each problem becomes a ServeError."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from meter.data.blank_text import is_blank
from meter.data.formats.common import DECODE_ERRORS, READ_FORMATS, READABLE
from meter.data.images import central_band_of, decode_image
from meter.errors import DataError


class ServeError(Exception):
    """A request the server cannot answer: the HTTP status and a message a person can act on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def read_image(data: bytes, name: str, max_pixels: int, at_least: int | None = None) -> Image.Image:
    """Decodes an upload as RGB. The pixel count is read from the header first: an image over `max_pixels` (a
    decompression bomb: a small file that decodes to gigabytes) is refused before any pixel is decoded. `at_least`:
    the model's image size, so that a large JPEG is decoded as `meter predict` and `meter evaluate` decode a file
    (meter.data.images.decode_image): the same pixels, the same answers."""
    if not data:
        raise ServeError(422, f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            with Image.open(io.BytesIO(data), formats=READ_FORMATS) as probe:
                width, height = probe.size
    except UnidentifiedImageError:
        claimed = _signature_of(data)
        if claimed:  # a TIFF cut short: Pillow cannot identify it, yet it is one of ours, damaged
            raise ServeError(422, f"{name}: a {claimed} file, truncated or damaged (its header cannot be read)") \
                from None  # fmt: skip
        raise ServeError(415, f"{name}: not an image this server reads (send a {READABLE})") from None
    except Image.DecompressionBombError:  # past Pillow's own guard, far past ours
        raise ServeError(
            413, f"{name}: a decompression bomb; this server decodes at most {max_pixels:,} pixels"
        ) from None
    except DECODE_ERRORS as error:
        raise ServeError(422, f"{name}: unreadable image header ({type(error).__name__}: {error})") from None
    if width * height > max_pixels:
        raise ServeError(
            413, f"{name}: {width}x{height} is {width * height:,} pixels; this server decodes at most {max_pixels:,}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = decode_image(io.BytesIO(data), name, at_least, upright=True)  # as the browser shows it
    except DataError as error:  # a truncated or damaged file: its header was fine, its pixels are not
        raise ServeError(422, str(error).removeprefix("data: ")) from None
    return central_band_of(image)  # the part the model's transform keeps, cut here rather than on the model's thread


# the formats whose files start with a signature text does not (PPM's `P6` or BMP's `BM` begin words): by Pillow's test
SIGNED = ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "AVIF")


def _signature_of(data: bytes) -> str | None:
    """The format among those the server reads whose signature the file starts with (Pillow's own test)."""
    Image.init()
    for form in SIGNED:
        accept = Image.OPEN.get(form, (None, None))[1] if form in READ_FORMATS else None
        if accept is not None and accept(data[:64]):
            return form
    return None


def check_text(text: str | None, field: str, what: str, max_chars: int | None = None) -> str:
    """The text without surrounding spaces; an empty one is refused, and one over `max_chars` (the model reads a few
    hundred: tokenizing a megabyte would hold the model's thread for seconds)."""
    if text is None or is_blank(text):
        raise ServeError(422, f"{field} is empty; type {what}")
    if max_chars is not None and len(text) > max_chars:
        raise ServeError(413, f"{field} has {len(text):,} characters; this server takes at most {max_chars:,}")
    return text.strip()
