"""The image file `meter explain --out` writes: in a format Pillow can write, never over a file of the user's (a
heat map meter wrote before is replaced: it carries a mark), written whole or not at all."""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from meter.atomic_files import cannot_write, new_file_mode
from meter.errors import ConfigError, DataError

SOFTWARE = 0x0131  # the EXIF Software tag: marks the heat maps meter wrote
MARK = "meter explain"
MAX_SIDE = 8192  # pixels: the overlay holds a few float arrays of side x side x 3


def _marked() -> Image.Exif:
    exif = Image.Exif()
    exif[SOFTWARE] = MARK
    return exif


def heat_map_format(out: Path) -> str:
    """The Pillow format `out`'s extension names, checked before any work to write a colour image that keeps
    meter's mark (so that a rerun may replace it): PNG, JPEG, WebP, TIFF."""
    name = Image.registered_extensions().get(out.suffix.lower())
    written = io.BytesIO()
    try:
        Image.new("RGB", (1, 1)).save(written, format=name, exif=_marked())
        marked = _has_mark(written)
    except (OSError, KeyError, ValueError):  # no such format, none Pillow writes, or not in colour
        marked = False
    if not marked:
        raise ConfigError(f"--out {out}: give a .png, .jpg, .webp or .tif file name for the heat map")
    return name


def _has_mark(file: Path | io.BytesIO) -> bool:
    with Image.open(file) as image:
        return image.getexif().get(SOFTWARE) == MARK


def written_by_meter(path: Path) -> bool:
    try:
        return _has_mark(path)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):  # a huge image is no map
        return False


def check_heat_map_path(out: Path, image: Path) -> str:
    """Refuses, before the model loads, an `out` that is a folder, the --image it explains, a file of the user's,
    or an extension Pillow cannot write; returns the format to write."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the image file to write (e.g. {out / 'heat_map.png'})")
    name = heat_map_format(out)
    if out.exists() and out.resolve() == image.resolve():
        raise ConfigError(f"--out {out} is the --image it explains: give the heat map a file of its own")
    if out.exists() and not written_by_meter(out):
        raise ConfigError(f"--out {out} exists and has no mark of meter's heat maps (another program's file, or a map"
                          " of a meter before the mark): give a new file name, or delete it")  # fmt: skip
    return name


def save_heat_map(picture: Image.Image, out: Path, name: str) -> None:
    """`picture` at `out`, marked as meter's, through a temporary file beside it: a failed write leaves `out` as
    it was."""
    temporary: Path | None = None
    try:
        handle, named = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")  # never a user's name
        os.close(handle)
        temporary = Path(named)
        picture.save(temporary, format=name, exif=_marked())
        os.chmod(temporary, _mode_for(out))  # mkstemp's 0600 would make every map private
        os.replace(temporary, out)
    except OSError as error:
        raise DataError(cannot_write(out, error, picture.width * picture.height * 3)) from None
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def _mode_for(out: Path) -> int:
    """The permissions `out` keeps when it is replaced, or those of a new file (0666 less the umask)."""
    if out.exists():
        return stat.S_IMODE(out.stat().st_mode)
    return new_file_mode()
