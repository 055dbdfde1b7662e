"""The image formats meter reads: photographs and scans (JPEG, its camera variant MPO, PNG, WebP, GIF, BMP, TIFF, PPM),
never Pillow's other plugins (EPS runs Ghostscript on the file; ICO decodes its pixels while it is opened)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from meter.data.formats.common import IMAGE_EXTENSIONS, READ_FORMATS
from meter.data.images import decode_image
from meter.data.shard_writer import check_image
from meter.errors import DataError
from meter.serve.uploads import ServeError, read_image

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


def encoded(image: Image.Image, kind: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, kind, **options)
    return out.getvalue()


def test_an_eps_file_never_reaches_ghostscript(tmp_path: Path):
    """A `gs` on the PATH that notes each call: the server, predict and prepare paths read the file in a process of
    their own (Pillow looks for gs once per process)."""
    ran = tmp_path / "gs_ran"
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "gs"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {ran}\nexit 1\n')
    fake.chmod(0o755)
    (tmp_path / "upload.eps").write_bytes(EPS)
    script = f"""
import io
from pathlib import Path
from meter.data.formats.common import IMAGE_EXTENSIONS, READ_FORMATS
from meter.data.images import decode_image
from meter.data.shard_writer import check_image
from meter.serve.uploads import ServeError, read_image
data = Path({str(tmp_path / "upload.eps")!r}).read_bytes()
try:
    read_image(data, "upload.eps", 10**7)
except ServeError as error:
    print("serve", error.status)
try:
    decode_image(io.BytesIO(data), "upload.eps")
except Exception as error:
    print("decode", type(error).__name__)
print("prepare", check_image(data, "upload.eps", decode=True)[0])
"""
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["serve", "415", "decode", "DataError", "prepare", "None"], done.stderr[-2000:]
    assert not ran.exists(), ran.read_text()


def test_an_icon_is_refused_before_its_pixels_are_decoded():
    """Pillow decodes an ICO's picture while opening it, so its header was no check against a decompression bomb."""
    icon = encoded(Image.new("RGB", (64, 64), "red"), "ICO")
    with pytest.raises(ServeError) as refused:
        read_image(icon, "favicon.ico", 10**7)
    assert refused.value.status == 415 and "JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF or PPM" in refused.value.message
    with pytest.raises(DataError, match="not a JPEG, PNG"):
        decode_image(io.BytesIO(icon), "favicon.ico")


def test_a_cameras_mpo_jpeg_is_read_and_stored_as_a_jpeg():
    """Pillow names a JPEG carrying a second picture (many phones and cameras write them) MPO: `meter prepare`
    refused it as an unsupported format."""
    first, second = Image.new("RGB", (32, 24), (200, 30, 30)), Image.new("RGB", (32, 24), (30, 30, 200))
    data = encoded(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert check_image(data, "photo.jpg", decode=True) == ("jpg", None)
    pixel = decode_image(io.BytesIO(data), "photo.jpg").getpixel((16, 12))
    assert abs(pixel[0] - 200) < 8 and pixel[2] < 40  # the first picture
    assert read_image(data, "photo.jpg", 10**7).size == (32, 24)


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF", "PPM"])
def test_every_format_meter_reads_is_read_and_stored_in_a_shard_the_loader_reads(kind: str, tmp_path: Path):
    """A PPM was stored as a .ppm member that the shard reader did not look for (every sample a bad one)."""
    if kind not in READ_FORMATS:
        pytest.skip(f"this Pillow reads no {kind}")
    data = encoded(Image.new("RGB", (20, 10), (10, 200, 10)), kind)
    assert decode_image(io.BytesIO(data), f"image.{kind.lower()}").size == (20, 10)
    extension, problem = check_image(data, "image", decode=True)
    assert problem is None and extension in IMAGE_EXTENSIONS  # what the shard reader looks for
