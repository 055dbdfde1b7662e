"""What shapes a study run's result beyond its config, whose files keep their paths when it changes: the pretraining
a fine-tuning starts from, the held-out fraction, the selection it is scored with, and the selection split itself
(never a split the run trains on). A change is refused or re-evaluated, never reused as if nothing had changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from meter.cli import main
from meter.errors import ConfigError
from meter.study.cells import plan_study
from meter.study.records import RESULT, run_done
from meter.study.spec import study_from_dict
from tests.studies import as_if_ran, micro_study, write_study


def test_a_changed_pretraining_refuses_the_fine_tunings_that_started_from_the_old_one(shapes_world, tmp_path):
    """The refusal named the pretraining folders; deleted as it said, the fine-tunings of the deleted pretraining
    counted as done, and the table showed their scores under the new pretraining."""
    study = micro_study(shapes_world)
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    as_if_ran(plan)
    study["base"]["pretrain"]["overrides"] = ["train.lr=0.0003"]
    with pytest.raises(ConfigError, match=r"pretrain \(train.lr: "):
        plan_study(study_from_dict(study), tmp_path / "out")
    for cell in plan.cells:
        shutil.rmtree(next(run.folder for run in cell.runs if run.kind == "pretrain"))
    with pytest.raises(ConfigError, match=r"2 run folder\(s\) .*seed-0/vqa \(the pretraining it starts from changed\)"):
        plan_study(study_from_dict(study), tmp_path / "out")


def test_a_key_added_to_a_mapping_setting_refuses_the_runs_of_the_old_one(shapes_world, tmp_path):
    """model.text.hf_kwargs gaining num_hidden_layers (a text encoder of another depth): the keys of a mapping were
    compared one by one, and a key only one side had was taken for a setting an older meter lacked. The study reused
    every cell and its table showed the old model's numbers under the new spec."""
    study = micro_study(shapes_world)
    as_if_ran(plan_study(study_from_dict(study), tmp_path / "out"))
    text = next(o for o in study["base"]["overrides"] if o.startswith("model.text.hf_kwargs="))
    deeper = text.rstrip("}") + ", max_position_embeddings: 64}"
    study["base"]["overrides"] = [deeper if o == text else o for o in study["base"]["overrides"]]
    with pytest.raises(ConfigError, match=r"pretrain \(model.text.hf_kwargs: .* -> .*max_position_embeddings"):
        plan_study(study_from_dict(study), tmp_path / "out")


def test_a_changed_held_out_fraction_refuses_the_runs_trained_on_the_old_split(shapes_world, tmp_path):
    """The held-out files keep their paths: 0.1 -> 0.3 rewrote them, and the runs trained without 9 of the images now
    held out were reused, scored on selection images they had trained on."""
    study = micro_study(shapes_world, search={"train.lr": [3.0e-4]})
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.1}
    as_if_ran(plan_study(study_from_dict(study), tmp_path / "out"))
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.3}
    with pytest.raises(ConfigError, match=r"vqa \(select.holdout changed\)"):
        plan_study(study_from_dict(study), tmp_path / "out")


def test_a_first_search_on_a_task_selecting_on_a_held_out_part_says_its_runs_trained_on_more(shapes_world, tmp_path):
    """The split is held out only once a search chooses by it: adding one refused the runs blaming a
    select.holdout that was never edited."""
    study = micro_study(shapes_world)
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.2}
    as_if_ran(plan_study(study_from_dict(study), tmp_path / "out"))
    study["search"] = {"train.lr": [3.0e-4]}
    with pytest.raises(ConfigError, match=r"vqa \(it trained on the whole training split; a search now holds "
                                          r"select.holdout of it out to choose by"):  # fmt: skip
        plan_study(study_from_dict(study), tmp_path / "out")


def test_a_run_scored_without_the_selection_the_plan_now_asks_for_is_not_done(shapes_world, tmp_path):
    """A search added to a study that had run (or its select.overrides changed): the runs with a result counted as
    done without the selection score it asks for, and the tuned table could never choose them."""
    study = micro_study(shapes_world, search={"train.lr": [3.0e-4]})
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.2}
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    run = next(run for run in plan.cells[0].own_runs() if run.name == "vqa")
    pretraining = next(run for run in plan.cells[0].own_runs() if run.kind == "pretrain")
    for record, done in (({"metrics": {}}, False), ({"metrics": {}, "select": {}}, False),
                         ({"metrics": {}, "select": {}, "select_overrides": ["vqa.eval_split=val2014"]}, False),
                         ({"metrics": {}, "select": {}, "select_overrides": run.select}, True)):  # fmt: skip
        Path(run.folder, RESULT).write_text(json.dumps(record))
        assert run_done(run) is done, record
    Path(pretraining.folder, RESULT).write_text(json.dumps({"checkpoint": "x"}))
    assert run_done(pretraining), "a run without a selection needs none"


def test_selecting_on_a_split_the_runs_train_on_is_refused(shapes_world, tmp_path):
    study = micro_study(shapes_world, search={"train.lr": [3.0e-4]})
    study["base"]["tasks"]["vqa"]["select"] = {"overrides": ["vqa.eval_split=train2014"]}
    with pytest.raises(ConfigError, match=r"selection evaluates vqa.eval_split = train2014, a split it trains on "
                                          r"\(vqa.train_splits = \['train2014'\]\)"):  # fmt: skip
        plan_study(study_from_dict(study), tmp_path / "out", prepare=False)


def test_a_changed_shapes_world_refuses_the_runs_of_the_old_one(tmp_path):
    """The world is regenerated in the same folder: every cell counted as done with the old world's scores."""
    study = micro_study(tmp_path)
    study["data"] = {"shapes": {"images": 20, "seed": 3, "questions_per_image": 1, "vocab_size": 300}}
    as_if_ran(plan_study(study_from_dict(study), tmp_path / "out"))
    study["data"]["shapes"]["seed"] = 4
    with pytest.raises(ConfigError, match=r"pretrain \(data.shapes changed\)"):
        plan_study(study_from_dict(study), tmp_path / "out")


def test_a_row_that_keeps_an_edited_rows_old_pretraining_gets_a_folder_of_its_own(shapes_world, tmp_path):
    """Row a pretrained with weight decay 0.02; a edited to 0.05, and a new row b with a's old 0.02: both were planned
    into a's pretraining folder (the old setting's entry), b then fine-tuned from a's new run as if it were its own."""
    study = micro_study(shapes_world, variants=[{"name": "a", "pretrain": ["train.weight_decay=0.02"]}])
    first = plan_study(study_from_dict(study), tmp_path / "out")
    as_if_ran(first)
    old_folder = next(run.folder for run in first.cell("vlp/a/seed-0").runs if run.kind == "pretrain")
    study["variants"] = [
        {"name": "a", "pretrain": ["train.weight_decay=0.05"]},
        {"name": "b", "pretrain": ["train.weight_decay=0.02"], "finetune": ["train.lr=1.0e-3"]},
    ]
    shutil.rmtree(Path(old_folder).parent / "vqa")  # a's fine-tuning started from the old pretraining: run it again
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    folders = {cell.row: next(run.folder for run in cell.runs if run.kind == "pretrain") for cell in plan.cells}
    assert folders["b"] == old_folder  # b keeps the run of its setting
    assert folders["a"] != old_folder and len(set(folders.values())) == 3
    assert plan_study(study_from_dict(study), tmp_path / "out").cells == plan.cells  # the same plan the next time
    as_if_ran(plan)
    # a setting that changes no result (checkpoints more often): every pretraining keeps its folder, b's a's old one
    study["base"]["overrides"].append("train.checkpoint_every=7")
    again = plan_study(study_from_dict(study), tmp_path / "out")
    kept = {cell.row: next(run.folder for run in cell.runs if run.kind == "pretrain") for cell in again.cells}
    assert kept == folders


def test_rows_alike_but_for_settings_that_change_no_result_keep_their_own_pretrainings(shapes_world, tmp_path):
    """Rows x and y differ in activation checkpointing alone; reordered, with a setting that changes no result
    added, each took the other's pretraining folder, and both fine-tunings were refused."""
    y = {"name": "y", "pretrain": ["model.fusion=merged", "train.activation_checkpointing=true"]}
    x = {"name": "x", "pretrain": ["model.fusion=merged"]}
    study = micro_study(shapes_world, variants=[y, x])
    first = plan_study(study_from_dict(study), tmp_path / "out")
    as_if_ran(first)
    study["variants"] = [x, y]
    study["base"]["overrides"].append("train.eval_batch_size=3")
    again = plan_study(study_from_dict(study), tmp_path / "out")

    def folders(plan):
        return {cell.row: next(run.folder for run in cell.runs if run.kind == "pretrain") for cell in plan.cells}

    assert folders(again) == folders(first)


def test_an_edit_that_is_refused_leaves_the_studys_data_as_it_was(tmp_path):
    """The refusal came after the shapes world had been made again for the new setting: jobs still running read it."""
    study = micro_study(tmp_path)
    study["data"] = {"shapes": {"images": 20, "seed": 3, "questions_per_image": 1, "vocab_size": 300}}
    as_if_ran(plan_study(study_from_dict(study), tmp_path / "out"))
    manifest = next((tmp_path / "out" / "shapes").glob("*.json"))
    before = manifest.read_bytes()
    study["data"]["shapes"]["seed"] = 4
    with pytest.raises(ConfigError, match=r"pretrain \(data.shapes changed\)"):
        plan_study(study_from_dict(study), tmp_path / "out")
    assert manifest.read_bytes() == before


def test_study_check_refuses_an_edit_that_run_would_refuse(shapes_world, tmp_path, capsys):
    study = micro_study(shapes_world)
    as_if_ran(plan_study(study_from_dict(study), tmp_path / "out"))
    study["base"]["overrides"] = [*study["base"]["overrides"], "model.fusion.heads=4"]
    path = write_study(tmp_path / "study.yaml", study)
    assert main(["study", "check", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "model.fusion.heads: 2 -> 4" in capsys.readouterr().err
    assert main(["study", "check", str(path), "--out", str(tmp_path / "elsewhere")]) == 0  # nothing ran there


def test_another_study_in_the_same_folder_is_refused_before_it_replaces_the_plan(shapes_world, tmp_path):
    from meter.study.cells import PLAN
    from meter.study.execute import run_study

    plan_study(study_from_dict(micro_study(shapes_world)), tmp_path / "out")
    before = (tmp_path / "out" / PLAN).read_bytes()
    other = study_from_dict(micro_study(shapes_world, name="other-study"))
    with pytest.raises(ConfigError, match=r"holds the study 'micro'; this file is the study 'other-study'"):
        run_study(other, tmp_path / "out", only=["nothing"])
    with pytest.raises(ConfigError, match=r"--only nothing matches no cell"):
        run_study(study_from_dict(micro_study(shapes_world)), tmp_path / "out", only=["nothing"])
    assert (tmp_path / "out" / PLAN).read_bytes() == before


def test_two_studies_started_at_once_into_a_new_folder_are_not_both_run(shapes_world, tmp_path):
    """Both found no plan in the new --out and ran in the same cells: the first one's command printed its study's
    title over the other's numbers. Here another process holds the planning lock as the other study would, and
    writes its plan once this one has passed its first look (its marker is written after it)."""
    import subprocess
    import sys
    import textwrap

    from meter.study.cells import PLAN
    from meter.study.execute import MARKER, PLAN_LOCK, run_study

    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import json, pathlib, time
        from meter.output_folder import lock_folder
        out = pathlib.Path({str(out)!r})
        lock_folder(out, {PLAN_LOCK!r}, "the other study")
        print("locked", flush=True)
        while not (out / {MARKER!r}).exists():
            time.sleep(0.01)
        (out / {PLAN!r}).write_text(json.dumps({{"name": "other-study"}}))
    """)
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=r"holds the study 'other-study'; this file is the study 'micro'"):
            run_study(study_from_dict(micro_study(shapes_world)), out, report=False)
    finally:
        other.kill()
        other.wait()
    assert not (out / "cells").exists()  # nothing of this study planned into the other's folder


def test_settings_that_change_no_result_refuse_no_finished_run(shapes_world, tmp_path):
    """A smaller evaluation batch after an out-of-memory error, or checkpoints more often: every finished run was
    refused ("train.eval_batch_size: 32 -> 16"), its fine-tunings too (their pretraining's identity changed)."""
    study = micro_study(shapes_world)
    first = plan_study(study_from_dict(study), tmp_path / "out")
    as_if_ran(first)
    study["base"]["overrides"] = [*study["base"]["overrides"], "train.eval_batch_size=16", "train.checkpoint_every=7",
                                  "data.worker_timeout=60"]  # fmt: skip
    again = plan_study(study_from_dict(study), tmp_path / "out")
    assert [run.folder for cell in again.cells for run in cell.runs] == [
        run.folder for cell in first.cells for run in cell.runs
    ]
    assert all(run_done(run) for cell in again.cells for run in cell.own_runs())
    study["base"]["overrides"].append("train.lr=0.0003")  # a change of the result is refused as before
    with pytest.raises(ConfigError, match=r"train.lr: "):
        plan_study(study_from_dict(study), tmp_path / "out")


def test_a_second_edit_that_changes_no_result_refuses_no_fine_tuning_planned_between_the_two(shapes_world, tmp_path):
    """A fine-tuning recorded the pretraining's identity as planned then, while the pretraining's folder kept its
    first record: after eval batch 32 -> 16 (a task added meanwhile) -> 8, or back to 32, the task added at 16 was
    refused as "the pretraining it starts from changed", with the advice to delete a finished run."""
    study = micro_study(shapes_world, variants=[])
    as_if_ran(plan_study(study_from_dict(study), tmp_path / "out"))
    study["base"]["overrides"] = [*study["base"]["overrides"], "train.eval_batch_size=16"]
    study["base"]["tasks"]["vqa2"] = {"recipe": "shapes-vqa.yaml", "steps": 3}
    as_if_ran(plan_study(study_from_dict(study), tmp_path / "out"))
    for batch in ("8", "32"):
        study["base"]["overrides"][-1] = f"train.eval_batch_size={batch}"
        again = plan_study(study_from_dict(study), tmp_path / "out")
        assert all(run_done(run) for cell in again.cells for run in cell.own_runs())
    study["base"]["pretrain"]["overrides"] = ["train.lr=0.0003"]  # a change of the pretraining's result is refused
    with pytest.raises(ConfigError, match=r"pretrain \(train.lr: "):
        plan_study(study_from_dict(study), tmp_path / "out")


def _live_worker_process():
    """A real process with `study` in its command line, running its own command line once this returns."""
    import subprocess
    import sys
    import time

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "meter-study-worker"])
    for _ in range(500):  # the child may not have exec'd yet
        if b"study" in Path(f"/proc/{worker.pid}/cmdline").read_bytes():
            break
        time.sleep(0.01)
    return worker


def test_a_refused_edit_leaves_the_held_out_split_a_live_workers_runs_read(shapes_world, tmp_path):
    """The refusal came after the held-out split had been written again for the edit: the worker's fine-tuning then
    trained on the new split under its old record."""
    import socket

    from meter.study.execute import live_worker
    from meter.study.records import STATUS

    study = micro_study(shapes_world, seeds=[0], variants=[], search={"train.lr": [3.0e-4]})
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.1}
    cell = plan_study(study_from_dict(study), tmp_path / "out").cells[0]
    split = {path: path.read_bytes() for path in (tmp_path / "out/holdout").rglob("*.json")}
    worker = _live_worker_process()
    try:
        status = {"state": "running", "pid": worker.pid, "host": socket.gethostname(), "run": "pretrain"}
        (Path(cell.folder) / STATUS).write_text(json.dumps(status))
        study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.3}
        with pytest.raises(ConfigError, match="runs it as it was planned"):
            plan_study(study_from_dict(study), tmp_path / "out", running=live_worker)
        assert split and {path: path.read_bytes() for path in (tmp_path / "out/holdout").rglob("*.json")} == split
    finally:
        worker.kill()
        worker.wait()


def test_a_cell_a_live_worker_runs_keeps_its_plan_when_the_study_file_changes_for_it(shapes_world, tmp_path):
    """A second `meter study run` on an edited file rewrote the records of a cell whose worker ran the old plan: its
    run was then taken for the new one, and its number reported under the change."""
    import os
    import socket

    from meter.study.execute import live_worker
    from meter.study.records import STATUS, process_start

    study = micro_study(shapes_world, seeds=[0])
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    merged = next(cell for cell in plan.cells if cell.row == "merged")
    worker = _live_worker_process()
    try:
        status = {"state": "running", "pid": worker.pid, "host": socket.gethostname(), "run": "pretrain"}
        (Path(merged.folder) / STATUS).write_text(json.dumps(status))
        assert live_worker(merged.folder).startswith(f"another worker (pid {worker.pid} on ")
        plan_study(study_from_dict(study), tmp_path / "out", running=live_worker)  # the same file: planned again
        record = (Path(merged.folder) / "cell.json").read_text()
        study["variants"][0]["overrides"].append("train.weight_decay=0.02")
        with pytest.raises(ConfigError, match=r"now plans vlp/merged/seed-0 otherwise, and another worker \(pid "
                                              rf"{worker.pid} on .*\) runs it as it was planned"):  # fmt: skip
            plan_study(study_from_dict(study), tmp_path / "out", running=live_worker)
        assert (Path(merged.folder) / "cell.json").read_text() == record
        started = process_start(worker.pid)
        (Path(merged.folder) / STATUS).write_text(json.dumps({**status, "pid_start": started}))
        os.utime(Path(merged.folder) / STATUS, (0, 0))  # its heartbeat late (a disk full a while): still its worker
        assert live_worker(merged.folder).startswith("another worker")
        (Path(merged.folder) / STATUS).write_text(json.dumps({**status, "pid_start": str(int(started) - 1)}))
        assert live_worker(merged.folder) == "", "the number of a worker before a reboot, another process's now"
    finally:
        worker.kill()
        worker.wait()
