"""A study stopped from outside (real processes): `meter study run` terminated stops its worker after a checkpoint and
waits for it, the cell shows as interrupted, and the next run resumes it; a submitit job signalled ahead of its
time limit (what the local controller and SLURM send) checkpoints, is requeued, and its cell resumes in the job."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meter.study.cells import plan_study
from meter.study.execute import run_study
from meter.study.executors import Submitit, worker_processes
from meter.study.records import process_alive, read_status
from meter.study.spec import SlurmSpec, study_from_dict
from meter.study.status import study_states
from tests.studies import micro_study, write_study

pytestmark = pytest.mark.slow
STEPS = 40


def _long_pretraining(world: Path) -> dict:
    study = micro_study(world, variants=[])
    study["base"]["pretrain"] = {"recipe": "shapes-tiny.yaml", "steps": STEPS,
                                 "overrides": ["train.checkpoint_every=10", "train.log_every=1"]}  # fmt: skip
    return study


def _logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def _wait_for_training(run: Path, alive: subprocess.Popen | None = None, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while len(_logged_steps(run)) < 2:
        assert time.monotonic() < deadline, "the pretraining did not start"
        assert alive is None or alive.poll() is None, alive.communicate()[0]
        time.sleep(0.02)


def _stopped_step(worker_log: str, signal_name: str) -> int:
    match = re.search(rf"stopped by {signal_name}.* after step (\d+)", worker_log)
    assert match, worker_log[-3000:]
    return int(match.group(1))


def test_a_terminated_study_stops_its_worker_after_a_checkpoint_and_the_next_run_resumes_it(shapes_world, tmp_path):
    study = _long_pretraining(shapes_world)
    path, out = write_study(tmp_path / "study.yaml", study), tmp_path / "out"
    orchestrator = subprocess.Popen([sys.executable, "-m", "meter", "study", "run", str(path), "--out", str(out)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    cell = out / "cells/vlp/co-attention/seed-0"
    _wait_for_training(cell / "pretrain", orchestrator)
    worker = read_status(cell)["pid"]
    orchestrator.send_signal(signal.SIGTERM)
    log, _ = orchestrator.communicate(timeout=300)
    assert orchestrator.returncode == 130 and "waiting for 1 workers to stop" in log, log
    assert not process_alive(worker)  # it waited for the worker's checkpoint
    status = read_status(cell)
    assert status["state"] == "stopped" and status["run"] == "pretrain", status
    stopped_at = _stopped_step(status["stopped"], "SIGTERM")
    assert 2 <= stopped_at < STEPS and (cell / f"pretrain/checkpoints/step_{stopped_at:08d}").is_dir()
    assert not (cell / "vqa/config.yaml").exists()  # the worker went no further than the stopped run
    state = study_states(out)[0]
    assert state.state == "interrupted" and "stopped in pretrain: stopped by SIGTERM" in state.detail

    outcome = run_study(study_from_dict(study), out)
    assert outcome.ran == ["vlp/co-attention/seed-0"] and not outcome.failed and not outcome.stopped
    checkpoints = cell / "pretrain/checkpoints"
    assert f"resumed from {checkpoints}/step_{stopped_at:08d} at step {stopped_at}" in (cell / "worker.log").read_text()
    assert _logged_steps(cell / "pretrain") == list(range(1, STEPS + 1))  # resumed: no step lost or logged twice
    assert read_status(cell)["state"] == "done" and study_states(out)[0].state == "done"


def test_a_submitit_job_signalled_ahead_of_its_time_limit_checkpoints_is_requeued_and_resumes(shapes_world, tmp_path):
    out = tmp_path / "out"
    cell = plan_study(study_from_dict(_long_pretraining(shapes_world)), out).cells[0]
    executor = Submitit("local", out / "submitit", SlurmSpec(gpus_per_node=0, cpus_per_task=2, time_min=20))
    handle = executor.submit(cell)
    folder = Path(cell.folder)
    _wait_for_training(folder / "pretrain")
    # what the local controller sends its task stop_s before the time limit (SLURM: every process of the job)
    (task,) = worker_processes(handle.job._process.pid)
    subprocess.run(["kill", "-USR2", str(task)], check=True)
    deadline = time.monotonic() + 300
    while (ended := handle.poll()) is None:
        assert time.monotonic() < deadline, "the requeued job did not finish"
        time.sleep(0.2)
    assert ended == "", ended
    job_log = "".join(path.read_text() for path in sorted((out / "submitit").glob("*_log.*")))  # the worker's too
    stopped_at = _stopped_step(job_log, "SIGUSR2")
    assert 2 <= stopped_at < STEPS and "Requeued job" in job_log
    checkpoints = folder / "pretrain/checkpoints"
    assert f"resumed from {checkpoints}/step_{stopped_at:08d} at step {stopped_at}" in job_log
    assert _logged_steps(folder / "pretrain") == list(range(1, STEPS + 1))  # resumed: no step lost or logged twice
    assert read_status(folder)["state"] == "done" and (folder / "vqa/result.json").is_file()
