"""The `meter` command, run as a real process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meter.data.formats.vqa import read_vqa_annotations
from meter.metrics.vqa import vqa_accuracy


def meter(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meter", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)  # fmt: skip


def test_evaluate_vqa_scores_a_predictions_file_like_the_library(shapes_world: Path, tmp_path: Path):
    annotations = shapes_world / "vqa/v2_mscoco_val2014_annotations.json"
    annotated = read_vqa_annotations(annotations)
    rows = [{"question_id": a["question_id"], "answer": "yes" if i % 2 else a["multiple_choice_answer"]}
            for i, a in enumerate(annotated)]  # fmt: skip
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(rows))
    questions = shapes_world / "vqa/v2_OpenEnded_mscoco_val2014_questions.json"
    result = meter("evaluate", "vqa", "--questions", str(questions), "--annotations", str(annotations),
                   "--predictions", str(predictions))  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = vqa_accuracy(annotated, {r["question_id"]: r["answer"] for r in rows}).to_dict()
    assert json.loads(result.stdout) == expected
    assert 0 < expected["overall"] < 100


def test_evaluate_vqa_refuses_incomplete_predictions(shapes_world: Path, tmp_path: Path):
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps([{"question_id": 1, "answer": "red"}]))
    result = meter("evaluate", "vqa", "--annotations", str(shapes_world / "vqa/v2_mscoco_val2014_annotations.json"),
                   "--predictions", str(predictions))  # fmt: skip
    assert result.returncode == 2
    assert "no prediction" in result.stderr and "Traceback" not in result.stderr
    assert f"scoring {predictions} against {shapes_world / 'vqa'}" in result.stderr  # which file does not match


def test_missing_file_is_named(tmp_path: Path):
    result = meter("evaluate", "vqa", "--annotations", str(tmp_path / "nope.json"), "--predictions", "x.json")
    assert result.returncode == 2 and "nope.json" in result.stderr


def test_bad_override_is_a_one_line_error(tmp_path: Path):
    result = meter("pretrain", "model.fusion=cross", f"train.out={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "meter: config error: model.fusion = 'cross' is not a fusion; choose one of: co-attention, merged"
    )


def test_models_lists_every_registered_part():
    result = meter("models")
    assert result.returncode == 0
    for name in ("clip-vit", "vit", "deit", "bert", "roberta", "co-attention", "merged"):
        assert f"  {name} " in result.stdout


def test_prepare_shapes_writes_the_world(tmp_path: Path):
    result = meter("prepare", "shapes", "--out", str(tmp_path / "w"), "--images", "10")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "w/shapes_world.json").read_text())
    assert manifest["images"] == {"train2014": 8, "val2014": 2}
    tasks = json.loads((tmp_path / "w/shapes_tasks.json").read_text())
    assert tasks["counts"]["flickr30k_images"] == 10 and tasks["counts"]["nlvr2_train"] > 0


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path: Path):
    result = meter("demo", "--quick", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "demo/report.json").read_text())
    for name in ("model", "blind"):
        assert set(report["vqa"][name]) == {"metric", "overall", "per_question_type", "per_answer_type", "skipped"}
        assert report["vqa"][name]["metric"] == "official-2021"
        assert report["vqa"][name]["per_question_type"]
    assert (tmp_path / "demo/vqa_loss.png").is_file() and (tmp_path / "demo/pretrain_loss.png").is_file()
    assert "VQA accuracy" in result.stdout


def test_only_takes_one_cell_pattern_each_time_so_the_study_file_after_it_is_read(capsys):
    """`--only 'vlp/merged/*' study.yaml` swallowed the study file ("the following arguments are required: study")."""
    from meter import __version__
    from meter.cli import build_parser

    parser, _ = build_parser()
    args = parser.parse_args(["study", "run", "--only", "vlp/merged/*", "tiny.yaml", "--only", "vlp/co*", "--out", "X"])
    assert (args.study, args.only) == ("tiny.yaml", ["vlp/merged/*", "vlp/co*"])
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.strip() == f"meter {__version__}"


@pytest.mark.parametrize("option", ["--jobs", "--nodes", "--gpus-per-node", "--time-min", "--cpus-per-task"])
def test_study_run_refuses_a_count_below_one_as_a_usage_error(option: str, capsys):
    """--jobs 0 was refused only after the study was planned; --nodes 0, --gpus-per-node 0 and the like were not
    checked at all before they reached the executor."""
    from meter.cli import build_parser

    parser, _ = build_parser()
    for value in ("0", "-2"):
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args(["study", "run", "tiny.yaml", "--out", "X", option, value])
        assert stopped.value.code == 2 and f"{option}: {value} must be at least 1" in capsys.readouterr().err
    assert getattr(parser.parse_args(["study", "run", "tiny.yaml", "--out", "X", option, "3"]),
                   option[2:].replace("-", "_")) == 3  # fmt: skip


def test_the_command_line_is_parsed_without_importing_torch():
    """The parser of every command imported the official RandAugment policy, and with it torch and torchvision, for
    one constant: `meter --help` and a mistake the parser names took seconds."""
    code = "import sys; from meter.cli import build_parser; build_parser(); print(sorted({'torch', 'torchvision', " \
           "'transformers'} & set(sys.modules)))"  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
