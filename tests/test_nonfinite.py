"""Non-finite values (issue 14 item 5): every process skips the same step, and train.max_nonfinite_steps steps in a row
stop the run with a message saying where (the loss or the gradient, which process).

What each test injects, and how:
- a loss scaled to overflow: a loss weight (objectives.mlm=1e38) that makes the summed loss inf in float32, in fp32
  and under bf16 autocast; a weight (objectives.itm=1e36) whose loss stays finite while the gradient norm overflows;
- NaN in one process's gradient: two real processes (gloo), started through tests/faults.py's launcher, whose rank 1
  writes NaN into one of its gradients after backward (after the all-reduce, so only its own copy is NaN) at step 3,
  and at every step from 6 on;
- NaN and Inf in an image file: a real float32 TIFF (PNG cannot hold NaN) with NaN and Inf pixels, put in place of
  one training image; decoding makes 8-bit pixels of it (NaN as black), so no step is lost. NaN pixels that reach the
  model from a dataset are skipped steps: tests/test_engine.py::test_a_nan_input_skips_its_step_with_a_warning_and_
  training_goes_on.
"""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from meter.config import load_config
from meter.errors import MeterError
from meter.runs import run_pretrain
from meter.train.metrics_log import read_metrics
from tests.faults import applied_steps, run_meter_with_faults
from tests.runner import EXACT, pretrain_args


@pytest.mark.parametrize(
    ("weight", "precision", "where"),
    [("objectives.mlm=1e38", "fp32", "the loss and the gradient"), ("objectives.mlm=1e38", "bf16", "the loss and the"
     " gradient"), ("objectives.itm=1e36", "fp32", "the gradient"), ("objectives.itm=1e36", "bf16", "the gradient")],
)  # fmt: skip
def test_a_loss_scaled_to_overflow_skips_steps_until_the_budget_stops_the_run(micro_config, tmp_path, weight,
                                                                              precision, where):  # fmt: skip
    overrides = ["train.max_steps=6", "train.max_nonfinite_steps=2", "train.device=cpu", f"train.precision={precision}"]
    cfg = load_config(None, [f"train.out={tmp_path / 'run'}", *overrides, weight], base=micro_config)
    with pytest.raises(MeterError, match=rf"2 steps in a row with a non-finite loss or gradient, the last at step 2 "
                                         rf"\(train.max_nonfinite_steps = 2\): {where};"):  # fmt: skip
        run_pretrain(cfg)
    assert not (tmp_path / "run/checkpoints").exists()


def test_a_float_tiff_with_nan_and_inf_pixels_is_read_as_finite_pixels_and_loses_no_step(micro_config, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(micro_config.data.root, world)
    karpathy = json.loads((world / micro_config.data.karpathy).read_text())
    first = next(i for i in karpathy["images"] if i["split"] == "train")
    pixels = np.full((64, 64), 0.5, np.float32)
    pixels[:8] = np.nan
    pixels[8:16] = np.inf
    path = world / micro_config.data.images / first["filepath"] / first["filename"]
    with path.open("wb") as f:  # TIFF content under the listed name: PIL reads what the file holds
        Image.fromarray(pixels, mode="F").save(f, format="TIFF")
    assert Image.open(path).mode == "F" and np.isnan(np.asarray(Image.open(path))).any()
    cfg = load_config(None, [f"data.root={world}", f"train.out={tmp_path / 'run'}", "train.max_steps=6",
                             "train.max_nonfinite_steps=1"], base=micro_config)  # fmt: skip
    run_pretrain(cfg)  # 6 steps of 8 samples: every one of the 48 training images once
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all("train/nonfinite_steps" not in r and r["train/mlm_loss"] > 0 for r in records)
    assert not (tmp_path / "run/bad_samples.jsonl").exists()


@pytest.mark.slow
def test_nan_in_one_process_gradient_makes_every_process_skip_the_step_and_the_budget_stop_both(shapes_world, tmp_path):
    out, log = tmp_path / "run", tmp_path / "steps"
    args = pretrain_args(shapes_world, out, *EXACT, "train.max_steps=10", "train.batch_size=4",
                         "objectives.itm_group_size=4", "train.max_nonfinite_steps=2")  # fmt: skip
    done = run_meter_with_faults(args, ["clip:3:nan:1", "clip:6+:nan:1"], processes=2, env={"STEP_LOG": str(log)})
    assert [code for code, _ in done] == [2, 2], done[0][1][-3000:]
    for _, stderr in done:
        assert stderr.strip().splitlines()[-1] == (
            "meter: 2 steps in a row with a non-finite loss or gradient, the last at step 7 "
            "(train.max_nonfinite_steps = 2): the gradient on process 1 of 2; lower train.lr or the loss weights, "
            "check the data, or use train.precision=fp32"
        )
    skipped = "step 3: non-finite loss or gradient, step skipped (1 in a row): the gradient on process 1 of 2"
    assert skipped in done[0][1]
    assert applied_steps(log, 0) == applied_steps(log, 1) == [1, 2, 4, 5]
    records = {r["step"]: r for r in read_metrics(out / "metrics.jsonl")}
    assert records[3]["train/nonfinite_steps"] == 1, "both processes skipped step 3 (one alone would log 0.5)"
    assert "train/nonfinite_steps" not in records[4]
