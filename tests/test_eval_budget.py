"""Evaluation holds training's bad-sample budget (data.max_bad_samples): past it, it stops naming the first file it
could not read, instead of scoring a split it did not see; within it, the skipped samples are left out of the score
and every score file says how many there were."""

import json
import shutil
from pathlib import Path

import pytest

from meter.cli import main
from meter.config import load_config
from meter.data.formats.vqa import read_vqa_annotations
from meter.errors import DataError
from meter.metrics.vqa import vqa_accuracy
from meter.runs import evaluate_run
from meter.tasks.build import read_karpathy_splits
from meter.tasks.nlvr2 import read_nlvr2_split
from meter.tasks.snli_ve import read_snli_ve_split
from meter.tasks.vqa import read_vqa_split

SCORE_FILES = {"vqa": "vqa_accuracy_val2014.json", "nlvr2": "nlvr2_accuracy_dev.json",
               "snli_ve": "snli_ve_accuracy_dev.json", "retrieval": "retrieval_recall_test.json",
               "captioning": "caption_scores_test.json"}  # fmt: skip


def eval_config(task: str, root: Path, *overrides: str):
    return load_config(None, [f"task={task}", f"data.root={root}", "train.progress=false", *overrides])


def test_evaluate_vqa_with_an_image_pattern_that_matches_no_file_fails_naming_the_first(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, capsys
):
    """The issue's example: `.jpg` for `.png` used to score 23% after one warning and exit 0."""
    pattern = "vqa.image_pattern={split}/COCO_{split}_{image_id:012d}.jpg"
    first = read_vqa_split(eval_config("vqa", shapes_tasks_world, pattern), "val2014")[0].image
    out = tmp_path / "eval"
    code = main(["evaluate", "vqa", "--checkpoint", str(micro_checkpoints("vqa")), "--out", str(out),
                 f"data.root={shapes_tasks_world}", pattern, "train.progress=false"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "more than the budget of 0 (1.0%, data.max_bad_samples)" in err and f"first: data: {first}: image" in err
    assert not list(out.glob("vqa_accuracy_*")) and not list(out.glob("vqa_predictions_*"))  # nothing scored


def one_image_missing(task: str, world: Path, root: Path) -> tuple[Path, int]:
    """A copy of the world without the first image the task's evaluation split reads (NLVR2: a right image, the
    second of its pair); returns it and how many samples of the split read it."""
    shutil.copytree(world, root)
    cfg = eval_config(task, root)
    if task == "vqa":
        paths = [[r.image] for r in read_vqa_split(cfg, cfg.vqa.eval_split)]
    elif task == "nlvr2":
        paths = [[r.left, r.right] for r in read_nlvr2_split(cfg, cfg.nlvr2.eval_split)]
    elif task == "snli_ve":
        paths = [[r.image] for r in read_snli_ve_split(cfg, cfg.snli_ve.eval_split)]
    else:
        paths = [[r.image] for r in read_karpathy_splits(cfg, task, [getattr(cfg, task).eval_split])]
    missing = paths[0][-1]
    missing.unlink()
    return missing, sum(missing in sample for sample in paths)


@pytest.mark.parametrize("task", ["vqa", "nlvr2", "snli_ve", "retrieval", "captioning"])
def test_an_unreadable_image_past_the_budget_stops_the_evaluation_naming_it(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, task: str
):
    missing, _ = one_image_missing(task, shapes_tasks_world, tmp_path / "world")
    with pytest.raises(DataError, match=rf"more than the budget of 0 .*first: data: {missing}: image not found"):
        evaluate_run(eval_config(task, tmp_path / "world"), micro_checkpoints(task), tmp_path / "eval")
    assert not (tmp_path / "eval" / SCORE_FILES[task]).exists()


@pytest.mark.parametrize("task", ["vqa", "nlvr2", "snli_ve", "retrieval", "captioning"])
def test_within_the_budget_skipped_samples_are_counted_in_the_score_file_and_listed(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, task: str
):
    missing, reading_it = one_image_missing(task, shapes_tasks_world, tmp_path / "world")
    result = evaluate_run(eval_config(task, tmp_path / "world", "data.max_bad_samples=0.6"), micro_checkpoints(task),
                          tmp_path / "eval")  # fmt: skip
    score_file = json.loads((tmp_path / "eval" / SCORE_FILES[task]).read_text())
    assert result["skipped"] == score_file["skipped"] == reading_it > 0
    listed = [json.loads(line) for line in Path(score_file["skipped_list"]).read_text().splitlines()]
    assert len(listed) == reading_it and all(row["path"] == str(missing) for row in listed)


def test_vqa_scores_only_the_questions_it_could_read_and_still_answers_every_one(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    root = tmp_path / "world"
    missing, reading_it = one_image_missing("vqa", shapes_tasks_world, root)
    cfg = eval_config("vqa", root, "data.max_bad_samples=0.6")
    accuracy = evaluate_run(cfg, micro_checkpoints("vqa"), tmp_path / "eval")
    submission = {row["question_id"]: row["answer"] for row in
                  json.loads((tmp_path / "eval/vqa_predictions_val2014.json").read_text())}  # fmt: skip
    records = read_vqa_split(cfg, "val2014")
    assert submission.keys() == {r.question_id for r in records}  # the leaderboard needs every question
    readable = {r.question_id for r in records if r.image != missing}
    assert len(readable) == len(records) - reading_it
    annotations = [a for a in read_vqa_annotations(root / "vqa/v2_mscoco_val2014_annotations.json")
                   if a["question_id"] in readable]  # fmt: skip
    expected = vqa_accuracy(annotations, {q: submission[q] for q in readable})
    assert accuracy["overall"] == expected.overall and accuracy["skipped"] == reading_it
