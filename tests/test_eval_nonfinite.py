"""`meter evaluate` of a model whose outputs are NaN: an error naming the weight, not a score. An argmax over NaN
logits is class 0 for every example: VQA answered the vocabulary's first answer to every question, NLVR2 and SNLI-VE
one class for every pair, and retrieval ranked NaN scores at random; each was scored as if the model had answered."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from meter.cli import main
from meter.models.finite_outputs import NonFiniteOutput, check_finite
from tests.model_copies import with_nan_weight


@pytest.mark.parametrize(
    ("task", "weight"),
    [
        ("vqa", "heads.vqa.3.bias"),
        ("nlvr2", "heads.nlvr2.3.bias"),
        ("snli_ve", "heads.snli_ve.3.bias"),
        ("retrieval", "heads.rank.bias"),
        ("captioning", "decoder.lm_head.dense.bias"),
    ],
)
def test_evaluating_a_model_whose_outputs_are_nan_is_refused_naming_the_weight(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, capsys, task: str, weight: str
):
    model = with_nan_weight(micro_checkpoints(task), tmp_path / "nan", weight)
    out = tmp_path / "eval"
    code = main(["evaluate", task, "--checkpoint", str(model), "--out", str(out), f"data.root={shapes_tasks_world}",
                 "train.progress=false"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert (
        f"{model}: the model's outputs are not finite (NaN or inf); its weights hold NaN or inf (the first: {weight})"
        in err
    )
    assert not out.exists() or not list(out.glob("*.json"))  # no predictions, no scores


def test_an_overflow_of_a_finite_model_is_said_to_be_one():
    model = nn.Linear(2, 2)
    scores = torch.tensor([1.0, float("inf")])
    overflow = r"m: the model's outputs are not finite \(NaN or inf\); its weights are all finite: an input overflowed"
    with pytest.raises(NonFiniteOutput, match=overflow + r" \(try X\)$"):
        check_finite(scores, model, "m", "X")
    finite = scores[:1]
    assert check_finite(finite, model, "m") is finite
