"""A model folder that is missing, not a model folder, or damaged is a one-line error naming the path, wherever a
folder is loaded: `meter evaluate`, `meter predict`, `train.init_from`, and the output of `meter import`
(issue 15 item 7; issue 14 item 2). Each case is the real command on a real folder damaged on disk."""

import json
import re
import shutil
from pathlib import Path

import pytest

from meter.cli import main
from meter.models.checksums import CHECKSUMS, file_digest
from meter.models.folder import load_model
from tests.conftest import MICRO
from tests.faults import damage

IMAGE = "images/val2014/COCO_val2014_000000000055.png"
OFFICIAL = Path(__file__).resolve().parent / "data" / "meter-official-tiny"


def _damaged_folder(source: Path, folder: Path, fault: str) -> Path:
    """A copy of the model folder `source` with `fault`; returns the path the message must name."""
    shutil.copytree(source, folder)
    if fault == "missing folder":
        shutil.rmtree(folder)
        return folder
    if fault == "config.json not JSON":
        (folder / "config.json").write_text('{"format": "meter-model", "config": {')
    elif fault == "config.json of another library":
        (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    elif fault.startswith("weights "):
        damage(folder / "model.safetensors", fault.removeprefix("weights "))
    elif fault == "tokenizer file flipped":
        damage(folder / "tokenizer.json", "flip")
        return folder / "tokenizer.json"
    return folder / ("config.json" if "config" in fault else "model.safetensors")


FAULTS = {
    "missing folder": "no such model folder",
    "config.json not JSON": "not JSON",
    "config.json of another library": "not a meter model config",
    "weights flip": "damaged: its sha256 differs",
    "weights truncate": "damaged: .* bytes where .* were written",
    "weights delete": "missing",
    "tokenizer file flipped": "damaged: its sha256 differs",
}


def _one_line_error(capsys, code: int, named: Path, expected: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("meter: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(named) in lines[0], lines[0]
    assert re.search(expected, lines[0]), lines[0]


@pytest.mark.parametrize("fault", FAULTS)
def test_evaluate_names_the_broken_model_folder(micro_checkpoints, shapes_tasks_world, tmp_path, capsys, fault):
    folder = tmp_path / "model"
    named = _damaged_folder(micro_checkpoints("vqa"), folder, fault)
    code = main(["evaluate", "vqa", "--checkpoint", str(folder), "--out", str(tmp_path / "eval"),
                 f"data.root={shapes_tasks_world}", "vqa.min_answer_count=1"])  # fmt: skip
    _one_line_error(capsys, code, named, FAULTS[fault])
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("fault", FAULTS)
def test_predict_names_the_broken_model_folder(micro_checkpoints, shapes_tasks_world, tmp_path, capsys, fault):
    folder = tmp_path / "model"
    named = _damaged_folder(micro_checkpoints("vqa"), folder, fault)
    code = main(["predict", "--checkpoint", str(folder), "--image", str(shapes_tasks_world / IMAGE), "--question",
                 "What color is the circle?"])  # fmt: skip
    _one_line_error(capsys, code, named, FAULTS[fault])


@pytest.mark.parametrize("fault", FAULTS)
def test_init_from_names_the_broken_model_folder(micro_checkpoints, shapes_tasks_world, tmp_path, capsys, fault):
    folder = tmp_path / "pretrained"
    named = _damaged_folder(micro_checkpoints("pretrain"), folder, fault)
    code = main(["finetune", *MICRO, "task=vqa", f"data.root={shapes_tasks_world}", "vqa.min_answer_count=1",
                 "train.max_steps=2", f"train.init_from={folder}", f"train.out={tmp_path / 'run'}"])  # fmt: skip
    _one_line_error(capsys, code, named, FAULTS[fault])
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("fault", ["weights flip", "weights truncate", "config.json not JSON"])
def test_an_imported_folder_that_was_damaged_is_refused(shapes_tasks_world, tmp_path, capsys, fault):
    imported = tmp_path / "imported"
    assert main(["import", "meter-official", "--ckpt", str(OFFICIAL / "meter_official_tiny.ckpt"),
                 "--text-encoder", str(OFFICIAL / "text_encoder"), "--out", str(imported)]) == 0  # fmt: skip
    load_model(imported)  # intact, it loads
    capsys.readouterr()
    named = _damaged_folder(imported, tmp_path / "damaged", fault)
    code = main(["predict", "--checkpoint", str(tmp_path / "damaged"), "--image", str(shapes_tasks_world / IMAGE),
                 "--question", "What color is the circle?"])  # fmt: skip
    _one_line_error(capsys, code, named, FAULTS[fault])


def test_a_model_folder_records_the_checksum_of_every_file_it_holds(micro_checkpoints):
    folder = micro_checkpoints("vqa").parents[1] / "model"  # the run's exported model
    recorded = json.loads((folder / CHECKSUMS).read_text())["parts"]["model"]
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS}
    assert set(recorded) == files and "model.safetensors" in files and "text_encoder/config.json" in files
    assert all(recorded[name]["sha256"] == file_digest(folder / name) for name in files)


def test_init_from_a_run_folder_names_the_model_folders_it_holds(
    micro_checkpoints, shapes_tasks_world, tmp_path, capsys
):
    """`train.init_from=RUN` said only "not a meter model folder", where predict, evaluate and serve take a run."""
    import shutil

    run = tmp_path / "pretraining"
    shutil.copytree(micro_checkpoints("pretrain"), run / "model")
    code = main(["finetune", *MICRO, "task=vqa", f"data.root={shapes_tasks_world}", "vqa.min_answer_count=1",
                 "train.max_steps=2", f"train.init_from={run}", f"train.out={tmp_path / 'run'}"])  # fmt: skip
    said = capsys.readouterr().err
    assert code == 2 and f"{run}: not a meter model folder (it needs config.json and model.safetensors); it holds " \
        f"{run / 'model'}" in said, said  # fmt: skip
