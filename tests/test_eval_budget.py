"""Evaluation holds training's bad-sample budget (data.max_bad_samples): past it, it stops naming the first file it
could not read, instead of scoring a split it did not see; within it, the leaderboard file answers every sample, the
score is the official score of that file (a skipped sample counts with the answer the file gives it), and every score
file says how many were skipped."""

import json
import shutil
from pathlib import Path

import pytest

from meter.cli import main
from meter.config import load_config
from meter.errors import DataError
from meter.metrics.caption import caption_scores
from meter.metrics.nlvr2 import score_nlvr2_files
from meter.metrics.vqa_files import score_files
from meter.runs import evaluate_run
from meter.tasks.build import read_karpathy_splits
from meter.tasks.nlvr2 import read_nlvr2_split
from meter.tasks.snli_ve import SNLI_VE_LABELS, read_snli_ve_split
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


@pytest.mark.parametrize("task", ["vqa", "nlvr2", "snli_ve", "captioning", "retrieval"])
def test_with_skipped_samples_the_score_is_the_official_score_of_the_file_it_wrote(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, task: str
):
    """The score left the skipped samples out, while the leaderboard file answered them: the number reported was not
    the number the official evaluation gives that file (VQA 3.89 reported, 4.75 for the file, in the audit)."""
    root, out = tmp_path / "world", tmp_path / "eval"
    _, reading_it = one_image_missing(task, shapes_tasks_world, root)
    cfg = eval_config(task, root, "data.max_bad_samples=0.6")
    result = evaluate_run(cfg, micro_checkpoints(task), out)
    assert result["skipped"] == reading_it > 0
    if task == "vqa":
        official = score_files(
            root / "vqa/v2_OpenEnded_mscoco_val2014_questions.json",
            root / "vqa/v2_mscoco_val2014_annotations.json",
            out / "vqa_predictions_val2014.json",
        )
        assert result["overall"] == official.overall  # fmt: skip
    elif task == "nlvr2":
        official = score_nlvr2_files(root / "nlvr2/data/dev.json", out / "nlvr2_predictions_dev.csv")
        assert (result["accuracy"], result["consistency"]) == (official.accuracy, official.consistency)
    elif task == "snli_ve":
        records = read_snli_ve_split(cfg, "dev")
        written = [json.loads(line) for line in (out / "snli_ve_predictions_dev.jsonl").read_text().splitlines()]
        assert [row["pairID"] for row in written] == [r.pair_id for r in records]
        correct = sum(SNLI_VE_LABELS[r.label] == row["prediction"] for r, row in zip(records, written, strict=True))
        assert (result["accuracy"], result["examples"]) == (100 * correct / len(records), len(records))
    elif task == "captioning":
        records = read_karpathy_splits(cfg, task, ["test"])
        written = {str(row["image_id"]): row["caption"] for row in json.loads((out / "captions_test.json").read_text())}
        official = caption_scores({str(r.image_id): list(r.captions) for r in records}, written)
        assert (result["cider"], result["images"]) == (official.to_dict()["cider"], len(records))
    else:  # the unreadable image stays in the split: a query that misses, and its captions miss
        records = read_karpathy_splits(cfg, task, ["test"])
        assert result["images"] == len(records) and result["texts"] == sum(len(set(r.captions)) for r in records)
        misses = {k: round(len(records) * (100 - result[f"i2t_r{k}"]) / 100) for k in (1, 5, 10)}
        assert all(miss >= 1 for miss in misses.values()), result
        assert result["t2i_r10"] <= 100 * (1 - len(set(records[0].captions)) / result["texts"]) + 1e-9
