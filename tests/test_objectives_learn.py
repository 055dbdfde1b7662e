"""The objectives' losses fall when trained through the real loop on the shapes world."""

import math
from pathlib import Path

import pytest

from meter.config import Config, load_config
from meter.data.shapes import WorldSpec, generate
from meter.runs import run_pretrain
from meter.train.metrics_log import read_metrics


def _mean(records: list[dict], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


def test_mlm_and_mim_losses_fall_on_the_shapes_world(micro_config: Config, tmp_path: Path):
    # free layout: objects straddle patches, so a masked patch is partly predictable from its neighbours (in the grid
    # layout each object sits in its own cell and a hidden cell is a coin toss)
    generate(tmp_path / "free", WorldSpec(images=60, seed=3, questions_per_image=1, vocab_size=300, layout="free"),
             progress=False)  # fmt: skip
    cfg = load_config(None, [f"data.root={tmp_path / 'free'}", f"train.out={tmp_path / 'run'}", "train.max_steps=60",
                             "train.batch_size=16",
                             "train.lr=1e-3", "objectives.itm=0", "objectives.mim=1"], base=micro_config)  # fmt: skip
    run_pretrain(cfg)
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    first, last = records[:10], records[-10:]
    assert _mean(last, "train/mlm_loss") < _mean(first, "train/mlm_loss") - 0.5
    assert _mean(last, "train/mim_loss") < _mean(first, "train/mim_loss") - 0.01


def test_in_batch_mim_starts_at_chance_over_the_batchs_patches_and_learns(micro_config: Config, tmp_path: Path):
    """The paper's masked patch classification with in-batch negatives (15% of the patches): a guess among the
    batch's 16 x 16 patches starts at ln(256), then does better."""
    generate(tmp_path / "free", WorldSpec(images=60, seed=3, questions_per_image=1, vocab_size=300, layout="free"),
             progress=False)  # fmt: skip
    cfg = load_config(None, [f"data.root={tmp_path / 'free'}", f"train.out={tmp_path / 'run'}", "train.max_steps=60",
                             "train.batch_size=16", "train.lr=1e-3", "objectives.itm=0", "objectives.mlm=0",
                             "objectives.mim=1", "objectives.mim_target=in-batch",
                             "objectives.mim_mask_ratio=0.15"], base=micro_config)  # fmt: skip
    run_pretrain(cfg)
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert records[0]["train/mim_loss"] == pytest.approx(math.log(16 * 16), rel=0.1)  # 16 images of 4 x 4 patches
    first, last = records[:10], records[-10:]
    assert _mean(last, "train/mim_loss") < _mean(first, "train/mim_loss") - 0.15
    assert _mean(last, "train/mim_accuracy") > _mean(first, "train/mim_accuracy")
