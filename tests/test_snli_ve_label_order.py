"""SNLI-VE classes in the official METER order, and model folders written before meter used it."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from meter.config import load_config
from meter.data.formats.snli_ve import SNLI_VE_LABELS, read_snli_ve
from meter.errors import DataError
from meter.importers.meter_official import import_meter_official
from meter.models.folder import load_model, read_model_folder
from meter.predictor import Predictor
from meter.runs import run_finetune
from meter.tasks.build import build_model, task_tokenizer
from tests.test_import_official import TEXT_ENCODER, _classifier, _replace_heads, official_checkpoint

IMAGE = "images/flickr30k-images/1000000001.jpg"
OUTPUT_ROWS = ("heads.snli_ve.3.weight", "heads.snli_ve.3.bias")
BEFORE_RECORD = ("entailment", "neutral", "contradiction")  # meter's order when folders did not record it


def as_written_before_the_record(folder: Path, rows_in_old_order: bool = True) -> None:
    """Turns a model folder of today into what meter wrote before it recorded the classes of the rows."""
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("classes") == {"snli_ve": list(SNLI_VE_LABELS)}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "checksums.json").unlink(missing_ok=True)  # nor the checksums of its files
    progress = folder / "progress.json"
    if progress.is_file():  # a checkpoint: nor the id of its run (recorded since checkpoints have checksums)
        progress.write_text(json.dumps(json.loads(progress.read_text()) | {"run": ""}))
    if rows_in_old_order:
        weights = load_file(folder / "model.safetensors")
        old = [SNLI_VE_LABELS.index(name) for name in BEFORE_RECORD]
        save_file({k: v[old].contiguous() if k in OUTPUT_ROWS else v for k, v in weights.items()},
                  folder / "model.safetensors")  # fmt: skip


def test_the_reader_numbers_the_labels_as_the_official_code(tmp_path: Path):
    lines = [{"Flickr30K_ID": "7", "sentence2": f"{label}.", "gold_label": label} for label in BEFORE_RECORD]
    (tmp_path / "ve.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = read_snli_ve(tmp_path / "ve.jsonl", tmp_path)
    assert [r.label for r in records] == [2, 1, 0]  # write_snli.py: contradiction 0, neutral 1, entailment 2


def test_the_hypothesis_is_stripped_as_the_official_dataset_strips_it(tmp_path: Path):
    """base_dataset.py:73 strips it; meter fed " at least one shape is blue. " raw (other BPE tokens)."""
    line = {"Flickr30K_ID": "7", "sentence2": " at least one shape is blue. ", "gold_label": "neutral"}
    (tmp_path / "ve.jsonl").write_text(json.dumps(line) + "\n")
    assert read_snli_ve(tmp_path / "ve.jsonl", tmp_path)[0].hypothesis == "at least one shape is blue."


def test_a_model_folder_from_before_the_record_predicts_what_it_did(micro_checkpoints, shapes_tasks_world, tmp_path):
    today = micro_checkpoints("snli_ve")
    image, text = shapes_tasks_world / IMAGE, "the red circle is made of wood."
    expected = Predictor(today, "cpu").match(image, text)["entailment"]
    old = tmp_path / "old"
    shutil.copytree(today, old)
    as_written_before_the_record(old)
    assert read_model_folder(old).classes == {"snli_ve": list(BEFORE_RECORD)}
    assert Predictor(old, "cpu").match(image, text)["entailment"] == pytest.approx(expected, abs=1e-4)
    model, description = load_model(old)
    assert description.classes == {"snli_ve": list(SNLI_VE_LABELS)}  # what the loaded rows are now
    today_rows = load_file(today / "model.safetensors")
    assert all(torch.equal(model.state_dict()[key], today_rows[key]) for key in OUTPUT_ROWS)


def test_fine_tuning_from_an_old_folder_starts_from_its_rows_in_todays_order(micro_checkpoints, tmp_path: Path):
    today = micro_checkpoints("snli_ve")
    old = tmp_path / "old"
    shutil.copytree(today, old)
    as_written_before_the_record(old)
    cfg = load_config(None, ["task=snli_ve", f"train.init_from={old}"], base=read_model_folder(today).config)
    model = build_model(cfg, task_tokenizer(cfg), {"snli_ve": 3})
    today_rows = load_file(today / "model.safetensors")
    assert all(torch.equal(model.state_dict()[key], today_rows[key]) for key in OUTPUT_ROWS)


def test_a_folder_imported_before_the_record_keeps_the_official_rows(tmp_path: Path):
    """The importer always copied the official rows as they are: an old import is in the official order."""
    head = _classifier("snli_classifier", 128, 128, 3)
    checkpoint = _replace_heads(official_checkpoint(), head)
    torch.save(checkpoint, tmp_path / "snli.ckpt")
    import_meter_official(tmp_path / "snli.ckpt", TEXT_ENCODER, tmp_path / "m")
    as_written_before_the_record(tmp_path / "m", rows_in_old_order=False)
    model, _ = load_model(tmp_path / "m")
    assert torch.equal(model.state_dict()["heads.snli_ve.3.weight"], head["snli_classifier.3.weight"])
    assert torch.equal(model.state_dict()["heads.snli_ve.3.bias"], head["snli_classifier.3.bias"])


def test_a_recorded_class_order_that_names_other_classes_is_an_error(tmp_path: Path):
    checkpoint = _replace_heads(official_checkpoint(), _classifier("snli_classifier", 128, 128, 3))
    torch.save(checkpoint, tmp_path / "snli.ckpt")
    import_meter_official(tmp_path / "snli.ckpt", TEXT_ENCODER, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "classes": {"snli_ve": ["yes", "no", "maybe"]}}))
    with pytest.raises(DataError, match=r"config.json: classes.snli_ve = \['yes', 'no', 'maybe'\]; expected an order"):
        read_model_folder(tmp_path / "m")


def test_resuming_a_run_from_before_the_record_is_refused(micro_checkpoints, tmp_path: Path):
    """Its optimizer state follows the old rows too; the message says how to carry on."""
    old = tmp_path / "run" / "checkpoints" / "step_00000002"
    shutil.copytree(micro_checkpoints("snli_ve"), old)
    as_written_before_the_record(old)
    cfg = load_config(None, ["task=snli_ve", f"train.out={tmp_path / 'run'}", "train.max_steps=3"],
                      base=read_model_folder(old).config)  # fmt: skip
    cfg.train.init_from = str(micro_checkpoints("pretrain"))
    with pytest.raises(DataError, match=r"rows are in the order entailment, neutral, contradiction.*train.init_from="):
        run_finetune(cfg, resume="latest")
