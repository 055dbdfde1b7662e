"""A study expanded into cells and runs: folders named after the cell, shared pretraining, the reproducing command,
and the held-out VQA split the tuned table selects on."""

import json
import shlex
from pathlib import Path

import pytest

from meter.config import load_config, to_dict
from meter.errors import ConfigError
from meter.study.cells import config_changes, identity, plan_study
from meter.study.spec import study_from_dict
from meter.tasks.vqa import read_vqa_split
from tests.studies import micro_study


def test_every_cell_is_a_row_and_seed_and_its_runs_live_in_folders_named_after_it(tmp_path):
    plan = plan_study(study_from_dict(micro_study(tmp_path, seeds=[0, 3])), tmp_path / "out", prepare=False)
    out = (tmp_path / "out").resolve()
    assert [c.name for c in plan.cells] == ["vlp/co-attention/seed-0", "vlp/co-attention/seed-3", "vlp/merged/seed-0",
                                            "vlp/merged/seed-3"]  # fmt: skip
    merged = plan.cell("vlp/merged/seed-3")
    assert [(r.name, Path(r.folder)) for r in merged.runs] == [
        ("pretrain", out / "cells/vlp/merged/seed-3/pretrain"),
        ("vqa", out / "cells/vlp/merged/seed-3/vqa"),
    ]
    pretrain, vqa = (run.config() for run in merged.runs)
    assert (pretrain.model.fusion.name, pretrain.train.seed, pretrain.train.max_steps) == ("merged", 3, 2)
    assert vqa.train.init_from == str(out / "cells/vlp/merged/seed-3/pretrain/checkpoints/step_00000002")


def test_without_vlp_a_task_is_fine_tuned_from_the_encoders_alone(tmp_path):
    plan = plan_study(study_from_dict(micro_study(tmp_path, protocol="no-vlp")), tmp_path / "out", prepare=False)
    runs = plan.cell("no-vlp/merged/seed-0").runs
    assert [r.name for r in runs] == ["vqa"]
    assert runs[0].config().train.init_from is None and runs[0].config().model.fusion.name == "merged"


def test_rows_that_share_a_pretraining_share_one_run(tmp_path):
    study = micro_study(tmp_path, variants=[{"name": "vqa-lr", "finetune": ["train.lr=3e-4"]}])
    plan = plan_study(study_from_dict(study), tmp_path / "out", prepare=False)
    base, other = plan.cells
    assert other.runs[0].folder == base.runs[0].folder and other.runs[0].owner == base.name
    assert other.depends_on == [base.name] and [r.name for r in other.own_runs()] == ["vqa"]
    assert other.runs[1].config().train.lr == 3e-4 and base.runs[1].config().train.lr == 1e-4


def test_a_run_is_the_command_that_reproduces_it(tmp_path):
    plan = plan_study(study_from_dict(micro_study(tmp_path)), tmp_path / "out", prepare=False)
    for run in plan.cells[1].runs:
        words = shlex.split(run.command())
        assert words[:2] == ["meter", "pretrain" if run.kind == "pretrain" else "finetune"]
        assert words[2] == "--config"
        out = (tmp_path / "out").resolve()
        assert identity(load_config(words[3], words[4:]), out) == run.identity == identity(run.config(), out)


def test_a_search_value_equal_to_the_recipes_is_the_same_run(tmp_path):
    study = micro_study(tmp_path, search={"train.lr": [1.0e-4, 3.0e-4]})  # the VQA recipe's lr is 1e-4
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.25}
    plan = plan_study(study_from_dict(study), tmp_path / "out", prepare=False)
    assert [r.name for r in plan.cells[0].runs] == ["pretrain", "vqa", "vqa@lr=0.0003"]
    assert plan.points == ["lr=0.0001", "lr=0.0003"]


def test_the_held_out_split_splits_the_training_images_and_leaves_the_reported_split_alone(shapes_world, tmp_path):
    study = micro_study(shapes_world, search={"train.lr": [3.0e-4]})
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.25}
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    run = plan.cells[0].runs[1]
    trained, selected = run.config(), load_config(run.recipe, [*run.overrides, *run.select])
    fit = read_vqa_split(trained, trained.vqa.train_splits[0])
    held = read_vqa_split(selected, selected.vqa.eval_split)
    original = read_vqa_split(load_config(run.recipe, [f"data.root={shapes_world}"]), "train2014")
    fit_images, held_images = {r.image_id for r in fit}, {r.image_id for r in held}
    assert not fit_images & held_images and fit_images | held_images == {r.image_id for r in original}
    assert len(held_images) == round(0.25 * len(fit_images | held_images))
    assert sorted(r.question_id for r in fit + held) == sorted(r.question_id for r in original)
    assert all(r.image.is_file() for r in fit + held)  # the new splits read the training images
    reported = read_vqa_split(trained, trained.vqa.eval_split)
    direct = read_vqa_split(load_config(run.recipe, [f"data.root={shapes_world}"]), "val2014")
    assert trained.vqa.eval_split == "val2014" and [r.question_id for r in reported] == [r.question_id for r in direct]
    again = plan_study(study_from_dict(study), tmp_path / "out")  # planned again: the same split
    assert json.loads(Path(again.cells[0].runs[1].folder, "study_run.json").read_text())["identity"] == run.identity


def test_a_setting_only_one_side_knows_is_not_a_change_of_the_run(tmp_path):
    out = (tmp_path / "out").resolve()
    run = plan_study(study_from_dict(micro_study(tmp_path)), out, prepare=False).cells[0].runs[0]
    record = {"config": to_dict(run.config()), "study": str(out)}
    del record["config"]["data"]["max_bad_samples"]  # as a record written before meter had that setting
    record["config"]["captioning"]["tokenizer"] = "python"  # and before that default changed to "auto"
    assert config_changes(record, run, out) == []
    record["config"]["model"]["fusion"]["heads"] = 4
    assert config_changes(record, run, out) == ["model.fusion.heads: 4 -> 2"]
    moved = {"config": json.loads(json.dumps(record["config"]).replace(str(out), "/elsewhere")), "study": "/elsewhere"}
    assert config_changes(moved, run, out) == ["model.fusion.heads: 4 -> 2"]  # paths inside the study's folder move


def test_a_folder_beside_the_study_whose_name_starts_alike_is_not_taken_for_the_studys(tmp_path):
    """The study in /x/s1, its data in /x/s10: the data's path was written <study>0, so moving the study (and not
    its data) changed every identity, and its finished runs were refused as changed."""
    study = study_from_dict(micro_study(tmp_path / "s10"))
    here = plan_study(study, tmp_path / "s1", prepare=False)
    moved = plan_study(study, tmp_path / "moved" / "s1", prepare=False)
    assert [run.identity for cell in here.cells for run in cell.runs] == [
        run.identity for cell in moved.cells for run in cell.runs
    ]


def test_a_study_planned_while_another_process_makes_its_world_waits_for_it(tmp_path):
    """Two `meter study run` started at once on a new folder both made OUT/shapes, each over the other's files."""
    import subprocess
    import sys
    import threading

    from meter.data.shapes.world import STARTED
    from meter.study.cells import WORLD_LOCK
    from tests.runner import environment

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from meter.output_folder import waiting_for_folder\n"
         f"with waiting_for_folder({str(out)!r}, {WORLD_LOCK!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment(),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        study = study_from_dict(micro_study(tmp_path, data={"shapes": {"images": 8, "seed": 0}}))
        planning = threading.Thread(target=plan_study, args=(study, out))
        planning.start()
        planning.join(timeout=3)
        assert planning.is_alive() and not (out / "shapes" / STARTED).exists(), "it waits while the other makes it"
    finally:
        holder.communicate("", timeout=60)  # the other process is done: its lock goes with it
    planning.join(timeout=120)
    assert not planning.is_alive() and (out / "shapes" / "shapes_world.json").is_file()


@pytest.mark.parametrize(
    ("finetune", "named"),
    [
        (["vqa.eval_split=train2014"], "vqa.eval_split = 'train2014'"),
        (["vqa.metric=official-2017"], "vqa.metric = 'official-2017'"),
        (["train.best_on=val2014"], "train.best_on = 'val2014'"),
    ],
)
def test_a_row_that_scores_its_column_otherwise_is_refused(shapes_world, tmp_path, finetune: list[str], named: str):
    """A row on another split (or another VQA metric, or its best checkpoint chosen) was bolded in the same column
    as the others, the report naming the base's split."""
    study = micro_study(shapes_world, variants=[{"name": "merged", "overrides": ["model.fusion=merged"],
                                                 "finetune": finetune}])  # fmt: skip
    with pytest.raises(ConfigError, match=f"merged/seed-0 vqa: sets {named}.*set it in base.tasks.vqa.overrides"):
        plan_study(study_from_dict(study), tmp_path / "out")
    study["base"]["tasks"]["vqa"]["overrides"] = finetune  # for every row: planned
    study["variants"][0]["finetune"] = []
    assert plan_study(study_from_dict(study), tmp_path / "out2").cells


def test_train_stop_at_is_refused_in_a_study(shapes_world):
    """A run stopped at train.stop_at was recorded as finished and its scores reported."""
    study = micro_study(shapes_world, variants=[{"name": "merged", "finetune": ["train.stop_at=1"]}])
    with pytest.raises(ConfigError, match="variant 'merged' finetune: train.stop_at cannot be set in a study"):
        study_from_dict(study)


def test_rows_and_points_that_train_otherwise_but_score_alike_are_planned(shapes_world, tmp_path):
    """The scoring check compares each run with the base row's run of the same cell; a search over when the best
    checkpoint is looked for, and a row training on other splits, score alike."""
    study = micro_study(shapes_world, search={"train.best_every": [1, 2]})
    study["base"]["tasks"]["vqa"] |= {"overrides": ["train.best_on=val2014"], "select": {"holdout": 0.2}}
    study["variants"][0]["finetune"] = ["train.lr=1e-4", "vqa.train_splits=[train2014]"]
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    assert [run.name for run in plan.cells[1].runs] == ["pretrain", "vqa", "vqa@best_every=1", "vqa@best_every=2"]
