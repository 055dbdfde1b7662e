"""`meter study run`: plan the study, then run every cell that is not done, as many at a time as the executor
allows, a cell after the cells whose pretraining it uses; then write the report.

A cell that finished is not run again; one that was interrupted or failed runs again and resumes its runs from their
checkpoints (finished runs are kept); one whose worker is alive elsewhere (another `meter study run`, a queued
Slurm job) is left to it. A cell that fails is recorded with its error and the others go on. A cell whose worker was
asked to stop (a preemption signal) stopped after a checkpoint and resumes on the next run.

Interrupted itself (Ctrl-C, SIGTERM, SIGHUP), `meter study run` asks its local workers to stop after a checkpoint and
waits for them (up to STOP_WAIT_S; Ctrl-C again leaves them), so that a run started right after finds every cell
stopped; submitit jobs run on (the next run leaves them to their jobs).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from meter.errors import ConfigError, DataError
from meter.output_folder import check_own_folder, waiting_for_folder
from meter.study.batch_split import check_global_batches
from meter.study.cells import PLAN, CellPlan, StudyPlan, plan_study
from meter.study.executors import EXECUTORS, LocalProcesses, ProcessHandle, Submitit, queued_job
from meter.study.records import read_status, record_lost_worker, run_done, status_alive
from meter.study.spec import SlurmSpec, StudySpec

log = logging.getLogger(__name__)
MARKER = ".meter-study"  # written first into a study's --out
# held from the check that --out holds no other study until this one's plan is written: two studies started at once
# into a new folder both found no plan, and ran in each other's cells
PLAN_LOCK = ".meter-study-plan.lock"
STOP_WAIT_S = 600.0  # for local workers asked to stop: the step they are in, then their checkpoint


@dataclass
class Outcome:
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)  # asked to stop by a signal: resume on the next run
    skipped_done: list[str] = field(default_factory=list)
    skipped_running: list[str] = field(default_factory=list)
    report_error: str = ""  # the report was not written (a setting of the study's tables to correct)


def cell_done(cell: CellPlan) -> bool:
    return all(run_done(run) for run in cell.own_runs())


def live_worker(cell_folder: str) -> str:
    """The live worker that runs the cell ("" if none)."""
    status = read_status(cell_folder)
    if not status_alive(status, cell_folder):
        return ""
    where = f"pid {status.get('pid', '?')} on {status.get('host', '?')}, on its run {status.get('run') or '-'}"
    return f"another worker ({where})"


def held_elsewhere(cell_folder: str) -> str:
    """Who else has the cell ("" if no one): a live worker (its status), or a Slurm job of an earlier `meter study
    run` still in the queue (it has no status until it starts)."""
    worker = live_worker(cell_folder)
    if worker:
        return worker
    job = queued_job(cell_folder)
    return f"{job}, submitted by an earlier run and still in the Slurm queue (scancel it to run the cell anew)" if job \
        else ""  # fmt: skip


def waits_for_pretraining(cell: CellPlan) -> bool:
    """Whether the pretraining the cell shares with another (which runs it) has not finished."""
    return any(run.kind == "pretrain" and run.owner != cell.name and not run_done(run) for run in cell.runs)


def blocked_by(cell: CellPlan, outcome: Outcome) -> bool:
    """Records the cell as stopped, failed or left to another worker when the cell that runs its pretraining ended
    so, without it; True then (the cell is not submitted: its worker could only fail for want of it)."""
    if not waits_for_pretraining(cell):
        return False
    for owner in cell.depends_on:
        if owner in outcome.stopped:
            outcome.stopped[cell.name] = f"waits for the pretraining of {owner}, which stopped"
        elif owner in outcome.failed:
            outcome.failed[cell.name] = f"not run: the pretraining of {owner} did not finish"
        elif owner in outcome.skipped_running:
            outcome.skipped_running.append(cell.name)
        else:
            continue
        return True
    return False


def select_cells(plan: StudyPlan, only: list[str] | None) -> list[CellPlan]:
    if not only:
        return plan.cells
    chosen = [cell for cell in plan.cells if any(fnmatch.fnmatch(cell.name, pattern) for pattern in only)]
    if not chosen:
        names = ", ".join(cell.name for cell in plan.cells)
        raise ConfigError(f"--only {' '.join(only)} matches no cell; the cells: {names}")
    return chosen


def check_same_study(spec: StudySpec, out: Path) -> None:
    """An --out that holds another study's plan is refused: its plan, status and report would become this one's."""
    try:
        planned = json.loads((out / PLAN).read_text()).get("name")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return
    if planned is not None and planned != spec.name:
        raise ConfigError(f"--out {out} holds the study {planned!r}; this file is the study {spec.name!r}: give it an "
                          "--out of its own")  # fmt: skip


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
                if blocked_by(cell, outcome):
                    log.warning("study: %s not started: its pretraining, run by %s, has not finished", cell.name,
                                ", ".join(cell.depends_on))  # fmt: skip
                    continue
                handle = executor.submit(cell)
                running[cell.name] = (cell, handle, time.perf_counter())
                log.info("study: %s started (%s)", cell.name, handle.describe())
            for name, (cell, handle, began) in list(running.items()):
                reason = handle.poll()
                if reason is None:
                    continue
                del running[name]
                status = read_status(cell.folder)
                own = handle.owns(status)
                # another worker holds the cell (its lock), or finished it while this one was refused its lock (its
                # runs' own records say so: a status file's "done" may be an earlier attempt's)
                if reason and not own and (status_alive(status, cell.folder) or cell_done(cell)):
                    outcome.skipped_running.append(name)
                    log.warning("study: %s is run by another worker (%s); left to it", name, reason)
                    continue
                outcome.ran.append(name)
                seconds = time.perf_counter() - began
                if own and status.get("state") == "stopped":  # this worker's, not one an earlier attempt left
                    outcome.stopped[name] = f"{status.get('run')}: {status.get('stopped')}"
                    log.warning("study: %s stopped after %.0f s: %s", name, seconds, outcome.stopped[name])
                    continue
                if reason:
                    record_lost_worker(cell.folder, reason, own)
                errors = read_status(cell.folder).get("errors", {})
                if errors or reason:
                    outcome.failed[name] = "; ".join(f"{run}: {error.splitlines()[-1]}" for run, error in
                                                     errors.items()) or reason  # fmt: skip
                    log.warning("study: %s failed after %.0f s: %s", name, seconds, outcome.failed[name])
                else:
                    log.info("study: %s done in %.0f s", name, seconds)
            if running:
                time.sleep(poll_s)
    except BaseException:  # interrupted: stop this machine's workers (their cells resume on the next run)
        local = [handle for _, handle, _ in running.values() if isinstance(handle, ProcessHandle)]
        jobs = [handle.describe() for _, handle, _ in running.values() if not isinstance(handle, ProcessHandle)]
        for handle in local:
            handle.stop()
        if jobs:  # they run on without this process; the next `meter study run` leaves them to it
            log.warning("study: left running: %s (scancel to stop them)", ", ".join(jobs))
        wait_for_stopped(local)
        raise


def wait_for_stopped(handles: list[ProcessHandle], timeout_s: float = STOP_WAIT_S) -> None:
    """Waits for workers asked to stop to write their checkpoints and end; Ctrl-C again leaves them to it."""
    if not handles:
        return
    log.warning("study: waiting for %d workers to stop after a checkpoint (Ctrl-C again to leave them)", len(handles))
    deadline = time.monotonic() + timeout_s
    try:
        while any(handle.poll() is None for handle in handles) and time.monotonic() < deadline:
            time.sleep(0.1)
    except KeyboardInterrupt:
        log.warning("study: left %s to stop on their own", ", ".join(handle.describe() for handle in handles))


class Terminated(KeyboardInterrupt):
    """`meter study run` was sent SIGTERM or SIGHUP (a scheduler's, or its terminal closed)."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated while scheduling, so that `meter study run` stops its workers as Ctrl-C
    does, instead of dying and leaving them to run on."""

    def interrupt(signum: int, frame: object) -> None:
        raise Terminated(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_study(
    spec: StudySpec, out: str | Path, executor: str = "local", jobs: int = 1, only: list[str] | None = None,
    slurm: SlurmSpec | None = None, poll_s: float | None = None, report: bool = True,
) -> Outcome:  # fmt: skip
    out = Path(out)
    check_own_folder(out, (PLAN, MARKER), "meter study run", "--out", ignored=(PLAN_LOCK,))
    check_same_study(spec, out)
    if only:  # a bad --only before anything is written (a study whose data is not made yet is checked after)
        with contextlib.suppress(DataError):
            select_cells(plan_study(spec, out, prepare=False), only)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()  # first: the world or holdout files planning writes next are this study's too
    with waiting_for_folder(out, PLAN_LOCK):
        check_same_study(spec, out)  # again, now that no other study can be writing its plan
        plan = plan_study(spec, out, running=live_worker)
    outcome = Outcome()
    todo = []
    for cell in select_cells(plan, only):
        if cell_done(cell):
            outcome.skipped_done.append(cell.name)
        elif holder := held_elsewhere(cell.folder):
            outcome.skipped_running.append(cell.name)
            log.warning("study: %s is held by %s; left to it", cell.name, holder)
        else:
            todo.append(cell)
    chosen_names = {cell.name for cell in todo}
    for cell in todo:
        missing = [owner for owner in cell.depends_on if owner not in chosen_names]
        if not missing or not waits_for_pretraining(cell) or blocked_by(cell, outcome):
            continue
        if any(held_elsewhere(plan.cell(owner).folder) for owner in missing):
            outcome.skipped_running.append(cell.name)  # its pretraining runs elsewhere: the cell waits for it
        else:
            raise ConfigError(
                f"--only: {cell.name} fine-tunes from the pretraining of {', '.join(missing)}, which has not finished "
                f"and is not chosen: add it (--only '{missing[0]}')"
            )
    todo = [cell for cell in todo if cell.name not in outcome.skipped_running]
    log.info("study %s: %d cells, %d done, %d to run", plan.name, len(plan.cells), len(outcome.skipped_done), len(todo))
    if todo:
        chosen = make_executor(executor, out, jobs, slurm or SlurmSpec(**plan.slurm))
        check_global_batches(todo, chosen.processes, executor)
        with sigterm_interrupts():
            schedule(todo, chosen, poll_s if poll_s is not None else (30.0 if executor == "slurm" else 0.5), outcome)
    if report:
        from meter.study.report import write_report

        try:
            write_report(out)
        except ConfigError as error:  # a misspelt metric: the cells' outcome stands, the report waits for the fix
            outcome.report_error = str(error)
    return outcome
