"""Skipping bad samples: each is counted and named, and past a budget the run stops with a clear message."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from meter.errors import DataError

log = logging.getLogger(__name__)
WARN_FIRST = 5  # name this many bad samples in the log; the rest go to the file only


@dataclass(frozen=True)
class BadSample:
    """Stands in a batch for a sample that could not be read."""

    path: str
    reason: str


class BadSampleBudget:
    """Counts distinct bad samples; raises once more than `max_fraction` of `total` samples are bad."""

    def __init__(
        self, max_fraction: float, total: int, log_file: str | Path | None = None, setting: str = "data.max_bad_samples"
    ) -> None:
        self.setting = setting  # the option that sets the budget, named in the message
        self.allowed = int(max_fraction * total)
        self.total = total
        self.max_fraction = max_fraction
        self.log_file = Path(log_file) if log_file else None
        self.bad: dict[str, str] = {}

    def record(self, sample: BadSample) -> None:
        if sample.path in self.bad:
            return
        self.bad[sample.path] = sample.reason
        if len(self.bad) <= WARN_FIRST:
            log.warning("data: skipped %s", sample.reason)
        if self.log_file is not None:
            with self.log_file.open("a") as f:
                f.write(json.dumps({"path": sample.path, "reason": sample.reason}) + "\n")
        if len(self.bad) > self.allowed:
            first = next(iter(self.bad.values()))
            where = f"; see {self.log_file}" if self.log_file else ""
            raise DataError(
                f"skipped {len(self.bad):,} of {self.total:,} samples, more than the budget of {self.allowed:,}"
                f" ({self.max_fraction:.1%}, {self.setting}): first: {first}{where}"
            )

    def summary(self) -> str:
        return f"skipped {len(self.bad):,} of {self.total:,} samples (budget {self.allowed:,})"
