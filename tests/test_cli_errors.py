"""The command line never shows a Python traceback for a user's mistake: one line says what was wrong, before any
work; `--debug` (anywhere on the line) or METER_DEBUG=1 shows the traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meter.cli import main
from meter.errors import ConfigError
from tests.conftest import MICRO

IMAGE = "images/val2014/COCO_val2014_000000000055.png"


def meter(*args: str | bytes, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, "-m", "meter", *args], capture_output=True, timeout=600,
                            env={**os.environ, **(env or {})})  # fmt: skip
    return result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")


def one_line_error(code: int, err: str, *expected: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("meter: ")]
    assert len(lines) == 1 and all(text in lines[0] for text in expected), err


def test_a_question_that_is_not_utf8_is_named_not_a_traceback(micro_checkpoints, shapes_tasks_world: Path):
    question = "what colour is the café circle?".encode("latin-1")  # a terminal in Latin-1
    code, out, err = meter("predict", "--checkpoint", str(micro_checkpoints("vqa")), "--image",
                           str(shapes_tasks_world / IMAGE), "--question", question)  # fmt: skip
    one_line_error(code, err, "--question", "is not UTF-8 text (byte 0xe9)")
    assert out == ""


def test_a_question_of_bytes_that_are_not_utf8_alone_is_named_as_such_not_as_empty(
    micro_checkpoints, shapes_tasks_world: Path
):
    code, _, err = meter("predict", "--checkpoint", str(micro_checkpoints("vqa")), "--image",
                         str(shapes_tasks_world / IMAGE), "--question", b"\xff\xfe")  # fmt: skip
    one_line_error(code, err, "--question", "is not UTF-8 text (byte 0xff)")


def test_a_question_longer_than_the_model_reads_is_answered_with_a_note(micro_checkpoints, shapes_tasks_world):
    code, out, err = meter("predict", "--checkpoint", str(micro_checkpoints("vqa")), "--image",
                           str(shapes_tasks_world / IMAGE), "--question", "is there a red circle " * 30)  # fmt: skip
    assert code == 0 and json.loads(out)["answers"]
    assert "meter: note: --question has " in err and "the model reads the first 40" in err


def test_a_beam_beyond_the_limit_is_refused_before_it_fills_the_memory(micro_checkpoints, shapes_tasks_world):
    """--beam 100000 held a copy of the decoder's cache per beam: ~24 GB, then the kernel killed it (exit 137)."""
    from meter.errors import ConfigError
    from meter.predictor import Predictor
    from meter.setting_ranges import MAX_BEAM

    predictor = Predictor(micro_checkpoints("vqa"), "cpu")
    with pytest.raises(ConfigError, match=rf"--beam 100000 must be from 1 \(greedy\) to {MAX_BEAM}"):
        predictor.caption(shapes_tasks_world / IMAGE, 100000)


@pytest.mark.parametrize(("option", "value"), [("--top", "-3"), ("--top", "0"), ("--beam", "0")])
def test_a_count_below_one_is_a_usage_error(micro_checkpoints, shapes_tasks_world: Path, option: str, value: str):
    code, _, err = meter("predict", "--checkpoint", str(micro_checkpoints("vqa")), "--image",
                         str(shapes_tasks_world / IMAGE), "--question", "what colour?", option, value)  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert f"argument {option}: {value} must be at least 1" in err


def test_explain_never_writes_its_heat_map_over_the_image_it_explains(micro_checkpoints, shapes_tasks_world, tmp_path):
    """`--out` equal to `--image` replaced the user's photo with the heat map; a folder or a name without an image
    extension was an internal error after the model had run; `--top -1` too."""
    photo = tmp_path / "photo.png"
    photo.write_bytes((shapes_tasks_world / IMAGE).read_bytes())
    before = photo.read_bytes()
    base = ["explain", "--checkpoint", str(micro_checkpoints("vqa")), "--image", str(photo), "--question", "colour?"]
    one_line_error(*meter(*base, "--out", str(photo))[::2], "is the --image it explains")
    one_line_error(*meter(*base, "--out", str(tmp_path))[::2], "is a folder; give the image file to write")
    one_line_error(*meter(*base, "--out", str(tmp_path / "map"))[::2], "give a .png, .jpg, .webp or .tif file name")
    code, _, err = meter(*base, "--out", str(tmp_path / "map.png"), "--top", "-1")
    assert code == 2 and "argument --top: -1 must be at least 1" in err
    assert photo.read_bytes() == before


def test_a_chunk_whose_stop_the_run_has_passed_trains_nothing_and_names_its_checkpoint(shapes_world, tmp_path, capsys):
    """A stop_at below the step resumed from (an earlier chunk's job requeued) named step_00000001, which
    keep_last had removed: a path that did not exist."""
    args = ["pretrain", f"data.root={shapes_world}", f"train.out={tmp_path / 'run'}", "train.max_steps=3",
            "train.keep_last=1", *MICRO]  # fmt: skip
    assert main([*args, "train.stop_at=2"]) == 0
    capsys.readouterr()
    assert main([*args, "train.stop_at=1", "--resume", "latest"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == (f"stopped at step 2 of 3 (train.stop_at): {tmp_path}/run/checkpoints/step_00000002; continue"
                       " with --resume latest")  # fmt: skip


def test_evaluate_refuses_the_options_of_the_other_way_of_evaluating(micro_checkpoints, tmp_path: Path, capsys):
    """Scoring a file took --config, --out and KEY=VALUE settings and ignored them; predicting with --checkpoint
    took --annotations and --predictions and ignored them."""
    (tmp_path / "a.json").write_text('{"annotations": []}')
    (tmp_path / "p.json").write_text("[]")
    files = ["--annotations", str(tmp_path / "a.json"), "--predictions", str(tmp_path / "p.json")]
    assert main(["evaluate", "vqa", *files, "--config", str(tmp_path / "none.yaml")]) == 2
    assert "--config goes with --checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "vqa", *files, "train.max_steps=-5"]) == 2
    assert "settings (KEY=VALUE) go with --checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "vqa", "--checkpoint", str(micro_checkpoints("vqa")), *files]) == 2
    assert "--annotations scores a predictions file; with --checkpoint" in capsys.readouterr().err


def test_evaluate_takes_a_run_folder_as_its_checkpoint(micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path,
                                                       caplog, capsys):  # fmt: skip
    """`meter predict`, explain and serve took a run folder; evaluate said "not a meter model folder"."""
    run = micro_checkpoints("snli_ve").parents[1]
    out = tmp_path / "eval"
    assert main(["evaluate", "snli_ve", "--checkpoint", str(run), "--out", str(out),
                 f"data.root={shapes_tasks_world}", "nlvr2.eval_split=test1"]) == 0  # fmt: skip
    assert json.loads((out / "snli_ve_accuracy_dev.json").read_text())["examples"] == 12  # the dev split, scored
    assert "nlvr2.eval_split is not applied: it is read by task = nlvr2, and this run's task is snli_ve" in caplog.text
    scores = {path: path.read_bytes() for path in run.glob("*.json")}
    assert main(["evaluate", "snli_ve", "--checkpoint", str(run), "--out", str(run),
                 f"data.root={shapes_tasks_world}", "snli_ve.eval_split=test"]) == 2  # fmt: skip
    assert f"--out = {run} is a training run's folder" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in run.glob("*.json")} == scores  # the run's own dev scores kept


@pytest.mark.parametrize(
    ("task", "setting", "message"),
    [("vqa", "vqa.image_pattern={splt}/x.png", "vqa.image_pattern = '{splt}/x.png' has {splt}; its fields"),
     ("captioning", "captioning.tokenizer=foo", "captioning.tokenizer = 'foo'; choose one of: auto, python, ptb")],
)  # fmt: skip
def test_evaluate_checks_its_settings_before_the_model_loads(micro_checkpoints, tmp_path, capsys, task, setting,
                                                             message):  # fmt: skip
    """A misspelt pattern field was an internal error (KeyError) at the first image; a caption tokenizer that does
    not exist was named after every caption had been generated."""
    code = main(["evaluate", task, "--checkpoint", str(micro_checkpoints("vqa")), setting])
    assert code == 2 and message in capsys.readouterr().err


def test_predict_refuses_options_its_query_does_not_read(micro_checkpoints, shapes_tasks_world: Path):
    """`--text ... --top 3` and `--question ... --beam 4` ran and ignored the option."""
    base = ["predict", "--checkpoint", str(micro_checkpoints("vqa")), "--image", str(shapes_tasks_world / IMAGE)]
    one_line_error(*meter(*base, "--text", "a red circle", "--top", "3")[::2], "--top lists VQA answers")
    one_line_error(*meter(*base, "--question", "what colour?", "--beam", "4")[::2], "--beam is the beam size")


def test_a_wrong_device_is_named_as_the_command_takes_it(micro_checkpoints, shapes_tasks_world: Path):
    base = ["predict", "--checkpoint", str(micro_checkpoints("vqa")), "--image", str(shapes_tasks_world / IMAGE)]
    one_line_error(*meter(*base, "--question", "colour?", "--device", "gpu")[::2], "--device gpu; choose one of: auto")
    # "²" is a digit to str.isdigit, not to int(): an internal error on a machine with a GPU
    one_line_error(*meter(*base, "--question", "colour?", "--device", "cuda:²")[::2], "--device cuda:²; choose one of")


def test_explain_refuses_a_layer_that_is_no_number(micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path):
    base = ["explain", "--checkpoint", str(micro_checkpoints("vqa")), "--image", str(shapes_tasks_world / IMAGE),
            "--out", str(tmp_path / "map.png")]  # fmt: skip
    one_line_error(*meter(*base, "--question", "colour?", "--layer", "²")[::2], "--layer '²': choose mean or a fusion")
    one_line_error(*meter(*base, "--question", "colour?", "--layer", "9")[::2], "--layer '9': choose mean or a layer "
                                                                                "from 1 to 1")  # fmt: skip
    assert not (tmp_path / "map.png").exists()


def test_pretrain_refuses_a_recipe_of_another_task(shapes_world: Path, tmp_path: Path):
    """`meter pretrain --config shapes-vqa.yaml` pretrained on captions and recorded task: pretrain."""
    import meter as package

    recipe = Path(package.__file__).parent / "configs/shapes-vqa.yaml"
    code, _, err = meter("pretrain", "--config", str(recipe), f"data.root={shapes_world}",
                         f"train.out={tmp_path / 'run'}", *MICRO)  # fmt: skip
    one_line_error(code, err, "task = 'vqa': `meter pretrain` pretrains", "`meter finetune --config ...`")
    assert not (tmp_path / "run").exists()


def test_a_run_folder_that_is_a_file_is_refused_before_any_work(shapes_world: Path, tmp_path: Path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    args = [f"data.root={shapes_world}", "train.max_steps=1", "train.progress=false", *MICRO]
    code, _, err = meter("pretrain", f"train.out={notes}", *args)
    one_line_error(code, err, f"train.out = {notes} is a file")
    assert "parameters" not in err  # refused before the model was built
    assert main(["pretrain", f"train.out={notes / 'run'}", *args]) == 2
    assert f"train.out = {notes / 'run'} lies below {notes}, which is a file" in capsys.readouterr().err
    assert notes.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_out_option_that_is_a_file_is_refused(micro_checkpoints, tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    code, _, err = meter("prepare", "shapes", "--out", str(notes), "--images", "8")
    one_line_error(code, err, f"--out = {notes} is a file")
    code, _, err = meter("evaluate", "vqa", "--checkpoint", str(micro_checkpoints("vqa")), "--out", str(notes))
    one_line_error(code, err, f"--out = {notes} is a file")
    assert notes.read_text() == "mine"


def test_an_evaluation_setting_out_of_range_is_named_before_the_model_loads(micro_checkpoints, shapes_tasks_world: Path,
                                                                            tmp_path: Path):  # fmt: skip
    code, _, err = meter("evaluate", "vqa", "--checkpoint", str(micro_checkpoints("vqa")), "--out", str(tmp_path),
                         f"data.root={shapes_tasks_world}", "train.eval_batch_size=0")  # fmt: skip
    one_line_error(code, err, "train.eval_batch_size = 0 must be at least 1")


def test_a_run_folder_that_cannot_be_written_is_refused(shapes_world: Path, tmp_path: Path):
    probe = Path("/sys/meter-write-probe")
    try:
        probe.mkdir()
    except OSError:
        pass  # as it should: sysfs takes no new folders, whoever asks (root too)
    else:
        probe.rmdir()
        pytest.skip("/sys takes new folders here; no unwritable place to test with")
    code, _, err = meter("pretrain", f"data.root={shapes_world}", f"train.out={probe / 'run'}", *MICRO)
    one_line_error(code, err, f"train.out = {probe / 'run'}: cannot write in /sys, where it would be created")


def test_prepare_shapes_with_no_images_is_a_clear_error(tmp_path: Path, capsys):
    code, _, err = meter("prepare", "shapes", "--out", str(tmp_path / "world"), "--images", "0")
    one_line_error(code, err, "images = 0 (--images) is too few", "at least 8")
    assert main(["prepare", "shapes", "--out", str(tmp_path / "world"), "--images", "5"]) == 2
    assert "images = 5 (--images) is too few" in capsys.readouterr().err
    assert not (tmp_path / "world").exists()


def test_a_bad_setting_is_one_line_and_debug_shows_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    args = ["pretrain", f"train.out={tmp_path / 'run'}", "train.lr=nan"]
    code, _, err = meter(*args, "--debug")  # after the subcommand too
    assert code != 0 and "Traceback (most recent call last)" in err and "ConfigError: config error: train.lr" in err
    with pytest.raises(ConfigError, match="train.lr = nan"):
        main(["--debug", *args])
    monkeypatch.setenv("METER_DEBUG", "1")
    with pytest.raises(ConfigError, match="train.lr = nan"):
        main(args)
    monkeypatch.setenv("METER_DEBUG", "0")
    assert main(args) == 2


def test_a_closed_output_pipe_ends_quietly():
    process = subprocess.Popen([sys.executable, "-m", "meter", "models"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
    process.stdout.close()  # the reader is gone before anything is printed (`meter models | head -0`)
    err = process.stderr.read().decode()
    process.wait(timeout=300)
    assert process.returncode != 0 and "Traceback" not in err and "BrokenPipeError" not in err


def test_an_internal_error_is_one_line_that_points_to_debug(monkeypatch: pytest.MonkeyPatch, capsys):
    """A bug of ours (injected: no user input reaches one on purpose) is named in one line that says how to see it;
    with --debug it propagates with its traceback."""

    def broken_catalog() -> dict:
        raise RuntimeError("the registry is inconsistent")

    monkeypatch.setattr("meter.models.catalog.catalog", broken_catalog)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "internal error: RuntimeError: the registry is inconsistent" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="the registry is inconsistent"):
        main(["models", "--debug"])


def test_prepare_coco_refuses_options_of_the_other_caption_source(tmp_path: Path, capsys):
    """`--karpathy K --annotations A` read K and ignored A; `--splits` without --karpathy was ignored too."""
    from tests.corpora import write_coco

    write_coco(tmp_path / "coco", images=4)
    base = ["prepare", "coco", "--root", str(tmp_path / "coco"), "--out", str(tmp_path / "out")]
    assert main([*base, "--karpathy", "karpathy/dataset_coco.json", "--annotations", "a.json"]) == 2
    assert "--annotations names COCO's caption files; with --karpathy" in capsys.readouterr().err
    assert main([*base, "--splits", "train"]) == 2
    assert "--splits chooses splits of a Karpathy file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([*base, "--karpathy", "karpathy/dataset_coco.json", "--shard-size", "2"]) == 0  # the defaults


@pytest.mark.parametrize(("overrides", "named"), [
    ([], "data.root = {root}: the wordpiece tokenizer `meter prepare shapes` trains there; for other data set "
         "model.text.tokenizer"),
    (["model.text.tokenizer={root}/mine"], "model.text.tokenizer"),
])  # fmt: skip
def test_a_missing_tokenizer_names_the_setting_that_points_to_it(tmp_path: Path, capsys, overrides, named):
    """A data root without the shapes world's tokenizer said only "tokenizer folder not found: DIR": which setting to
    change (data.root, or model.text.tokenizer for real data) was left to guess."""
    root = tmp_path / "corpus"
    root.mkdir()
    args = ["pretrain", f"data.root={root}", f"train.out={tmp_path / 'run'}"]
    assert main([*args, *(o.format(root=root) for o in overrides)]) == 2
    assert named.format(root=root) in capsys.readouterr().err


def test_a_chunk_stopped_by_stop_at_says_so_and_a_misspelt_resume_is_named(shapes_world: Path, tmp_path: Path, capsys):
    """A `train.stop_at` chunk printed "final checkpoint: ..."; `--resume last` said "last: not a checkpoint folder
    (no training_state.pt)"."""
    args = ["pretrain", f"data.root={shapes_world}", f"train.out={tmp_path / 'run'}", "train.max_steps=2", *MICRO]
    assert main([*args, "train.stop_at=1"]) == 0
    assert capsys.readouterr().out.strip() == (f"stopped at step 1 of 2 (train.stop_at): {tmp_path}/run/checkpoints/"
                                               "step_00000001; continue with --resume latest")  # fmt: skip
    assert main([*args, "--resume", "last"]) == 2
    assert "--resume last: no such checkpoint folder; give `latest` or a checkpoint folder" in capsys.readouterr().err
    assert main([*args, "--resume", "latest"]) == 0
    assert capsys.readouterr().out.strip() == f"final checkpoint: {tmp_path}/run/checkpoints/step_00000002"
    # requeued once more after it finished (killed between its record and its exit): "holds a finished run", exit 2
    assert main([*args, "--resume", "latest"]) == 0
    assert capsys.readouterr().out.strip() == f"final checkpoint: {tmp_path}/run/checkpoints/step_00000002"


def test_a_setting_of_another_tasks_section_on_the_command_line_is_said_not_applied(shapes_tasks_world: Path):
    """`captioning.beam_size=5` in a retrieval run was accepted and never read, without a word."""
    import meter as package

    recipe = Path(package.__file__).parent / "configs/shapes-retrieval.yaml"
    code, _, err = meter("plan", "--config", str(recipe), f"data.root={shapes_tasks_world}", "captioning.beam_size=5",
                         "retrieval.shortlist=0")  # fmt: skip
    assert code == 0, err
    assert "captioning.beam_size is not applied: it is read by task = captioning, and this run's task is retrieval" in (
        err
    )
    assert "retrieval.shortlist" not in err
