"""`meter study status DIR`: every cell's state (done, running, queued, interrupted, failed, not started), how many
of its runs are done, and its last numbers: the run it is on (its last logged training values) or its tasks' scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meter.study.cells import CellPlan, StudyPlan, load_plan
from meter.study.executors import queued_job
from meter.study.records import read_status, run_done, run_result, status_alive
from meter.study.results import metric_value
from meter.train.metrics_log import read_metrics

STATES = ("done", "running", "queued", "interrupted", "failed", "not started")


@dataclass
class CellState:
    name: str
    state: str
    runs_done: int
    runs: int
    detail: str  # what it is on, or why it failed
    last: str  # its last numbers


def _last_logged(folder: str) -> str:
    records = read_metrics(Path(folder) / "metrics.jsonl")
    if not records:
        return ""
    last = next((r for r in reversed(records) if any(k.endswith("_loss") for k in r)), records[-1])  # a training one
    values = [f"{k.split('/')[-1]} {v:.4g}" for k, v in last.items() if k.endswith("_loss") and isinstance(v, float)]
    return f"step {last['step']}: " + ", ".join(values)


def _scores(plan: StudyPlan, cell: CellPlan) -> str:
    shown = []
    for run in cell.runs:
        if run.kind == "pretrain" or run.point:
            continue
        result = run_result(run)
        metric = plan.tasks[run.task].metrics[0]  # the task's first column
        value = metric_value(result.get("metrics") or {}, metric) if result else None
        if value is not None:
            shown.append(f"{run.task} {metric} {value:.2f}")
    return ", ".join(shown)


def cell_state(plan: StudyPlan, cell: CellPlan) -> CellState:
    own = cell.own_runs()
    done = sum(run_done(run) for run in own)
    status = read_status(cell.folder)
    errors = status.get("errors") or {}
    if done == len(own):
        return CellState(cell.name, "done", done, len(own), "", _scores(plan, cell))
    current = next((run for run in cell.runs if run.name == status.get("run")), None)
    last = _last_logged(current.folder) if current else ""
    alive = status_alive(status, cell.folder)
    job = "" if alive else queued_job(cell.folder)
    if job:  # a Slurm job waits to run it (or to run it again, requeued): it has no status of its own yet
        return CellState(cell.name, "queued", done, len(own), f"{job} in the Slurm queue", last)
    if status.get("state") == "running":
        if alive:
            where = f"pid {status.get('pid')} on {status.get('host')}" + (f", job {status['job']}" if status.get(
                "job") else "")  # fmt: skip
            return CellState(cell.name, "running", done, len(own), f"{status.get('run')} ({where})", last)
        return CellState(cell.name, "interrupted", done, len(own), f"stopped in {status.get('run')}", last)
    if status.get("state") == "stopped":  # asked to stop (a signal), after a checkpoint: resumes on the next run
        reason = str(status.get("stopped") or "").split(":")[0]
        return CellState(cell.name, "interrupted", done, len(own), f"stopped in {status.get('run')}: {reason}", last)
    if status.get("state") == "failed" or errors:
        detail = "; ".join(f"{run}: {_last_line(error)}" for run, error in errors.items()) \
            if isinstance(errors, dict) else _last_line(errors)  # fmt: skip
        return CellState(cell.name, "failed", done, len(own), detail, _scores(plan, cell))
    blocked = _blocked_by(plan, cell)
    if blocked:  # it cannot start until its shared pretraining runs again: what the study run said, it says too
        return CellState(cell.name, "failed", done, len(own), f"not run: {blocked}, which runs its pretraining, "
                         "failed", "")  # fmt: skip
    return CellState(cell.name, "not started", done, len(own), "", _scores(plan, cell))


def _last_line(error: object) -> str:
    """An error's last line (the exception's own); a status written by hand or by another tool may hold "" or a
    list: said, not an IndexError."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else "no message recorded"


def _blocked_by(plan: StudyPlan, cell: CellPlan) -> str:
    """The cell whose pretraining this one shares and waits for, when that cell failed ("" if none did)."""
    if not any(run.kind == "pretrain" and run.owner != cell.name and not run_done(run) for run in cell.runs):
        return ""
    cells = {other.name: other for other in plan.cells}
    owners = [cells[name] for name in cell.depends_on if name in cells and name != cell.name]
    return next((owner.name for owner in owners if cell_state(plan, owner).state == "failed"), "")


def study_states(out: str | Path) -> list[CellState]:
    plan = load_plan(out)
    return [cell_state(plan, cell) for cell in plan.cells]


def status_table(states: list[CellState]) -> str:
    width = max([len(s.name) for s in states] + [4])
    lines = [f"{'cell':<{width}}  {'state':<11}  runs  details"]
    for s in states:
        details = "; ".join(part for part in (s.detail, s.last) if part)
        lines.append(f"{s.name:<{width}}  {s.state:<11}  {s.runs_done}/{s.runs:<3} {details}")
    counts = {state: sum(s.state == state for s in states) for state in STATES}
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items() if n))
    return "\n".join(lines)
