"""The demo's downstream-task stage (`meter demo --tasks all`), on the small world with a micro model."""

from pathlib import Path

import pytest

from meter.demo_tasks import run_task_demos, tasks_table
from tests.conftest import SHAPES_SPEC


@pytest.mark.slow
def test_every_task_is_reported_against_its_baseline(micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path):
    timings: dict[str, float] = {}
    common = ["train.progress=false", "train.batch_size=8", "train.log_every=1"]
    entries = run_task_demos(tmp_path, shapes_tasks_world, SHAPES_SPEC, micro_checkpoints("pretrain"), 2, common,
                             timings, progress=False)  # fmt: skip
    assert set(entries) == {"nlvr2", "snli_ve", "retrieval", "captioning"}
    for task, baseline, headline in [("nlvr2", "blind", "accuracy"), ("snli_ve", "blind", "accuracy"),
                                     ("retrieval", "chance", "rsum"), ("captioning", "blind", "cider")]:  # fmt: skip
        entry = entries[task]
        assert (entry["baseline"], entry["headline"]) == (baseline, headline)
        assert isinstance(entry["model"][headline], float) and isinstance(entry[baseline][headline], float)
    assert "consistency" in entries["nlvr2"]["blind"] and "chance" not in entries["retrieval"]["model"]
    assert {"nlvr2_model", "nlvr2_blind", "retrieval_model", "captioning_blind"} <= set(timings)
    assert (tmp_path / "tasks_loss.png").is_file()
    table = tasks_table(entries)
    assert table.splitlines()[0].startswith("task (metric, baseline)") and len(table.splitlines()) == 5
    # a second run reuses the finished runs (evaluates again, trains nothing)
    again = run_task_demos(tmp_path, shapes_tasks_world, SHAPES_SPEC, micro_checkpoints("pretrain"), 2, common, {},
                           progress=False)  # fmt: skip
    assert again["nlvr2"]["model"] == entries["nlvr2"]["model"]
