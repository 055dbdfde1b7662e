"""The objectives' losses fall when trained through the real loop on the shapes world."""

from pathlib import Path

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
