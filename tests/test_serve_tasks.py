"""Every endpoint of `meter serve` with a model folder that has its head: the answer the model gives directly."""

from pathlib import Path

import httpx
import pytest
from PIL import Image

from meter.predictor import Predictor
from meter.serve.limits import ServeLimits
from meter.serve.service import ModelService
from tests.serving import IMAGE, serving, upload

TEXT = "the red circle is made of wood."


def post(url: str, endpoint: str, files: dict, data: dict) -> dict:
    response = httpx.post(f"{url}/api/{endpoint}", files=files, data=data, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_match_gives_the_retrieval_models_score(micro_checkpoints, shapes_tasks_world: Path):
    model, image = micro_checkpoints("retrieval"), shapes_tasks_world / IMAGE
    with serving(model) as url:
        body = post(url, "match", upload(image), {"text": "a red circle."})
        explained = post(url, "explain", upload(image), {"text": "a red circle."})
    expected = Predictor(model, "cpu").match(image, "a red circle.")
    assert body["match_score"] == pytest.approx(expected["match_score"], abs=2e-4)
    assert explained["task"] == "match" and explained["explained"]["match_score"] == pytest.approx(
        expected["match_score"], abs=2e-4
    )


def test_a_pretrained_models_match_is_a_probability_in_explain_as_in_match(micro_checkpoints, shapes_tasks_world):
    """An ITM head's score: /api/match gave P(match) 0.4957, /api/explain the log-odds (-0.0172) under match_score."""
    from meter.explain import explain_batch

    predictor = Predictor(micro_checkpoints("pretrain"), "cpu")
    image = Image.open(shapes_tasks_world / IMAGE).convert("RGB")
    matched = predictor.match(image, "a red circle.")
    explained = explain_batch(predictor, [image], ["a red circle."], task="match")[0].prediction["explained"]
    assert set(matched) == set(explained) == {"match_probability"}
    assert explained["match_probability"] == pytest.approx(matched["match_probability"], abs=2e-4)


def test_snli_ve_gives_the_three_probabilities(micro_checkpoints, shapes_tasks_world: Path):
    model, image = micro_checkpoints("snli_ve"), shapes_tasks_world / IMAGE
    with serving(model) as url:
        body = post(url, "snli-ve", upload(image), {"text": TEXT})
        explained = post(url, "explain", upload(image), {"text": TEXT, "task": "snli_ve", "method": "attention"})
    expected = Predictor(model, "cpu").match(image, TEXT)["entailment"]
    assert body["entailment"] == pytest.approx(expected, abs=2e-4)
    assert explained["entailment"] == pytest.approx(expected, abs=2e-4)
    assert explained["explained"]["label"] == max(expected, key=expected.get)
    assert explained["heatmap"]["method"] == "attention"


def test_nlvr2_judges_the_pair(micro_checkpoints, shapes_tasks_world: Path):
    model = micro_checkpoints("nlvr2")
    left, right = sorted((shapes_tasks_world / "nlvr2/dev").glob("*.png"))[:2]
    with serving(model) as url:
        body = post(
            url, "nlvr2", upload(left, "left") | upload(right, "right"), {"text": "both images contain a circle."}
        )
    expected = Predictor(model, "cpu").judge_pair(left, right, "both images contain a circle.")
    assert body["label"] == expected["label"]
    assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=2e-4)


@pytest.mark.parametrize("beam", [1, 3, 16])  # 16: a model's own beam above 8 was refused, as was every request
def test_caption_is_written_greedy_or_by_beam_search(micro_checkpoints, shapes_tasks_world: Path, beam: int):
    model, image = micro_checkpoints("captioning"), shapes_tasks_world / IMAGE
    with serving(model) as url:
        body = post(url, "caption", upload(image), {"beam": str(beam)})
        refused = httpx.post(f"{url}/api/caption", files=upload(image), data={"beam": "0"}, timeout=60)
    assert body["caption"] == Predictor(model, "cpu").caption(image, beam) and body["beam"] == beam
    assert refused.status_code == 422 and refused.json()["error"] == "beam 0 must be from 1 (greedy) to 32"


def test_explain_requests_batched_together_each_get_their_own_number_of_answers(micro_checkpoints, shapes_tasks_world):
    """The batch asks the model for its largest `top`; each request gets back as many answers as it asked for."""
    service = ModelService(Predictor(micro_checkpoints("vqa"), "cpu"), ServeLimits())
    image = Image.open(shapes_tasks_world / IMAGE).convert("RGB")
    items = [(image, "what shape is it?", None, 1), (image, "what shape is it?", None, 3)]
    (one, _), (three, _) = service.run_batch(("explain", "vqa", "gradcam"), items)
    assert len(one.prediction["answers"]) == 1 and len(three.prediction["answers"]) == 3
    assert one.prediction["answers"][0] == three.prediction["answers"][0]


def test_a_vqa_head_whose_rows_name_no_answer_is_neither_served_nor_answered(micro_checkpoints, shapes_tasks_world,
                                                                             tmp_path: Path):  # fmt: skip
    """What `meter import meter-official` without --vqa-answers writes: /api/model listed /api/vqa and /api/explain,
    and both answered 500 (IndexError); `meter predict` called it a bug of meter."""
    import json
    import shutil

    from meter.errors import DataError
    from meter.explain import explain_batch
    from meter.models.checksums import record_checksums

    folder = tmp_path / "unnamed"
    shutil.copytree(micro_checkpoints("vqa"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"answers": []}))
    record_checksums(folder, "model", names=json.loads((folder / "checksums.json").read_text())["parts"]["model"])
    predictor = Predictor(folder, "cpu")
    service = ModelService(predictor, ServeLimits())
    assert "vqa" not in service.endpoints() and "vqa" not in service.describe()["explain"].get("tasks", [])
    image = Image.open(shapes_tasks_world / IMAGE).convert("RGB")
    with pytest.raises(DataError, match="--vqa-answers"):
        predictor.answer(image, "what shape is it?")
    with pytest.raises(DataError, match="--vqa-answers"):
        explain_batch(predictor, [image], ["what shape is it?"], task="vqa")
