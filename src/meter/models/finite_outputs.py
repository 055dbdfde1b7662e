"""The check every prediction path makes before it ranks, thresholds or writes a model's scores: NaN or inf
outputs are an error naming their cause, never an argmax over NaN (class 0, the vocabulary's first answer, a
caption of nothing) scored as if the model had answered."""

from __future__ import annotations

from torch import Tensor, isfinite, nn

from meter.errors import DataError

FP32_SETTING = "train.precision=fp32"


class NonFiniteOutput(DataError):
    """The model's scores hold NaN or inf: nothing to rank, and `NaN` is not JSON."""


def first_nonfinite_weight(model: nn.Module) -> str | None:
    """The name of the model's first floating-point weight or buffer that holds NaN or inf; None if all are finite."""
    tensors = model.state_dict().items()
    return next((name for name, t in tensors if t.is_floating_point() and not bool(isfinite(t).all())), None)


def check_finite(scores: Tensor, model: nn.Module, source: object, fp32: str = FP32_SETTING) -> Tensor:
    """`scores` if every one is a number; else a NonFiniteOutput naming `source` (the model folder) and the first of
    its weights that is NaN or inf (a run that diverged, a damaged conversion), or, when all are finite, the overflow
    and `fp32`, the setting that avoids it."""
    if bool(isfinite(scores).all()):
        return scores
    bad = first_nonfinite_weight(model)
    if bad:
        cause = f"its weights hold NaN or inf (the first: {bad}): a run that diverged? use an earlier checkpoint"
    else:
        cause = f"its weights are all finite: an input overflowed (try {fp32})"
    raise NonFiniteOutput(f"{source}: the model's outputs are not finite (NaN or inf); {cause}")
