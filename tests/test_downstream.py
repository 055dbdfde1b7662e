"""Fine-tuning and evaluating every downstream task with a micro model on the small world."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from meter.config import load_config
from meter.data.collate import Collate
from meter.data.ordered_batches import EvalReading
from meter.errors import ConfigError
from meter.metrics.nlvr2 import read_nlvr2_predictions
from meter.models.folder import load_model_folder
from meter.objectives.mlm import IGNORE
from meter.objectives.seq2seq import Targets, captions_of
from meter.runs import evaluate_run, run_finetune
from meter.tasks.build import build_model, load_for_eval, read_karpathy_splits, task_tokenizer
from meter.tasks.captioning import caption_targets
from meter.tasks.nlvr2 import Nlvr2Task
from meter.tasks.retrieval import (
    encode_split,
    score_matrix,
    setup_retrieval,
    unimodal_similarity,
)
from meter.train.runtime import setup_runtime
from tests.conftest import MICRO


def test_nlvr2_finetune_writes_the_leaderboard_csv_and_official_scores(micro_checkpoints, shapes_tasks_world: Path):
    out = micro_checkpoints("nlvr2").parents[1]
    predictions = read_nlvr2_predictions(out / "nlvr2_predictions_dev.csv")
    labelled = [json.loads(line)["identifier"] for line in (shapes_tasks_world / "nlvr2/data/dev.json").open()]
    assert list(predictions) == labelled and set(predictions.values()) <= {"True", "False"}
    score = json.loads((out / "nlvr2_accuracy_dev.json").read_text())
    assert set(score) == {"accuracy", "consistency", "examples", "sentences", "skipped"}
    assert 0 <= score["consistency"] <= score["accuracy"] <= 100


def test_nlvr2_model_starts_its_third_token_type_from_the_image_row(micro_checkpoints):
    pretrained = load_file(micro_checkpoints("pretrain") / "model.safetensors")["token_type.weight"]
    _, _, description = load_model_folder(micro_checkpoints("nlvr2"))
    assert description.token_types == 3 and pretrained.shape[0] == 2
    cfg = description.config
    cfg.train.init_from = str(micro_checkpoints("pretrain"))
    fresh = build_model(cfg, task_tokenizer(cfg), {"nlvr2": 2}, token_types=3)
    rows = fresh.token_type.weight.detach()
    assert torch.equal(rows[:2], pretrained) and torch.equal(rows[2], pretrained[1])
    cfg.train.init_from = None  # no pretraining (the study's no-vlp protocol): the same rule, on random rows
    scratch = build_model(cfg, task_tokenizer(cfg), {"nlvr2": 2}, token_types=3).token_type.weight.detach()
    assert torch.equal(scratch[2], scratch[1]) and not torch.equal(scratch[0], scratch[1])


def test_a_one_image_task_from_an_nlvr2_model_keeps_its_text_and_image_token_types(micro_checkpoints):
    saved = load_file(micro_checkpoints("nlvr2") / "model.safetensors")["token_type.weight"]
    _, _, description = load_model_folder(micro_checkpoints("snli_ve"))
    assert saved.shape[0] == 3 and description.token_types == 2
    cfg = description.config
    cfg.train.init_from = str(micro_checkpoints("nlvr2"))
    rows = build_model(cfg, task_tokenizer(cfg), {"snli_ve": 3}).token_type.weight.detach()
    assert torch.equal(rows, saved[:2])


def test_nlvr2_right_image_and_only_it_uses_the_third_token_type(micro_checkpoints):
    model, tokenizer, description = load_model_folder(micro_checkpoints("nlvr2"))
    model.eval()
    task = Nlvr2Task(model, description.config, 2)
    batch = dict(tokenizer(["both images contain a red circle."], return_tensors="pt"))
    pixels = torch.randn(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = task.logits({"pixels": pixels, **batch})
        single = model(pixels[:, 0], batch["input_ids"], batch["attention_mask"]).joint
        model.token_type.weight[2] += 1.0
        after = task.logits({"pixels": pixels, **batch})
        single_after = model(pixels[:, 0], batch["input_ids"], batch["attention_mask"]).joint
    assert not torch.allclose(before, after)
    assert torch.equal(single, single_after)


def test_snli_ve_finetune_writes_predictions_and_accuracy(micro_checkpoints, shapes_tasks_world: Path):
    out = micro_checkpoints("snli_ve").parents[1]
    lines = (out / "snli_ve_predictions_dev.jsonl").read_text().splitlines()
    expected = [json.loads(line)["pairID"] for line in (shapes_tasks_world / "snli_ve/snli_ve_dev.jsonl").open()]
    assert [json.loads(line)["pairID"] for line in lines] == expected
    accuracy = json.loads((out / "snli_ve_accuracy_dev.json").read_text())
    assert 0 <= accuracy["accuracy"] <= 100 and set(accuracy["per_label"]) <= {"entailment", "neutral",
                                                                              "contradiction"}  # fmt: skip


def test_retrieval_finetune_writes_rankings_and_recalls(micro_checkpoints, shapes_tasks_world: Path):
    out = micro_checkpoints("retrieval").parents[1]
    recall = json.loads((out / "retrieval_recall_test.json").read_text())
    assert (recall["images"], recall["texts"]) == (2, 10)
    assert all(0 <= recall[f"{d}_r{k}"] <= 100 for d in ("i2t", "t2i") for k in (1, 5, 10))
    rankings = json.loads((out / "retrieval_rankings_test.json").read_text())
    assert len(rankings["image_to_text"]) == 2 and len(rankings["text_to_image"]) == 10
    assert all(len(texts) == 10 for texts in rankings["image_to_text"].values())  # every caption, best first
    assert all(len(images) == 2 for images in rankings["text_to_image"].values())


def test_an_images_repeated_caption_is_ranked_once_as_the_official_evaluation_does(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    """METER keeps set(texts) of each image: a repeat would be a second query, and a second right answer."""
    karpathy = json.loads((shapes_tasks_world / "karpathy/dataset_flickr30k.json").read_text())
    first = next(image for image in karpathy["images"] if image["split"] == "test")
    repeated, dropped, empty = (json.loads(json.dumps(karpathy)) for _ in range(3))
    next(i for i in repeated["images"] if i["imgid"] == first["imgid"])["sentences"][1] = first["sentences"][0]
    del next(i for i in dropped["images"] if i["imgid"] == first["imgid"])["sentences"][1]
    next(i for i in empty["images"] if i["imgid"] == first["imgid"])["sentences"][1]["raw"] = " "
    results = {}
    for name, data in (("repeated", repeated), ("dropped", dropped), ("empty", empty)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        cfg = load_config(None, ["task=retrieval", f"data.root={shapes_tasks_world}", "train.progress=false",
                                 f"retrieval.karpathy={tmp_path / name}.json"])  # fmt: skip
        results[name] = evaluate_run(cfg, micro_checkpoints("retrieval"), tmp_path / name)
    assert results["repeated"] == results["dropped"] == results["empty"] and results["repeated"]["texts"] == 9
    rankings = json.loads((tmp_path / "repeated" / "retrieval_rankings_test.json").read_text())
    assert f"{first['imgid']}#1" not in rankings["text_to_image"] and f"{first['imgid']}#2" in rankings["text_to_image"]
    # a caption is named by its place in the file: after an empty sentence left out, as after a repeat
    assert json.loads((tmp_path / "empty" / "retrieval_rankings_test.json").read_text()) == rankings


def test_shortlisted_scores_add_the_first_stage_to_the_full_scores_of_each_querys_best(micro_checkpoints, tmp_path):
    loaded = load_for_eval(micro_checkpoints("retrieval"), torch.device("cpu"))
    cfg = loaded.description.config
    records = read_karpathy_splits(cfg, "retrieval", ["train"])  # 11 images, 55 captions
    texts = [c for r in records for c in r.captions]
    collate = Collate(loaded.tokenizer, cfg.model.text.max_length)
    runtime = setup_runtime(cfg.train)
    encoded = encode_split(loaded.model, records, texts, collate, loaded.images, runtime, EvalReading(16))
    full = score_matrix(loaded.model, "model", encoded, 0, runtime, 16, False)
    short = score_matrix(loaded.model, "model", encoded, 10, runtime, 16, False)
    assert np.isfinite(full).all()
    scored = np.isfinite(short)
    cosine = unimodal_similarity(loaded.model, encoded.texts, encoded.images).detach().numpy()
    assert np.allclose(short[scored], full[scored] + cosine[scored], atol=1e-5)  # fused score + first stage
    assert (cosine[scored].min(initial=1) >= -1) and scored[np.arange(11), cosine.argmax(1)].all()
    assert (scored.sum(1) >= 10).all() and (scored.sum(0) >= min(10, len(records))).all()
    assert not scored.all()


def test_rank_head_starts_as_the_pretrained_itm_match_row(micro_checkpoints):
    pretrained = load_file(micro_checkpoints("pretrain") / "model.safetensors")
    _, _, description = load_model_folder(micro_checkpoints("retrieval"))
    cfg = description.config
    cfg.train.init_from = str(micro_checkpoints("pretrain"))
    job = setup_retrieval(cfg)
    rank = job.task.model.heads["rank"]
    assert torch.equal(rank.weight, pretrained["heads.itm.fc.weight"][1:])
    assert torch.equal(rank.bias, pretrained["heads.itm.fc.bias"][1:])


@pytest.mark.parametrize(
    ("task", "checkpoint", "message"),
    [("retrieval", "snli_ve", "has no rank or itm head"), ("nlvr2", "snli_ve", "has no nlvr2 head"),
     ("snli_ve", "nlvr2", "has no snli_ve head")],
)  # fmt: skip
def test_evaluate_refuses_a_model_without_the_task_head(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, task: str, checkpoint: str, message: str
):
    cfg = load_config(None, [f"task={task}", f"data.root={shapes_tasks_world}", "train.progress=false"])
    with pytest.raises(ConfigError, match=message):
        evaluate_run(cfg, micro_checkpoints(checkpoint), tmp_path)


def test_under_a_launcher_only_the_first_process_evaluates(
    micro_checkpoints, shapes_tasks_world, tmp_path, monkeypatch
):
    """After a fine-tune under torchrun every process would score the whole split and write the same files."""
    cfg = load_config(None, ["task=snli_ve", f"data.root={shapes_tasks_world}", "train.progress=false"])
    checkpoint = micro_checkpoints("snli_ve")  # trained first, as one process
    monkeypatch.setenv("RANK", "1")
    assert evaluate_run(cfg, checkpoint, tmp_path / "second") == {}
    assert not (tmp_path / "second").exists()
    monkeypatch.setenv("RANK", "0")
    assert 0 <= evaluate_run(cfg, checkpoint, tmp_path / "first")["accuracy"] <= 100
    assert (tmp_path / "first" / "snli_ve_accuracy_dev.json").is_file()


def test_pretrain_is_not_a_downstream_task(micro_config):
    with pytest.raises(ConfigError, match="not a downstream task; .* one of: .*nlvr2"):
        run_finetune(load_config(None, ["task=pretrain"], base=micro_config))


def test_captioning_adds_a_decoder_to_an_encoder_only_model_and_writes_coco_results(
    micro_checkpoints, shapes_tasks_world: Path
):
    _, _, description = load_model_folder(micro_checkpoints("captioning"))
    assert description.config.model.architecture == "encoder-decoder"
    out = micro_checkpoints("captioning").parents[1]
    results = json.loads((out / "captions_test.json").read_text())
    karpathy = json.loads((shapes_tasks_world / "karpathy/dataset_coco.json").read_text())
    test_ids = sorted(image["cocoid"] for image in karpathy["images"] if image["split"] == "test")
    assert [r["image_id"] for r in results] == test_ids and all(isinstance(r["caption"], str) for r in results)
    scores = json.loads((out / "caption_scores_test.json").read_text())
    assert {"bleu4", "cider", "bleu1"} <= set(scores) and 0 <= scores["bleu4"] <= 100 and scores["cider"] >= 0


def test_caption_targets_feed_every_word_and_end_with_the_end_token(micro_checkpoints):
    _, tokenizer, _ = load_model_folder(micro_checkpoints("captioning"))
    encoded = tokenizer(["a red circle.", "two blue squares at the top"], padding="longest", return_tensors="pt")
    word_ids = torch.tensor([[-1 if w is None else w for w in encoded.word_ids(i)] for i in range(2)])
    targets = Targets.of(tokenizer, 48)
    seq = caption_targets(captions_of(encoded["input_ids"], word_ids, encoded["attention_mask"]), targets)
    assert seq.input_ids.tolist() == [[tokenizer.cls_token_id, tokenizer.sep_token_id]] * 2  # the empty prompt
    first = [t for t in seq.labels[0].tolist() if t != IGNORE]
    assert tokenizer.decode(first[:-1]) == "a red circle." and first[-1] == tokenizer.sep_token_id
    assert seq.decoder_input_ids[0, 0] == tokenizer.cls_token_id
    assert seq.decoder_input_ids[0, 1 : len(first)].tolist() == first[:-1]  # teacher forcing: shifted right


def test_captioning_without_a_decoder_or_init_is_refused(micro_config):
    cfg = load_config(None, ["task=captioning"], base=micro_config)
    with pytest.raises(ConfigError, match="captioning needs a decoder: set model.architecture=encoder-decoder"):
        run_finetune(cfg)


def test_a_caption_longer_than_the_decoder_can_write_is_refused_before_training_and_evaluating(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    """captioning.max_length above model.decoder.max_length was cut to the decoder's positions without a word."""
    cfg = load_config(None, ["task=captioning", f"data.root={shapes_tasks_world}", "model.architecture=encoder-decoder",
                             "model.decoder.max_length=24", "captioning.max_length=30", f"train.out={tmp_path / 'run'}",
                             *MICRO])  # fmt: skip
    message = r"captioning.max_length = 30 is more than the decoder's 24 positions \(model.decoder.max_length\)"
    with pytest.raises(ConfigError, match=message):
        run_finetune(cfg)
    assert not (tmp_path / "run/checkpoints").exists()
    positions = load_model_folder(micro_checkpoints("captioning"))[2].config.model.decoder.max_length
    cfg.captioning.max_length = positions + 1
    with pytest.raises(ConfigError, match=f"is more than the decoder's {positions} positions"):
        evaluate_run(cfg, micro_checkpoints("captioning"), tmp_path / "eval")


def test_an_nlvr2_split_labelled_in_part_is_refused_and_one_without_labels_writes_only_its_file(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    """One line without a label made the whole dev split unscored, without a word."""
    import shutil

    from meter.errors import DataError

    root = tmp_path / "world"
    shutil.copytree(shapes_tasks_world, root)
    dev = root / "nlvr2/data/dev.json"
    lines = [json.loads(line) for line in dev.read_text().splitlines()]
    unlabelled = [{k: v for k, v in line.items() if k != "label"} for line in lines]
    dev.write_text("".join(json.dumps(line) + "\n" for line in [lines[0], *unlabelled[1:]]))
    cfg = load_config(None, ["task=nlvr2", f"data.root={root}", "train.progress=false"])
    with pytest.raises(DataError, match=rf"nlvr2 dev: {len(lines) - 1} of {len(lines)} examples have no label \(the "
                                        rf"first: {lines[1]['identifier']}\)"):  # fmt: skip
        evaluate_run(cfg, micro_checkpoints("nlvr2"), tmp_path / "eval")
    assert not (tmp_path / "eval/nlvr2_predictions_dev.csv").exists()  # refused before the split was predicted
    dev.write_text("".join(json.dumps(line) + "\n" for line in unlabelled))
    (tmp_path / "eval").mkdir(exist_ok=True)
    (tmp_path / "eval/nlvr2_accuracy_dev.json").write_text("{}")  # an earlier evaluation's
    assert evaluate_run(cfg, micro_checkpoints("nlvr2"), tmp_path / "eval") == {
        "examples": len(lines),
        "labelled": False,
        "skipped": 0,
    }
    assert not (tmp_path / "eval/nlvr2_accuracy_dev.json").exists()
    assert len(read_nlvr2_predictions(tmp_path / "eval/nlvr2_predictions_dev.csv")) == len(lines)


def test_meter_evaluate_of_a_model_takes_the_evaluation_settings_its_run_recorded(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path, capsys
):
    """Without --config, `meter evaluate` used the defaults (a captioner fine-tuned and scored with beam 3 was scored
    again with beam 1: another CIDEr than its run reported); --config and KEY=VALUE still choose."""
    from meter.cli import main

    out = tmp_path / "run"
    cfg = load_config(None, ["task=captioning", f"data.root={shapes_tasks_world}", f"train.out={out}",
                             f"train.init_from={micro_checkpoints('pretrain')}", "train.max_steps=2",
                             "captioning.beam_size=2", "captioning.max_eval_images=3", *MICRO])  # fmt: skip
    reported = run_finetune(cfg)
    assert (reported["images"], reported["beam_size"]) == (3, 2)
    args = ["evaluate", "captioning", "--checkpoint", str(out / "model"), "--out"]
    settings = [f"data.root={shapes_tasks_world}", "train.progress=false"]
    assert main([*args, str(tmp_path / "again"), "train.progress=false"]) == 0  # its data.root too
    assert json.loads(capsys.readouterr().out) == reported
    assert main([*args, str(tmp_path / "beam1"), *settings, "captioning.beam_size=1"]) == 0
    assert json.loads(capsys.readouterr().out)["beam_size"] == 1
