"""A study stopped from outside (real processes): `meter study run` terminated stops its worker after a checkpoint and
waits for it, the cell shows as interrupted, and the next run resumes it; a submitit job signalled ahead of its
time limit (what the local controller and SLURM send) checkpoints, is requeued, and its cell resumes in the job."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meter.errors import ConfigError
from meter.study.cells import plan_study
from meter.study.execute import Outcome, blocked_by, run_study, schedule
from meter.study.executors import LocalProcesses, ProcessHandle, Submitit, worker_processes
from meter.study.records import STATUS, process_alive, read_status, write_json
from meter.study.spec import SlurmSpec, study_from_dict
from meter.study.status import study_states
from meter.train.stop_signals import PREEMPTED
from tests.studies import micro_study, write_study

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


def _as_in_a_terminal() -> None:
    """SIGINT at its default, so that Python installs its KeyboardInterrupt handler: a process started in the
    background of a non-interactive shell (as CI may start the tests) inherits it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _alive(pid: int) -> bool:
    """Running: not ended, nor a zombie that its parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _descendants(pid: int) -> list[int]:
    children = worker_processes(pid)
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def _stopped_step(worker_log: str, signal_name: str) -> int:
    match = re.search(rf"stopped by {signal_name}.* after step (\d+)", worker_log)
    assert match, worker_log[-3000:]
    return int(match.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_stopped_study_stops_its_worker_after_a_checkpoint_and_the_next_run_resumes_it(shapes_world, tmp_path, how):
    study = _long_pretraining(shapes_world)
    path, out = write_study(tmp_path / "study.yaml", study), tmp_path / "out"
    orchestrator = subprocess.Popen([sys.executable, "-m", "meter", "study", "run", str(path), "--out", str(out)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, preexec_fn=_as_in_a_terminal)  # fmt: skip
    cell = out / "cells/vlp/co-attention/seed-0"
    _wait_for_training(cell / "pretrain", orchestrator)
    worker = read_status(cell)["pid"]
    if how == "SIGTERM":  # a scheduler's stop: exit 75, to be requeued
        orchestrator.send_signal(signal.SIGTERM)
    else:  # a terminal's Ctrl-C reaches its whole foreground process group; the workers have sessions of their own
        os.killpg(orchestrator.pid, signal.SIGINT)
    log, _ = orchestrator.communicate(timeout=300)
    assert orchestrator.returncode == (PREEMPTED if how == "SIGTERM" else 130), log
    assert "waiting for 1 workers to stop" in log, log
    assert not process_alive(worker)  # it waited for the worker's checkpoint
    status = read_status(cell)
    assert status["state"] == "stopped" and status["run"] == "pretrain", status
    stopped_at = _stopped_step(status["stopped"], "SIGTERM")  # the orchestrator's request, after the step
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


@pytest.mark.slow
def test_a_submitit_job_signalled_ahead_of_its_time_limit_checkpoints_is_requeued_and_resumes(shapes_world, tmp_path):
    out = tmp_path / "out"
    cell = plan_study(study_from_dict(_long_pretraining(shapes_world)), out).cells[0]
    executor = Submitit("local", out / "submitit", SlurmSpec(gpus_per_node=0, cpus_per_task=2, time_min=20))
    handle = executor.submit(cell)
    folder = Path(cell.folder)
    _wait_for_training(folder / "pretrain")
    # SLURM's warning stop_s before the time limit: every process of the job (submitit's task, torchrun, the worker)
    job = _descendants(handle.job._process.pid)
    assert len(job) == 3, job
    _, torchrun, worker = job
    subprocess.run(["kill", "-USR2", *map(str, job)], check=True)
    while _alive(worker):  # torchrun ignores the signal: it stays to see its worker's checkpoint through
        assert _alive(torchrun), "torchrun died of the signal and left its worker"
        time.sleep(0.005)
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


class _Workers:
    """An executor whose workers are given commands (real processes), for the orchestrator's bookkeeping."""

    parallel = 1

    def __init__(self, command: list[str], log: Path) -> None:
        self.command, self.log = command, log

    def submit(self, cell) -> ProcessHandle:
        return LocalProcesses(1, gpus=[]).start(self.command, self.log)


@pytest.mark.parametrize("earlier", ["stopped", "running elsewhere", "done before"])
def test_the_orchestrator_reads_only_its_own_workers_status(shapes_world, tmp_path, earlier):
    """A worker that fails before writing its status is this attempt's failure, whatever an earlier worker's status
    says (an hour-old "stopped" is not this one's stop); but a cell another live worker holds is left to it."""
    cell = plan_study(study_from_dict(micro_study(shapes_world, variants=[])), tmp_path / "out").cells[0]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "study"])  # a live worker's pid
    try:
        state = {"stopped": "stopped", "running elsewhere": "running", "done before": "done"}[earlier]
        write_json(Path(cell.folder) / STATUS, {"state": state, "pid": other.pid if state == "running" else 1,
                                                "host": socket.gethostname(), "run": "pretrain", "errors": {},
                                                "stopped": "stopped by SIGTERM after step 3: ..."})  # fmt: skip
        outcome = Outcome()
        failing = _Workers([sys.executable, "-c", "raise SystemExit(1)"], tmp_path / "worker.log")
        schedule([cell], failing, 0.05, outcome)
    finally:
        other.kill()
        other.wait()
    if earlier in ("stopped", "done before"):  # an earlier attempt's status: this worker's failure is a failure
        assert not outcome.stopped and "the worker exited with code 1" in outcome.failed[cell.name]
        assert earlier != "stopped" or read_status(cell.folder)["state"] == "failed"
    else:
        assert outcome.skipped_running == [cell.name] and not outcome.failed and not outcome.ran


class _CountingWorkers(_Workers):
    def __init__(self, command: list[str], log: Path) -> None:
        super().__init__(command, log)
        self.submitted: list[str] = []

    def submit(self, cell) -> ProcessHandle:
        self.submitted.append(cell.name)
        return super().submit(cell)


def test_a_cell_whose_shared_pretraining_did_not_finish_is_not_started(shapes_world, tmp_path):
    """The cell that runs a shared pretraining failed (or stopped): the cells fine-tuning from it were started anyway,
    each worker failing for want of it; a stop of the first was reported as their failure (exit 1, not 75)."""
    study = micro_study(shapes_world, variants=[{"name": "vqa-lr", "finetune": ["train.lr=3e-4"]}])
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    owner, user = plan.cells
    assert user.depends_on == [owner.name]
    workers = _CountingWorkers([sys.executable, "-c", "raise SystemExit(1)"], tmp_path / "worker.log")
    outcome = Outcome()
    schedule([owner, user], workers, 0.05, outcome)
    assert workers.submitted == [owner.name]
    assert outcome.failed[user.name] == f"not run: the pretraining of {owner.name} did not finish"
    stopped = Outcome(stopped={owner.name: "stopped by SIGTERM after step 1"})  # the owner's worker was preempted
    assert blocked_by(user, stopped) and stopped.stopped[user.name] == (
        f"waits for the pretraining of {owner.name}, which stopped"
    )  # so the run exits 75 (requeue), not 1
    with pytest.raises(ConfigError, match=rf"--only: {user.name} fine-tunes from the pretraining of {owner.name}, "
                                          r"which has not finished and is not chosen: add it"):  # fmt: skip
        run_study(study_from_dict(study), tmp_path / "out", only=["vlp/vqa-lr/*"])
