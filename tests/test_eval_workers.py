"""Evaluation decodes its images in data.num_workers watched workers, as training does: the same files, the same
scores and the same skipped samples as a read in the main process; a worker that dies stops it naming what it read."""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from meter.data.bad_samples import BadSample, BadSampleBudget
from meter.data.datasets import ImageReader
from meter.data.images import image_transform
from meter.data.labelled import ImageFiles, image_batches, stack_readable
from meter.data.ordered_batches import EvalReading, ordered_batches
from meter.runs import evaluate_run
from tests.test_eval_budget import eval_config, one_image_missing
from tests.test_loader_faults import children, fault_after, started_workers

TRANSFORM = image_transform(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@contextmanager
def child_processes() -> Iterator[set[int]]:
    """The child processes seen while the block runs (looked for every 5 ms)."""
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.005):
            seen.update(children())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def files_of(folder: Path) -> dict[str, bytes]:
    """The files of an evaluation folder, the folder's own path in them (the skipped list's) made "OUT"."""
    return {path.name: path.read_bytes().replace(str(folder).encode(), b"OUT")
            for path in sorted(folder.iterdir()) if path.is_file()}  # fmt: skip


@pytest.mark.parametrize(
    "task",
    ["vqa", "retrieval", *(pytest.param(task, marks=pytest.mark.slow) for task in ("nlvr2", "snli_ve", "captioning"))],
)
def test_an_evaluation_read_by_two_workers_writes_the_files_and_skips_of_one_read_in_the_main_process(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, task: str
):
    root = tmp_path / "world"
    one_image_missing(task, shapes_tasks_world, root)
    results, written = {}, {}
    for workers in (0, 2):
        # a batch of 3: more batches than workers, and the missing image's batch is not the first of each
        cfg = eval_config(task, root, "data.max_bad_samples=0.6", "train.eval_batch_size=3",
                          f"data.num_workers={workers}")  # fmt: skip
        out = tmp_path / f"eval_{workers}"
        with child_processes() as seen:
            results[workers] = evaluate_run(cfg, micro_checkpoints(task), out)
        assert len(seen) >= workers  # the workers did read (the setting was not training's alone)
        written[workers] = files_of(out)
        results[workers]["skipped_list"] = results[workers]["skipped_list"].replace(str(out), "OUT")
    assert results[2] == results[0] and results[0]["skipped"] > 0
    assert written[2].keys() == written[0].keys() and len(written[0]) >= 2  # predictions, score, skipped list
    for name in written[0]:
        assert written[2][name] == written[0][name], name


def shapes_images(world: Path) -> list[Path]:
    return sorted((world / "images").rglob("*.png"))[:12]


def test_image_batches_with_workers_give_the_main_process_batches_and_count_a_bad_image_once(
    shapes_world: Path, tmp_path: Path
):
    paths = shapes_images(shapes_world)
    paths[4] = tmp_path / "missing.png"  # in the second batch of 3
    reader = ImageReader(TRANSFORM, 16)
    read = {}
    for workers in (0, 2):
        budget = BadSampleBudget(0.5, len(paths), tmp_path / f"bad_{workers}.jsonl")
        read[workers] = list(image_batches(paths, reader, EvalReading(3, num_workers=workers), "eval", budget))
        assert budget.count == 1
    assert [indices for indices, _ in read[2]] == [indices for indices, _ in read[0]] == \
        [[0, 1, 2], [3, 5], [6, 7, 8], [9, 10, 11]]  # fmt: skip
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(read[2], read[0], strict=True))
    assert (tmp_path / "bad_2.jsonl").read_text() == (tmp_path / "bad_0.jsonl").read_text()


def test_a_batch_of_unreadable_images_only_is_counted_and_left_out(tmp_path: Path):
    indices, pixels, bad = stack_readable([(0, BadSample("a.png", "gone")), (1, BadSample("b.png", "gone"))])
    assert (indices, pixels) == ([], None) and [b.path for b in bad] == ["a.png", "b.png"]


def test_a_killed_evaluation_worker_stops_the_evaluation_naming_its_sample(shapes_world: Path):
    paths = shapes_images(shapes_world)
    batches = ordered_batches(ImageFiles(paths, ImageReader(TRANSFORM, 16)), stack_readable,
                              EvalReading(1, num_workers=2), "eval")  # fmt: skip
    victim = started_workers(batches)[0]
    os.kill(victim, signal.SIGKILL)
    error, took = fault_after(batches, limit=30)
    assert took < 10
    assert re.search(rf"data worker [01] \(pid {victim}\) was killed by SIGKILL .* while reading sample \d+ of "
                     r"ImageFiles", str(error)), str(error)  # fmt: skip
