"""Captioning evaluation scores an image's empty reference captions as the COCO evaluation does: pycocoevalcap keeps
them (its PTBTokenizer gives an empty line), CIDEr averages over every reference and BLEU counts their length, so
leaving them out scored higher than the official number; an image whose references are all empty is scored too."""

import json
import shutil
from pathlib import Path

from meter.config import load_config
from meter.metrics.caption import caption_scores
from meter.runs import evaluate_run


def test_empty_references_are_scored_as_the_official_evaluation_scores_them(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    root, out = tmp_path / "world", tmp_path / "eval"
    shutil.copytree(shapes_tasks_world, root)
    karpathy = root / "karpathy/dataset_coco.json"
    data = json.loads(karpathy.read_text())
    test = [image for image in data["images"] if image["split"] == "test"]
    test[0]["sentences"][0]["raw"] = "  "  # one of its references is empty
    for sentence in test[1]["sentences"]:  # every one of them
        sentence["raw"] = ""
    karpathy.write_text(json.dumps(data))
    cfg = load_config(None, ["task=captioning", f"data.root={root}", "train.progress=false"])
    result = evaluate_run(cfg, micro_checkpoints("captioning"), out)

    written = {str(row["image_id"]): row["caption"] for row in json.loads((out / "captions_test.json").read_text())}
    assert set(written) == {str(image["cocoid"]) for image in test}  # the image without a caption is captioned
    references = {str(image["cocoid"]): [s["raw"] for s in image["sentences"]] for image in test}  # as in the file
    official = caption_scores(references, written, result["tokenizer"]).to_dict()
    assert (result["cider"], result["bleu4"], result["images"]) == (official["cider"], official["bleu4"], len(test))
