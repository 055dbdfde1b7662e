"""Each objective's loss falls when trained through the real loop."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from meter.config import Config, load_config
from meter.data.collate import Collate
from meter.runs import run_pretrain
from meter.tasks.build import build_model, task_tokenizer
from meter.tasks.pretrain import PretrainTask, pretrain_heads
from meter.train.loop import fit
from meter.train.metrics_log import read_metrics
from meter.train.runtime import setup_runtime


def _mean(records: list[dict], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


def test_mlm_and_mim_losses_fall_on_the_shapes_world(micro_config: Config, tmp_path: Path):
    cfg = load_config(None, [f"train.out={tmp_path / 'run'}", "train.max_steps=60", "train.batch_size=16",
                             "train.lr=1e-3", "objectives.itm=0", "objectives.mim=1"], base=micro_config)  # fmt: skip
    run_pretrain(cfg)
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    first, last = records[:10], records[-10:]
    assert _mean(last, "train/mlm_loss") < _mean(first, "train/mlm_loss") - 0.5
    assert _mean(last, "train/mim_loss") < _mean(first, "train/mim_loss") - 0.01


COLOURS = {"red": (1.0, -1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "green": (-1.0, 1.0, -1.0), "yellow": (1.0, 1.0, -1.0)}


class SolidColours(Dataset):
    """'a red picture' and a red image, and so on: image-text matching that a micro model can learn in seconds."""

    def __len__(self) -> int:
        return 256

    def __getitem__(self, index: int) -> dict:
        name = list(COLOURS)[index % len(COLOURS)]
        pixels = torch.tensor(COLOURS[name])[:, None, None].expand(3, 64, 64).clone()
        return {"pixels": pixels, "text": f"a {name} picture", "image_id": index % len(COLOURS)}


@pytest.mark.slow
def test_itm_loss_falls_when_matching_can_be_learned_quickly(micro_config: Config, tmp_path: Path):
    """The shapes world's small objects take a micro model far longer than a test to learn to match; solid colours
    check that ITM's pairs, labels and gradients train the matching at all."""
    overrides = [f"train.out={tmp_path / 'run'}", "train.max_steps=300", "train.batch_size=32", "train.lr=1e-3",
                 "objectives.mlm=0", "model.fusion.dropout=0"]  # fmt: skip
    cfg = load_config(None, overrides, base=micro_config)
    tokenizer = task_tokenizer(cfg)
    heads = pretrain_heads(tokenizer, cfg.objectives)
    runtime = setup_runtime(cfg.train)
    task = PretrainTask(build_model(cfg, tokenizer, heads), tokenizer, cfg, heads)
    fit(cfg, task, SolidColours(), Collate(tokenizer, cfg.model.text.max_length), tokenizer, runtime)
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert _mean(records[-20:], "train/itm_loss") < _mean(records[:20], "train/itm_loss") - 0.15
    assert _mean(records[-20:], "train/itm_accuracy") > 0.8
