"""train.best_on: the best checkpoint on a validation split, scored after each epoch and after the last step, is what
the run's evaluation scores (official METER's ModelCheckpoint on val/the_metric)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from meter.config import Config, load_config
from meter.errors import ConfigError, MeterError
from meter.runs import evaluate_run, run_finetune
from meter.tasks.best_checkpoint import BEST, HELD, RECORD, BestCheckpoint, held_step, keep_as_best
from meter.train.metrics_log import read_metrics
from meter.validate import validate
from tests.conftest import MICRO

# 66 SNLI-VE training examples in batches of 8: 8 steps an epoch
EPOCH = 8


def snli_ve_config(world: Path, init: Path, out: Path, *overrides: str) -> Config:
    return load_config(None, ["task=snli_ve", f"data.root={world}", f"train.out={out}", f"train.init_from={init}",
                              "snli_ve.eval_split=test", *MICRO, *overrides])  # fmt: skip


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def record(out: Path) -> dict:
    return json.loads((out / RECORD).read_text())


def test_the_best_checkpoint_on_dev_is_chosen_each_epoch_and_is_what_the_run_scores(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    out = tmp_path / "run"
    cfg = snli_ve_config(shapes_tasks_world, micro_checkpoints("pretrain"), out, "train.best_on=dev",
                         "train.max_steps=10", "train.keep_last=5")  # fmt: skip
    result = run_finetune(cfg)
    chosen = record(out)
    assert chosen["split"] == "dev" and chosen["metric"] == "accuracy"
    assert sorted(map(int, chosen["scores"])) == [EPOCH, 10]  # the end of the first epoch, and the last step
    for step, score in chosen["scores"].items():
        scored = json.loads((out / "eval" / f"step_{int(step):08d}" / "snli_ve_accuracy_dev.json").read_text())
        assert scored["accuracy"] == score
    best = max(chosen["scores"].values())
    assert chosen["best_step"] == min(int(s) for s, v in chosen["scores"].items() if v == best)  # a tie: the earlier
    checkpoint = out / "checkpoints" / f"step_{chosen['best_step']:08d}"
    assert same_weights(weights(out / BEST), weights(checkpoint))
    assert result == evaluate_run(cfg, checkpoint, tmp_path / "direct")  # the run scored the best, on test


def test_a_run_trains_the_same_with_the_best_checkpoint_chosen_as_without(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    """The evaluations in between seed and draw from the global generators (dropout's): they are put back."""
    init = micro_checkpoints("pretrain")
    plain = snli_ve_config(shapes_tasks_world, init, tmp_path / "plain", "train.max_steps=10")
    chosen = snli_ve_config(shapes_tasks_world, init, tmp_path / "chosen", "train.max_steps=10", "train.best_on=dev",
                            "train.best_every=3")  # fmt: skip
    assert plain.model.fusion.dropout > 0  # the generators matter
    run_finetune(plain)
    run_finetune(chosen)
    assert sorted(map(int, record(tmp_path / "chosen")["scores"])) == [3, 6, 9, 10]
    final = "checkpoints/step_00000010"
    assert same_weights(weights(tmp_path / "plain" / final), weights(tmp_path / "chosen" / final))


def test_a_checkpoint_saved_but_not_scored_when_the_run_was_killed_is_scored_on_resume(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    out = tmp_path / "run"
    cfg = snli_ve_config(shapes_tasks_world, micro_checkpoints("pretrain"), out, "train.best_on=dev",
                         "train.max_steps=10")  # fmt: skip
    run_finetune(load_config(None, [f"train.stop_at={EPOCH}"], base=cfg))
    assert list(record(out)["scores"]) == [str(EPOCH)]
    (out / RECORD).unlink()  # as a kill between saving step 8 and scoring it leaves the run
    run_finetune(cfg, resume="latest")
    assert sorted(map(int, record(out)["scores"])) == [EPOCH, 10]
    assert (out / "eval" / f"step_{EPOCH:08d}" / "snli_ve_accuracy_dev.json").is_file()


def test_a_score_recorded_before_a_kill_cut_its_curve_row_gets_the_row_on_resume(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    """The record is written before the metrics row: a kill between them left the curve without that step's point
    for good (the resumed run found the step scored and logged nothing)."""
    out = tmp_path / "run"
    cfg = snli_ve_config(shapes_tasks_world, micro_checkpoints("pretrain"), out, "train.best_on=dev",
                         "train.max_steps=10")  # fmt: skip
    run_finetune(load_config(None, [f"train.stop_at={EPOCH}"], base=cfg))
    rows = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("".join(row + "\n" for row in rows if "best_on/dev/score" not in row))
    run_finetune(cfg, resume="latest")
    curve = [(row["step"], row["best_on/dev/score"]) for row in read_metrics(out / "metrics.jsonl")
             if "best_on/dev/score" in row]  # fmt: skip
    assert curve == [(EPOCH, record(out)["scores"][str(EPOCH)]), (10, record(out)["scores"]["10"])]


def test_resuming_from_an_earlier_step_forgets_the_later_scores_and_sets_their_best_aside(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    out = tmp_path / "run"
    cfg = snli_ve_config(shapes_tasks_world, micro_checkpoints("pretrain"), out, "train.best_on=dev",
                         "train.best_every=3", "train.max_steps=7", "train.keep_last=5")  # fmt: skip
    run_finetune(load_config(None, ["train.stop_at=6"], base=cfg))
    first = record(out)
    assert sorted(map(int, first["scores"])) == [3, 6]
    keep_as_best(out / "checkpoints" / "step_00000006", out / BEST, 6)  # as if step 6 had scored best
    best_weights = weights(out / BEST)
    (out / RECORD).write_text(json.dumps(first | {"best_step": 6}))
    run_finetune(cfg, resume=str(out / "checkpoints" / "step_00000003"))
    again = record(out)
    assert sorted(map(int, again["scores"])) == [3, 6, 7]  # step 3 scored again: its checkpoint is the candidate
    assert same_weights(weights(out / "abandoned-best-step_00000006"), best_weights)
    assert same_weights(weights(out / BEST), weights(out / "checkpoints" / f"step_{again['best_step']:08d}"))


def test_a_best_replaced_while_killed_is_whole_the_old_or_the_new(micro_checkpoints, tmp_path: Path):
    best = tmp_path / BEST
    keep_as_best(micro_checkpoints("snli_ve"), best, 2)
    assert sorted(p.name for p in best.iterdir()) == sorted([HELD, *(
        p.name for p in micro_checkpoints("snli_ve").iterdir()
        if p.name not in ("training_state.pt", "progress.json", "task.safetensors")
    )])  # fmt: skip
    from meter.models.checksums import verify_checksums

    assert verify_checksums(best)  # the model part of the checkpoint's checksums, verified
    (tmp_path / ".best.replaced").mkdir()  # a kill while the last replaced best/ was deleted
    (tmp_path / ".best.replaced" / "model.safetensors").write_bytes(b"old")
    keep_as_best(micro_checkpoints("nlvr2"), best, 3)  # replaced whole
    assert same_weights(weights(best), weights(micro_checkpoints("nlvr2"))) and held_step(best) == 3
    assert not list(tmp_path.glob(".best*"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["task=pretrain", "train.best_on=val"], "pretraining has none"),
     (["task=snli_ve", "train.best_every=3"], "train.best_on is not set"),
     (["task=snli_ve", "train.best_every=-1", "train.best_on=dev"], "train.best_every"),
     # a file for its split: the pattern made snli_ve/snli_ve_snli_ve/snli_ve_dev.jsonl.jsonl of it, named as missing
     (["task=snli_ve", "train.best_on=snli_ve/snli_ve_dev.jsonl"],
      "train.best_on = 'snli_ve/snli_ve_dev.jsonl' is a file's path or name; give the split's name alone, as "
      "snli_ve.eval_split = 'dev' does"),
     (["task=nlvr2", "train.best_on=dev.json"], "train.best_on = 'dev.json' is a file's path or name"),
     # YAML's null for a setting of text: the word, taken for a split (a missing file, once the run started)
     (["task=nlvr2", "train.best_on=null"], r"train.best_on = 'null' would be taken for a split's name; .*empty"),
     (["task=nlvr2", "train.best_on=None"], r"train.best_on = 'None' would be taken for a split's name")],
)  # fmt: skip
def test_best_on_settings_that_would_be_ignored_are_refused(overrides: list[str], message: str):
    with pytest.raises(ConfigError, match=message):
        validate(load_config(None, overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["train.best_on=train"], "a split the run trains on"),
     (["train.best_on=nosuch"], r"train.best_on = 'nosuch': .*snli_ve_nosuch.jsonl")],  # the setting, then the file
)  # fmt: skip
def test_a_best_on_split_that_is_trained_on_or_missing_is_refused_before_training(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, overrides: list[str], message: str
):
    cfg = snli_ve_config(shapes_tasks_world, micro_checkpoints("pretrain"), tmp_path / "run", *overrides)
    with pytest.raises(MeterError, match=message):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists()


def test_a_missing_evaluation_split_is_named_before_training(micro_checkpoints, shapes_tasks_world: Path,
                                                             tmp_path: Path):  # fmt: skip
    """It was named after the last step, and the finished run would not resume under the corrected split."""
    cfg = snli_ve_config(shapes_tasks_world, micro_checkpoints("pretrain"), tmp_path / "run", "snli_ve.eval_split=val")
    with pytest.raises(MeterError, match=r"snli_ve.eval_split = 'val': .*snli_ve_val.jsonl"):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("recipe", "examples", "overrides", "expected"),
    [("clip16-roberta-nlvr2.yaml", 86_373, [], 11),  # 337 steps an epoch: 10 epochs end by step 3,370 of 3,380
     ("clip16-roberta-coco-retrieval.yaml", 566_747, ["train.best_on=val"], 11),  # 2 micro-batches a step
     ("clip16-roberta-nlvr2.yaml", 86_373, ["train.best_every=1000"], 4)],  # 1,000, 2,000, 3,000 and the last
)  # fmt: skip
def test_the_plan_counts_an_evaluation_after_each_epoch_and_the_last_step(
    recipe: str, examples: int, overrides: list[str], expected: int
):
    from meter.plan.make import best_evaluations
    from meter.run_folders import recipe as packaged

    cfg = load_config(packaged(recipe), overrides)
    assert best_evaluations(cfg, examples, processes=8) == expected


def test_a_run_killed_while_scoring_its_last_step_is_finished_not_taken_as_done(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    """The demos, the study and `meter finetune --resume latest` took the final step_N for a finished run: a run
    killed while it scored that step for best_on (or exported its model) was evaluated with a best that had not
    seen the last step."""
    from meter.run_folders import finetune_once
    from meter.train.run_folder import RECORD as RUN_RECORD

    out = tmp_path / "run"
    cfg = snli_ve_config(shapes_tasks_world, micro_checkpoints("pretrain"), out, "train.best_on=dev",
                         "train.max_steps=10")  # fmt: skip
    finished = run_finetune(cfg)
    # the folder as a kill while step 10 was scored leaves it: saved, not scored, not exported, not finished
    chosen = record(out)
    (out / RECORD).write_text(json.dumps(chosen | {"scores": {str(EPOCH): chosen["scores"][str(EPOCH)]},
                                                   "best_step": EPOCH}))  # fmt: skip
    keep_as_best(out / "checkpoints" / f"step_{EPOCH:08d}", out / BEST, EPOCH)
    run = json.loads((out / RUN_RECORD).read_text())
    (out / RUN_RECORD).write_text(json.dumps(run | {"finished": False}))
    shutil.rmtree(out / "model")
    assert finetune_once(cfg, evaluate_run) == finished  # resumed: step 10 scored, the model exported, evaluated
    assert record(out) == chosen and (out / "model").is_dir()


def test_meter_finetune_resume_latest_of_a_run_that_finished_training_evaluates_it(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, capsys
):
    """A job stopped while it evaluated and requeued with the same command was refused ("holds a finished run")."""
    from meter.cli import main

    args = ["finetune", "task=snli_ve", f"data.root={shapes_tasks_world}", f"train.out={tmp_path / 'run'}",
            f"train.init_from={micro_checkpoints('pretrain')}", "train.max_steps=3", *MICRO]  # fmt: skip
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    (tmp_path / "run" / "snli_ve_accuracy_dev.json").unlink()  # as a kill during the evaluation leaves it
    assert main([*args, "--resume", "latest"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert (tmp_path / "run" / "snli_ve_accuracy_dev.json").is_file()


def test_a_run_stopped_early_by_stop_at_scores_the_checkpoint_it_stopped_at(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    """A time-limited chunk (train.stop_at) before the run's last step: its evaluation is of where it stopped (there
    may be no best yet: the chunk failed, "best: no such model folder")."""
    out = tmp_path / "run"
    cfg = snli_ve_config(shapes_tasks_world, micro_checkpoints("pretrain"), out, "train.best_on=dev",
                         "train.max_steps=10", "train.stop_at=6")  # fmt: skip
    result = run_finetune(cfg)
    assert not (out / BEST).exists()
    assert result == evaluate_run(cfg, out / "checkpoints" / "step_00000006", tmp_path / "direct")


def test_a_reconciled_record_names_the_step_best_holds(micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path):
    """A kill between replacing best/ and writing best.json: the record named the step before; best/ names its own
    step, and the run takes that."""
    out = tmp_path / "run"
    cfg = snli_ve_config(shapes_tasks_world, micro_checkpoints("pretrain"), out, "train.best_on=dev",
                         "train.best_every=3", "train.max_steps=7", "train.keep_last=5")  # fmt: skip
    run_finetune(load_config(None, ["train.stop_at=6"], base=cfg))
    first = record(out)
    keep_as_best(out / "checkpoints" / "step_00000006", out / BEST, 6)
    (out / RECORD).write_text(json.dumps(first | {"best_step": 3, "scores": {"3": first["scores"]["3"]}}))
    run_finetune(cfg, resume="latest")  # resumes at 6: scores it again, then 7
    again = record(out)
    assert sorted(map(int, again["scores"])) == [3, 6, 7] and held_step(out / BEST) == again["best_step"]


def test_epochs_are_counted_from_where_the_data_is_after_a_resume_with_another_world():
    """Resumed at step 6 with 12 batches of 4 an epoch read (the data position, rescaled when the global batch
    changed): epochs end at steps 6, 10 and 14, not at the steps a count from step 0 gives."""
    from meter.tasks.catalog import DOWNSTREAM

    hook = BestCheckpoint(load_config(None, ["task=snli_ve", "train.best_on=dev", "train.max_steps=100"]),
                          DOWNSTREAM.get("snli_ve"), batches_per_epoch=4)  # fmt: skip
    hook.origin = (6, 12)
    assert [step for step in range(6, 16) if hook.wants(step)] == [6, 10, 14]


def test_meter_evaluate_of_a_runs_best_writes_beside_it_not_into_it(tmp_path: Path):
    """best/ is replaced whole when a later step scores better: files written into it went with it."""
    from meter.cli.evaluate import default_eval_folder

    (tmp_path / BEST).mkdir()
    assert default_eval_folder(tmp_path / BEST) == tmp_path / BEST / "eval"  # a model folder that happens to be named
    (tmp_path / RECORD).write_text("{}")
    assert default_eval_folder(tmp_path / BEST) == tmp_path / "eval" / "best"


def test_a_finished_fine_tuning_is_not_reused_for_another_resolution_dropout_or_text_length(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    """With train.init_from every model.* difference was ignored: a run finished at 64 px was evaluated again as
    the result of one at 96 px. The settings the folder decides (its architecture) still may differ."""
    from meter.run_folders import finished_checkpoint

    out = tmp_path / "run"
    cfg = snli_ve_config(shapes_tasks_world, micro_checkpoints("pretrain"), out, "train.max_steps=2")
    run_finetune(cfg)
    assert finished_checkpoint(cfg) == out / "checkpoints" / "step_00000002"
    for changed in ("model.vision.image_size=96", "model.fusion.dropout=0.3", "model.text.max_length=16"):
        with pytest.raises(ConfigError, match="holds a finished run of another config"):
            finished_checkpoint(load_config(None, [changed], base=cfg))


def test_a_finished_fine_tuning_from_a_folder_without_text_dropout_is_taken_when_its_recipe_names_none(
    shapes_tasks_world: Path, tmp_path: Path
):
    """The demo run again after it finished: its pretraining sets text dropout 0 (hf_kwargs), the VQA recipe names
    none, the run inherits 0, and the rerun was refused as "another config (... 0.0 -> None)"."""
    from meter.run_folders import finished_checkpoint
    from meter.runs import run_pretrain

    no_dropout = (
        "model.text.hf_kwargs={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
        "intermediate_size: 64, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"
    )
    pretrained = run_pretrain(load_config(None, [f"data.root={shapes_tasks_world}", f"train.out={tmp_path / 'pre'}",
                                                 "train.max_steps=1", *MICRO, no_dropout]))  # fmt: skip
    out = tmp_path / "run"
    run_finetune(snli_ve_config(shapes_tasks_world, pretrained, out, "train.max_steps=2"))
    cfg = snli_ve_config(shapes_tasks_world, pretrained, out, "train.max_steps=2")  # as a rerun reads the recipe
    assert finished_checkpoint(cfg) == out / "checkpoints" / "step_00000002"
    with pytest.raises(ConfigError, match=r"another config \(model.text.hf_kwargs.hidden_dropout_prob: 0.0 -> 0.2"):
        more = no_dropout.replace("hidden_dropout_prob: 0.0", "hidden_dropout_prob: 0.2")
        finished_checkpoint(load_config(None, [more], base=cfg))
