"""A study checks, before it starts anything, that each training run makes its train.global_batch on the processes
its executor gives it: `meter study check` for either kind of executor, `meter study run` for the one it uses."""

import pytest

from meter.cli import main
from meter.errors import ConfigError
from meter.study.batch_split import global_batch_problems
from meter.study.cells import plan_study
from meter.study.execute import run_study
from meter.study.spec import study_from_dict
from tests.studies import as_if_ran, micro_study, write_study

GLOBAL_12 = ["train.batch_size=4", "train.global_batch=12"]  # 3 micro-batches on one process, 1 on three


def _study(world, gpus: int) -> dict:
    study = micro_study(world, slurm={"gpus_per_node": gpus})
    study["base"]["pretrain"]["overrides"] = list(GLOBAL_12)
    return study


def test_check_names_each_run_whose_global_batch_the_slurm_processes_cannot_make(shapes_world, tmp_path, capsys):
    path = write_study(tmp_path / "study.yaml", _study(shapes_world, gpus=8))
    assert main(["study", "check", str(path), "--out", str(tmp_path / "out")]) == 1
    shown = capsys.readouterr().out
    assert "on 8 process(es) (--executor slurm or submitit-local), these runs cannot make" in shown
    for cell in ("vlp/co-attention/seed-0", "vlp/merged/seed-0"):
        assert f"\n  {cell} pretrain: train.global_batch = 12 is not a whole number of micro-batches" in shown
    assert "on 1 process(es)" not in shown and "vqa:" not in shown  # one process makes it; VQA sets none


def test_check_passes_a_global_batch_that_every_executor_makes(shapes_world, tmp_path, capsys):
    path = write_study(tmp_path / "study.yaml", _study(shapes_world, gpus=3))
    assert main(["study", "check", str(path), "--out", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out
    assert "cannot make" not in shown and "\nReported on: vqa val2014.\n" in shown


def test_run_refuses_before_starting_a_cell_whose_global_batch_its_executor_cannot_make(shapes_world, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(
        ConfigError,
        match=r"--executor submitit-local runs each cell on 8 process\(es\), on which 2 "
        r"run\(s\) cannot make their train.global_batch \(nothing was started\)",
    ):
        run_study(study_from_dict(_study(shapes_world, gpus=8)), out, executor="submitit-local", report=False)
    assert not list((out / "cells").rglob("status.json")) and not list((out / "cells").rglob("checkpoints"))


def test_a_finished_run_is_not_checked_again(shapes_world, tmp_path):
    """A pretraining finished on one process, its study resumed on 8 GPUs to fine-tune: refused for the run that
    trains no more."""
    study = study_from_dict(_study(shapes_world, gpus=8))
    plan = plan_study(study, tmp_path / "out")
    assert len(global_batch_problems(plan.cells, 8)) == 2
    as_if_ran(plan)
    assert global_batch_problems(plan.cells, 8) == []
