"""A Slurm job that an earlier `meter study run` submitted and that still waits in the queue has no status file yet;
a second run submitted its cell again (two jobs for one cell, the second burning an allocation to find it held or
done). The job's id is recorded in the cell folder and Slurm's queue is asked. There is no Slurm here: `squeue` is a
script on the PATH that answers as Slurm's does for the jobs it is told about."""

import os
import stat
import time
from pathlib import Path

from meter.study.cells import plan_study, save_plan
from meter.study.execute import Outcome, held_elsewhere, run_study
from meter.study.executors import SUBMITTED, queued_job
from meter.study.records import STATUS, write_json
from meter.study.spec import study_from_dict
from meter.study.status import study_states
from tests.studies import micro_study


def _squeue(folder: Path, states: dict[str, str]) -> Path:
    """An squeue answering `--noheader --jobs ID --format=%T` with the job's state, or nothing for a job that ended."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "squeue"
    cases = "".join(f'    *"--jobs {job} "*) echo {state};;\n' for job, state in states.items())
    script.write_text(f'#!/bin/sh\ncase "$* " in\n{cases}    *) ;;\nesac\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def test_a_cell_whose_job_waits_in_the_queue_is_left_to_it_and_one_that_ended_is_run(shapes_world, tmp_path,
                                                                                     monkeypatch):  # fmt: skip
    study = study_from_dict(micro_study(shapes_world, variants=[]))
    out = tmp_path / "out"
    cell = plan_study(study, out).cells[0]
    write_json(Path(cell.folder) / SUBMITTED, {"job": "4242", "submitted": time.time()})
    assert queued_job(cell.folder) == ""  # no squeue on this PATH: nothing to ask
    bin_folder = _squeue(tmp_path / "bin", {"4242": "PENDING", "4343": "COMPLETED"})
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    assert queued_job(cell.folder) == "job 4242 (PENDING)"
    assert "job 4242 (PENDING)" in held_elsewhere(cell.folder)
    outcome = run_study(study, out, report=False)
    assert outcome.skipped_running == [cell.name] and not outcome.ran and isinstance(outcome, Outcome)
    write_json(Path(cell.folder) / SUBMITTED, {"job": "4343", "submitted": time.time()})
    assert queued_job(cell.folder) == "" and held_elsewhere(cell.folder) == ""  # it ended: the cell is free
    write_json(Path(cell.folder) / SUBMITTED, {"job": "9999", "submitted": time.time()})
    assert queued_job(cell.folder) == ""  # squeue no longer knows it


def test_status_shows_a_cell_whose_job_waits_in_the_queue_as_queued(shapes_world, tmp_path, monkeypatch):
    study = study_from_dict(micro_study(shapes_world, variants=[]))
    out = tmp_path / "out"
    plan = plan_study(study, out)
    save_plan(plan, out)
    cell = plan.cells[0]
    assert study_states(out)[0].state == "not started"
    write_json(Path(cell.folder) / SUBMITTED, {"job": "4242", "submitted": time.time()})
    monkeypatch.setenv("PATH", f"{_squeue(tmp_path / 'bin', {'4242': 'PENDING'})}{os.pathsep}{os.environ['PATH']}")
    queued = study_states(out)[0]
    assert (queued.state, queued.detail) == ("queued", "job 4242 (PENDING) in the Slurm queue")


def test_status_shows_a_failed_cell_whose_recorded_error_is_empty_or_not_a_mapping(shapes_world, tmp_path):
    """A status file another tool (or a hand) wrote with an empty error was an IndexError of `meter study status`."""
    out = tmp_path / "out"
    plan = plan_study(study_from_dict(micro_study(shapes_world, variants=[])), out)
    save_plan(plan, out)
    cell = Path(plan.cells[0].folder)
    for errors, detail in (({"pretrain": ""}, "pretrain: no message recorded"),
                           ({"vqa": "Traceback ...\nDataError: disk full\n"}, "vqa: DataError: disk full"),
                           (["lost"], "['lost']")):  # fmt: skip
        write_json(cell / STATUS, {"state": "failed", "errors": errors})
        failed = study_states(out)[0]
        assert (failed.state, failed.detail) == ("failed", detail)
