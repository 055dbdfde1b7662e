"""What `meter prepare` remembers of the files that list a corpus's records (annotation JSON, TSV, arrow files), so
that a rerun or a resume over shards written from an older version of them is refused, not mixed with it.

A file is known by its size and SHA-256 (content, not modification time: a data copy staged onto a node by a job
keeps its fingerprint); a file over HASHED_WHOLE bytes (an arrow file holding the images) by its size and the
SHA-256 of its first and last ENDS bytes, which any rewrite of it changes in practice. A tar shard (img2dataset's:
thousands of them, the corpus's images) is known by its size and modification time: hashing them would read the
whole corpus on every run, and a shard written again (img2dataset rerun into its folder) changes both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HASHED_WHOLE = 2 << 30
ENDS = 16 << 20
CHUNK = 1 << 20


def fingerprint(files: tuple[Path, ...] | list[Path]) -> list[dict[str, object]]:
    return [_fingerprint(Path(path)) for path in files]


def _fingerprint(path: Path) -> dict[str, object]:
    if path.suffix == ".tar":
        stat = path.stat()
        return {"file": path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= HASHED_WHOLE:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
            return {"file": path.name, "bytes": size, "sha256": digest.hexdigest()}
        digest.update(f.read(ENDS))
        f.seek(size - ENDS)
        digest.update(f.read(ENDS))
    return {"file": path.name, "bytes": size, "sha256_of_ends": digest.hexdigest()}
