"""Whether every training run of a study makes its `train.global_batch` on the processes that will run it.

A global batch that the processes cannot split into whole micro-batches stops its run as it starts; in a study that
is after the cell's pretraining, hours in. The executor fixes the processes of every run (one for the local
workers, `slurm.gpus_per_node x slurm.nodes` for a submitit job), so the study checks each run before it starts any.
"""

from __future__ import annotations

import dataclasses

from meter.errors import ConfigError
from meter.study.cells import CellPlan
from meter.study.records import run_result
from meter.train.distributed import check_graphs_accumulate, global_batch_accumulation

TRAINING = ("pretrain", "finetune")  # the zero-shot evaluations train nothing


def global_batch_problems(cells: list[CellPlan], processes: int) -> list[str]:
    """One line for each run of `cells` (their own runs, not finished) whose global batch `processes` cannot make."""
    problems = []
    for cell in cells:
        for run in cell.own_runs():
            if run.kind not in TRAINING or run_result(run) is not None:  # a finished run trains no more
                continue
            train = run.config().train
            if not train.global_batch:
                continue
            try:
                accumulation = global_batch_accumulation(train, processes)
                check_graphs_accumulate(dataclasses.replace(train, grad_accum=accumulation))
            except ConfigError as error:
                problems.append(f"{cell.name} {run.name}: {error.args[0]}")
    return problems


def check_global_batches(cells: list[CellPlan], processes: int, executor: str) -> None:
    problems = global_batch_problems(cells, processes)
    if problems:
        raise ConfigError(f"--executor {executor} runs each cell on {processes} process(es), on which "
                          f"{len(problems)} run(s) cannot make their train.global_batch (nothing was started):\n  "
                          + "\n  ".join(problems))  # fmt: skip
