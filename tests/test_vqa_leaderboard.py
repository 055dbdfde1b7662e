"""The route to the VQAv2 leaderboard: train on train + val, predict test-dev (no annotations), submit the file."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from meter.cli import main
from meter.config import load_config, to_dict
from meter.data.formats.vqa import read_vqa_questions
from meter.errors import ConfigError, DataError
from meter.models.folder import export_model_folder, read_model_folder
from meter.runs import run_finetune
from meter.tasks.vqa import answer_vocabulary, read_vqa_split, setup_vqa
from meter.train.checkpoint import _require_same_answers
from meter.train.run_folder import config_differences
from meter.validate import validate
from tests.conftest import MICRO

QUESTION_OFFSET, IMAGE_OFFSET = 1_000_000, 500_000  # test-dev ids of our own, unlike any val id


TEST_STD_QUESTIONS = 7  # test2015 questions beyond test-dev's (test-std's, for the leaderboard file)


def leaderboard_root(world: Path, root: Path) -> Path:
    """`root`: the world's train2014 / val2014 files, plus test-dev2015 questions (val's, renumbered, without
    annotations) about test2015 images (val's images, renamed), and the test2015 questions (test-dev's and a few
    more), laid out as the official release is."""
    (root / "vqa").mkdir(parents=True)
    for file in (world / "vqa").iterdir():
        (root / "vqa" / file.name).symlink_to(file)
    (root / "tokenizers").symlink_to(world / "tokenizers")
    (root / "images" / "test2015").mkdir(parents=True)
    for split in ("train2014", "val2014"):
        (root / "images" / split).symlink_to(world / "images" / split)
    questions = read_vqa_questions(world / "vqa/v2_OpenEnded_mscoco_val2014_questions.json")
    renumbered = [{"image_id": q["image_id"] + IMAGE_OFFSET, "question": q["question"],
                   "question_id": q["question_id"] + QUESTION_OFFSET} for q in questions]  # fmt: skip
    for image_id in {q["image_id"] for q in questions}:
        (root / f"images/test2015/COCO_test2015_{image_id + IMAGE_OFFSET:012d}.png").symlink_to(
            world / f"images/val2014/COCO_val2014_{image_id:012d}.png"
        )
    test_dev = {"data_subtype": "test-dev2015", "task_type": "Open-Ended", "questions": renumbered}
    (root / "vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps(test_dev))
    more = [{**q, "question_id": q["question_id"] + QUESTION_OFFSET} for q in renumbered[:TEST_STD_QUESTIONS]]
    test = {"data_subtype": "test2015", "task_type": "Open-Ended", "questions": more + renumbered}
    (root / "vqa/v2_OpenEnded_mscoco_test2015_questions.json").write_text(json.dumps(test))
    return root


def _write_split(root: Path, split: str, answers: list[str], first_id: int) -> None:
    """One question per consensus answer, each of its ten annotators agreeing."""
    questions, annotations = [], []
    for n, answer in enumerate(answers):
        question_id = first_id + n
        questions.append({"image_id": n, "question": f"question {n}?", "question_id": question_id})
        annotations.append({"question_id": question_id, "image_id": n, "question_type": "what", "answer_type": "other",
                            "multiple_choice_answer": answer,
                            "answers": [{"answer": answer, "answer_id": i + 1} for i in range(10)]})  # fmt: skip
    (root / "vqa").mkdir(parents=True, exist_ok=True)
    (root / f"vqa/v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps({"questions": questions}))
    (root / f"vqa/v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": annotations}))


def test_train_and_val_give_one_vocabulary_with_the_count_applied_over_both(shapes_world: Path, tmp_path: Path):
    _write_split(tmp_path, "train2014", ["cat"] * 5 + ["dog"] * 8 + ["owl"] * 9, first_id=0)
    _write_split(tmp_path, "val2014", ["cat"] * 4 + ["yak"] * 9, first_id=100)
    (tmp_path / "tokenizers").symlink_to(shapes_world / "tokenizers")
    cfg = load_config(None, [f"data.root={tmp_path}", "task=vqa", "vqa.train_splits=[train2014, val2014]", *MICRO])
    job = setup_vqa(cfg)
    assert job.task.answers == ["cat", "owl", "yak"]  # cat: 5 + 4 = 9 over both splits; dog: 8, short of 9
    assert len(job.dataset) == 22 + 13 - 8  # the dog questions have no answer to learn (write_vqa.py leaves them out)


def test_the_vocabulary_counts_its_own_splits_whatever_the_model_trains_on(shapes_world: Path, tmp_path: Path):
    _write_split(tmp_path, "train2014", ["cat"] * 5 + ["dog"] * 8 + ["owl"] * 9, first_id=0)
    _write_split(tmp_path, "val2014", ["cat"] * 4 + ["yak"] * 9, first_id=100)
    (tmp_path / "tokenizers").symlink_to(shapes_world / "tokenizers")
    settings = [f"data.root={tmp_path}", "task=vqa", "vqa.train_splits=[train2014]", *MICRO]
    official = setup_vqa(load_config(None, [*settings, "vqa.answer_splits=[train2014, val2014]"]))
    assert official.task.answers == ["cat", "owl", "yak"]  # the official rule: train2014 and val2014 counted
    assert len(official.dataset) == 22 - 8, "trained on train2014 alone (the dog questions have no target)"
    assert setup_vqa(load_config(None, settings)).task.answers == ["owl"]  # by default the training splits'
    with pytest.raises(ConfigError, match=r"vqa.answer_splits = \['val2014', 'val2014'\] names a split twice"):
        validate(load_config(None, [*settings, "vqa.answer_splits=[val2014, val2014]"]))


def test_the_vocabulary_keeps_the_empty_answer_as_write_vqa_does(shapes_world: Path, tmp_path: Path):
    """write_vqa.py counts the consensus answers in normalize_word's form, where "a", "the" and "?" are all "", and
    keeps "" (official checkpoints: 3,129 rows, "" among them); meter left it out (3,128 answers)."""
    from meter.importers.vqa_answers import official_answer_order

    _write_split(tmp_path, "train2014", [""] * 3 + ["a"] * 3 + ["?"] * 2 + ["cat"] * 9 + ["Dog"] * 5, first_id=0)
    _write_split(tmp_path, "val2014", ["the"] + ["dog."] * 4 + ["yak"] * 9 + ["owl"] * 8, first_id=100)
    (tmp_path / "tokenizers").symlink_to(shapes_world / "tokenizers")
    settings = [f"data.root={tmp_path}", "task=vqa", "vqa.train_splits=[train2014, val2014]", *MICRO]
    job = setup_vqa(load_config(None, settings))
    assert job.task.answers == ["", "cat", "dog", "yak"]  # 9 each over both splits; owl: 8
    assert sorted(job.task.answers) == sorted(official_answer_order(tmp_path / "vqa"))  # the same answers
    # the targets count the annotators' answers as written, as write_vqa.py does: "" where they wrote "", not "a"
    assert len(job.dataset) == 3 + 9 + 9 and [(0, 1.0)] in job.dataset.targets
    normalized = setup_vqa(load_config(None, [*settings, "vqa.normalize_targets=true"]))
    assert len(normalized.dataset) == 4 * 9  # "a", "?" and "the" count for "", "Dog" and "dog." for dog


def test_questions_without_a_vocabulary_answer_are_left_out_of_training_as_the_official_recipe_does(
    shapes_world: Path, tmp_path: Path, caplog
):
    """write_vqa.py drops every train and val question none of whose annotators' answers is in the vocabulary;
    meter trained on them as all-zero targets (a few percent of VQAv2, teaching only that no answer is right)."""
    from meter.plan.tasks import _vqa_read
    from meter.train.run_folder import config_differences

    _write_split(tmp_path, "train2014", ["cat"] * 9 + ["dog"] * 3, first_id=0)
    (tmp_path / "tokenizers").symlink_to(shapes_world / "tokenizers")
    settings = [f"data.root={tmp_path}", "task=vqa", *MICRO]
    with caplog.at_level(logging.INFO, logger="meter.tasks.vqa"):
        job = setup_vqa(load_config(None, settings))
    assert job.task.answers == ["cat"] and len(job.dataset) == 9
    assert "3 questions left out of training: no annotator's answer is in the vocabulary" in caplog.text
    assert all(targets for targets in job.dataset.targets)
    facts = _vqa_read(load_config(None, settings))  # meter plan sizes the schedule by the same questions
    assert facts.examples == 9 and "3 without a vocabulary answer left out" in facts.description
    assert len(setup_vqa(load_config(None, [*settings, "vqa.keep_untargeted=true"])).dataset) == 12
    # a run recorded before the setting existed trained on them: its resume under the new default is a change
    recorded = to_dict(load_config(None, settings))
    del recorded["vqa"]["keep_untargeted"]
    assert config_differences(recorded, load_config(None, settings)) == ["vqa.keep_untargeted: True -> False"]
    assert config_differences(recorded, load_config(None, [*settings, "vqa.keep_untargeted=true"])) == []


def test_test_dev_questions_read_their_images_from_the_test2015_folder(shapes_world: Path, tmp_path: Path):
    root = leaderboard_root(shapes_world, tmp_path / "data")
    cfg = load_config(None, [f"data.root={root}"])
    records = read_vqa_split(cfg, "test-dev2015", with_annotations=False)
    first = records[0]
    assert first.image == root / f"images/test2015/COCO_test2015_{first.image_id:012d}.png"
    assert all(r.image.is_file() for r in records) and first.question_id > QUESTION_OFFSET
    cfg = load_config(None, [f"data.root={root}", "vqa.image_splits={}"])  # the setting, not a hidden rule
    assert read_vqa_split(cfg, "test-dev2015", with_annotations=False)[0].image.parent == root / "images/test-dev2015"


def test_a_question_asked_twice_is_an_error_naming_the_file(shapes_world: Path, tmp_path: Path):
    root = leaderboard_root(shapes_world, tmp_path / "data")
    path = root / "vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({"questions": data["questions"] + data["questions"][:1]}))
    with pytest.raises(DataError, match=r"test-dev2015_questions.json: question_id \d+ appears more than once"):
        read_vqa_split(load_config(None, [f"data.root={root}"]), "test-dev2015", with_annotations=False)


def _submission_answers(path: Path, questions: Path) -> dict[int, str]:
    rows = json.loads(path.read_text())
    assert all(set(row) == {"question_id", "answer"} and isinstance(row["answer"], str) for row in rows)
    answered = [row["question_id"] for row in rows]
    assert sorted(answered) == sorted(q["question_id"] for q in read_vqa_questions(questions))  # each once
    return {row["question_id"]: row["answer"] for row in rows}


def test_evaluating_test_dev_writes_the_submission_and_says_it_is_unscored(
    micro_checkpoints, shapes_world: Path, tmp_path: Path, capsys, caplog
):
    root = leaderboard_root(shapes_world, tmp_path / "data")
    checkpoint = micro_checkpoints("vqa")
    with caplog.at_level(logging.WARNING):
        code = main(["evaluate", "vqa", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "eval"),
                     f"data.root={root}", "vqa.eval_split=test-dev2015", "train.progress=false"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scored"] is False and "no annotations" in result["reason"] and result["split"] == "test-dev2015"
    submission = tmp_path / "eval/vqa_predictions_test-dev2015.json"
    assert result["submission"] == str(submission)
    # EvalAI's test-dev phase takes a file answering all of test2015 (official METER predicts all of it)
    answers = _submission_answers(submission, root / "vqa/v2_OpenEnded_mscoco_test2015_questions.json")
    assert result["submission_split"] == "test2015" and len(answers) == result["submission_questions"]
    assert len(answers) == result["questions"] + TEST_STD_QUESTIONS
    assert set(answers.values()) <= set(read_model_folder(checkpoint).answers)
    assert "could not score test-dev2015" in caplog.text and "unreadable" not in caplog.text  # images found
    assert not (tmp_path / "eval/vqa_accuracy_test-dev2015.json").exists()


def test_finetuning_on_train_and_val_predicts_test_dev_end_to_end(micro_checkpoints, shapes_world: Path, tmp_path):
    root = leaderboard_root(shapes_world, tmp_path / "data")
    settings = [
        "task=vqa",
        "vqa.train_splits=[train2014, val2014]",
        "vqa.eval_split=test-dev2015",
        "vqa.min_answer_count=1",
        f"train.init_from={micro_checkpoints('pretrain')}",
        "train.max_steps=2",
    ]
    cfg = load_config(None, [f"data.root={root}", f"train.out={tmp_path / 'run'}", *settings, *MICRO])
    result = run_finetune(cfg)
    assert result["scored"] is False
    both = read_vqa_split(cfg, "train2014") + read_vqa_split(cfg, "val2014")
    assert read_model_folder(tmp_path / "run/model").answers == answer_vocabulary(both, 1)
    _submission_answers(tmp_path / "run/vqa_predictions_test-dev2015.json",
                        root / "vqa/v2_OpenEnded_mscoco_test2015_questions.json")  # fmt: skip


def test_a_test_dev_submission_without_the_test2015_questions_is_refused_before_training(
    micro_checkpoints, shapes_world: Path, tmp_path: Path
):
    """The submission answered test-dev's questions alone; EvalAI takes a file for all of test2015 (its test-dev
    phase scores the test-dev part), so the file of the paper's recipe was refused at the leaderboard."""
    root = leaderboard_root(shapes_world, tmp_path / "data")
    test2015 = root / "vqa/v2_OpenEnded_mscoco_test2015_questions.json"
    test2015.unlink()
    settings = ["task=vqa", "vqa.eval_split=test-dev2015", f"train.init_from={micro_checkpoints('pretrain')}",
                "train.max_steps=2", "vqa.min_answer_count=1", *MICRO]  # fmt: skip
    cfg = load_config(None, [f"data.root={root}", f"train.out={tmp_path / 'run'}", *settings])
    with pytest.raises(DataError, match=f"vqa.eval_split = 'test-dev2015': vqa: the leaderboard's file for "
                                        f"test-dev2015 answers every question of test2015, whose questions {test2015} "
                                        f"were not found"):  # fmt: skip
        run_finetune(cfg)
    assert not (tmp_path / "run/checkpoints").exists(), "refused before the first step"
    test2015.write_text(json.dumps({"questions": [{"image_id": 1, "question": "q?", "question_id": 1}]}))
    with pytest.raises(DataError, match=r"questions of test-dev2015 are not in test2015 .* not of one release"):
        run_finetune(cfg)
    out = tmp_path / "alone"
    cfg = load_config(None, [f"data.root={root}", f"train.out={out}", *settings, "vqa.submission_splits={}"])
    recorded = to_dict(load_config(None, [f"data.root={root}", f"train.out={out}", *settings]))
    assert config_differences(recorded, cfg) == [], "the file written, not the training: a resume may change it"
    assert run_finetune(cfg)["scored"] is False  # the setting writes test-dev's questions alone
    _submission_answers(out / "vqa_predictions_test-dev2015.json",
                        root / "vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json")  # fmt: skip


def test_an_annotated_split_whose_annotations_are_missing_is_an_error_naming_the_file(
    micro_checkpoints, shapes_world: Path, tmp_path: Path, capsys
):
    """A typo in vqa.annotations (or a missing file) made val2014 'unscored' like test-dev: exit 0, no score, at the
    end of a whole fine-tuning."""
    out = tmp_path / "eval"
    out.mkdir()
    code = main(["evaluate", "vqa", "--checkpoint", str(micro_checkpoints("vqa")), "--out", str(out),
                 f"data.root={shapes_world}", "vqa.annotations=vqa/v2_mscoco_{split}_annotation.json",
                 "train.progress=false"])  # fmt: skip
    assert code == 2
    assert (f"vqa.eval_split = 'val2014': its annotations {shapes_world}/vqa/v2_mscoco_val2014_annotation.json not "
            "found") in capsys.readouterr().err  # fmt: skip
    assert not list(out.iterdir())


def _vqa_folder(job, path: Path, answers: list[str]) -> list[torch.Tensor]:
    """A model folder of `job`'s model whose VQA rows name `answers` (none: unnamed rows); returns its rows, each
    one distinct."""
    classifier = job.task.model.heads["vqa"][3]
    with torch.no_grad():
        for row in range(len(classifier.weight)):
            classifier.weight[row] = row + 1.0
    description = job.task.describe()
    description.answers = list(answers)
    export_model_folder(path, job.task.model, job.tokenizer, description)
    return list(classifier.weight.detach().clone())


def test_fine_tuning_from_a_vqa_folder_loads_its_rows_by_answer_not_by_position(shapes_world: Path, tmp_path: Path):
    _write_split(tmp_path, "train2014", ["cat"] * 9 + ["owl"] * 9 + ["yak"] * 9, first_id=0)
    (tmp_path / "tokenizers").symlink_to(shapes_world / "tokenizers")
    settings = [f"data.root={tmp_path}", "task=vqa", "vqa.train_splits=[train2014]", *MICRO]
    saved = _vqa_folder(setup_vqa(load_config(None, settings)), tmp_path / "folder", ["yak", "cat", "emu"])
    job = setup_vqa(load_config(None, [*settings, f"train.init_from={tmp_path / 'folder'}"]))
    rows = job.task.model.heads["vqa"][3].weight.detach()
    assert job.task.answers == ["cat", "owl", "yak"]  # as many rows as the folder's, other answers in another order
    assert torch.equal(rows[0], saved[1]) and torch.equal(rows[2], saved[0])
    assert not any(torch.equal(rows[1], row) for row in saved)  # owl: the folder has none, it starts fresh
    # an import without --vqa-answers: rows that name no answer cannot be matched, the head starts fresh
    _vqa_folder(setup_vqa(load_config(None, settings)), tmp_path / "unnamed", [])
    unnamed = setup_vqa(load_config(None, [*settings, f"train.init_from={tmp_path / 'unnamed'}"]))
    assert not any(torch.equal(row, old) for row in unnamed.task.model.heads["vqa"][3].weight for old in saved)


def test_a_run_resumes_only_with_the_vocabulary_its_checkpoint_trained(micro_checkpoints, shapes_world: Path, tmp_path):
    """The head's rows and their optimizer state are the recorded answers', row by row: a vocabulary built again
    from changed annotations loaded them under other answers (or failed on the head's size, deep in torch)."""
    root = tmp_path / "data"
    shutil.copytree(shapes_world / "vqa", root / "vqa")
    for name in ("images", "tokenizers"):
        (root / name).symlink_to(shapes_world / name)
    settings = [f"data.root={root}", "task=vqa", "vqa.min_answer_count=1", "train.max_steps=2",
                f"train.init_from={micro_checkpoints('pretrain')}", *MICRO]  # fmt: skip
    cfg = load_config(None, [*settings, f"train.out={tmp_path / 'run'}"])
    run_finetune(load_config(None, ["train.stop_at=1"], base=cfg))
    checkpoint = tmp_path / "run/checkpoints/step_00000001"
    recorded = read_model_folder(checkpoint).answers
    annotations = root / "vqa/v2_mscoco_train2014_annotations.json"
    data = json.loads(annotations.read_text())
    green = next(a for a in data["annotations"] if a["multiple_choice_answer"] == "green")  # the rarest, given twice
    green["multiple_choice_answer"] = "zebra"  # an answer of its own: the vocabulary gains it, last
    annotations.write_text(json.dumps(data))
    with pytest.raises(DataError) as refused:
        run_finetune(cfg, resume="latest")
    assert refused.value.args[0] == (
        f"{checkpoint}: its VQA head was trained on another answer vocabulary than the one built now "
        f"({len(recorded)} answers there, {len(recorded) + 1} now; the first to differ is row {len(recorded)}: none "
        "there, 'zebra' now: were the annotations, vqa.answer_splits or vqa.min_answer_count changed, or was it "
        "written by an earlier meter, which counted answers in another form?); a run cannot resume across that: "
        f"start anew from its weights with train.init_from={checkpoint} (a folder's rows load "
        "by answer)"
    )
    anew = load_config(None, [*settings, f"train.out={tmp_path / 'anew'}", f"train.init_from={checkpoint}"])
    run_finetune(anew)  # the way the message points to
    assert read_model_folder(tmp_path / "anew/model").answers[-1] == "zebra"


def test_a_checkpoint_from_before_the_vocabulary_kept_the_empty_answer_is_named_so_on_resume():
    """An earlier meter's vocabulary lacked "": the same answers otherwise, every row after it one off."""
    recorded, now = ["yes", "no", "2"], ["yes", "", "no", "2"]
    with pytest.raises(DataError) as refused:
        _require_same_answers(recorded, now, "run/checkpoints/step_00000100")
    assert refused.value.args[0] == (
        'run/checkpoints/step_00000100: written by a meter from before the VQA vocabulary kept the empty answer "" '
        '(as the official vocabulary does): its head has 3 answers, the vocabulary built now 4, with "" at row 1; '
        "finish the run with the meter that began it, or start anew from its weights with "
        "train.init_from=run/checkpoints/step_00000100 (a folder's rows load by answer)"
    )
    with pytest.raises(DataError, match=r"another answer vocabulary .* row 1: 'no' there, 'maybe' now"):
        _require_same_answers(recorded, ["yes", "maybe", "no", "2"], "step")  # another answer than "" added
    with pytest.raises(DataError, match=r"another answer vocabulary .* row 0: 'yes' there, 'no' now"):
        _require_same_answers(recorded, ["no", "", "yes", "2"], "step")  # "" added, and rows moved besides
    _require_same_answers(recorded, list(recorded), "step")  # the same vocabulary resumes
    _require_same_answers([], now, "step")  # a checkpoint without answers (no VQA head) has none to compare
