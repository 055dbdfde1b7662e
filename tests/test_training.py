import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from meter.config import Config, load_config
from meter.data.formats.vqa import read_vqa_questions
from meter.runs import run_finetune, run_pretrain
from meter.train.checkpoint import Checkpoints
from meter.train.metrics_log import read_metrics
from tests.runner import pretrain_args, run_meter


def _pretrain(cfg: Config, out: Path, *overrides: str, resume: str | None = None) -> Path:
    run = load_config(None, [f"train.out={out}", *overrides], base=cfg)
    return run_pretrain(run, resume=resume)


def test_pretraining_writes_checkpoints_metrics_and_plots(micro_config: Config, tmp_path: Path):
    final = _pretrain(micro_config, tmp_path / "run", "train.max_steps=4", "train.checkpoint_every=2",
                      "train.keep_last=1")  # fmt: skip
    assert final.name == "step_00000004" and (final / "model.safetensors").is_file()
    assert [p.name for p in Checkpoints(tmp_path / "run" / "checkpoints").all()] == ["step_00000004"]
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["train/mlm_loss"] > 0 and r["train/itm_loss"] > 0 for r in records)
    assert (tmp_path / "run/loss_curves.png").stat().st_size > 0
    assert list((tmp_path / "run/tensorboard").iterdir())


@pytest.mark.parametrize("objectives", [[], ["objectives.itm=0"]], ids=["mlm-itm", "mlm-only"])
def test_stopped_and_resumed_pretraining_matches_a_straight_run(micro_config: Config, tmp_path: Path, objectives):
    """MLM alone leaves the last fusion layer's image stream without a gradient, so without AdamW state: every
    resume of such a run (and of every captioning fine-tune: the decoder's class token) failed, 'Missing optimizer
    state for parameter'."""
    steps = ["train.max_steps=6", "train.checkpoint_every=3", "train.deterministic=true", "model.fusion.dropout=0.1",
             *objectives]  # fmt: skip
    straight = _pretrain(micro_config, tmp_path / "straight", *steps)
    _pretrain(micro_config, tmp_path / "split", *steps, "train.stop_at=3")
    assert Checkpoints(tmp_path / "split" / "checkpoints").latest().name == "step_00000003"
    resumed = _pretrain(micro_config, tmp_path / "split", *steps, resume="latest")
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    state_a = torch.load(straight / "training_state.pt", weights_only=True)
    state_b = torch.load(resumed / "training_state.pt", weights_only=True)
    assert state_a["scheduler"] == state_b["scheduler"]


def test_vqa_finetune_from_pretrained_writes_submission_and_scores(micro_config: Config, tmp_path: Path):
    pretrained = _pretrain(micro_config, tmp_path / "pre", "train.max_steps=2")
    cfg = load_config(None, [f"train.out={tmp_path / 'vqa'}", "train.max_steps=3", "task=vqa",
                             f"train.init_from={pretrained}"], base=micro_config)  # fmt: skip
    accuracy = run_finetune(cfg)
    predictions = json.loads((tmp_path / "vqa/vqa_predictions_val2014.json").read_text())
    asked = read_vqa_questions(Path(cfg.data.root) / "vqa/v2_OpenEnded_mscoco_val2014_questions.json")
    assert sorted(p["question_id"] for p in predictions) == sorted(q["question_id"] for q in asked)
    assert all(isinstance(p["answer"], str) and p["answer"] for p in predictions)
    assert 0 <= accuracy["overall"] <= 100
    assert set(accuracy["per_question_type"]) <= {"what color is the", "what shape is the", "how many",
                                                   "is there a", "is the"}  # fmt: skip
    saved = json.loads((tmp_path / "vqa/vqa_accuracy_val2014.json").read_text())
    assert saved == accuracy


def test_pretraining_without_tensorboard_warns_once_and_writes_the_jsonl_log(shapes_world: Path, tmp_path: Path,
                                                                               monkeypatch):  # fmt: skip
    """The borrowed GPU machine has torch without tensorboard: every training run failed before its first step
    (torch.utils.tensorboard's `import tensorboard`). A package that fails to import, first on the path, stands in
    for the missing one."""
    shim = tmp_path / "shim/tensorboard"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ModuleNotFoundError("No module named tensorboard", name="tensorboard")\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "shim"))
    out = tmp_path / "run"
    done = run_meter(pretrain_args(shapes_world, out, "train.max_steps=2"))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert done.stderr.count("tensorboard cannot be imported") == 1, done.stderr
    assert not (out / "tensorboard").exists()


def test_a_run_whose_every_image_is_gone_stops_after_two_epochs_of_empty_batches(shapes_world: Path, tmp_path: Path):
    """Within a budget that allows every sample to be bad, a run that reads nothing drew empty batches forever."""
    world = shutil.copytree(shapes_world, tmp_path / "world")
    shutil.rmtree(world / "images")
    done = run_meter(pretrain_args(world, tmp_path / "run", "data.max_bad_samples=1", "train.max_steps=2"),
                     timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0 and "the run found no readable batch in " in done.stderr, done.stderr[-3000:]
