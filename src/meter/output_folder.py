"""Folders a meter command fills (`meter prepare --out`, `meter study run --out`): a new or empty folder, or one the
same command filled before (it holds the file that command writes there first). Any other folder is refused before
anything is written: its files could share the names the command writes (a COCO folder's captions_train2014.json,
img2dataset's 00000.tar, a report.md), and would be written over. And a lock on a folder that one process at a time
may write (a run's folder, a study cell's)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from meter.errors import ConfigError, DataError

log = logging.getLogger(__name__)

WRITE_PROBE = ".meter-write-check-"  # the probe file of cli.common.check_output_folder, removed at once


def check_own_folder(
    path: str | Path, markers: Iterable[str], what: str, option: str, ignored: Iterable[str] = ()
) -> None:
    """Refuses `path` when it is a folder that is not empty and holds none of `markers`; `ignored` entries (the
    command's own lock file, taken before it looks) do not count."""
    path = Path(path)
    if not path.is_dir():
        return
    ignored = set(ignored)
    entries = sorted(
        entry.name for entry in path.iterdir() if not entry.name.startswith(WRITE_PROBE) and entry.name not in ignored
    )
    if not entries or any((path / marker).exists() for marker in markers):
        return
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise ConfigError(
        f"{option} = {path} holds files that {what} did not write ({shown}); it writes only into a new or empty "
        "folder, or one it filled before, so that no file of yours is written over: give another folder"
    )


class FolderInUse(ConfigError):
    """Another live process holds the folder's lock."""


_held: dict[Path, int] = {}  # lock file -> its descriptor, open and locked, for as long as this process holds it


def lock_folder(folder: str | Path, name: str, what: str) -> None:
    """An exclusive lock (POSIX, so NFS's lock manager sees it too) on `folder/name`, held until release_folder or the
    process's end (a killed process holds none). Refuses, naming the holder, when another process holds it. Taking
    it again in the same process is a no-op. Where the file system cannot lock, it warns and goes on."""
    path = (Path(folder) / name).resolve()
    if path in _held:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:  # no permission, no space: a DataError every process of a run is told of
        raise DataError(f"{path}: cannot create ({error.strerror}); check the folder's space and permissions") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if error.errno in (errno.EACCES, errno.EAGAIN):
            message = f"{folder} is in use by {what} ({holder}): wait for it to end, or use another folder"
            raise FolderInUse(message) from None
        log.warning("%s: cannot lock (%s); a second writer would not be noticed", path, error.strerror)
        return
    _held[path] = fd
    job = os.environ.get("SLURM_JOB_ID")
    with contextlib.suppress(OSError):  # who holds it, for the message of the next one; a full disk leaves it empty
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}{f', job {job}' if job else ''}\n".encode(), 0)


@contextlib.contextmanager
def waiting_for_folder(folder: str | Path, name: str) -> Iterator[None]:
    """An exclusive lock on `folder/name` for the block, waiting for another process that holds it (one that makes
    what this one would otherwise make again beside it). Where the file system cannot lock, it goes on unlocked."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as file:
        try:
            fcntl.lockf(file.fileno(), fcntl.LOCK_EX)
        except OSError as error:
            log.warning("%s: cannot lock (%s); a second writer would not be noticed", path, error.strerror)
        yield  # the lock goes with the file's closing


@contextlib.contextmanager
def holding_folder(folder: str | Path, name: str, what: str) -> Iterator[None]:
    """lock_folder for the block (refused when another process holds it); a lock this process held before the
    block stays held after it."""
    held_before = (Path(folder) / name).resolve() in _held
    lock_folder(folder, name, what)
    try:
        yield
    finally:
        if not held_before:
            release_folder(folder, name)


def release_folder(folder: str | Path, name: str) -> None:
    fd = _held.pop((Path(folder) / name).resolve(), None)
    if fd is not None:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a process about to lock it)
