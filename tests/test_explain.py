"""Heat maps of where an answer came from: the recorded attention, the two methods, `meter explain`."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meter.cli import main
from meter.config import load_config
from meter.errors import ConfigError
from meter.explain import HeatMap, explain_batch, model_view, overlay
from meter.heat_map_file import save_heat_map
from meter.models.attention_maps import image_grid, record_text_to_image_attention
from meter.models.folder import export_model_folder, load_model_folder
from meter.models.folder_description import ModelFolder
from meter.models.tokenizer_folder import load_tokenizer
from meter.predictor import Predictor
from meter.tasks.build import build_model
from tests.conftest import MICRO
from tests.test_predict import with_nan_weight

IMAGE = "images/val2014/COCO_val2014_000000000055.png"
QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def vqa_predictor(micro_checkpoints) -> Predictor:
    return Predictor(micro_checkpoints("vqa"), "cpu")


def micro_model(shapes_world: Path, fusion: str):
    cfg = load_config(
        None, [f"data.root={shapes_world}", *MICRO, f"model.fusion.name={fusion}", "model.fusion.layers=2"]
    )
    tokenizer = load_tokenizer(shapes_world / "tokenizers" / "wordpiece")
    model = build_model(cfg, tokenizer, {"vqa": 5}).eval()
    batch = tokenizer(["what color is the circle?", "how many shapes are there in the picture?"], padding="longest",
                      return_tensors="pt")  # fmt: skip
    return model, torch.randn(2, 3, 64, 64), batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("fusion", ["co-attention", "merged"])
def test_recording_attention_changes_no_output_and_leaves_no_hook(shapes_world: Path, fusion: str):
    model, pixels, ids, mask = micro_model(shapes_world, fusion)
    with torch.no_grad():
        plain = model(pixels, ids, mask)
        with record_text_to_image_attention(model) as record:
            recorded = model(pixels, ids, mask)
    torch.testing.assert_close(recorded.text, plain.text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recorded.joint, plain.joint, atol=1e-5, rtol=1e-5)
    assert len(record.weights) == 2
    assert all(not module._forward_hooks for module in model.modules())


@pytest.mark.parametrize("fusion", ["co-attention", "merged"])
def test_text_to_image_weights_cover_the_image_tokens_of_every_text_token(shapes_world: Path, fusion: str):
    model, pixels, ids, mask = micro_model(shapes_world, fusion)
    with torch.no_grad(), record_text_to_image_attention(model) as record:
        model(pixels, ids, mask)
    maps = record.text_to_image(ids.shape[1])
    image_tokens = model.encode_image(pixels).shape[1]
    assert [m.shape for m in maps] == [(2, 2, ids.shape[1], image_tokens)] * 2
    rows = maps[0].sum(-1)
    if fusion == "co-attention":  # the cross-attention's keys are the image: each row sums to 1
        torch.testing.assert_close(rows, torch.ones_like(rows))
    else:  # merged: the image block is part of a row over text and image
        assert bool(((rows > 0) & (rows < 1)).all())


def test_image_grid_tells_a_summary_token_from_a_plain_grid():
    assert image_grid(17) == (1, 4) and image_grid(16) == (0, 4) and image_grid(145) == (1, 12)
    with pytest.raises(ValueError, match="neither a square grid"):
        image_grid(20)


@pytest.mark.parametrize("method", ["attention", "gradcam"])
def test_heat_maps_are_patch_grids_that_sum_to_one(vqa_predictor: Predictor, shapes_tasks_world: Path, method: str):
    heat = explain_batch(vqa_predictor, [shapes_tasks_world / IMAGE], [QUESTION], method=method)[0]
    assert heat.method == method and len(heat.layers) == 1  # the micro model has one fusion layer
    for grid in (*heat.layers, heat.mean):
        assert grid.shape == (4, 4) and grid.min() >= 0 and grid.sum() == pytest.approx(1)


def test_explained_answer_is_the_predictors_best_answer(vqa_predictor: Predictor, shapes_tasks_world: Path):
    heat = explain_batch(vqa_predictor, [shapes_tasks_world / IMAGE], [QUESTION], top=3)[0]
    expected = vqa_predictor.answer(shapes_tasks_world / IMAGE, QUESTION, top=3)
    assert [a["answer"] for a in heat.prediction["answers"]] == [a["answer"] for a in expected]
    assert heat.prediction["explained"]["answer"] == expected[0]["answer"]


@pytest.mark.parametrize("method", ["gradcam", "attention"])
def test_in_bf16_the_explained_scores_are_the_predictors_bf16_scores(micro_checkpoints, shapes_tasks_world, method):
    """`--precision bf16` (auto on a GPU): the heat map explained the fp32 model, whose scores and even top answer
    may differ from the answers /vqa gives in bf16."""
    predictor = Predictor(micro_checkpoints("vqa"), "cpu", precision="bf16")
    heat = explain_batch(predictor, [shapes_tasks_world / IMAGE], [QUESTION], method=method, top=3)[0]
    expected = predictor.answer(shapes_tasks_world / IMAGE, QUESTION, top=3)
    assert heat.prediction["answers"] == expected
    # every question of the split, to the last digit: the recording's attention (no SDPA) rounds otherwise in bf16
    questions = json.loads((shapes_tasks_world / "vqa/v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    asked = questions["questions"][:32]
    images = [shapes_tasks_world / f"images/val2014/COCO_val2014_{q['image_id']:012d}.png" for q in asked]
    texts = [q["question"] for q in asked]
    explained = [heat.prediction["answers"] for heat in explain_batch(predictor, images, texts, method=method, top=5)]
    assert explained == predictor.answer_batch(images, texts, top=5)
    fp32 = Predictor(micro_checkpoints("vqa"), "cpu").answer(shapes_tasks_world / IMAGE, QUESTION, top=3)
    assert [a["score"] for a in fp32] != [a["score"] for a in expected], "bf16 scores differ: the test can tell"


def test_explaining_a_batch_gives_the_maps_of_one_by_one(vqa_predictor: Predictor, shapes_tasks_world: Path):
    images = sorted((shapes_tasks_world / "images/val2014").glob("*.png"))[:3]
    questions = ["What color is the circle?", "How many shapes are there?", "Is there a red square in the picture?"]
    together = explain_batch(vqa_predictor, images, questions, method="gradcam")
    for image, question, heat in zip(images, questions, together, strict=True):
        alone = explain_batch(vqa_predictor, [image], [question], method="gradcam")[0]
        np.testing.assert_allclose(heat.mean, alone.mean, atol=1e-4)


def test_a_chosen_answer_is_explained_and_an_unknown_one_is_refused(vqa_predictor: Predictor, shapes_tasks_world):
    answer = vqa_predictor.description.answers[-1]
    heat = explain_batch(vqa_predictor, [shapes_tasks_world / IMAGE], [QUESTION], answers=[answer])[0]
    assert heat.prediction["explained"]["answer"] == answer
    with pytest.raises(ConfigError, match="'no such answer' is not in the model's answer vocabulary"):
        explain_batch(vqa_predictor, [shapes_tasks_world / IMAGE], [QUESTION], answers=["no such answer"])


def test_an_unknown_method_is_refused_with_the_known_ones(vqa_predictor: Predictor, shapes_tasks_world: Path):
    with pytest.raises(ConfigError, match="method 'saliency' is not a heat-map method; choose one of: gradcam, attent"):
        explain_batch(vqa_predictor, [shapes_tasks_world / IMAGE], [QUESTION], method="saliency")


def test_a_model_without_an_explainable_head_names_its_heads(micro_checkpoints, shapes_tasks_world: Path):
    predictor = Predictor(micro_checkpoints("nlvr2"), "cpu")
    with pytest.raises(ConfigError, match="nothing to explain: .* this model has: nlvr2"):
        explain_batch(predictor, [shapes_tasks_world / IMAGE], ["both images contain a circle."])


def test_overlay_is_hottest_where_the_map_is(tmp_path: Path):
    image = Image.new("RGB", (90, 60), (128, 128, 128))  # wide: the model sees its centred 60 x 60 square
    assert model_view(image).size == (60, 60)
    grid = np.zeros((4, 4))
    grid[0, 3] = 1.0  # the top-right patch
    drawn = np.asarray(overlay(image, grid, size=64), dtype=float)
    change = np.abs(drawn - 128).sum(-1)
    top_right, bottom_left = change[:16, 48:].mean(), change[48:, :16].mean()
    assert top_right > 50 and bottom_left < 1


def test_heat_map_layers_are_selected_by_number_or_mean():
    heat = HeatMap("attention", [np.full((2, 2), 0.25), np.array([[1.0, 0], [0, 0]])])
    np.testing.assert_allclose(heat.select("mean"), [[0.625, 0.125], [0.125, 0.125]])
    np.testing.assert_allclose(heat.select(2), heat.layers[1])
    with pytest.raises(ConfigError, match="layer 3: choose mean or a layer from 1 to 2"):
        heat.select(3)


def test_explain_command_writes_the_heat_map(micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, capsys):
    out = tmp_path / "maps" / "map.png"
    code = main(["explain", "--checkpoint", str(micro_checkpoints("vqa")), "--image", str(shapes_tasks_world / IMAGE),
                 "--question", QUESTION, "--out", str(out), "--size", "128"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and Image.open(out).size == (128, 128)
    assert result["answers"] and result["method"] == "gradcam" and np.sum(result["grid"]) == pytest.approx(1, abs=1e-3)


def test_explain_command_scores_a_large_photo_as_predict_does(micro_checkpoints, shapes_tasks_world: Path,
                                                              tmp_path: Path, capsys):  # fmt: skip
    """A JPEG far larger than the model's input is decoded at a reduced scale by predict and serve; explain decoded
    it whole, so its scores (and sometimes its answer) differed from theirs."""
    photo = tmp_path / "photo.jpg"
    Image.open(shapes_tasks_world / IMAGE).convert("RGB").resize((1600, 1200), Image.BICUBIC).save(photo, quality=90)
    checkpoint = str(micro_checkpoints("vqa"))
    assert main(["explain", "--checkpoint", checkpoint, "--image", str(photo), "--question", QUESTION, "--out",
                 str(tmp_path / "map.png"), "--device", "cpu", "--precision", "fp32"]) == 0  # fmt: skip
    explained = json.loads(capsys.readouterr().out)["answers"]
    assert explained == Predictor(checkpoint, "cpu").answer(photo, QUESTION)


def test_explain_command_refuses_text_for_a_vqa_only_model(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path, capsys
):
    code = main(["explain", "--checkpoint", str(micro_checkpoints("vqa")), "--image", str(shapes_tasks_world / IMAGE),
                 "--text", "a red circle.", "--out", str(tmp_path / "map.png")])  # fmt: skip
    assert (
        code == 2
        and "--text needs a rank, itm or snli_ve head to explain; this model has: vqa" in capsys.readouterr().err
    )


@pytest.mark.parametrize("fusion", ["co-attention", "merged"])
def test_gradcam_explains_both_fusions(shapes_world: Path, tmp_path: Path, fusion: str):
    """Merged attention's text-to-image block is a slice of each layer's weights: the gradient is taken with respect
    to the weights the score used, then sliced (with respect to the slice, the graph had no path: an error)."""
    model, *_ = micro_model(shapes_world, fusion)
    settings = [f"data.root={shapes_world}", *MICRO, f"model.fusion.name={fusion}", "model.fusion.layers=2"]
    cfg = load_config(None, settings)
    answers = ["red", "blue", "green", "2", "3"]
    tokenizer = load_tokenizer(shapes_world / "tokenizers" / "wordpiece")
    export_model_folder(tmp_path / "model", model, tokenizer, ModelFolder(cfg, {"vqa": 5}, answers))
    image = shapes_world / IMAGE
    heat = explain_batch(Predictor(tmp_path / "model", "cpu"), [image], [QUESTION], method="gradcam")[0]
    assert len(heat.layers) == 2 and heat.prediction["answers"][0]["answer"] in answers
    for grid in (*heat.layers, heat.mean):
        assert grid.shape == (4, 4) and grid.min() >= 0 and grid.sum() == pytest.approx(1)


def test_a_loaded_model_folder_is_in_evaluation_mode(micro_checkpoints):
    model, _, _ = load_model_folder(micro_checkpoints("vqa"))
    assert not any(module.training for module in model.modules())  # dropout off: the same input, the same output


def _explain(checkpoint: Path, image: Path, out: Path, *extra: str, question: str = QUESTION) -> int:
    return main(["explain", "--checkpoint", str(checkpoint), "--image", str(image), "--question", question,
                 "--out", str(out), "--size", "64", *extra])  # fmt: skip


def test_explain_never_writes_over_a_users_file_and_replaces_its_own(micro_checkpoints, shapes_tasks_world: Path,
                                                                     tmp_path: Path, capsys):  # fmt: skip
    image, checkpoint = shapes_tasks_world / IMAGE, micro_checkpoints("vqa")
    photo = tmp_path / "holiday.png"
    Image.new("RGB", (40, 30), "orange").save(photo)
    before = photo.read_bytes()
    assert _explain(checkpoint, image, photo) == 2 and photo.read_bytes() == before
    assert "holiday.png exists and has no mark of meter's heat maps" in capsys.readouterr().err
    for out in (tmp_path / "map.jpg", tmp_path / "map.jpg"):  # a rerun replaces the heat map it wrote
        assert _explain(checkpoint, image, out) == 0 and Image.open(out).size == (64, 64)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("out", "extra", "message"),
    [
        ("map.psd", [], "give a .png, .jpg, .webp or .tif file name"),  # Pillow reads it, cannot write it
        ("map.xbm", [], "give a .png, .jpg, .webp or .tif file name"),  # writes black and white only
        ("holiday.png/map.png", [], "the folder of --out = "),
        ("map.png", ["--size", "30000"], "--size 30000 must be from 16 to 8192"),
    ],
)
def test_a_heat_map_path_or_size_that_cannot_be_written_is_refused_before_the_model_loads(
    shapes_tasks_world: Path, tmp_path: Path, capsys, out: str, extra: list[str], message: str
):
    Image.new("RGB", (8, 8)).save(tmp_path / "holiday.png")
    missing_model = tmp_path / "no-model-here"  # loading it would fail: the refusal comes first
    assert _explain(missing_model, shapes_tasks_world / IMAGE, tmp_path / out, *extra) == 2
    assert message in capsys.readouterr().err


def test_top_goes_with_a_question(micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, capsys):
    code = main(["explain", "--checkpoint", str(micro_checkpoints("vqa")), "--image", str(shapes_tasks_world / IMAGE),
                 "--text", "a red circle.", "--top", "3", "--out", str(tmp_path / "map.png")])  # fmt: skip
    assert code == 2 and "--top lists VQA answers; it goes with --question" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "text", "message"),
    [
        ("--question", "what colo\udcff", "--question b'what colo\\xff' is not UTF-8 text (byte 0xff)"),
        ("--question", "\u200b", "--question is empty"),  # a zero-width space: no word, as predict and serve say
        ("--text", "\ufeff \u2060", "--text is empty"),
    ],
)
def test_a_text_that_is_empty_or_not_utf8_is_refused_as_predict_refuses_it(
    shapes_tasks_world: Path, tmp_path: Path, capsys, option: str, text: str, message: str
):
    """Bytes that do not decode reach Python as lone surrogates: the tokenizer's traceback, not a sentence."""
    code = main(["explain", "--checkpoint", str(tmp_path / "no-model-here"), "--image", str(shapes_tasks_world / IMAGE),
                 option, text, "--out", str(tmp_path / "map.png")])  # fmt: skip
    assert code == 2 and message in capsys.readouterr().err


def test_an_overlong_question_is_noted_as_predict_notes_it(vqa_predictor, shapes_tasks_world: Path, tmp_path, capsys):
    question = "what color is the circle " * 30 + "?"
    assert _explain(vqa_predictor.checkpoint, shapes_tasks_world / IMAGE, tmp_path / "map.png", question=question) == 0
    note = f"meter: note: {vqa_predictor.length_note(question, '--question')}"
    assert "the model reads the first 40" in note and note in capsys.readouterr().err


def test_an_answer_is_taken_without_its_surrounding_spaces_as_serve_takes_it(
    vqa_predictor, shapes_tasks_world: Path, tmp_path: Path, capsys
):
    answer = vqa_predictor.description.answers[-1]
    out = tmp_path / "map.png"
    assert _explain(vqa_predictor.checkpoint, shapes_tasks_world / IMAGE, out, "--answer", f" {answer} ") == 0
    assert json.loads(capsys.readouterr().out)["explained"]["answer"] == answer


def test_a_huge_image_at_out_is_refused_as_not_meters(shapes_tasks_world: Path, tmp_path: Path, capsys):
    """Over Pillow's bomb limit, opening it to look for the mark raised DecompressionBombError: an internal error."""
    huge = tmp_path / "poster.png"
    Image.new("1", (14_000, 14_000)).save(huge)  # 196 million pixels in 24 kB
    assert _explain(tmp_path / "no-model-here", shapes_tasks_world / IMAGE, huge) == 2
    assert "poster.png exists and has no mark of meter's heat maps" in capsys.readouterr().err


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_a_heat_map_gets_the_mode_of_a_new_file_and_a_replaced_one_keeps_its_own(tmp_path: Path, umask: int):
    """Written through mkstemp, every map was private (0600), whatever the umask, and a replaced map lost its mode."""
    picture = Image.new("RGB", (16, 16), "orange")
    out = tmp_path / "map.png"
    previous = os.umask(umask)
    try:
        save_heat_map(picture, out, "PNG")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    out.chmod(0o640)
    save_heat_map(picture, out, "PNG")
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("task", "weight", "query"),
    [
        ("vqa", "heads.vqa.3.bias", ["--question", QUESTION]),
        ("retrieval", "heads.rank.bias", ["--text", "a red circle."]),
        ("snli_ve", "heads.snli_ve.3.bias", ["--text", "the red circle is made of wood.", "--task", "snli_ve"]),
    ],
)
def test_a_model_whose_outputs_are_nan_is_not_explained(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, capsys, task: str, weight: str, query: list[str]
):
    """A NaN answer ranked first and was explained; its score printed as `NaN`, which is not JSON."""
    model = with_nan_weight(micro_checkpoints(task), tmp_path / "nan", weight)
    out = tmp_path / "map.png"
    code = main(["explain", "--checkpoint", str(model), "--image", str(shapes_tasks_world / IMAGE), *query,
                 "--out", str(out), "--size", "32", "--device", "cpu"])  # fmt: skip
    assert code == 2 and not out.exists()
    assert f"{model}: the model's outputs are not finite (NaN or inf); its weights hold NaN" in capsys.readouterr().err
