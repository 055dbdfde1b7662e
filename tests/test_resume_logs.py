"""What a run lists, logs and computes survives a restart: the bad-sample budget goes on from the samples skipped
before, a run restarted before its first checkpoint does not keep its killed attempt's records, and a resumed run's
steps keep their samples however they are split."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

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
    """240 training pairs, 3 unreadable images of 5 captions each: an epoch (30 steps of 8) meets their 15 pairs.
    Resumed after it, the budget started again from 0 (a run stopped and resumed could skip three times what a
    straight one may) and the list named them again."""
    out = tmp_path / "run"
    cfg = load_config(None, [f"data.root={broken_world(shapes_world, tmp_path)}", f"train.out={out}",
                             "data.max_bad_samples=0.0625", "train.max_steps=31"], base=micro_config)  # fmt: skip
    run_pretrain(load_config(None, ["train.stop_at=30"], base=cfg))
    listed = (out / "bad_samples.jsonl").read_text().splitlines()
    names = [Path(json.loads(line)["path"]).name for line in listed]
    assert sorted(set(names)) == sorted(BROKEN) and len(names) == 15, "each pair of a broken image, once"
    with (out / "bad_samples.jsonl").open("a") as f:
        f.write('{"path": "cut sh')  # a kill while a line was appended
    with caplog.at_level(logging.WARNING, logger="meter.train.loop"):
        run_pretrain(cfg, resume="latest")
    assert "skipped 15 of 240 samples (budget 15)" in caplog.text
    assert (out / "bad_samples.jsonl").read_text().splitlines() == listed


def test_samples_listed_after_the_checkpoint_resumed_from_are_not_counted_again(micro_config: Config,
                                                                                 shapes_world: Path, tmp_path: Path,
                                                                                 caplog):  # fmt: skip
    """An attempt that listed samples after its last checkpoint (their images on a mount that was down a while) and
    then stopped: resumed from that checkpoint, the run restored them into its budget although it reads them fine
    now, and the list named samples it trained on."""
    out = tmp_path / "run"
    cfg = load_config(None, [f"data.root={broken_world(shapes_world, tmp_path)}", f"train.out={out}",
                             "data.max_bad_samples=0.125", "train.max_steps=32"], base=micro_config)  # fmt: skip
    run_pretrain(load_config(None, ["train.stop_at=30"], base=cfg))
    listed = (out / "bad_samples.jsonl").read_text().splitlines()
    away = [line.replace("000000000001", "000000000004") for line in listed if "000000000001" in line]
    with (out / "bad_samples.jsonl").open("a") as f:  # what the attempt after the checkpoint met, then stopped
        f.writelines(line + "\n" for line in away)
    with caplog.at_level(logging.WARNING, logger="meter.train.loop"):
        run_pretrain(cfg, resume="latest")
    assert len(away) == 5 and "skipped 15 of 240 samples" in caplog.text
    assert (out / "bad_samples.jsonl").read_text().splitlines() == listed


def test_a_run_restarted_before_its_first_checkpoint_logs_each_step_once(micro_config: Config, tmp_path: Path):
    out = tmp_path / "run"
    cfg = load_config(None, [f"train.out={out}", "train.max_steps=4"], base=micro_config)
    run_pretrain(load_config(None, ["train.stop_at=2"], base=cfg))
    shutil.rmtree(out / "checkpoints")  # as a run killed before it wrote its first checkpoint leaves its folder
    run_pretrain(cfg)
    assert [record["step"] for record in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_step_split_another_way_resumes_to_the_same_weights_and_another_step_size_is_refused(
    micro_config: Config, tmp_path: Path
):
    """A job requeued on fewer GPUs went on with a smaller global batch and a warning (its schedule and learning
    rate were set for the larger one). Now train.batch_size and train.grad_accum may change on resume as long as a
    step keeps its samples: 2 micro-batches of 8 become 4 of 4, the same 16 samples a step."""
    from safetensors.torch import load_file

    from meter.errors import ConfigError
    from tests.runner import EXACT

    common = [*EXACT, "train.max_steps=6", "train.checkpoint_every=3", "objectives.itm_group_size=4"]
    straight = load_config(None, [f"train.out={tmp_path / 'straight'}", *common, "train.grad_accum=2"],
                           base=micro_config)  # fmt: skip
    run_pretrain(straight)
    split = load_config(None, [f"train.out={tmp_path / 'split'}", *common, "train.grad_accum=2"], base=micro_config)
    run_pretrain(load_config(None, ["train.stop_at=3"], base=split))
    with pytest.raises(ConfigError, match=r"its steps took 16 samples; this run's take 8 .*resume with "
                                          r"train.grad_accum=4 or train.batch_size=8"):  # fmt: skip
        run_pretrain(load_config(None, ["train.batch_size=4"], base=split), resume="latest")
    run_pretrain(load_config(None, ["train.batch_size=4", "train.grad_accum=4"], base=split), resume="latest")
    final = "checkpoints/step_00000006/model.safetensors"
    a, b = load_file(tmp_path / "straight" / final), load_file(tmp_path / "split" / final)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_log_window_of_skipped_steps_alone_is_kept_across_a_resume():
    """A window whose steps were all skipped (non-finite) was saved as empty: the resumed run's next line lost the
    count of them."""
    import torch

    from meter.train.loop import Window
    from meter.train.runtime import Runtime

    runtime = Runtime(torch.device("cpu"), torch.float32)
    window = Window()
    window.skipped = 2
    resumed = Window.resumed(window.state(runtime), runtime)
    resumed.add({"mlm_loss": torch.tensor(3.0)}, samples=8)
    assert resumed.reduce(runtime)["nonfinite_steps"] == 2 and resumed.reduce(runtime)["mlm_loss"] == 3.0
