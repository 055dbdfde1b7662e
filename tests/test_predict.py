"""`meter predict` on single inputs, through the command's own entry point."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meter.cli import main
from tests.model_copies import with_nan_weight

IMAGE = "images/val2014/COCO_val2014_000000000055.png"


def predict(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict | None, str]:
    code = main(["predict", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err


def test_question_gives_answers_with_scores(micro_checkpoints, shapes_tasks_world: Path, capsys):
    code, result, _ = predict(capsys, "--checkpoint", str(micro_checkpoints("vqa")), "--image",
                              str(shapes_tasks_world / IMAGE), "--question", "What color is the circle?",
                              "--top", "3")  # fmt: skip
    assert code == 0 and len(result["answers"]) == 3
    scores = [a["score"] for a in result["answers"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_text_gives_a_match_score(micro_checkpoints, shapes_tasks_world: Path, capsys):
    run = micro_checkpoints("retrieval").parents[1]  # a run folder: its latest checkpoint is used
    code, result, _ = predict(capsys, "--checkpoint", str(run), "--image", str(shapes_tasks_world / IMAGE),
                              "--text", "a red circle.")  # fmt: skip
    assert code == 0 and set(result) == {"match_score"}


def test_text_with_a_pretrained_model_gives_the_itm_probability(micro_checkpoints, shapes_tasks_world: Path, capsys):
    code, result, _ = predict(capsys, "--checkpoint", str(micro_checkpoints("pretrain")), "--image",
                              str(shapes_tasks_world / IMAGE), "--text", "a red circle.")  # fmt: skip
    assert code == 0 and set(result) == {"match_probability"} and 0 <= result["match_probability"] <= 1


def test_text_with_an_snli_ve_model_gives_the_three_probabilities(micro_checkpoints, shapes_tasks_world: Path, capsys):
    code, result, _ = predict(capsys, "--checkpoint", str(micro_checkpoints("snli_ve")), "--image",
                              str(shapes_tasks_world / IMAGE), "--text", "the red circle is made of wood.")  # fmt: skip
    assert code == 0 and set(result["entailment"]) == {"entailment", "neutral", "contradiction"}
    assert sum(result["entailment"].values()) == pytest.approx(1, abs=1e-3)


def test_two_images_and_a_sentence_give_an_nlvr2_judgement(micro_checkpoints, shapes_tasks_world: Path, capsys):
    left, right = sorted((shapes_tasks_world / "nlvr2/dev").glob("*.png"))[:2]
    code, result, _ = predict(capsys, "--checkpoint", str(micro_checkpoints("nlvr2")), "--images", str(left),
                              str(right), "--text", "both images contain a circle.")  # fmt: skip
    assert code == 0 and result["label"] in ("True", "False")
    assert sum(result["probabilities"].values()) == pytest.approx(1, abs=1e-3)


def test_caption_is_written_by_the_decoder(micro_checkpoints, shapes_tasks_world: Path, capsys):
    for beam in ("1", "3"):
        code, result, _ = predict(capsys, "--checkpoint", str(micro_checkpoints("captioning")), "--image",
                                  str(shapes_tasks_world / IMAGE), "--caption", "--beam", beam)  # fmt: skip
        assert code == 0 and isinstance(result["caption"], str)


def test_caption_from_an_encoder_only_model_is_refused(micro_checkpoints, shapes_tasks_world: Path, capsys):
    code, _, err = predict(capsys, "--checkpoint", str(micro_checkpoints("vqa")), "--image",
                           str(shapes_tasks_world / IMAGE), "--caption")  # fmt: skip
    assert code == 2 and "--caption needs a model with a decoder" in err


@pytest.mark.parametrize(
    ("name", "problem"),
    [("nope.png", "image not found"), ("photos", "a folder, not an image file; give one image file")],
)
def test_missing_image_is_named(micro_checkpoints, tmp_path: Path, capsys, name: str, problem: str):
    (tmp_path / "photos").mkdir()
    code, _, err = predict(capsys, "--checkpoint", str(micro_checkpoints("vqa")), "--image",
                           str(tmp_path / name), "--question", "What color is the circle?")  # fmt: skip
    assert code == 2 and err.strip() == f"meter: data: {tmp_path / name}: {problem}"


def test_unreadable_image_is_named(micro_checkpoints, tmp_path: Path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, _, err = predict(capsys, "--checkpoint", str(micro_checkpoints("vqa")), "--image",
                           str(tmp_path / "broken.png"), "--question", "What color is the circle?")  # fmt: skip
    assert code == 2 and f"{tmp_path / 'broken.png'}: unreadable image" in err


@pytest.mark.parametrize("question", ["", "   "])
def test_empty_question_is_refused(micro_checkpoints, shapes_tasks_world: Path, capsys, question: str):
    code, _, err = predict(capsys, "--checkpoint", str(micro_checkpoints("vqa")), "--image",
                           str(shapes_tasks_world / IMAGE), "--question", question)  # fmt: skip
    assert code == 2 and "--question is empty" in err


def test_a_model_without_the_head_says_which_it_has(micro_checkpoints, shapes_tasks_world: Path, capsys):
    code, _, err = predict(capsys, "--checkpoint", str(micro_checkpoints("snli_ve")), "--image",
                           str(shapes_tasks_world / IMAGE), "--question", "What color is the circle?")  # fmt: skip
    assert code == 2 and "needs a model with a vqa head (fine-tuned with task=vqa); this one has: snli_ve" in err


@pytest.mark.slow
def test_predict_runs_as_a_command(micro_checkpoints, shapes_tasks_world: Path):
    result = subprocess.run(
        [sys.executable, "-m", "meter", "predict", "--checkpoint", str(micro_checkpoints("vqa")), "--image",
         str(shapes_tasks_world / IMAGE), "--question", "How many shapes are there?"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["answers"]


@pytest.mark.parametrize("task", ["vqa", "nlvr2", "retrieval"])
def test_bf16_runs_the_encoders_in_bf16_and_agrees_with_fp32(micro_checkpoints, shapes_tasks_world: Path, task: str):
    from meter.predictor import Predictor

    image = shapes_tasks_world / IMAGE
    seen: list[torch.dtype] = []
    outputs = {}
    for precision in ("fp32", "bf16"):
        predictor = Predictor(micro_checkpoints(task), "cpu", precision=precision)
        first_linear = next(m for m in predictor.model.modules() if isinstance(m, torch.nn.Linear))
        hook = first_linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        if task == "vqa":
            outputs[precision] = predictor.answer(image, "What color is the circle?", top=3)
        elif task == "nlvr2":
            outputs[precision] = predictor.judge_pair(image, image, "there is a circle.")["probabilities"]
        else:
            outputs[precision] = predictor.match(image, "a red circle.")
        hook.remove()
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16
    fp32, bf16 = outputs["fp32"], outputs["bf16"]
    if task == "vqa":
        assert fp32[0]["answer"] == bf16[0]["answer"]
        assert all(abs(a["score"] - b["score"]) < 0.03 for a, b in zip(fp32, bf16, strict=True))
    else:
        assert fp32.keys() == bf16.keys() and all(abs(fp32[k] - bf16[k]) < 0.05 for k in fp32)


def test_precision_is_a_choice_of_the_command(micro_checkpoints, shapes_tasks_world: Path, capsys):
    code, result, _ = predict(capsys, "--checkpoint", str(micro_checkpoints("vqa")), "--image",
                              str(shapes_tasks_world / IMAGE), "--question", "What color?",
                              "--precision", "bf16")  # fmt: skip
    assert code == 0 and result["answers"]
    with pytest.raises(SystemExit):
        main(["predict", "--checkpoint", "x", "--image", "y", "--question", "z", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_a_finished_run_folder_serves_the_weights_its_evaluation_scored(micro_checkpoints, tmp_path: Path):
    """predict, explain and serve on a run folder took its newest checkpoint: with train.best_on, not the weights the
    run's evaluation scored (its best/)."""

    from meter.predictor import resolve_checkpoint
    from meter.train.run_folder import RECORD

    run = tmp_path / "run"
    shutil.copytree(micro_checkpoints("retrieval").parents[1], run)
    assert resolve_checkpoint(run) == run / "model"  # finished: its exported model
    shutil.copytree(run / "model", run / "best")
    assert resolve_checkpoint(run) == run / "best"  # with train.best_on: its best
    shutil.rmtree(run / "checkpoints")  # deleted to free the disk: a finished run needs none
    assert resolve_checkpoint(run) == run / "best"
    shutil.copytree(micro_checkpoints("retrieval").parent, run / "checkpoints")
    record = json.loads((run / RECORD).read_text())
    (run / RECORD).write_text(json.dumps(record | {"finished": False}))
    assert resolve_checkpoint(run) == run / "checkpoints" / "step_00000002"  # still training: its newest checkpoint


def test_a_blind_baseline_predicts_blind_as_it_trained_and_was_evaluated(micro_checkpoints, shapes_tasks_world,
                                                                          tmp_path, caplog):  # fmt: skip
    """predict gave a blind baseline (the demo's vqa-blind) the real image it never saw in training: answers that
    its evaluation never scored."""
    import logging

    from PIL import Image

    from meter.config import load_config
    from meter.predictor import Predictor
    from meter.runs import run_finetune
    from tests.conftest import MICRO

    cfg = load_config(None, ["task=vqa", "data.blind=true", f"data.root={shapes_tasks_world}", "vqa.min_answer_count=1",
                             f"train.out={tmp_path / 'blind'}", "train.max_steps=2", *MICRO])  # fmt: skip
    run_finetune(cfg)
    with caplog.at_level(logging.WARNING, logger="meter.predictor"):
        predictor = Predictor(tmp_path / "blind/model", "cpu")
    assert "a blind baseline (data.blind)" in caplog.text
    images = sorted((shapes_tasks_world / "images/val2014").iterdir())[:2]
    assert predictor.pixels(images[0]).equal(predictor.pixels(images[1]))
    with Image.open(images[0]) as opened:  # as serve's uploads and explain give it
        assert predictor.pixels(opened).equal(predictor.pixels(images[1]))
    question = "what color is the circle?"
    assert predictor.answer(images[0], question) == predictor.answer(images[1], question)
    predictor.device = torch.device("meta")  # a copy to another device, as to a GPU (a copy to the CPU is none)
    pixels = predictor.batch_of([[image] for image in images], [question] * 2)["pixels"]
    assert pixels.device.type == "meta" and pixels.stride(0) == 0, "one image over the rows, encoded once"
    seeing = Predictor(micro_checkpoints("vqa"), "cpu")
    assert not seeing.pixels(images[0]).equal(seeing.pixels(images[1])), "a model that looks sees each image"


def test_a_photo_given_as_a_pil_image_is_turned_as_the_same_file_is(micro_checkpoints, tmp_path):
    from PIL import Image

    from meter.predictor import Predictor
    from tests.test_bad_images import _sideways_photo

    sideways, _ = _sideways_photo(tmp_path)
    predictor = Predictor(micro_checkpoints("vqa"), "cpu")
    with Image.open(sideways) as opened:
        assert predictor.pixels(opened).equal(predictor.pixels(sideways))


def test_a_caption_without_beam_is_the_one_the_models_evaluation_wrote(shapes_tasks_world: Path, tmp_path: Path,
                                                                         micro_checkpoints):  # fmt: skip
    """predict and /api/caption wrote greedy captions by default while the model's evaluation used its beam (3)."""
    from meter.config import load_config
    from meter.predictor import Predictor
    from meter.runs import run_finetune
    from meter.tasks.build import read_karpathy_splits
    from tests.conftest import MICRO

    cfg = load_config(None, ["task=captioning", f"data.root={shapes_tasks_world}", f"train.out={tmp_path / 'run'}",
                             f"train.init_from={micro_checkpoints('pretrain')}", "train.max_steps=2",
                             "captioning.beam_size=3", "captioning.max_eval_images=6", *MICRO])  # fmt: skip
    run_finetune(cfg)
    written = {row["image_id"]: row["caption"] for row in json.loads((tmp_path / "run/captions_test.json").read_text())}
    predictor = Predictor(tmp_path / "run/model", "cpu")
    records = read_karpathy_splits(cfg, "captioning", ["test"])[:6]
    differing = [r for r in records if predictor.caption(r.image, 1) != predictor.caption(r.image, 3)]
    assert differing, "no image whose greedy and beam captions differ: the default cannot be told apart"
    assert [predictor.caption(r.image) for r in differing] == [written[r.image_id] for r in differing]


def test_the_python_api_names_a_bad_argument(micro_checkpoints, shapes_tasks_world):
    """Raw errors of torch (`selected index k out of range`, KeyError 'pixels') or a setting the caller never gave
    (`train.precision`) were what a wrong argument got."""
    from meter.errors import ConfigError
    from meter.predictor import Predictor

    image = sorted((shapes_tasks_world / "images/val2014").iterdir())[0]
    with pytest.raises(ConfigError, match=r"error: precision = 'fp16'; choose one of"):
        Predictor(micro_checkpoints("vqa"), "cpu", precision="fp16")
    with pytest.raises(ConfigError, match=r"max_image_pixels = 0 must be in 1\.\."):
        Predictor(micro_checkpoints("vqa"), "cpu", max_image_pixels=0)
    predictor = Predictor(micro_checkpoints("vqa"), "cpu")
    with pytest.raises(ConfigError, match=r"--top -1 must be at least 1"):
        predictor.answer(image, "what color?", top=-1)
    with pytest.raises(ConfigError, match=r"0 images and 0 texts: give one text per image, at least one"):
        predictor.answer_batch([], [])
    with pytest.raises(ConfigError, match=r"2 images and 1 texts"):
        predictor.answer_batch([image, image], ["what color?"])


@pytest.mark.parametrize(
    ("task", "weight", "query"),
    [
        ("vqa", "heads.vqa.3.bias", ["--question", "What color is the circle?"]),
        ("retrieval", "heads.rank.bias", ["--text", "a red circle."]),
        ("snli_ve", "heads.snli_ve.3.bias", ["--text", "the red circle is made of wood."]),
        ("nlvr2", "heads.nlvr2.3.bias", ["--text", "both images contain a circle."]),
        ("captioning", "decoder.lm_head.dense.bias", ["--caption", "--beam", "1"]),  # its argmax: a NaN's index
        ("captioning", "decoder.lm_head.dense.bias", ["--caption", "--beam", "3"]),
    ],
)
def test_a_model_whose_outputs_are_nan_is_refused_naming_the_weight(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, capsys, task: str, weight: str, query: list[str]
):
    """A NaN ranked first: `NaN` printed as the top answer's score (not JSON), or a label chosen from NaNs."""
    model = with_nan_weight(micro_checkpoints(task), tmp_path / "nan", weight)
    images = ["--image", str(shapes_tasks_world / IMAGE)]
    if task == "nlvr2":
        images = ["--images", *map(str, sorted((shapes_tasks_world / "nlvr2/dev").glob("*.png"))[:2])]
    code, _, err = predict(capsys, "--checkpoint", str(model), *images, *query)
    assert code == 2
    assert (
        f"{model}: the model's outputs are not finite (NaN or inf); its weights hold NaN or inf (the first: {weight})"
        in err
    )


def test_counting_a_requests_tokens_beside_a_batch_leaves_the_batch_truncated(micro_checkpoints):
    """The server counts a question's tokens on a thread of its own (the note that it was cut) while the model thread
    tokenizes batches: on one shared tokenizer the count's truncation=False leaked into batches (one in a few hundred
    came out untruncated, longer than the model's text.max_length, or failed), and the batch's truncation into the
    count (a long question without its note)."""
    import threading

    from meter.predictor import Predictor

    predictor = Predictor(micro_checkpoints("vqa"), "cpu")
    long_question = "what color is the big square next to the circle " * 12
    pixels = torch.zeros(3, 8, 8)
    widths, failures, done = set(), [], threading.Event()

    def count() -> None:
        while not done.is_set():
            try:
                if predictor.length_note(long_question, "question") is None:  # counted as the batch truncates it
                    failures.append("no note")
            except ValueError as error:
                failures.append(str(error))

    counters = [threading.Thread(target=count) for _ in range(2)]
    for thread in counters:
        thread.start()
    try:
        for _ in range(1500):
            try:
                batch = predictor.collate([{"pixels": pixels, "text": long_question}, {"pixels": pixels, "text": "?"}])
                widths.add(batch["input_ids"].shape[1])
            except ValueError as error:
                failures.append(str(error))
    finally:
        done.set()
        for thread in counters:
            thread.join()
    assert widths == {predictor.max_length} and not failures, (widths, failures[:1])
