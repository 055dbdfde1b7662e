"""One cell's worker (`meter study cell CELL.json`, a process of its own; under torchrun on a cluster): runs the
cell's runs in order, each through the engine's own entry points, skipping what is done and resuming what was
interrupted. A run that fails is recorded with its error and the cell goes on to its next task (a failed
pretraining leaves nothing to fine-tune: its tasks are recorded as not run). A run asked to stop (a preemption or
time-limit signal, Ctrl-C) stops the cell after its checkpoint: the status says stopped, the worker exits with the
run's stop status (PREEMPTED: requeue), and the cell resumes from that checkpoint when it runs again. Asked while
a run evaluates, the evaluation finishes and the cell stops before its next run."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

from meter.config import load_config
from meter.output_folder import lock_folder, release_folder
from meter.run_folders import finetune_once, finished_checkpoint, resume_arg
from meter.runs import evaluate_run, run_pretrain
from meter.study.cells import CellPlan, RunPlan, load_cell
from meter.study.records import RESULT, CellStatus, run_done, write_json
from meter.tasks.best_checkpoint import evaluated_weights
from meter.train.runtime import is_main_process, teardown_runtime
from meter.train.stop_signals import PREEMPTED, RunStopped, StopAtOnce, StopRequests, signal_name

log = logging.getLogger(__name__)
CELL_LOCK = ".worker.lock"


def _error(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    return "".join(lines).strip()


def pretrain(run: RunPlan) -> dict[str, Any]:
    cfg = run.config()
    checkpoint = finished_checkpoint(cfg) or run_pretrain(cfg, resume=resume_arg(cfg))
    return {"checkpoint": str(checkpoint)}


def finetune(run: RunPlan) -> dict[str, Any]:
    """Fine-tunes and evaluates (a run that finished training is only evaluated), then, for a searched task,
    evaluates the same weights (the final checkpoint, or the best with train.best_on) on the selection split."""
    cfg = run.config()
    result: dict[str, Any] = {"metrics": finetune_once(cfg, evaluate_run)}
    if run.select:
        select_cfg = load_config(run.recipe, [*run.overrides, *run.select])
        final = finished_checkpoint(cfg)  # there: finetune_once trained it
        weights = evaluated_weights(cfg, final) if final is not None else final
        result["select"] = evaluate_run(select_cfg, weights, Path(run.folder) / "select")
        result["select_overrides"] = run.select  # what the selection score was evaluated with
    return result


def evaluate_zero_shot(run: RunPlan) -> dict[str, Any]:
    """A zero-shot task: the cell's pretraining (train.init_from) evaluated as it is."""
    cfg = run.config()
    return {"metrics": evaluate_run(cfg, cfg.train.init_from, Path(run.folder))}


RUNNERS = {"pretrain": pretrain, "finetune": finetune, "evaluate": evaluate_zero_shot}


def run_cell(cell: CellPlan) -> bool:
    """Runs what is not done of the cell; True when every run is done."""
    main = is_main_process()
    status = CellStatus(cell.folder)
    if main:  # before its status: a second worker of the cell (a second `meter study run`) leaves the first alone
        lock_folder(cell.folder, CELL_LOCK, "another worker of this cell")
        status.start()
    blocked, current = "", ""
    # for the whole cell: a stop asked outside training (while a run evaluates, between runs) stops the cell before
    # its next run; while a run trains, the loop's own handlers take over (a checkpoint, then RunStopped)
    try:
        with StopRequests() as stop:
            for run in cell.runs:
                if run.kind == "pretrain" and run.owner != cell.name:  # shared: another cell runs it
                    if finished_checkpoint(run.config()) is None:
                        blocked = f"its pretraining {run.folder} (run by cell {run.owner}) has not finished"
                    continue
                if run_done(run):
                    continue
                if blocked:
                    if main:
                        status.failed_run(run.name, f"not run: {blocked}")
                    continue
                current = run.name
                if stop.received:
                    raise RunStopped(f"stopped by {signal_name(stop.received)} before this run", PREEMPTED)
                if main:
                    status.on_run(run.name)
                began = time.perf_counter()
                try:
                    result = RUNNERS[run.kind](run)
                except RunStopped:
                    raise
                except Exception as error:  # a failed run is recorded; the cell goes on
                    log.exception("study: %s %s failed", cell.name, run.name)
                    if main:
                        status.failed_run(run.name, _error(error))
                    if run.kind == "pretrain":
                        blocked = f"its pretraining failed ({_error(error).splitlines()[-1]})"
                    continue
                if main:
                    write_json(Path(run.folder) / RESULT, {**result, "seconds": round(time.perf_counter() - began, 1)})
    except StopAtOnce as again:  # a second signal outside training
        stopped = RunStopped(f"stopped at once by a second {signal_name(again.signum)}", PREEMPTED)
        if main:
            status.stopped(current, str(stopped))
        raise stopped from None
    except RunStopped as stopped:  # not a failure: the cell stops here, to resume from the run's checkpoint
        if main:
            status.stopped(current, str(stopped))
        raise
    except Exception as error:  # outside a run (reading a shared pretraining's folder, a full disk): the cell failed,
        if main:  # and says why, not "done" with runs not done
            status.failed_run(current or "worker", _error(error))
        raise
    finally:
        if main:
            status.finish()
            release_folder(cell.folder, CELL_LOCK)
        teardown_runtime()
    return not status.data.get("errors") if main else not blocked


def main(cell_file: str | Path) -> int:
    return 0 if run_cell(load_cell(cell_file)) else 1
