"""Retrieval trained with the official METER objective (`retrieval.objective=official`) on the small world."""

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from meter.config import Config, load_config
from meter.errors import ConfigError
from meter.models.folder import read_model_folder
from meter.objectives.randomness import SampleRandomness, StepRandomness
from meter.objectives.ranking import random_negatives
from meter.runs import run_finetune
from meter.tasks.build import read_karpathy_splits
from meter.tasks.retrieval import setup_retrieval
from meter.tasks.retrieval_official import CaptionPool
from meter.train.metrics_log import read_metrics
from tests.conftest import MICRO

OFFICIAL = ["task=retrieval", "retrieval.objective=official"]


def official_config(shapes_tasks_world: Path, pretrained: Path, out: Path, *overrides: str) -> Config:
    return load_config(None, [f"data.root={shapes_tasks_world}", *MICRO, *OFFICIAL, f"train.init_from={pretrained}",
                              f"train.out={out}", *overrides])  # fmt: skip


def pair_score(model, pixels: torch.Tensor, tokenizer, text: str, head: str = "rank") -> torch.Tensor:
    """One pair through the whole model, unpadded: the rank head's score (or the ITM logits)."""
    encoded = tokenizer([text], truncation=True, max_length=40, return_tensors="pt")  # the micro model's length
    joint = model(pixels[None], encoded["input_ids"], encoded["attention_mask"]).joint
    return model.heads[head](joint)[0]


def test_official_loss_is_the_cross_entropy_over_each_images_16_fused_scores(micro_checkpoints, shapes_tasks_world,
                                                                                 tmp_path):  # fmt: skip
    job = setup_retrieval(official_config(shapes_tasks_world, micro_checkpoints("pretrain"), tmp_path))
    samples = [job.dataset[i] for i in (0, 6, 12, 13)]  # 3 images, the last twice
    batch = job.task.prepare(job.collate(samples), SampleRandomness.standalone(seed=5, rows=len(samples)))
    task, model, pool = job.task.eval(), job.task.model, job.task.pool
    with torch.no_grad():
        losses, report = task(batch)
        scores, itm_logits = [], []
        for row, sample in enumerate(samples):
            texts = [sample["text"], *(pool.texts[i] for i in batch["negative_texts"][row].tolist())]
            scores.append(torch.stack([pair_score(model, sample["pixels"], job.tokenizer, t)[0] for t in texts]))
            partner = samples[int(batch["itm_image_index"][row])]["pixels"]
            itm_logits.append(pair_score(model, partner, job.tokenizer, sample["text"], head="itm"))
    scores = torch.stack(scores)
    assert scores.shape == (4, 16)
    expected = -(scores.log_softmax(1)[:, 0]).mean()  # the caption, column 0, is the target
    assert torch.allclose(losses["irtr_loss"], expected, atol=1e-5), (losses["irtr_loss"], expected)
    assert float(report["rank_accuracy"]) == float((scores.argmax(1) == 0).float().mean())
    expected_itm = F.cross_entropy(torch.stack(itm_logits), batch["itm_labels"])
    assert torch.allclose(losses["itm_loss"], expected_itm, atol=1e-5)
    assert 0 < int(batch["itm_labels"].sum()) < 4  # matched and mismatched pairs both present


def test_official_rank_head_starts_as_the_itm_match_row_and_the_itm_head_stays_frozen(
    micro_checkpoints, shapes_tasks_world, tmp_path
):
    pretrained = micro_checkpoints("pretrain")
    weights = load_file(pretrained / "model.safetensors")
    job = setup_retrieval(official_config(shapes_tasks_world, pretrained, tmp_path))
    heads = job.task.model.heads
    assert torch.equal(heads["rank"].weight, weights["heads.itm.fc.weight"][1:])
    assert torch.equal(heads["rank"].bias, weights["heads.itm.fc.bias"][1:])
    assert torch.equal(heads["itm"].fc.weight, weights["heads.itm.fc.weight"])
    assert not any(p.requires_grad for p in heads["itm"].parameters())
    assert all(p.requires_grad for p in heads["rank"].parameters())
    assert job.task.describe().heads == {"rank": 1, "itm": 2}


def test_the_frozen_itm_head_keeps_its_own_match_row_as_the_rank_head_trains(
    micro_checkpoints, shapes_tasks_world, tmp_path
):
    """The official rank head is built as a view of the ITM head's match row (meter_module.py:153-157), but the
    trainer's move to the GPU gives each parameter its own storage (Module._apply; here a move to float64 takes
    that path): the rank head trains apart and the ITM loss reads the frozen rows. meter read the match logit from
    the trained rank head, as an official run on the CPU would."""
    official = nn.Linear(8, 2)
    rank = nn.Linear(8, 1)
    rank.weight.data, rank.bias.data = official.weight.data[1:], official.bias.data[1:]  # the official build
    holder = nn.ModuleDict({"itm": official, "rank": rank}).to(torch.float64)
    holder["rank"].weight.data.add_(1.0)
    assert not torch.equal(holder["itm"].weight[1:], holder["rank"].weight), "the move broke the view"

    job = setup_retrieval(official_config(shapes_tasks_world, micro_checkpoints("pretrain"), tmp_path))
    samples = [job.dataset[i] for i in (0, 6, 12, 13)]
    batch = job.task.prepare(job.collate(samples), SampleRandomness.standalone(seed=5, rows=len(samples)))
    task, heads = job.task.eval(), job.task.model.heads
    with torch.no_grad():
        heads["rank"].weight.add_(0.5)  # as a few optimizer steps would move it
        heads["rank"].bias.add_(0.3)
        losses, _ = task(batch)
        itm_logits = []
        for row, sample in enumerate(samples):
            partner = samples[int(batch["itm_image_index"][row])]["pixels"]
            joint = job.task.model(partner[None], *_encoded(job.tokenizer, sample["text"])).joint
            itm_logits.append(heads["itm"](joint)[0])
    assert torch.allclose(losses["itm_loss"], F.cross_entropy(torch.stack(itm_logits), batch["itm_labels"]), atol=1e-5)


def _encoded(tokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tokenizer([text], truncation=True, max_length=40, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def test_random_negatives_skip_the_rows_own_block_and_cover_the_rest():
    random = SampleRandomness.standalone(seed=0, rows=2)
    drawn = random_negatives(torch.tensor([0, 3]), torch.tensor([3, 2]), 6, random, 300, "negatives")
    assert set(drawn[0].tolist()) == {3, 4, 5} and set(drawn[1].tolist()) == {0, 1, 2, 5}


def test_official_negatives_are_other_images_captions_drawn_per_sample(shapes_tasks_world):
    cfg = load_config(None, [f"data.root={shapes_tasks_world}", *OFFICIAL])
    pool = CaptionPool(read_karpathy_splits(cfg, "retrieval", ["train"]))
    assert len(pool.texts) == 55 and len(pool.block) == 11
    image_ids = torch.tensor(list(pool.block)[:6] + [next(iter(pool.block))] * 2)
    step = StepRandomness(seed=7, step=3, total=8)
    drawn = pool.draw(image_ids, step.rows(0, 8), 15)
    assert drawn.shape == (8, 15)
    for image_id, row in zip(image_ids.tolist(), drawn.tolist(), strict=True):
        first, count = pool.block[image_id]
        assert not any(first <= index < first + count for index in row)  # never a caption of its own image
    assert not torch.equal(drawn[6], drawn[7])  # two captions of one image draw their own negatives
    again = StepRandomness(seed=7, step=3, total=8)
    assert torch.equal(pool.draw(image_ids[5:], again.rows(5, 3), 15), drawn[5:])  # a micro-batch of rows 5..7
    assert not torch.equal(pool.draw(image_ids, StepRandomness(7, 4, 8).rows(0, 8), 15), drawn)  # the next step


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["retrieval.objective=offical"], r"retrieval.objective = 'offical'; choose one of: meter, official"),
        (["retrieval.shortlist=16"], r"retrieval.shortlist = 16, but nothing trains .*retrieval.objective = official"),
        (["retrieval.negative_texts=0"], r"retrieval.negative_texts = 0 must be at least 1"),
    ],
)  # fmt: skip
def test_official_settings_that_cannot_work_are_refused(micro_checkpoints, shapes_tasks_world, tmp_path, overrides,
                                                         message):  # fmt: skip
    cfg = official_config(shapes_tasks_world, micro_checkpoints("pretrain"), tmp_path, *overrides)
    with pytest.raises(ConfigError, match=message):
        setup_retrieval(cfg)


def test_official_finetune_trains_rank_and_itm_then_scores_every_pair(micro_checkpoints, shapes_tasks_world, tmp_path,
                                                                        caplog):  # fmt: skip
    pretrained = micro_checkpoints("pretrain")
    cfg = official_config(shapes_tasks_world, pretrained, tmp_path / "run", "train.max_steps=2")
    with caplog.at_level(logging.INFO, logger="meter"):
        result = run_finetune(cfg)
    assert result["shortlist"] == 0 and result["scored_pairs"] == 2 * 10  # the test split: 2 images, 10 captions
    assert "not trained with the contrastive loss (retrieval.objective = official): scoring every pair" in caplog.text
    recall = json.loads((tmp_path / "run" / "retrieval_recall_test.json").read_text())
    assert recall["scored_pairs"] == 2 * 10
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(logged) == 2 and all({"train/irtr_loss", "train/itm_loss"} <= set(r) for r in logged)
    assert all(r["train/irtr_loss"] > 0 and r["train/itm_loss"] > 0 for r in logged)
    folder = tmp_path / "run" / "model"
    assert read_model_folder(folder).heads == {"rank": 1, "itm": 2}
    trained, start = load_file(folder / "model.safetensors"), load_file(pretrained / "model.safetensors")
    assert torch.equal(trained["heads.itm.fc.weight"], start["heads.itm.fc.weight"])  # frozen
    assert not torch.equal(trained["heads.rank.weight"], start["heads.itm.fc.weight"][1:])  # trained
    assert not torch.equal(trained["text_proj.weight"], start["text_proj.weight"])  # the model learns


@pytest.mark.slow
@pytest.mark.parametrize("start", ["pretrain", "vqa"])  # vqa: a model without an ITM head, which then trains
def test_official_finetune_resumed_halfway_ends_with_the_straight_runs_weights(micro_checkpoints, shapes_tasks_world,
                                                                                 tmp_path, start):  # fmt: skip
    """Resumed from its checkpoint (which has an ITM head), a run that trained its ITM head from scratch froze it."""

    def run(out: str, *overrides: str, resume: str | None = None) -> None:
        cfg = official_config(shapes_tasks_world, micro_checkpoints(start), tmp_path / out, "train.max_steps=4",
                              "train.checkpoint_every=2", "train.deterministic=true", *overrides)  # fmt: skip
        run_finetune(cfg, resume=resume)

    run("straight")
    run("resumed", "train.stop_at=2")
    run("resumed", resume="latest")
    straight = load_file(tmp_path / "straight" / "checkpoints" / "step_00000004" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "checkpoints" / "step_00000004" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    initial = load_file(micro_checkpoints(start) / "model.safetensors")
    assert not torch.equal(straight["text_proj.weight"], initial["text_proj.weight"])
