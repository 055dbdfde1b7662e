"""A run's folder (train.out) holds one run: a run refuses a folder of anything else, never writes over a file it did
not write, and `keep_last` counts only its own checkpoints (issue 15 item 1). Real runs of a micro model."""

import os
import shutil
from pathlib import Path

import pytest

from meter.config import Config, load_config
from meter.errors import ConfigError
from meter.runs import run_pretrain
from meter.train.checkpoint import Checkpoints
from meter.train.metrics_log import read_metrics
from meter.train.run_folder import PLANNED_BY_OTHERS, RECORD

STEPS = ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_last=1"]


def _pretrain(cfg: Config, out: Path | str, *overrides: str, resume: str | None = None) -> Path:
    return run_pretrain(load_config(None, [f"train.out={out}", *STEPS, *overrides], base=cfg), resume=resume)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _users_folder(folder: Path) -> dict[str, bytes]:
    """A folder of someone's own files, among them a model/ folder and a config.yaml, as a run would name them."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_bytes(b"my own model")
    (folder / "config.yaml").write_text("mine: true\n")
    (folder / "notes.txt").write_text("do not lose")
    return _snapshot(folder)


def test_a_folder_of_someone_elses_files_is_refused_and_left_as_it_was(micro_config, tmp_path, monkeypatch):
    before = _users_folder(tmp_path / "mine")
    monkeypatch.chdir(tmp_path / "mine")  # the issue's `train.out=.`
    with pytest.raises(ConfigError, match=r"train.out = \. is not empty \(config.yaml, model, notes.txt\) and holds "
                                          r"no meter run.*choose another"):  # fmt: skip
        _pretrain(micro_config, ".")
    assert _snapshot(tmp_path / "mine") == before


@pytest.mark.parametrize(("overrides", "setting"), [
    (["train.batch_size=512"], r"train\.batch_size = 512 x train\.grad_accum = 1\); lower train\.batch_size or"),
    (["train.grad_accum=64"], r"train\.batch_size = 8 x train\.grad_accum = 64\); lower train\.batch_size or"),
    (["train.global_batch=512"], r"train\.global_batch = 512\); lower train\.global_batch"),
    (["train.batch_size=512", "train.global_batch=512"],  # no global batch (of 512s) fits: the micro-batch is named
     r"train\.global_batch = 512, in micro-batches of train\.batch_size = 512\); lower train\.batch_size and"),
])  # fmt: skip
def test_data_smaller_than_one_step_is_refused_naming_the_setting_before_a_run_folder_is_taken(
    micro_config, tmp_path, overrides: list[str], setting: str
):
    """The small world's 240 captions cannot make a step of 512: refused naming what sets the step (it was a
    ValueError after the run folder was taken, which stayed behind holding the refused run's config)."""
    with pytest.raises(ConfigError, match=r"the training data holds 240 samples, fewer than one optimizer step takes "
                                          r"\(512: " + setting):  # fmt: skip
        _pretrain(micro_config, tmp_path / "run", *overrides)
    assert not (tmp_path / "run").exists()


def test_a_run_killed_while_writing_its_first_record_leaves_a_folder_a_new_run_takes(micro_config, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / f".{RECORD}.tmp").write_text('{"format": "meter-ru')  # cut short by the kill
    _pretrain(micro_config, tmp_path / "run")
    assert (tmp_path / "run" / RECORD).is_file() and not (tmp_path / "run" / f".{RECORD}.tmp").exists()


def test_a_folder_holding_a_run_of_another_config_is_refused_naming_what_differs(micro_config, tmp_path):
    _pretrain(micro_config, tmp_path / "run")
    before = _snapshot(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"holds a run of another config \(train.lr: 0.0001 -> 0.0002\): give the "
                                          r"new run a folder of its own \(train.out=.*run-2\)"):  # fmt: skip
        _pretrain(micro_config, tmp_path / "run", "train.lr=2e-4")
    assert _snapshot(tmp_path / "run") == before, "the earlier run's model, config and checkpoints are kept"


def test_a_run_that_stopped_before_its_first_checkpoint_leaves_its_folder_to_a_run_of_a_fixed_config(
    micro_config, tmp_path
):
    """A loss that diverged before the first checkpoint locked the folder to the config that failed: the same command
    with a fixed learning rate was refused as "a run of another config"."""
    from meter.errors import MeterError

    with pytest.raises(MeterError, match="non-finite loss or gradient"):
        _pretrain(micro_config, tmp_path / "run", "train.lr=1e30", "train.clip_grad=0", "train.max_nonfinite_steps=1",
                  "train.checkpoint_every=10")  # fmt: skip
    assert not Checkpoints(tmp_path / "run/checkpoints").steps()
    final = _pretrain(micro_config, tmp_path / "run", "train.checkpoint_every=10")
    assert final.is_dir() and [r["step"] for r in read_metrics(tmp_path / "run/metrics.jsonl")] == [1, 2, 3, 4]
    assert load_config(tmp_path / "run/config.yaml", []).train.lr == 1e-4


@pytest.mark.parametrize("resume", [None, "latest"])
def test_a_finished_run_is_never_trained_again(micro_config, tmp_path, resume):
    final = _pretrain(micro_config, tmp_path / "run")
    before = _snapshot(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"holds a finished run of this config \(its model: .*model\): evaluate it"):
        _pretrain(micro_config, tmp_path / "run", resume=resume)
    assert _snapshot(tmp_path / "run") == before and final.is_dir()


def test_an_unfinished_run_goes_on_with_resume_and_settings_that_may_differ(micro_config, tmp_path):
    _pretrain(micro_config, tmp_path / "run", "train.stop_at=2")
    with pytest.raises(ConfigError, match=r"holds an unfinished run of this config, with a checkpoint at step_00000002"
                                          r": continue it with --resume latest"):  # fmt: skip
        _pretrain(micro_config, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"another config \(model.fusion.layers: 1 -> 2\)"):
        _pretrain(micro_config, tmp_path / "run", "model.fusion.layers=2", resume="latest")
    # a longer run: its schedule decays to 0 at the recorded max_steps; the way on from its weights is named
    with pytest.raises(ConfigError, match=r"train.max_steps: 4 -> 8\).*, with train.init_from=.*step_00000002 to go on "
                                          r"from its weights: its learning rate decays to 0"):  # fmt: skip
        _pretrain(micro_config, tmp_path / "run", "train.max_steps=8", resume="latest")
    with pytest.raises(ConfigError, match=r"train.max_steps: 4 -> 3\)") as shorter:  # no "longer run" for a shorter
        _pretrain(micro_config, tmp_path / "run", "train.max_steps=3", resume="latest")
    assert "init_from" not in str(shorter.value)
    # where it stops, its logs and budgets may differ: not what it computes
    final = _pretrain(micro_config, tmp_path / "run", "train.log_every=2", "train.max_nonfinite_steps=9",
                      "train.progress=true", "train.deterministic=true", resume="latest")  # fmt: skip
    assert final.name == "step_00000004" and final.is_dir() and (tmp_path / "run/model").is_dir()
    assert [r["step"] for r in read_metrics(tmp_path / "run/metrics.jsonl")] == [1, 2, 4]


def test_keep_last_deletes_only_the_runs_own_checkpoints(micro_config, micro_checkpoints, tmp_path):
    """A checkpoint of another run in the folder (copied there by hand, named as a later step) is neither counted nor
    deleted: the run's final checkpoint stays, the other one too."""
    _pretrain(micro_config, tmp_path / "run", "train.stop_at=2")
    shutil.copytree(micro_checkpoints("pretrain"), tmp_path / "run/checkpoints/step_00000006")
    final = _pretrain(micro_config, tmp_path / "run", resume=str(tmp_path / "run/checkpoints/step_00000002"))
    assert final.is_dir(), "the final checkpoint it reports exists"
    names = [p.name for p in Checkpoints(tmp_path / "run/checkpoints").all()]
    assert names == ["step_00000004", "step_00000006"]  # its own step 2 pruned (keep_last=1), the other's kept


@pytest.mark.parametrize("since", ["gone", "overwritten"])
def test_a_fine_tuning_whose_init_from_is_gone_resumes_from_its_own_checkpoint(
    micro_config, micro_checkpoints, tmp_path, monkeypatch, since
):
    """A fine-tuning from a pretraining's checkpoint that the pretraining's keep_last deleted since could never be
    resumed: its model was built from train.init_from again ("no such model folder"); one overwritten since by a
    pretraining of another architecture was refused as "a run of another config", whose advice led back to the same
    refusal. Here by torchrun's restart (the command line without --resume): it goes on from the latest checkpoint."""
    from meter.runs import run_finetune

    source = tmp_path / "pretrained"
    shutil.copytree(micro_checkpoints("pretrain"), source)
    settings = ["task=vqa", "vqa.min_answer_count=1", f"train.init_from={source}", *STEPS]

    def finetune(out: str, *more: str, resume: str | None = None) -> list[dict]:
        run_finetune(load_config(None, [f"train.out={tmp_path / out}", *settings, *more], base=micro_config), resume)
        return read_metrics(tmp_path / out / "metrics.jsonl")

    straight = finetune("straight")
    finetune("resumed", "train.stop_at=2")
    shutil.rmtree(source)
    if since == "overwritten":
        shutil.copytree(_pretrain(micro_config, tmp_path / "other", "model.fusion.layers=2"), source)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    resumed = finetune("resumed")
    keys = [key for key in straight[0] if key.endswith("_loss")]
    assert keys and [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]


def test_another_commands_write_probe_in_a_new_folder_is_not_taken_for_a_users_file(micro_config, tmp_path):
    """`meter finetune`'s check that --out is writable leaves a probe file for an instant: a run opening the folder
    then was refused as "not empty, holds no meter run"."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run/.meter-write-check-abc123").write_text("")
    assert _pretrain(micro_config, tmp_path / "run").is_dir()


def test_a_folder_that_meter_study_planned_takes_its_run(micro_config, tmp_path):
    from meter.study.cells import RUN

    assert RUN in PLANNED_BY_OTHERS  # the study's record of a run, written into its folder before the run
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN).write_text("{}")
    assert _pretrain(micro_config, tmp_path / "run").is_dir()
    assert (tmp_path / "run" / RUN).read_text() == "{}" and (tmp_path / "run" / RECORD).is_file()


def test_a_run_written_before_runs_were_recorded_goes_on_only_with_resume(micro_config, tmp_path):
    _pretrain(micro_config, tmp_path / "run", "train.stop_at=2")
    os.remove(tmp_path / "run" / RECORD)  # as meter wrote run folders before
    with pytest.raises(ConfigError, match=r"holds a run written before meter recorded its runs.*--resume latest"):
        _pretrain(micro_config, tmp_path / "run")
    assert _pretrain(micro_config, tmp_path / "run", resume="latest").is_dir()


def test_a_finished_run_of_another_config_is_not_taken_as_this_configs_but_a_moved_one_is(micro_config, tmp_path):
    from meter.run_folders import finished_checkpoint

    shutil.copytree(micro_config.data.root, tmp_path / "old" / "data")  # the data inside the folder that moves
    micro_config = load_config(None, [f"data.root={tmp_path / 'old' / 'data'}"], base=micro_config)
    final = _pretrain(micro_config, tmp_path / "old" / "runs" / "run")
    cfg = load_config(None, [f"train.out={tmp_path / 'old' / 'runs' / 'run'}", *STEPS], base=micro_config)
    assert finished_checkpoint(cfg) == final  # evaluated again, never retrained
    reseeded = load_config(None, ["train.seed=1"], base=cfg)  # e.g. `meter demo --seed 1` into the same --out
    with pytest.raises(ConfigError, match=r"holds a finished run of another config \(train.seed: 0 -> 1\)"):
        finished_checkpoint(reseeded)
    shutil.move(tmp_path / "old", tmp_path / "new")  # the folder moved, with the paths inside it
    new = tmp_path / "new"
    moved = load_config(None, [f"train.out={new / 'runs' / 'run'}", f"data.root={new / 'data'}"], base=cfg)
    assert finished_checkpoint(moved) == tmp_path / "new" / "runs" / "run" / "checkpoints" / final.name


def test_a_checkpoint_of_another_configs_run_is_not_resumed_but_named_for_init_from(micro_config, tmp_path):
    _pretrain(micro_config, tmp_path / "a", "train.stop_at=2")
    checkpoint = tmp_path / "a" / "checkpoints" / "step_00000002"
    with pytest.raises(ConfigError, match=rf"a run of another config \(train.lr: .*use train.init_from={checkpoint}"):
        _pretrain(micro_config, tmp_path / "b", "train.lr=0.01", resume=str(checkpoint))
    _pretrain(micro_config, tmp_path / "c", resume=str(checkpoint))  # the same config, in a folder of its own
    assert [r["step"] for r in read_metrics(tmp_path / "c" / "metrics.jsonl")] == [3, 4]


def test_a_process_that_torchrun_restarted_resumes_from_the_latest_checkpoint(micro_config, tmp_path, monkeypatch):
    _pretrain(micro_config, tmp_path / "run", "train.stop_at=2")  # as a process that died after its checkpoint
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # what torchrun --max-restarts sets for the restart
    _pretrain(micro_config, tmp_path / "run")  # the same command line: no --resume
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_restarted_process_whose_command_line_resumes_a_path_goes_on_from_the_runs_latest_checkpoint(
    micro_config, tmp_path, monkeypatch
):
    """A run continued from another folder's checkpoint (`--resume PATH`) and restarted by torchrun was given PATH
    again: it went back there and set aside every checkpoint written since (their steps trained again)."""
    _pretrain(micro_config, tmp_path / "old", "train.stop_at=1")
    path = str(tmp_path / "old/checkpoints/step_00000001")
    _pretrain(micro_config, tmp_path / "new", "train.stop_at=3", resume=path)  # dies after its step 3 checkpoint
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    _pretrain(micro_config, tmp_path / "new", resume=path)  # the same command line
    assert [r["step"] for r in read_metrics(tmp_path / "new" / "metrics.jsonl")] == [2, 3, 4]
    assert not list((tmp_path / "new/checkpoints").glob("abandoned-*"))


def test_a_restart_before_a_resumed_earlier_checkpoint_set_the_newer_aside_goes_back_to_it(micro_config, tmp_path,
                                                                                          monkeypatch):  # fmt: skip
    """`--resume step_2` to leave a diverged step_4 behind, the attempt killed before it set step_4 aside: the restart
    (the same command line) resumes step_2, not the step_4 the user gave up."""
    out = tmp_path / "run"
    _pretrain(micro_config, out, "train.keep_last=2", "train.max_steps=6", "train.stop_at=4")
    record, latest = out / RECORD, out / "checkpoints/step_00000004/progress.json"
    os.utime(record, (latest.stat().st_mtime + 1,) * 2)  # the attempt that resumed step_2 opened the run, then died
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    earlier = str(out / "checkpoints/step_00000002")
    _pretrain(micro_config, out, "train.keep_last=2", "train.max_steps=6", resume=earlier)
    assert (out / "checkpoints/abandoned-step_00000004").is_dir()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_run_finished_with_its_steps_split_another_way_is_still_its_configs(micro_config, tmp_path):
    """A job requeued on fewer GPUs resumes with train.batch_size / train.grad_accum changed, as it may; once it had
    finished, the same command (`--resume latest`) was refused as "a finished run of another config"."""
    from meter.run_folders import finished_checkpoint

    out = tmp_path / "run"
    _pretrain(micro_config, out, "train.grad_accum=2", "train.stop_at=2")
    requeued = load_config(None, [f"train.out={out}", *STEPS, "train.batch_size=16", "train.grad_accum=1"],
                           base=micro_config)  # fmt: skip
    final = run_pretrain(requeued, resume="latest")
    assert finished_checkpoint(requeued) == final
    more = load_config(None, ["train.grad_accum=2"], base=requeued)  # 32 samples a step, not the run's 16
    with pytest.raises(ConfigError, match=r"a finished run of another config \(train.batch_size: 8 -> 16\)"):
        finished_checkpoint(more)


def test_a_run_recorded_before_a_setting_existed_goes_on_with_that_setting_at_its_default(micro_config, tmp_path):
    """Every folder recorded before train.best_on was "another config" (`train.best_on: None -> ''`) and refused; and
    so was every folder recorded before a default changed (`captioning.tokenizer: 'python' -> 'auto'`)."""
    import json

    out = tmp_path / "run"
    cfg = load_config(None, [f"train.out={out}", "train.max_steps=4", "train.stop_at=2"], base=micro_config)
    run_pretrain(cfg)
    record = json.loads((out / RECORD).read_text())
    for key in ("best_on", "best_every"):
        del record["config"]["train"][key]
    del record["config"]["vqa"]["normalize_targets"]
    record["config"]["captioning"]["tokenizer"] = "python"  # its default then: recorded by every run before "auto"
    (out / RECORD).write_text(json.dumps(record))
    run_pretrain(load_config(None, ["train.stop_at=0"], base=cfg), resume="latest")
    assert json.loads((out / RECORD).read_text())["finished"]
    changed = load_config(None, ["vqa.normalize_targets=true"], base=cfg)  # a value other than the default is a change
    with pytest.raises(ConfigError, match=r"vqa.normalize_targets: False -> True"):
        run_pretrain(changed, resume="latest")


def test_a_finished_run_written_before_runs_were_recorded_is_reused_only_for_its_own_config(micro_config, tmp_path):
    """Such a folder's final checkpoint was taken for any config's (`meter finetune --resume latest`, the demos):
    its config.yaml is compared instead of the record it lacks."""
    from meter.run_folders import finished_checkpoint

    out = tmp_path / "run"
    cfg = load_config(None, [f"train.out={out}", "train.max_steps=2"], base=micro_config)
    run_pretrain(cfg)
    (out / RECORD).unlink()
    assert finished_checkpoint(cfg) == out / "checkpoints" / "step_00000002"
    with pytest.raises(ConfigError, match=r"holds a finished run of another config \(train.seed: 0 -> 1\)"):
        finished_checkpoint(load_config(None, ["train.seed=1"], base=cfg))


def test_a_resume_on_data_changed_in_place_is_refused_naming_both_sizes(micro_config, shapes_world, tmp_path):
    """A map-style dataset's checkpoint did not record what data its place in the epoch was counted on: a resume
    after the data was written again with other samples went on silently (each epoch's order drawn over another
    length). Its size is recorded now, and a resume on another size is named."""
    import json

    from meter.errors import DataError

    world = tmp_path / "world"
    shutil.copytree(shapes_world, world)
    cfg = load_config(None, [f"data.root={world}"], base=micro_config)
    _pretrain(cfg, tmp_path / "run", "train.stop_at=2")
    karpathy = world / cfg.data.karpathy
    data = json.loads(karpathy.read_text())
    first_train = next(i for i, image in enumerate(data["images"]) if image["split"] == "train")
    del data["images"][first_train]  # one training image (and its captions) fewer
    karpathy.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"held \d+ samples; this run's \(data.root = {world}\) holds \d+"):
        _pretrain(cfg, tmp_path / "run", resume="latest")
    # the data it ran on, found elsewhere (a copy of what `world` held): it goes on there
    assert _pretrain(cfg, tmp_path / "run", f"data.root={shapes_world}", resume="latest").name == "step_00000004"
