"""What a run lists and logs survives a restart: the bad-sample budget goes on from the samples skipped before, and
a run restarted before its first checkpoint does not keep its killed attempt's records."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from meter.config import Config, load_config
from meter.runs import run_pretrain
from meter.train.metrics_log import read_metrics

BROKEN = ("COCO_train2014_000000000001.png", "COCO_train2014_000000000002.png", "COCO_train2014_000000000003.png")


def broken_world(shapes_world: Path, tmp_path: Path) -> Path:
    world = tmp_path / "world"
    shutil.copytree(shapes_world, world)
    for name in BROKEN:
        (world / "images/train2014" / name).write_bytes(b"not an image")
    return world


def test_a_resumed_run_counts_the_bad_samples_it_had_skipped_and_lists_each_once(micro_config: Config,
                                                                                  shapes_world: Path, tmp_path: Path,
                                                                                  caplog):  # fmt: skip
    """240 training pairs, 3 unreadable images: an epoch (30 steps of 8) meets them all. Resumed after it, the
    budget started again from 0 (a run stopped and resumed could skip three times what a straight one may) and the
    list named them again."""
    out = tmp_path / "run"
    cfg = load_config(None, [f"data.root={broken_world(shapes_world, tmp_path)}", f"train.out={out}",
                             "data.max_bad_samples=0.0125", "train.max_steps=31"], base=micro_config)  # fmt: skip
    run_pretrain(load_config(None, ["train.stop_at=30"], base=cfg))
    listed = (out / "bad_samples.jsonl").read_text().splitlines()
    assert sorted(Path(json.loads(line)["path"]).name for line in listed) == sorted(BROKEN)
    with (out / "bad_samples.jsonl").open("a") as f:
        f.write('{"path": "cut sh')  # a kill while a line was appended
    with caplog.at_level(logging.WARNING, logger="meter.train.loop"):
        run_pretrain(cfg, resume="latest")
    assert "skipped 3 of 240 samples (budget 3)" in caplog.text
    assert (out / "bad_samples.jsonl").read_text().splitlines() == listed


def test_a_run_restarted_before_its_first_checkpoint_logs_each_step_once(micro_config: Config, tmp_path: Path):
    out = tmp_path / "run"
    cfg = load_config(None, [f"train.out={out}", "train.max_steps=4"], base=micro_config)
    run_pretrain(load_config(None, ["train.stop_at=2"], base=cfg))
    shutil.rmtree(out / "checkpoints")  # as a run killed before it wrote its first checkpoint leaves its folder
    run_pretrain(cfg)
    assert [record["step"] for record in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]
