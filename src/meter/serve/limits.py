"""What one request may ask of the server (plain values: the command line reads them without the serve extra)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from meter.errors import ConfigError

MB = 1 << 20


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 16 * MB  # a whole request; larger ones get 413 before anything is parsed
    max_pixels: int = 40_000_000  # of an uploaded image, checked from its header before it is decoded
    max_batch: int = 16  # requests run together in one forward pass
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_pending: int = 64  # requests queued or running; past it the server answers 503
    max_top: int = 50  # answers a VQA request may ask for
    # a request body that sends nothing for this long is answered 408 (a stalled upload holds a --max-pending place)
    body_idle_s: float = 30.0
    # a body not whole after this long is answered 408: one trickled a byte at a time holds its place for ever
    body_total_s: float = 300.0
    # characters of a question or caption: the model reads its first text.max_length tokens (a few hundred
    # characters); a megabyte of text took seconds of the model's thread and hundreds of MB to tokenize
    max_text_chars: int = 10_000

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            least = 0 if name == "max_wait_ms" else 1  # no wait is allowed: every request runs alone
            if value < least:
                raise ConfigError(f"--{name.replace('_', '-')} {value} must be at least {least}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
