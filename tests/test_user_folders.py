"""Folders of the user's that a command would fill are refused before anything is written, and left as they were
(`meter import --out`, `meter prepare --out`, `meter study run --out`); one process at a time trains in a run folder
or runs a study cell (a killed one holds nothing); a metrics line cut short by a full disk does not block the resume;
`meter evaluate` writes beside a run's checkpoints, not into one that `keep_last` deletes. Real files and processes."""

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meter.cli import main
from meter.config import Config, load_config
from meter.output_folder import FolderInUse
from meter.runs import run_pretrain
from meter.study.cells import plan_study
from meter.study.execute import run_study
from meter.study.records import STATUS
from meter.study.spec import study_from_dict
from meter.study.worker import CELL_LOCK, run_cell
from meter.train.metrics_log import read_metrics
from meter.train.run_folder import LOCK
from tests.corpora import write_coco, write_img2dataset
from tests.faults import run_meter_with_faults
from tests.studies import micro_study

REFERENCE = Path(__file__).resolve().parent / "data" / "meter-official-tiny"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _mine(folder: Path, *names: str) -> dict[str, bytes]:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"my own {name}")
    return _snapshot(folder)


def test_an_import_into_a_folder_of_the_users_is_refused_and_deletes_nothing(tmp_path: Path, capsys):
    before = _mine(tmp_path / "mydata", "thesis.tex", "annotations.json")
    code = main(["import", "meter-official", "--ckpt", str(REFERENCE / "meter_official_tiny.ckpt"), "--text-encoder",
                 str(REFERENCE / "text_encoder"), "--out", str(tmp_path / "mydata")])  # fmt: skip
    assert code == 2 and "is a folder that is not a meter model folder" in capsys.readouterr().err
    assert _snapshot(tmp_path / "mydata") == before


@pytest.mark.parametrize("source", ["coco", "webdataset"])
def test_prepare_into_a_folder_of_the_users_is_refused_and_writes_nothing(source: str, tmp_path: Path, capsys):
    root = tmp_path / "raw"
    options = ["--karpathy", "karpathy/dataset_coco.json"] if source == "coco" else ["--copy"]
    write_coco(root, images=4) if source == "coco" else write_img2dataset(root, shards=2, per_shard=2)
    users = tmp_path / "shards"  # img2dataset's own names, which the preparation writes too
    write_img2dataset(users, shards=2, per_shard=3)
    before_users, before_root = _snapshot(users), _snapshot(root)
    for out in (users, root):  # another corpus's shards; the very shards it would read (--out = --root)
        assert main(["prepare", source, "--root", str(root), "--out", str(out), "--no-progress", *options]) == 2
        assert f"--out = {out} holds files that meter prepare did not write (" in capsys.readouterr().err
    assert _snapshot(users) == before_users and _snapshot(root) == before_root


def test_prepare_shapes_refuses_a_coco_folder_but_completes_an_interrupted_world(tmp_path: Path, capsys):
    coco = tmp_path / "coco"
    before = _mine(coco, "annotations/captions_train2014.json", "karpathy/dataset_coco.json")
    assert main(["prepare", "shapes", "--images", "8", "--out", str(coco)]) == 2
    assert "holds files that meter prepare shapes did not write (annotations, karpathy)" in capsys.readouterr().err
    assert _snapshot(coco) == before
    world = tmp_path / "world"
    assert main(["prepare", "shapes", "--images", "8", "--out", str(world)]) == 0
    (world / "shapes_world.json").unlink()  # as a world interrupted before its last file
    assert main(["prepare", "shapes", "--images", "8", "--out", str(world)]) == 0
    assert (world / "shapes_world.json").is_file()


def test_a_study_into_a_folder_of_the_users_is_refused_before_anything_is_written(tmp_path: Path):
    before = _mine(tmp_path / "myproject", "report.md", "notes.txt")
    with pytest.raises(Exception, match=r"--out = .*myproject holds files that meter study run did not write "
                                        r"\(notes.txt, report.md\)"):  # fmt: skip
        run_study(study_from_dict(micro_study(tmp_path)), tmp_path / "myproject")
    assert _snapshot(tmp_path / "myproject") == before


def _hold_lock(folder: Path, name: str) -> subprocess.Popen:
    """Another process holding the folder's lock (as a live run or worker does), until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from meter.output_folder import lock_folder
        lock_folder({str(folder)!r}, {name!r}, "a test")
        print("locked", flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _pretrain(cfg: Config, out: Path, resume: str | None = None) -> Path:
    steps = ["train.max_steps=4", "train.checkpoint_every=2"]
    return run_pretrain(load_config(None, [f"train.out={out}", *steps], base=cfg), resume=resume)


def test_a_run_folder_another_live_process_trains_in_is_refused_and_a_killed_one_holds_nothing(micro_config, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, ["train.stop_at=2"], base=micro_config)
    _pretrain(cfg, out)  # stopped at step 2: an unfinished run to resume
    holder = _hold_lock(out, LOCK)
    try:
        with pytest.raises(FolderInUse, match=rf"{out} is in use by another run .*\(pid {holder.pid} on "):
            _pretrain(micro_config, out, resume="latest")
        assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]  # nothing written meanwhile
    finally:
        holder.kill()
        holder.wait()
    _pretrain(micro_config, out, resume="latest")  # the killed holder's lock went with it
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_every_file_of_a_run_gets_the_mode_the_umask_gives_a_new_file(micro_config, tmp_path):
    """safetensors' save_file creates its file 0600: every checkpoint's and exported model's weights were private,
    whatever the umask, where the rest of the folder was the project group's to read."""
    import os
    import stat

    previous = os.umask(0o027)
    try:
        _pretrain(micro_config, tmp_path / "run")
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").rglob("*")
             if p.is_file()}  # fmt: skip
    assert any(name.endswith("model.safetensors") for name in modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o640} == {}


def test_a_study_cell_another_worker_runs_is_left_to_it(shapes_world, tmp_path):
    cell = plan_study(study_from_dict(micro_study(shapes_world, variants=[])), tmp_path / "out").cells[0]
    holder = _hold_lock(Path(cell.folder), CELL_LOCK)
    try:
        with pytest.raises(FolderInUse, match=rf"in use by another worker of this cell \(pid {holder.pid} on "):
            run_cell(cell)
        assert not (Path(cell.folder) / STATUS).exists()  # its status is the other worker's to write
    finally:
        holder.kill()
        holder.wait()


def test_a_preparation_another_live_process_writes_is_left_to_it(tmp_path):
    """Two `meter prepare` into one --out: the second renamed the first one's half-written shard away and ended with
    an unclear 'No such file or directory'."""
    from meter.data.shard_writer import PREPARE_LOCK

    write_coco(tmp_path / "raw", images=4)
    args = ["prepare", "coco", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "shards"), "--no-progress",
            "--karpathy", "karpathy/dataset_coco.json"]  # fmt: skip
    assert main(args) == 0  # a finished preparation: a second one resumes it (nothing to do)
    holder = _hold_lock(tmp_path / "shards", PREPARE_LOCK)
    try:
        with pytest.raises(FolderInUse, match=rf"in use by another meter prepare .*\(pid {holder.pid} on "):
            main([*args, "--debug"])
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0


def test_a_preparation_takes_the_lock_before_it_checks_and_records_its_settings(tmp_path):
    """The settings were checked and written before the lock was taken: two `meter prepare` of other settings
    started at once into a new --out both found no settings, both passed, and one wrote shards under the other's
    settings. Another process holds the lock on the folder, as the first does before it writes its settings."""
    from meter.data.shard_writer import PREPARE_LOCK, SETTINGS

    write_coco(tmp_path / "raw", images=4)
    out = tmp_path / "shards"
    args = ["prepare", "coco", "--root", str(tmp_path / "raw"), "--out", str(out), "--no-progress",
            "--karpathy", "karpathy/dataset_coco.json"]  # fmt: skip
    holder = _hold_lock(out, PREPARE_LOCK)
    try:
        for shard_size in ("1000", "2"):  # either settings: the folder is the holder's until it ends
            with pytest.raises(FolderInUse, match=rf"in use by another meter prepare .*\(pid {holder.pid} on "):
                main([*args, "--shard-size", shard_size, "--debug"])
        assert sorted(p.name for p in out.iterdir()) == [PREPARE_LOCK]  # no settings recorded meanwhile
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0  # the lock file a killed preparation left is its own, not a file of the user's
    assert json.loads((out / SETTINGS).read_text())["shard_size"] == 1000


def test_a_shapes_world_another_live_process_writes_is_left_to_it(tmp_path, capsys):
    """Two `meter prepare shapes` (or `meter demo`) into one folder: the second rewrote the files the first was
    writing, and the manifest the last one wrote vouched for a mix of both worlds (other --images, --seed)."""
    from meter.data.shapes.world import WORLD_LOCK

    out = tmp_path / "world"
    args = ["prepare", "shapes", "--out", str(out), "--images", "12"]
    holder = _hold_lock(out, WORLD_LOCK)
    try:
        assert main([*args, "--seed", "1"]) == 2
        assert f"{out} is in use by another meter prepare shapes" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [WORLD_LOCK]  # nothing written meanwhile
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0  # the lock file a killed preparation left is its own, not a file of the user's
    assert json.loads((out / "shapes_world.json").read_text())["spec"]["images"] == 12


def test_a_metrics_line_cut_short_by_a_full_disk_does_not_block_the_resume(micro_config, tmp_path, caplog):
    out = tmp_path / "run"
    _pretrain(load_config(None, ["train.stop_at=2"], base=micro_config), out)
    with (out / "metrics.jsonl").open("a") as log_file:
        log_file.write('{"step": 3, "train/ml')  # what an append stopped by ENOSPC leaves
    with caplog.at_level(logging.WARNING, logger="meter"):
        _pretrain(micro_config, out, resume="latest")
    assert "left out 1 lines that are not whole records (line 3)" in caplog.text
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]  # rewritten whole, then appended


def test_evaluate_writes_beside_a_runs_checkpoint_not_into_it(micro_checkpoints, shapes_tasks_world, capsys):
    checkpoint = micro_checkpoints("vqa")
    run = checkpoint.parents[1]
    assert main(["evaluate", "vqa", "--checkpoint", str(checkpoint), f"data.root={shapes_tasks_world}",
                 "vqa.min_answer_count=1"]) == 0  # fmt: skip
    assert (run / "eval" / checkpoint.name / "vqa_accuracy_val2014.json").is_file()
    assert not (checkpoint / "eval").exists()  # keep_last deletes a checkpoint's whole folder


def test_a_study_whose_first_planning_failed_after_writing_its_world_runs_again_in_its_folder(tmp_path: Path):
    study = micro_study(tmp_path, data={"shapes": {"images": 8, "seed": 0}}, search={"train.lr": [1e-4]})
    study["base"]["tasks"]["vqa"]["select"] = {"overrides": ["vqa.eval_split=val2014"]}  # selects on the reported split
    out = tmp_path / "out"
    with pytest.raises(Exception, match="select"):  # refused once the world is written
        run_study(study_from_dict(study), out)
    assert (out / "shapes" / "shapes_world.json").is_file()
    study.pop("search")
    study["base"]["tasks"]["vqa"].pop("select")
    with pytest.raises(Exception, match="--only nothing\\* matches no cell"):  # planned: the folder was taken
        run_study(study_from_dict(study), out, only=["nothing*"])


def test_a_demo_into_a_folder_of_the_users_is_refused_and_writes_nothing(tmp_path: Path, capsys):
    before = _mine(tmp_path / "mine", "report.md", "pretrain/notes.txt")
    assert main(["demo", "--quick", "--out", str(tmp_path / "mine")]) == 2
    assert "holds files that meter demo did not write (pretrain, report.md)" in capsys.readouterr().err
    assert _snapshot(tmp_path / "mine") == before


def test_an_evaluation_into_a_folder_of_the_users_is_refused_and_one_it_filled_is_taken(
    micro_checkpoints, shapes_tasks_world, tmp_path, capsys
):
    """`meter evaluate --out DIR` wrote over the user's own vqa_predictions_val2014.json without a word."""
    mine = tmp_path / "submissions"
    mine.mkdir()
    (mine / "vqa_predictions_val2014.json").write_text("[my submission]")
    args = ["evaluate", "vqa", "--checkpoint", str(micro_checkpoints("vqa")), "--out"]
    settings = [f"data.root={shapes_tasks_world}", "train.progress=false"]
    assert main([*args, str(mine), *settings]) == 2
    assert "holds files that meter evaluate did not write (vqa_predictions_val2014.json)" in capsys.readouterr().err
    assert (mine / "vqa_predictions_val2014.json").read_text() == "[my submission]"
    for _ in range(2):  # a folder an evaluation filled is taken again
        assert main([*args, str(tmp_path / "eval"), *settings]) == 0
    assert (tmp_path / "eval/vqa_accuracy_val2014.json").is_file()


def test_a_demo_of_another_seed_over_a_finished_one_is_refused_before_its_world_is_rewritten(tmp_path: Path):
    """`meter demo --seed 1` over the quick start's folder rewrote the world, then refused its first run: the
    finished seed-0 runs were left beside a seed-1 world."""
    from meter.data.shapes import WorldSpec, generate
    from meter.demo import MARKER, DemoPlan, run_demo
    from meter.errors import ConfigError
    from meter.train.run_folder import RECORD

    out = tmp_path / "demo"
    generate(out / "shapes", WorldSpec(images=8, seed=0), progress=False)
    (out / MARKER).touch()
    (out / "pretrain").mkdir()
    (out / "pretrain" / RECORD).write_text("{}")  # a run of the seed-0 world
    world = (out / "shapes/shapes_world.json").read_text()
    with pytest.raises(ConfigError, match=r"holds the runs \(pretrain\) of a demo on another shapes world \(seed 0, "
                                          r"8 images; this demo's: seed 1, 8 images\)"):  # fmt: skip
        run_demo(out, DemoPlan(images=8, seed=1), progress=False)
    assert (out / "shapes/shapes_world.json").read_text() == world


def test_the_default_evaluation_folder_of_a_runs_checkpoint_is_taken_though_an_older_meter_filled_it(
    micro_checkpoints, shapes_tasks_world, tmp_path
):
    """RUN/eval/step_N written before evaluations marked their folders (by `meter evaluate` or train.best_on) was
    refused as "files meter evaluate did not write"."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(micro_checkpoints("vqa").parents[1], run)
    older = run / "eval" / "step_00000002"
    older.mkdir(parents=True, exist_ok=True)
    (older / "vqa_accuracy_val2014.json").write_text("{}")
    (older / ".meter-evaluation").unlink(missing_ok=True)
    assert main(["evaluate", "vqa", "--checkpoint", str(run / "checkpoints/step_00000002"),
                 f"data.root={shapes_tasks_world}", "train.progress=false"]) == 0  # fmt: skip
    assert json.loads((older / "vqa_accuracy_val2014.json").read_text())["overall"] >= 0


def test_a_users_folder_inside_a_runs_eval_folder_is_not_written_over(micro_checkpoints, shapes_tasks_world, tmp_path,
                                                                        capsys):  # fmt: skip
    """Any folder under RUN/eval/ passed for meter's own: a user's RUN/eval/my-notes/vqa_predictions_val2014.json
    was written over without a word (the same file in a folder elsewhere was refused)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(micro_checkpoints("vqa").parents[1], run)
    mine = run / "eval" / "my-notes"
    mine.mkdir(parents=True)
    (mine / "vqa_predictions_val2014.json").write_text("my own")
    assert main(["evaluate", "vqa", "--checkpoint", str(run / "checkpoints/step_00000002"), "--out", str(mine),
                 f"data.root={shapes_tasks_world}", "train.progress=false"]) == 2  # fmt: skip
    assert "holds files that meter evaluate did not write" in capsys.readouterr().err
    assert (mine / "vqa_predictions_val2014.json").read_text() == "my own"


def test_evaluating_another_model_into_a_folder_says_whose_files_it_replaces(micro_checkpoints, shapes_tasks_world,
                                                                             tmp_path, caplog):  # fmt: skip
    """A second checkpoint evaluated into the same --out replaced the first's leaderboard file without a word, and
    nothing in the folder said which model its files were of."""
    out = tmp_path / "eval"
    first, second = micro_checkpoints("vqa"), micro_checkpoints("vqa").parents[1] / "model"
    args = ["evaluate", "vqa", "--out", str(out), f"data.root={shapes_tasks_world}", "train.progress=false"]
    assert main([*args, "--checkpoint", str(first)]) == 0
    assert json.loads((out / ".meter-evaluation").read_text()) == {"checkpoint": str(first.resolve()), "task": "vqa"}
    assert main([*args, "--checkpoint", str(first)]) == 0
    assert "replaces its files" not in caplog.text  # the same model again: nothing to say
    assert main([*args, "--checkpoint", str(second)]) == 0
    assert f"{out} holds the vqa evaluation of {first.resolve()}; this evaluation of {second.resolve()}" in (
        caplog.text
    )
    assert json.loads((out / ".meter-evaluation").read_text())["checkpoint"] == str(second.resolve())


def test_the_same_model_through_a_symlink_or_dot_dot_is_not_called_another_models_evaluation(
    micro_checkpoints, shapes_tasks_world, tmp_path, caplog
):
    """The marker's checkpoint was compared as an absolute, unresolved path: the same model given through a symlink
    or with `..` in its path was said to replace "the evaluation of" itself."""
    from meter.tasks.downstream import EVALUATION_MARKER, warn_other_evaluation

    model = micro_checkpoints("vqa")
    link = tmp_path / "link"
    link.symlink_to(model, target_is_directory=True)
    dotted = model.parent / ".." / model.parent.name / model.name
    out = tmp_path / "eval"
    args = ["evaluate", "vqa", "--out", str(out), f"data.root={shapes_tasks_world}", "train.progress=false"]
    assert main([*args, "--checkpoint", str(link)]) == 0
    assert json.loads((out / EVALUATION_MARKER).read_text())["checkpoint"] == str(model.resolve())
    assert main([*args, "--checkpoint", str(dotted)]) == 0
    assert "replaces its files" not in caplog.text
    # a marker written before holds the path as given, made absolute only: resolved too before comparing
    (out / EVALUATION_MARKER).write_text(json.dumps({"checkpoint": str(link.absolute()), "task": "vqa"}) + "\n")
    warn_other_evaluation(out, dotted, "vqa")
    assert "replaces its files" not in caplog.text
    warn_other_evaluation(out, model.parents[1] / "model", "vqa")  # another model: still said
    assert "replaces its files" in caplog.text


def test_a_models_blindness_is_taken_for_its_evaluation_wherever_its_data_is(shapes_tasks_world, tmp_path, caplog):
    """Without --config, the recorded data section was taken only where its folder is here: a blind baseline given
    data.root=... elsewhere was scored with images."""
    import argparse
    import shutil

    from meter.cli.evaluate import recorded_settings
    from meter.runs import run_finetune
    from tests.conftest import MICRO

    world = tmp_path / "world"
    shutil.copytree(shapes_tasks_world, world)
    run_finetune(
        load_config(
            None,
            [
                "task=vqa",
                f"data.root={world}",
                f"train.out={tmp_path / 'blind'}",
                "data.blind=true",
                "train.max_steps=1",
                "train.eval_batch_size=7",
                "train.precision=fp32",
                "vqa.min_answer_count=1",
                *MICRO,
            ],
        )
    )
    shutil.rmtree(world)  # the model evaluated on another machine, its data elsewhere
    model = str(tmp_path / "blind/model")
    base = recorded_settings(argparse.Namespace(checkpoint=model, task="vqa", overrides=[]))
    assert base.data.blind and base.data.root != str(world)
    # the root read instead is said (a `data/shapes` of the working folder was scored without a word)
    assert f"the data {model} was fine-tuned on ({world}) is not here; reading data.root = {base.data.root}" in (
        caplog.text
    )
    caplog.clear()
    recorded_settings(argparse.Namespace(checkpoint=model, task="vqa", overrides=[f"data.root={shapes_tasks_world}"]))
    assert "is not here" not in caplog.text
    # the precision and batch its run scored in (`auto` is bf16 on a GPU; 128 may not fit where 7 did)
    assert (base.train.precision, base.train.eval_batch_size) == ("fp32", 7)
    # evaluated with a recipe (--config), it stays blind unless data.blind is given (it was scored with images)
    from meter.cli.evaluate import keep_blind

    for given, blind in (([], True), (["data.blind=false"], False)):
        cfg = load_config(None, given)
        keep_blind(cfg, argparse.Namespace(checkpoint=model, overrides=given))
        assert cfg.data.blind is blind


def test_an_evaluation_folder_is_marked_as_its_own_whatever_the_clocks(micro_checkpoints, shapes_tasks_world, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    """The files an evaluation wrote were told by their times against this machine's clock: on a file server whose
    clock is behind (NFS: its times), nothing seemed written, the folder was left unmarked and evaluating into it
    again was refused as "files meter evaluate did not write"."""
    import time

    ahead = time.time
    monkeypatch.setattr(time, "time", lambda: ahead() + 5.0)  # this machine's clock 5 s ahead of the file server's
    out = tmp_path / "eval"
    args = ["evaluate", "vqa", "--checkpoint", str(micro_checkpoints("vqa")), "--out", str(out),
            f"data.root={shapes_tasks_world}", "train.progress=false"]  # fmt: skip
    assert main(args) == 0
    assert (out / ".meter-evaluation").is_file()
    assert main(args) == 0


def test_a_model_setting_given_to_evaluate_a_checkpoint_is_said_to_be_not_applied(micro_checkpoints, shapes_tasks_world,
                                                                                   tmp_path, caplog):  # fmt: skip
    """The model is the checkpoint's: model.vision.image_size=96 was dropped without a word (evaluated at its own)."""
    import logging

    checkpoint = micro_checkpoints("vqa")
    with caplog.at_level(logging.WARNING, logger="meter.cli.evaluate"):
        assert main(["evaluate", "vqa", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "eval"),
                     f"data.root={shapes_tasks_world}", "model.vision.image_size=96", "model.fusion.layers=1",
                     "train.progress=false"]) == 0  # fmt: skip
    said = "model.vision.image_size = 96 is not applied: the model evaluated is the checkpoint's as it was trained (64)"
    assert said in caplog.text
    assert "model.fusion.layers" not in caplog.text, "the checkpoint's own value: nothing to say"


def test_an_evaluation_refused_for_want_of_the_tasks_head_leaves_no_empty_folder(
    micro_checkpoints, shapes_tasks_world, tmp_path, capsys
):
    """`meter evaluate nlvr2 --checkpoint VQA_MODEL --out DIR` was refused after DIR was made: an empty DIR stayed."""
    out = tmp_path / "nlvr2-eval"
    args = ["evaluate", "nlvr2", "--checkpoint", str(micro_checkpoints("vqa")), "--out", str(out)]
    assert main([*args, f"data.root={shapes_tasks_world}", "train.progress=false"]) == 2
    assert "nlvr2" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(("task", "predictions", "score"), [
    ("vqa", "vqa_predictions_val2014.json", "vqa_accuracy_val2014.json"),
    *(pytest.param(*files, marks=pytest.mark.slow) for files in (
        ("nlvr2", "nlvr2_predictions_dev.csv", "nlvr2_accuracy_dev.json"),
        ("snli_ve", "snli_ve_predictions_dev.jsonl", "snli_ve_accuracy_dev.json"),
        ("retrieval", "retrieval_rankings_test.json", "retrieval_recall_test.json"),
        ("captioning", "captions_test.json", "caption_scores_test.json"))),
])  # fmt: skip
def test_an_evaluation_killed_between_its_predictions_and_its_score_leaves_no_earlier_score_beside_them(
    micro_checkpoints, shapes_tasks_world, tmp_path, task, predictions, score
):
    """Each file is written whole, but an evaluation killed after its new predictions left the earlier evaluation's
    score beside them: a number that was not that file's (another model's, with the marker naming the new one)."""
    out = tmp_path / "eval"
    args = ["evaluate", task, "--checkpoint", str(micro_checkpoints(task)), "--out", str(out),
            f"data.root={shapes_tasks_world}", "train.progress=false"]  # fmt: skip
    assert main(args) == 0 and (out / score).is_file()
    earlier = (out / predictions).stat().st_ino
    [(code, err)] = run_meter_with_faults(args, [f"replace:{score}:SIGKILL"])
    assert code == -9, err  # killed as its score was put in place
    assert (out / predictions).stat().st_ino != earlier  # the new predictions were written
    assert not (out / score).exists()
