"""`meter study run|status|report|check|list`: the paper's ablation tables as one command.

meter study run STUDY.yaml --out DIR [--jobs N] [--executor local|submitit-local|slurm] [--only CELL]...
meter study status DIR          every cell: done, running, queued, interrupted, failed, not started; its last numbers
meter study report DIR          report.md, report.csv, report.html (also written at the end of `run`)
meter study check STUDY.yaml    plan it without running: every cell, run and recipe, every override checked
meter study list                the study files shipped with meter
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from meter.cli.common import at_least

if TYPE_CHECKING:
    from meter.study.cells import StudyPlan


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser("study", help="run an ablation study (a grid of runs) and write its tables")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="run every cell of a study that is not done, then write the report")
    run.add_argument("study", help="a study file (or the name of a shipped one: `meter study list`)")
    run.add_argument("--out", required=True, help="the study's folder (run folders, report)")
    run.add_argument("--jobs", type=at_least(1), default=1, help="cells at a time (local, submitit-local); each gets "
                     "cores / jobs threads")  # fmt: skip
    run.add_argument("--executor", default="local", choices=["local", "submitit-local", "slurm"],
                     help="local: worker processes here; slurm: one submitit job per cell, each a torchrun; "
                          "submitit-local: the same jobs as local processes")  # fmt: skip
    run.add_argument("--only", action="append", metavar="CELL",
                     help="run only this cell (a shell pattern: 'vlp/*'); repeat it for more")  # fmt: skip
    run.add_argument("--partition", help="slurm partition (default: the study file's slurm.partition)")
    run.add_argument("--gpus-per-node", type=at_least(1), help="GPUs per node: torchrun processes per node")
    run.add_argument("--nodes", type=at_least(1), help="nodes per job")
    run.add_argument("--time-min", type=at_least(1), help="each job's time limit, minutes")
    run.add_argument("--cpus-per-task", type=at_least(1), help="CPU cores per job")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    status = actions.add_parser("status", help="every cell's state and last numbers")
    status.add_argument("out", metavar="DIR")
    report = actions.add_parser("report", help="write report.md, report.csv and report.html")
    report.add_argument("out", metavar="DIR")
    check = actions.add_parser("check", help="plan a study without running it (cells, runs, recipes, overrides)")
    check.add_argument("study")
    check.add_argument("--out", default="runs/study-check", help="where it would run (nothing is written)")
    actions.add_parser("list", help="the study files shipped with meter")
    cell = actions.add_parser("cell", help="(internal) run one cell: the worker `run` starts")
    cell.add_argument("cell_file")
    return run_action


def _slurm(args: argparse.Namespace, defaults: dict, check: bool) -> object:
    from meter.study.spec import SlurmSpec, check_slurm

    given = {"partition": args.partition, "gpus_per_node": args.gpus_per_node, "nodes": args.nodes,
             "time_min": args.time_min, "cpus_per_task": args.cpus_per_task}  # fmt: skip
    settings = SlurmSpec(**{**defaults, **{k: v for k, v in given.items() if v is not None}})
    if check:  # the time limit and its warning are a job's
        check_slurm(settings)
    return settings


def run_action(args: argparse.Namespace) -> int:
    if args.action == "cell":
        from meter.study.worker import main

        return main(args.cell_file)
    if args.action == "list":
        from importlib import resources

        from meter.study.spec import load_study

        for path in sorted(resources.files("meter.studies").iterdir(), key=lambda p: p.name):
            if path.name.endswith(".yaml"):
                spec = load_study(str(path))
                print(f"{path.name:<34} {spec.title}")
        return 0
    if args.action == "status":
        from meter.study.status import status_table, study_states

        print(status_table(study_states(args.out)))
        return 0
    if args.action == "report":
        from meter.study.report import write_report

        for kind, path in write_report(args.out).items():
            print(f"{kind}: {path}")
        return 0
    from meter.study.spec import load_study

    spec = load_study(args.study)
    if args.action == "check":
        return _check(spec, args.out)
    import dataclasses

    from meter.study.execute import Terminated, run_study
    from meter.train.stop_signals import PREEMPTED

    slurm = _slurm(args, dataclasses.asdict(spec.slurm), check=args.executor != "local")
    try:
        outcome = run_study(spec, args.out, args.executor, args.jobs, args.only, slurm, report=not args.no_report)
    except Terminated as signal_name:  # a scheduler's stop: requeue and run again to go on
        print(f"meter: study stopped by {signal_name}; its cells resume on the next run", file=sys.stderr)
        return PREEMPTED
    stopped = f", {len(outcome.stopped)} stopped (they resume on the next run)" if outcome.stopped else ""
    report = f"no report ({outcome.report_error})" if outcome.report_error else \
        f"report: {args.out}/report.md, report.html"  # fmt: skip
    print(f"study {spec.name}: {len(outcome.ran)} cells ran, {len(outcome.skipped_done)} were done, "
          f"{len(outcome.failed)} failed{stopped}; {report}")  # fmt: skip
    for name, error in outcome.failed.items():
        print(f"  failed: {name}: {error}")
    for name, why in outcome.stopped.items():
        print(f"  stopped: {name}: {why}")
    if outcome.skipped_running:  # not finished: another worker (a job, a worker a killed run left) still runs them
        print(f"  left to the workers running them: {', '.join(outcome.skipped_running)} (run again once they end)")
    unfinished = outcome.stopped or outcome.skipped_running
    return 1 if outcome.failed else PREEMPTED if unfinished else 2 if outcome.report_error else 0


def _check(spec: object, out: str) -> int:
    from pathlib import Path

    from meter.study.cells import PLAN, check_unchanged, plan_study
    from meter.study.report_text import not_run, reported_splits

    plan = plan_study(spec, out, prepare=False)
    if (Path(out) / PLAN).is_file():  # the study has run there: an edit `run` would refuse is refused here too
        check_unchanged(plan, Path(out).resolve())
    runs = sum(len(cell.own_runs()) for cell in plan.cells)
    print(f"{plan.name}: {plan.title}")
    columns = ", ".join(f"{task} {metric}" for task, spec in plan.tasks.items() for metric in spec.metrics)
    print(f"{len(plan.rows)} rows x {len(plan.seeds)} seeds x {len(plan.protocols)} protocols = {len(plan.cells)} "
          f"cells, {runs} runs; columns: {columns}")  # fmt: skip
    print(f"{reported_splits(plan)}.")
    for line in not_run(plan):
        print(f"{line}.")
    for cell in plan.cells:
        print(f"  {cell.name}: {', '.join(run.name for run in cell.own_runs())}"
              + (f" (pretraining of {', '.join(cell.depends_on)})" if cell.depends_on else ""))  # fmt: skip
    return _check_global_batches(plan)


def _check_global_batches(plan: StudyPlan) -> int:
    """The runs whose train.global_batch the processes of either kind of executor cannot make."""
    from meter.study.batch_split import global_batch_problems

    jobs = max(1, plan.slurm["gpus_per_node"]) * max(1, plan.slurm["nodes"])
    executors = {1: "--executor local", jobs: "--executor slurm or submitit-local"} if jobs > 1 else {1: "any executor"}
    found = 0
    for processes, which in executors.items():
        problems = global_batch_problems(plan.cells, processes)
        if problems:
            print(f"on {processes} process(es) ({which}), these runs cannot make their train.global_batch:",
                  *problems, sep="\n  ")  # fmt: skip
            found += len(problems)
    return 1 if found else 0
