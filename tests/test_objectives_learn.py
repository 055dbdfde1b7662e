"""The objectives' losses fall when trained through the real loop on the shapes world."""

from pathlib import Path

from meter.config import Config, load_config
from meter.runs import run_pretrain
from meter.train.metrics_log import read_metrics


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
