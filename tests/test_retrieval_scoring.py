"""Retrieval evaluation: every pair scored by the fused model (checked pair by pair against the whole model), and
which model folders may be shortlisted."""

import contextlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from meter.config import load_config
from meter.errors import ConfigError, DataError
from meter.importers.meter_official import import_meter_official
from meter.models.folder import load_model_folder
from meter.models.heads import in_fp32
from meter.models.meter import build_meter
from meter.runs import evaluate_run
from meter.tasks.build import load_for_eval, read_karpathy_splits
from meter.tasks.rank_head import rank_score
from meter.tasks.retrieval import Encoded, score_matrix
from meter.train.runtime import Runtime
from tests.reference.retrieval_brute_force import brute_force_recall

OFFICIAL_TINY = Path(__file__).resolve().parent / "data" / "meter-official-tiny"
RECALLS = [f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]


def eval_config(root: Path, *overrides: str):
    return load_config(None, ["task=retrieval", f"data.root={root}", "train.progress=false", *overrides])


def pair_score(model, joint: torch.Tensor) -> torch.Tensor:
    """The rank head's score; a pretrained model (only an ITM head) ranks by the ITM head's match logit, as the
    official rank head (a view of that row) ranks a pretraining's zero-shot retrieval."""
    return model.heads["rank"](joint)[0, 0] if "rank" in model.heads else model.heads["itm"](joint)[0, 1]


@torch.no_grad()
def brute_force_scores(folder: Path, cfg) -> tuple[list[list[float]], list[int], tuple[int, ...]]:
    """Each (image, caption) pair alone through the whole model, unpadded; an unreadable image stays in the split
    (absent: its row is not scored, a row of zeros here)."""
    loaded = load_for_eval(folder, torch.device("cpu"))
    records = read_karpathy_splits(cfg, "retrieval", [cfg.retrieval.eval_split])[: cfg.retrieval.max_eval_images]
    pixels_of = {}
    for record in records:
        with contextlib.suppress(DataError):
            pixels_of[record.image_id] = loaded.images(record.image)[None]
    texts = [c for r in records for c in r.captions]
    encoded = [loaded.tokenizer([t], truncation=True, max_length=40, return_tensors="pt") for t in texts]
    scores = []
    for record in records:
        pixels = pixels_of.get(record.image_id)
        row = []
        for e in encoded:
            joint = loaded.model(pixels, e["input_ids"], e["attention_mask"]).joint if pixels is not None else None
            row.append(float(pair_score(loaded.model, joint)) if joint is not None else 0.0)
        scores.append(row)
    absent = tuple(i for i, r in enumerate(records) if r.image_id not in pixels_of)
    return scores, [i for i, r in enumerate(records) for _ in r.captions], absent


def test_every_pair_scoring_matches_pair_by_pair_scores_with_an_unreadable_image_as_misses(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    root = tmp_path / "world"
    shutil.copytree(shapes_tasks_world, root)
    # 5 images of the training split, 25 captions; the 4th image unreadable (within a budget of one in five)
    cfg = eval_config(root, "retrieval.shortlist=0", "retrieval.eval_split=train", "retrieval.max_eval_images=5",
                      "data.max_bad_samples=0.2")  # fmt: skip
    broken = read_karpathy_splits(cfg, "retrieval", ["train"])[3].image
    broken.write_bytes(b"not an image")
    folder = micro_checkpoints("retrieval")
    result = evaluate_run(cfg, folder, tmp_path / "eval")
    scores, text_image, absent = brute_force_scores(folder, cfg)
    assert absent == (3,) and result["skipped"] == 1
    assert result["scored_pairs"] == 4 * 25 and (result["images"], result["texts"]) == (5, 25)  # every caption
    expected = brute_force_recall(scores, text_image, absent=absent)
    assert {k: result[k] for k in RECALLS} == pytest.approx(expected, abs=1e-9)
    rankings = json.loads((tmp_path / "eval" / "retrieval_rankings_train.json").read_text())
    records = read_karpathy_splits(cfg, "retrieval", ["train"])[:5]
    text_ids = [f"{r.image_id}#{k}" for r in records for k in range(len(r.captions))]
    read = [i for i in range(5) if i not in absent]
    best = np.argsort(-np.array([scores[i] for i in read]), axis=1, kind="stable")[:, :10]
    assert [rankings["image_to_text"][str(records[i].image_id)] for i in read] == \
        [[text_ids[t] for t in row] for row in best]  # fmt: skip
    assert str(records[3].image_id) not in rankings["image_to_text"]


def test_captions_are_ranked_once_each_as_written_as_the_official_evaluation_ranks_them(
    micro_checkpoints, shapes_tasks_world: Path, tmp_path: Path
):
    """Official METER ranks `set(texts)` of each image's captions as its arrow files hold them (Karpathy's `raw`):
    a repeat is one query, a caption written with a trailing space another. meter de-duplicated the stripped
    captions: one query where the official evaluation counts two (on a toy, 50.00 against 66.67 text-to-image R@1)."""
    root = tmp_path / "world"
    shutil.copytree(shapes_tasks_world, root)
    cfg = eval_config(root, "retrieval.shortlist=0", "retrieval.eval_split=test", "retrieval.max_eval_images=3")
    karpathy = root / cfg.retrieval.karpathy
    data = json.loads(karpathy.read_text())
    first = next(entry for entry in data["images"] if entry["split"] == "test")
    raw = [sentence["raw"] for sentence in first["sentences"]]
    raw[1], raw[2], raw[3] = raw[0] + " ", raw[0], " " + raw[0] + " "  # a variant, a repeat, another variant
    for sentence, text in zip(first["sentences"], raw, strict=True):
        sentence["raw"] = text
    karpathy.write_text(json.dumps(data))
    records = read_karpathy_splits(cfg, "retrieval", ["test"])[:3]
    official_queries = sum(len(set(sentence["raw"] for sentence in entry["sentences"]))
                           for entry in [e for e in data["images"] if e["split"] == "test"][:3])  # fmt: skip
    result = evaluate_run(cfg, micro_checkpoints("retrieval"), tmp_path / "eval")
    assert result["texts"] == official_queries == sum(len(r.captions) for r in records) - 1
    rankings = json.loads((tmp_path / "eval" / "retrieval_rankings_test.json").read_text())
    ranked = {text_id for row in rankings["image_to_text"].values() for text_id in row}
    assert f"{first['cocoid' if 'cocoid' in first else 'imgid']}#2" not in ranked  # the repeat, not a query


def official_retrieval_folder(tmp_path: Path, shapes_tasks_world: Path) -> Path:
    """The tiny official checkpoint with a rank head (an official retrieval model), imported."""
    checkpoint = torch.load(OFFICIAL_TINY / "meter_official_tiny.ckpt", weights_only=True)
    weights = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("vqa_classifier.")}
    generator = torch.Generator().manual_seed(0)
    weights |= {"rank_output.weight": torch.randn(1, 128, generator=generator), "rank_output.bias": torch.zeros(1)}
    checkpoint["state_dict"] = weights
    torch.save(checkpoint, tmp_path / "irtr.ckpt")
    import_meter_official(tmp_path / "irtr.ckpt", OFFICIAL_TINY / "text_encoder", tmp_path / "imported",
                          tokenizer=shapes_tasks_world / "tokenizers" / "bpe")  # fmt: skip
    return tmp_path / "imported"


def test_an_official_model_is_scored_on_every_pair_by_default_and_refuses_a_shortlist(
    shapes_tasks_world: Path, tmp_path: Path, caplog
):
    folder = official_retrieval_folder(tmp_path, shapes_tasks_world)
    assert load_model_folder(folder)[2].heads == {"mlm": 1000, "itm": 2, "rank": 1}
    with caplog.at_level(logging.INFO, logger="meter"):
        result = evaluate_run(eval_config(shapes_tasks_world), folder, tmp_path / "eval")
    assert result["shortlist"] == 0 and result["scored_pairs"] == 2 * 10  # the test split: 2 images, 10 captions
    assert "not trained with the contrastive loss (retrieval.objective = official): scoring every pair" in caplog.text
    refused = r"retrieval.shortlist = 16: .* not trained with .* \(retrieval.objective = official\)"
    with pytest.raises(ConfigError, match=refused):
        evaluate_run(eval_config(shapes_tasks_world, "retrieval.shortlist=16"), folder, tmp_path / "eval")


def test_a_model_trained_with_the_contrastive_loss_is_shortlisted_by_default(micro_checkpoints, shapes_tasks_world,
                                                                              tmp_path):  # fmt: skip
    result = evaluate_run(eval_config(shapes_tasks_world), micro_checkpoints("retrieval"), tmp_path / "eval")
    assert result["shortlist"] == 16


def test_a_pretrained_model_is_scored_on_every_pair_by_its_itm_heads_match_logit(micro_checkpoints, shapes_tasks_world,
                                                                                 tmp_path, caplog):  # fmt: skip
    cfg = eval_config(shapes_tasks_world, "retrieval.eval_split=train", "retrieval.max_eval_images=5")
    folder = micro_checkpoints("pretrain")
    with caplog.at_level(logging.INFO, logger="meter"):
        result = evaluate_run(cfg, folder, tmp_path / "eval")
    assert result["shortlist"] == 0 and result["scored_pairs"] == 5 * 25
    assert "not trained with the contrastive loss (a pretrain model): scoring every pair" in caplog.text
    scores, text_image, absent = brute_force_scores(folder, cfg)
    assert absent == ()
    assert {k: result[k] for k in RECALLS} == pytest.approx(brute_force_recall(scores, text_image), abs=1e-9)
    # the match logit, not the log-odds (match - mismatch) that `meter predict` reads a probability from
    loaded = load_for_eval(folder, torch.device("cpu"))
    size = loaded.description.config.model.vision.image_size
    tokens = loaded.tokenizer(["a red circle.", "two blue squares", "a small green triangle"], padding=True,
                              return_tensors="pt")  # fmt: skip
    mask = tokens["attention_mask"]
    with torch.no_grad():
        text = loaded.model.encode_text(tokens["input_ids"], mask)
        image = loaded.model.encode_image(torch.randn(3, 3, size, size))
        logits = loaded.model.heads["itm"](loaded.model.fuse(text, mask, image).joint)
        torch.testing.assert_close(rank_score(loaded.model, text, mask, image), logits[:, 1])


def test_shortlisting_tokens_encoded_in_bf16_scores_as_in_fp32(micro_config):
    """Under bf16 autocast a backbone without a final LayerNorm hands over bf16 tokens; the shortlist's projections
    and every score are still computed in fp32 (near scores must not tie)."""
    model = build_meter(micro_config.model, 300, 0, {"rank": 1}).eval()
    size = micro_config.model.vision.image_size
    with torch.no_grad():
        images = model.encode_image(torch.randn(6, 3, size, size))
        texts = model.encode_text(torch.randint(5, 300, (12, 9)), torch.ones(12, 9, dtype=torch.long))
    masks = torch.ones(12, 9, dtype=torch.long)
    readable = torch.ones(6, dtype=torch.bool)
    mixed = score_matrix(model, "model", Encoded(images.bfloat16(), readable, texts, masks), 4,
                         Runtime(torch.device("cpu"), torch.bfloat16), 16, False)  # fmt: skip
    exact = score_matrix(model, "model", Encoded(images.bfloat16().float(), readable, texts, masks), 4,
                         Runtime(torch.device("cpu"), torch.float32), 16, False)  # fmt: skip
    assert mixed.dtype == np.float64 and (np.isfinite(mixed) == np.isfinite(exact)).all()
    assert len(np.unique(mixed[np.isfinite(mixed)])) == np.isfinite(mixed).sum()  # no ties
    np.testing.assert_allclose(mixed[np.isfinite(mixed)], exact[np.isfinite(exact)], atol=0.05)


def test_a_head_in_fp32_ignores_autocast():
    head = torch.nn.Linear(16, 3)
    joint = torch.randn(5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(joint).dtype == torch.bfloat16
        out = in_fp32(head, joint.bfloat16())
    assert out.dtype == torch.float32 and torch.equal(out, head(joint.bfloat16().float()))
