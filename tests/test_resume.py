"""Runs killed with SIGKILL (real processes, at a chosen moment) and resumed end bitwise where a straight run ends.

The killed process is `meter pretrain` started through a small launcher that SIGKILLs its own process when the
training reaches a chosen call: the N-th backward (in the middle of an accumulated step), or the `torch.save` of a
checkpoint's training state (the weights of that checkpoint are already in its temporary folder).
"""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from meter.train.checkpoint import TASK_WEIGHTS, TRAINING_STATE, Checkpoints
from meter.train.metrics_log import read_metrics
from tests.runner import environment, pretrain_args, run_meter

RUN = ["train.device=cpu", "train.max_steps=8", "train.checkpoint_every=3", "train.grad_accum=2", "objectives.mim=1",
       "train.deterministic=true", "model.fusion.dropout=0.1"]  # fmt: skip
KILLER = """
import os, signal, sys
import torch

def kill_on(owner, name, now):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        if now(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)

where, at = sys.argv[1], sys.argv[2]
if where == "backward":
    calls = []
    kill_on(torch.Tensor, "backward", lambda *a, **k: calls.append(1) or len(calls) == int(at))
else:
    kill_on(torch, "save", lambda obj, path, *a, **k: at in str(path))
from meter.cli import main
sys.argv = ["meter", *sys.argv[3:]]
sys.exit(main())
"""


def _killed_run(data: Path, out: Path, where: str, at: str) -> None:
    args = pretrain_args(data, out, *RUN)
    done = subprocess.run([sys.executable, "-c", KILLER, where, at, *args], env=environment(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors") | load_file(checkpoint / TASK_WEIGHTS)


def _assert_same_run(straight: Path, resumed: Path) -> None:
    a, b = _weights(straight / "checkpoints/step_00000008"), _weights(resumed / "checkpoints/step_00000008")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    logged, relogged = read_metrics(straight / "metrics.jsonl"), read_metrics(resumed / "metrics.jsonl")
    assert [r["step"] for r in relogged] == list(range(1, 9)), "each step logged once, also after the kill"
    for key in ("train/mlm_loss", "train/itm_loss", "train/mim_loss"):
        assert [r[key] for r in relogged] == [r[key] for r in logged]


@pytest.fixture(scope="module")
def straight_run(shapes_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    run_meter(pretrain_args(shapes_world, out, *RUN))
    return out


@pytest.mark.slow
def test_run_killed_in_the_middle_of_a_step_resumes_to_the_straight_runs_weights(straight_run, shapes_world, tmp_path):
    out = tmp_path / "run"
    _killed_run(shapes_world, out, "backward", "10")  # the second micro-batch of step 5
    assert [p.name for p in Checkpoints(out / "checkpoints").all()] == ["step_00000003"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]
    run_meter([*pretrain_args(shapes_world, out, *RUN), "--resume", "latest"])
    _assert_same_run(straight_run, out)


@pytest.mark.slow
def test_run_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(straight_run, shapes_world, tmp_path):
    out = tmp_path / "run"
    _killed_run(shapes_world, out, "checkpoint", ".step_00000006.tmp")
    half_written = out / "checkpoints/.step_00000006.tmp"
    assert (half_written / "model.safetensors").is_file() and not (half_written / TRAINING_STATE).exists()
    assert Checkpoints(out / "checkpoints").latest().name == "step_00000003"
    run_meter([*pretrain_args(shapes_world, out, *RUN), "--resume", "latest"])
    assert not half_written.exists()
    assert [p.name for p in Checkpoints(out / "checkpoints").all()] == ["step_00000006", "step_00000008"]
    _assert_same_run(straight_run, out)


def test_a_resume_finishes_the_deletion_a_kill_interrupted_after_the_last_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    for name in ("step_00000004", ".step_00000002.deleting"):
        (folder / name).mkdir(parents=True)
        (folder / name / "progress.json").write_text("{}")
    (folder / "abandoned-step_00000006").mkdir()
    assert Checkpoints(folder).resolve("latest", set_aside=True).name == "step_00000004"
    assert sorted(p.name for p in folder.iterdir()) == ["abandoned-step_00000006", "step_00000004"]


def test_latest_skips_folders_a_killed_run_left_half_written_or_half_deleted(tmp_path):
    folder = tmp_path / "checkpoints"
    for name in ("step_00000002", "step_00000004", ".step_00000006.tmp", ".step_00000001.deleting"):
        (folder / name).mkdir(parents=True)
    for name in ("step_00000002", "step_00000004"):
        (folder / name / "progress.json").write_text("{}")
    (folder / "step_00000009").mkdir()  # no progress.json: never a complete checkpoint
    checkpoints = Checkpoints(folder)
    assert [p.name for p in checkpoints.all()] == ["step_00000002", "step_00000004"]
    assert checkpoints.latest().name == "step_00000004"


@pytest.mark.slow
def test_a_resumed_runs_log_lines_average_the_same_steps_as_the_straight_runs(shapes_world, tmp_path):
    """train.log_every=4, checkpoints every 3, killed in step 5: the line of step 4 was lost with the kill, and the
    resumed run logged step 4 (then 8) as the mean of the steps since its resume alone (step 4, not 1-4)."""
    every = [*RUN, "train.log_every=4"]
    run_meter(pretrain_args(shapes_world, tmp_path / "straight", *every))
    out = tmp_path / "run"
    args = pretrain_args(shapes_world, out, *every)
    done = subprocess.run([sys.executable, "-c", KILLER, "backward", "10", *args], env=environment(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    run_meter([*args, "--resume", "latest"])
    logged, relogged = read_metrics(tmp_path / "straight/metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in logged] == [r["step"] for r in relogged] == [4, 8]
    for key in ("train/mlm_loss", "train/itm_loss", "train/mim_loss", "train/grad_norm"):
        assert [r[key] for r in relogged] == pytest.approx([r[key] for r in logged], rel=1e-6), key
