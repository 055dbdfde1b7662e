"""train.global_batch: the samples of an optimizer step whatever number of processes runs (train.grad_accum follows
from it, as the official run.py derives its accumulate_grad_batches)."""

from __future__ import annotations

import logging

import pytest
import yaml

from meter.config import Config, TrainConfig, load_config
from meter.errors import ConfigError
from meter.run_folders import finished_checkpoint
from meter.runs import run_pretrain
from meter.train.distributed import split_global_batch
from meter.train.metrics_log import read_metrics
from tests.runner import EXACT


@pytest.mark.parametrize(("world", "grad_accum"), [(1, 16), (2, 8), (8, 2), (16, 1)])
def test_the_micro_batches_of_a_step_make_the_global_batch_on_any_number_of_processes(world: int, grad_accum: int,
                                                                                       caplog):  # fmt: skip
    train = TrainConfig(batch_size=32, global_batch=512, grad_accum=3)  # 3: set too (a run's config.yaml, say)
    with caplog.at_level(logging.INFO, logger="meter"):
        split_global_batch(train, world)
    assert (train.grad_accum, train.batch_size * world * train.grad_accum) == (grad_accum, 512)
    assert f"a step is train.grad_accum = {grad_accum} micro-batches of 32 samples on {world} process" in caplog.text
    assert "(not the 3 set: train.global_batch=0 lets train.grad_accum be)" in caplog.text


@pytest.mark.parametrize(("world", "hint"), [
    (32, r"on 32 processes \(1024 samples each\): train\.batch_size=16 makes it"),
    (3, r"on 3 processes \(96 samples each\): run on a number of processes that divides it"),
    (6, r"on 6 processes \(192 samples each\): run on a number of processes that divides it"),
])  # fmt: skip
def test_a_global_batch_the_processes_cannot_make_exactly_is_an_error_saying_what_can(world: int, hint: str):
    """The official run.py rounds down (a smaller batch than the recipe's, and its learning rate); not here."""
    with pytest.raises(ConfigError, match=r"train\.global_batch = 512 is not a whole number of micro-batches of "
                                          r"train\.batch_size = 32 " + hint):  # fmt: skip
        split_global_batch(TrainConfig(batch_size=32, global_batch=512), world)


def test_without_a_global_batch_grad_accum_is_as_set():
    train = TrainConfig(batch_size=32, grad_accum=3)
    split_global_batch(train, 8)
    assert train.grad_accum == 3


def test_cuda_graphs_refuse_the_accumulation_a_global_batch_asks_for():
    train = TrainConfig(batch_size=32, global_batch=64, compile=True, compile_mode="reduce-overhead")
    with pytest.raises(ConfigError, match=r"replays CUDA graphs, which cannot accumulate gradients \(train\.grad_acc"):
        split_global_batch(train, 1)


def test_a_run_with_a_global_batch_trains_as_the_run_accumulating_it(micro_config: Config, tmp_path):
    steps = [*EXACT, "train.batch_size=4", "train.max_steps=2"]
    run_pretrain(load_config(None, [f"train.out={tmp_path / 'accumulating'}", *steps, "train.grad_accum=2"],
                             base=micro_config))  # fmt: skip
    run_pretrain(load_config(None, [f"train.out={tmp_path / 'global'}", *steps, "train.global_batch=8"],
                             base=micro_config))  # fmt: skip
    accumulating, by_global = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("accumulating", "global"))
    keys = ["train/mlm_loss", "train/itm_loss", "train/grad_norm"]
    assert [r[k] for r in by_global for k in keys] == [r[k] for r in accumulating for k in keys]
    assert yaml.safe_load((tmp_path / "global" / "config.yaml").read_text())["train"]["grad_accum"] == 2
    # asked again (a study cell rerun, a shared pretraining): the finished run is this config's, whose grad_accum
    # the run, not the config, sets
    again = load_config(None, [f"train.out={tmp_path / 'global'}", *steps, "train.global_batch=8"], base=micro_config)
    assert finished_checkpoint(again) == tmp_path / "global" / "checkpoints" / "step_00000002"


def test_a_run_that_accumulated_resumes_with_the_global_batch_it_made_and_no_other(micro_config: Config, tmp_path):
    """A recipe that sets train.global_batch where it set train.grad_accum: its runs go on (a step keeps its
    samples); a global batch that changes them is refused once the checkpoint is read."""
    steps = [*EXACT, "train.batch_size=4", "train.max_steps=2"]

    def pretrain(name: str, *overrides: str, resume: str | None = None) -> None:
        cfg = load_config(None, [f"train.out={tmp_path / name}", *steps, *overrides], base=micro_config)
        run_pretrain(cfg, resume=resume)

    pretrain("straight", "train.grad_accum=2")
    pretrain("resumed", "train.grad_accum=2", "train.stop_at=1")
    refused = r"its steps took 8 samples; this run's take 16 .*resume with train\.global_batch=8$"
    with pytest.raises(ConfigError, match=refused):
        pretrain("resumed", "train.global_batch=16", resume="latest")
    pretrain("resumed", "train.global_batch=8", resume="latest")
    straight, resumed = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("straight", "resumed"))
    keys = ["step", "train/mlm_loss", "train/itm_loss", "train/grad_norm"]
    assert [r[k] for r in resumed for k in keys] == [r[k] for r in straight for k in keys]
