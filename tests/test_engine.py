"""The training engine in one process: accumulation, non-finite steps, logs, and what a MIM checkpoint holds."""

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from meter.config import Config, load_config
from meter.data.collate import Collate
from meter.data.datasets import CaptionPairs
from meter.data.formats.captions import PRETRAIN_SPLITS, read_karpathy
from meter.data.stream import epoch_order
from meter.errors import MeterError
from meter.models.folder import load_model_folder
from meter.runs import run_pretrain
from meter.tasks.build import build_model, image_reader, task_tokenizer
from meter.tasks.pretrain import PretrainTask, pretrain_heads
from meter.train.checkpoint import TASK_WEIGHTS, Checkpoints
from meter.train.loop import fit
from meter.train.metrics_log import read_metrics
from meter.train.runtime import setup_runtime
from tests.conftest import MICRO
from tests.runner import EXACT

LOSSES = ["train/mlm_loss", "train/itm_loss", "train/mim_loss"]


def _pretrain(cfg: Config, out: Path, *overrides: str) -> Path:
    return run_pretrain(load_config(None, [f"train.out={out}", *overrides], base=cfg))


def test_two_accumulated_micro_batches_make_the_same_steps_as_one_batch_twice_the_size(micro_config, tmp_path):
    common = [*EXACT, "train.max_steps=5", "objectives.mim=1", "objectives.itm_group_size=4",
              "train.warmup_ratio=0.4"]  # fmt: skip
    _pretrain(micro_config, tmp_path / "big", *common, "train.batch_size=16")
    _pretrain(micro_config, tmp_path / "accum", *common, "train.batch_size=8", "train.grad_accum=2")
    big, accum = read_metrics(tmp_path / "big/metrics.jsonl"), read_metrics(tmp_path / "accum/metrics.jsonl")
    assert [r["step"] for r in accum] == [1, 2, 3, 4, 5]
    for key in [*LOSSES, "train/grad_norm"]:
        assert [r[key] for r in accum] == pytest.approx([r[key] for r in big], rel=1e-5), key
    # the schedule counts optimizer steps, not micro-batches: 2 warmup steps from 0, then down towards 0 at step 5;
    # each logged at the step that trained at it (not the next step's, as the scheduler holds once stepped)
    lrs = [r["train/lr"] for r in accum]
    assert lrs == [r["train/lr"] for r in big]
    assert lrs == pytest.approx([1e-4 * f for f in (0, 1 / 2, 1, 2 / 3, 1 / 3)], rel=1e-12, abs=0)
    assert accum[-1]["train/epoch"] == pytest.approx(big[-1]["train/epoch"])  # the same samples seen


def test_a_multiplier_of_0_trains_and_logs_the_base_rate_each_step_trained_at(micro_config, tmp_path):
    """train.lr_mult_cross_modal=0 freezes the cross-modal parts in effect: the log divided by their group's rate
    (ZeroDivisionError at the first log line). The logged rate is the encoders' of the step, 0 at warm-up's start."""
    _pretrain(micro_config, tmp_path / "run", *EXACT, "train.max_steps=4", "train.warmup_ratio=0.5",
              "train.lr_mult_cross_modal=0")  # fmt: skip
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert [r["train/lr"] for r in records] == pytest.approx([1e-4 * f for f in (0, 1 / 2, 1, 1 / 2)], rel=1e-12)


class PoisonedPairs(Dataset):
    """Caption pairs with one sample's pixels replaced by NaN: a real non-finite input."""

    def __init__(self, pairs: CaptionPairs, poisoned: int) -> None:
        self.pairs = pairs
        self.poisoned = poisoned

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        sample = self.pairs[index]
        if index == self.poisoned:
            sample = {**sample, "pixels": torch.full_like(sample["pixels"], float("nan"))}
        return sample


def _fit_poisoned(cfg: Config, poisoned_step: int) -> Path:
    tokenizer = task_tokenizer(cfg)
    heads = pretrain_heads(tokenizer, cfg.objectives)
    runtime = setup_runtime(cfg.train)
    model = build_model(cfg, tokenizer, heads)
    root = Path(cfg.data.root)
    pairs = CaptionPairs(read_karpathy(root / cfg.data.karpathy, root / cfg.data.images, PRETRAIN_SPLITS),
                         image_reader(cfg, model))  # fmt: skip
    # the first sample of the step's batch in the stream's epoch-0 order
    position = (poisoned_step - 1) * cfg.train.batch_size
    poisoned = epoch_order(len(pairs), cfg.train.seed, 0, shuffle=True)[position]
    task = PretrainTask(model, tokenizer, cfg, heads)
    collate = Collate(tokenizer, cfg.model.text.max_length)
    return fit(cfg, task, PoisonedPairs(pairs, poisoned), collate, tokenizer, runtime)


def test_a_nan_input_skips_its_step_with_a_warning_and_training_goes_on(micro_config, tmp_path, caplog):
    cfg = load_config(None, [f"train.out={tmp_path / 'run'}", "train.max_steps=5", "train.checkpoint_every=1",
                             "train.keep_last=10"], base=micro_config)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        final = _fit_poisoned(cfg, poisoned_step=3)
    assert final.name == "step_00000005"
    assert any("step 3: non-finite loss or gradient, step skipped (1 in a row)" in r.message for r in caplog.records)
    records = {r["step"]: r for r in read_metrics(tmp_path / "run/metrics.jsonl")}
    assert records[3]["train/nonfinite_steps"] == 1 and "train/mlm_loss" not in records[3]
    assert all(records[s]["train/mlm_loss"] > 0 for s in (1, 2, 4, 5))
    checkpoints = Checkpoints(tmp_path / "run/checkpoints")
    before, after, later = (load_file(checkpoints.path(s) / "model.safetensors") for s in (2, 3, 4))
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step must not touch the weights"
    assert not all(torch.equal(after[k], later[k]) for k in after)
    assert all(torch.isfinite(v).all() for v in later.values())


def test_a_learning_rate_that_blows_up_stops_the_run_after_too_many_non_finite_steps(micro_config, tmp_path):
    with pytest.raises(MeterError, match=r"3 steps in a row with a non-finite .* \(train.max_nonfinite_steps = 3\)"):
        _pretrain(micro_config, tmp_path / "run", "train.lr=1e30", "train.max_steps=20",
                  "train.max_nonfinite_steps=3")  # fmt: skip
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert records[0]["step"] == 1 and records[0]["train/mlm_loss"] > 0  # the first step was finite
    assert sum(r.get("train/nonfinite_steps", 0) for r in records) == 2  # the third ended the run before its log


def test_progress_bar_shows_samples_per_second_and_eta_and_logs_reach_tensorboard(micro_config, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _pretrain(micro_config, tmp_path / "run", "train.max_steps=3", "train.progress=true", "objectives.mim=1")
    bar = capsys.readouterr().err
    assert "samples_per_s=" in bar and "loss=" in bar and "3/3 [" in bar and "<" in bar  # elapsed<remaining
    events = EventAccumulator(str(tmp_path / "run/tensorboard"))
    events.Reload()
    for key in [*LOSSES, "train/samples_per_s", "train/lr", "train/grad_norm"]:
        assert [e.step for e in events.Scalars(key)] == [1, 2, 3], key
    assert (tmp_path / "run/loss_curves.png").stat().st_size > 10_000  # three panels


def test_a_mim_checkpoint_is_a_plain_model_folder_with_the_pixel_decoder_beside_it(micro_config, tmp_path):
    final = _pretrain(micro_config, tmp_path / "run", "train.max_steps=2", "objectives.mim=0.5")
    model, _, description = load_model_folder(final)  # loads without knowing about MIM
    assert set(description.heads) == {"mlm", "itm"}
    decoder = load_file(final / TASK_WEIGHTS)
    assert decoder and all(k.startswith("mim_decoder.") for k in decoder)
    assert decoder["mim_decoder.decoder.weight"].shape == (16 * 16 * 3, model.width)
    assert json.loads((final / "progress.json").read_text())["global_batch"] == 8


def test_a_later_run_in_the_same_process_drops_an_earlier_runs_strict_deterministic_mode():
    """A study cell runs its runs in one process: a run after a `train.deterministic` one kept its slower kernels
    (and the NaN-filling of fresh memory)."""
    from meter.config import TrainConfig
    from meter.train.runtime import setup_runtime

    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        setup_runtime(TrainConfig(device="cpu", deterministic=True))
        assert torch.are_deterministic_algorithms_enabled()
        setup_runtime(TrainConfig(device="cpu", deterministic=False))
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def test_deterministic_cuda_runs_need_the_cublas_setting_before_cuda_is_first_used(monkeypatch):
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, at a process's first matrix product on CUDA: a deterministic run
    after a non-deterministic one in one process (a study's cell) set it too late and failed at its first step. (No
    GPU here: `torch.cuda.is_initialized` stands in for a process that has used CUDA.)"""
    from meter.errors import ConfigError
    from meter.train.runtime import check_deterministic_cublas

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    check_deterministic_cublas()  # CUDA untouched: set in time
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    with pytest.raises(ConfigError, match=r"CUBLAS_WORKSPACE_CONFIG=:4096:8 \(or :16:8\).*it was ':0:0'"):
        check_deterministic_cublas()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(ConfigError, match="it was unset when this process first used CUDA"):
        check_deterministic_cublas()


def test_the_meter_command_sets_the_cublas_setting_before_anything_runs(monkeypatch, capsys):
    from meter.cli import main

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    assert main(["models"]) == 0 and capsys.readouterr().out
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


@pytest.mark.parametrize(("total", "ratio"), [(100, 0.1), (37, 0.25), (10, 0.0), (5, 0.4)])
def test_the_learning_rate_schedule_is_the_official_one_step_by_step(total: int, ratio: float):
    """Official METER: transformers' polynomial decay of power 1 to 0 after int(ratio x steps) warm-up steps, whose
    first step is at 0; meter's warm-up was shifted by one step ((step + 1) / (warmup + 1))."""
    from transformers import get_polynomial_decay_schedule_with_warmup

    from meter.train.optim import warmup_linear

    rates = {}
    for name in ("meter", "official"):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-5)
        warmup = int(total * ratio)
        scheduler = warmup_linear(optimizer, total, ratio) if name == "meter" else \
            get_polynomial_decay_schedule_with_warmup(optimizer, warmup, total, lr_end=0.0, power=1.0)  # fmt: skip
        rates[name] = []
        for _ in range(total):
            rates[name].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    assert rates["meter"] == pytest.approx(rates["official"], rel=1e-12, abs=1e-20)


def test_fsdp_without_a_launcher_says_it_runs_one_unsharded_process(monkeypatch, caplog):
    from meter.config import TrainConfig
    from meter.train.runtime import setup_runtime

    for name in ("MASTER_ADDR", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.WARNING):
        setup_runtime(TrainConfig(device="cpu", parallel="fsdp"))
    assert "train.parallel = fsdp without a launcher" in caplog.text


def test_captioning_accumulated_over_micro_batches_makes_the_same_steps_as_one_batch(
    micro_checkpoints, shapes_tasks_world, tmp_path
):
    """The caption loss is a mean over the step's tokens: a micro-batch of short captions weighs no more than one of
    long ones (a mean per micro-batch, then over the micro-batches, changed the gradient by up to ~17% per token)."""
    from meter.runs import run_finetune

    start = f"train.init_from={micro_checkpoints('pretrain')}"
    common = ["task=captioning", f"data.root={shapes_tasks_world}", start, "train.max_steps=3",
              "captioning.max_eval_images=2", "model.decoder.dropout=0", *MICRO, *EXACT]  # fmt: skip
    for name, split in (("big", ["train.batch_size=8"]), ("accum", ["train.batch_size=4", "train.grad_accum=2"])):
        run_finetune(load_config(None, [*common, *split, f"train.out={tmp_path / name}"]))
    big, accum = read_metrics(tmp_path / "big/metrics.jsonl"), read_metrics(tmp_path / "accum/metrics.jsonl")
    for key in ("train/caption_loss", "train/caption_accuracy", "train/grad_norm"):
        assert [r[key] for r in accum if key in r] == pytest.approx([r[key] for r in big if key in r], rel=1e-5), key
