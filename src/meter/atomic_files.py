"""Files written whole or not at all, and what a failed write tells the user (the path, why, the space it needs)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from meter.errors import DataError

OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit
NOT_ALLOWED = (errno.EACCES, errno.EPERM)


def cannot_write(path: Path, error: OSError, needed: int) -> str:
    """What a failed write of `path` tells the user: the path, why, and (where space is what lacks) the space it
    needs next to what is free. A permission or read-only refusal says where instead: free space is beside the point."""
    reason = error.strerror or type(error).__name__
    if error.errno in NOT_ALLOWED:
        return f"cannot write {path}: {reason} (this user may not write in {path.parent}: choose another folder)"
    if error.errno == errno.EROFS:
        return f"cannot write {path}: {reason} ({path.parent} is on a read-only file system: choose another folder)"
    if error.errno is not None and error.errno not in OUT_OF_SPACE:
        return f"cannot write {path}: {reason}"
    free = ""
    for folder in (path, *path.parents):
        if folder.exists():
            free = f", {shutil.disk_usage(folder).free / 2**20:,.1f} MB free there"
            break
    return f"cannot write {path}: {reason} (it needs about {needed / 2**20:,.1f} MB{free})"


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the process's umask (a project folder's group reads it)."""
    with contextlib.suppress(OSError, ValueError, IndexError):  # Linux says it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    umask = os.umask(0o077)  # elsewhere reading it means setting it: to the strictest for the moment it takes
    os.umask(umask)
    return 0o666 & ~umask


def with_usual_mode(path: Path) -> None:
    """A file that its writer created private (safetensors' save_file and mkstemp give 0600) as open() would have
    created it: weights that colleagues in the project's group could not load."""
    os.chmod(path, new_file_mode())


def fsync_folder(folder: Path) -> None:
    """A folder's entries (a file renamed into it) on disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_of(path: Path) -> Path:
    """The temporary file beside `path` that write_text_atomically writes first (a kill may leave it)."""
    return path.with_name(f".{path.name}.tmp")


def write_text_atomically(path: Path, text: str) -> None:
    """`text` in `path` (UTF-8), as write_bytes_atomically writes it; text holding what UTF-8 cannot (half of a
    character) is refused before anything is written."""
    try:
        data = text.encode()
    except UnicodeEncodeError as error:
        raise DataError(
            f"cannot write {path}: its text holds what UTF-8 cannot ({error.reason}: "
            f"{error.object[max(0, error.start - 20) : error.end + 20]!r})"
        ) from None
    write_bytes_atomically(path, data)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """`data` in `path`, written to a temporary file beside it and renamed into place: a kill leaves the old file or
    the new one, also across a crash of the machine (both are on disk before the rename is). A write that fails (a
    full disk) leaves no temporary file and raises a DataError naming the path."""
    temporary = temporary_of(path)
    try:
        with temporary.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash of the machine leaves no empty file in its place
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise DataError(cannot_write(path, error, len(data))) from None
    with contextlib.suppress(OSError):  # the file is in place: a file system that cannot sync a folder has it too
        fsync_folder(path.parent)
