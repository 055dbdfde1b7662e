"""Damaged copies of a model folder, as a diverged run or a broken conversion leaves them."""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from meter.models.checksums import record_checksums


def with_nan_weight(checkpoint: Path, out: Path, weight: str) -> Path:
    """A copy of a checkpoint folder with a NaN in `weight` (as a run that diverged leaves it), its checksums recorded
    anew so that it loads."""
    shutil.copytree(checkpoint, out)
    weights = load_file(out / "model.safetensors")
    weights[weight].view(-1)[0] = float("nan")
    save_file(weights, str(out / "model.safetensors"))
    record_checksums(out, "model")
    return out
