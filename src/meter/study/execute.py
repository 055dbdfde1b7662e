"""`meter study run`: plan the study, then run every cell that is not done, as many at a time as the executor
allows, a cell after the cells whose pretraining it uses; then write the report.

A cell that finished is not run again; one that was interrupted or failed runs again and resumes its runs from their
checkpoints (finished runs are kept); one whose worker is alive elsewhere (another `meter study run`, a queued
Slurm job) is left to it. A cell that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from meter.errors import ConfigError
from meter.study.cells import CellPlan, StudyPlan, plan_study
from meter.study.executors import EXECUTORS, LocalProcesses, Submitit
from meter.study.records import read_status, record_lost_worker, run_done, status_alive
from meter.study.spec import SlurmSpec, StudySpec

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped_done: list[str] = field(default_factory=list)
    skipped_running: list[str] = field(default_factory=list)


def cell_done(cell: CellPlan) -> bool:
    return all(run_done(run) for run in cell.own_runs())


def select_cells(plan: StudyPlan, only: list[str] | None) -> list[CellPlan]:
    if not only:
        return plan.cells
    chosen = [cell for cell in plan.cells if any(fnmatch.fnmatch(cell.name, pattern) for pattern in only)]
    if not chosen:
        names = ", ".join(cell.name for cell in plan.cells)
        raise ConfigError(f"--only {' '.join(only)} matches no cell; the cells: {names}")
    return chosen


def make_executor(name: str, out: Path, jobs: int, slurm: SlurmSpec) -> LocalProcesses | Submitit:
    if name == "local":
        return LocalProcesses(jobs)
    if name == "submitit-local":
        return Submitit("local", out / "submitit", slurm, parallel=jobs)
    if name == "slurm":
        return Submitit("slurm", out / "submitit", slurm)
    raise ConfigError(f"--executor {name!r}; choose one of: {', '.join(EXECUTORS)}")


def schedule(cells: list[CellPlan], executor: LocalProcesses | Submitit, poll_s: float, outcome: Outcome) -> None:
    """Runs `cells`, `executor.parallel` at a time, each after the cells it depends on have ended."""
    waiting = list(cells)
    running: dict[str, tuple[CellPlan, object, float]] = {}
    try:
        while waiting or running:
            pending = {cell.name for cell in waiting} | set(running)
            for cell in list(waiting):
                if len(running) >= executor.parallel:
                    break
                if any(dependency in pending for dependency in cell.depends_on):
                    continue
                waiting.remove(cell)
                handle = executor.submit(cell)
                running[cell.name] = (cell, handle, time.perf_counter())
                log.info("study: %s started (%s)", cell.name, handle.describe())
            for name, (cell, handle, began) in list(running.items()):
                reason = handle.poll()
                if reason is None:
                    continue
                del running[name]
                outcome.ran.append(name)
                seconds = time.perf_counter() - began
                if reason:
                    record_lost_worker(cell.folder, reason)
                errors = read_status(cell.folder).get("errors", {})
                if errors or reason:
                    outcome.failed[name] = "; ".join(f"{run}: {error.splitlines()[-1]}" for run, error in
                                                     errors.items()) or reason  # fmt: skip
                    log.warning("study: %s failed after %.0f s: %s", name, seconds, outcome.failed[name])
                else:
                    log.info("study: %s done in %.0f s", name, seconds)
            if running:
                time.sleep(poll_s)
    except BaseException:  # interrupted: stop the workers; their cells resume on the next run
        for _, handle, _ in running.values():
            handle.stop()
        raise


def run_study(
    spec: StudySpec, out: str | Path, executor: str = "local", jobs: int = 1, only: list[str] | None = None,
    slurm: SlurmSpec | None = None, poll_s: float | None = None, report: bool = True,
) -> Outcome:  # fmt: skip
    out = Path(out)
    plan = plan_study(spec, out)
    outcome = Outcome()
    todo = []
    for cell in select_cells(plan, only):
        if cell_done(cell):
            outcome.skipped_done.append(cell.name)
        elif status_alive(read_status(cell.folder)):
            outcome.skipped_running.append(cell.name)
            log.warning("study: %s is running elsewhere (%s); left to it", cell.name, read_status(cell.folder))
        else:
            todo.append(cell)
    log.info("study %s: %d cells, %d done, %d to run", plan.name, len(plan.cells), len(outcome.skipped_done), len(todo))
    if todo:
        chosen = make_executor(executor, out, jobs, slurm or SlurmSpec(**plan.slurm))
        schedule(todo, chosen, poll_s if poll_s is not None else (30.0 if executor == "slurm" else 0.5), outcome)
    if report:
        from meter.study.report import write_report

        write_report(out)
    return outcome
