"""Run logs: a JSON-lines metrics file, TensorBoard (when installed), and PNG curves at the end. Only the main process
writes."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from meter.atomic_files import write_text_atomically

log = logging.getLogger(__name__)
_warned_no_tensorboard = False  # one warning a process, however many runs it logs


class MetricsLog:
    """Appends to metrics.jsonl and TensorBoard. Resuming at `resume_step` first drops what a killed run had logged
    after that step, so that the resumed run's records replace them instead of repeating them."""

    def __init__(
        self, folder: str | Path, enabled: bool = True, tensorboard: bool = True, resume_step: int | None = None
    ) -> None:
        self.folder = Path(folder)
        self.enabled = enabled
        self.path = self.folder / "metrics.jsonl"
        self.writer = None
        if enabled and resume_step is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            write_text_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))  # a kill keeps the old
        if enabled and tensorboard:
            self.writer = _summary_writer(self.folder / "tensorboard", None if resume_step is None else resume_step + 1)

    def write(self, step: int, values: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, **{f"{prefix}/{k}": v for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _summary_writer(folder: Path, purge_step: int | None) -> Any:
    """TensorBoard's writer, or None where tensorboard is not installed (a machine with torch alone, such as a
    borrowed GPU): the run then logs to metrics.jsonl only, rather than failing before its first step."""
    global _warned_no_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import
    except ImportError as error:
        if not _warned_no_tensorboard:
            _warned_no_tensorboard = True
            log.warning("tensorboard cannot be imported (%s): metrics go to metrics.jsonl only; "
                        "`pip install tensorboard` for TensorBoard's logs", error)  # fmt: skip
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file. A line cut short (a full disk or a kill while appending) is left out with a
    warning: the run it belongs to resumes, and rewrites the file without it."""
    path = Path(path)
    if not path.is_file():
        return []
    records, torn = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            torn.append(number)
    if torn:
        log.warning("%s: left out %d lines that are not whole records (line %s)", path, len(torn),
                    ", ".join(map(str, torn[:5])))  # fmt: skip
    return records


def plot_curves(series: dict[str, list[dict[str, Any]]], keys: list[str], out: str | Path, title: str = "") -> None:
    """One panel per key; one line per named run (e.g. {"model": records, "blind": records})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, records in series.items():
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), label=name)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
