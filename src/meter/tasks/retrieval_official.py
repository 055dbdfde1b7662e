"""Image-text retrieval trained as the official METER code trains it (`retrieval.objective=official`).

Per image: its caption and `retrieval.negative_texts` (15, the official `draw_false_text`) captions drawn at
random from the whole training set; the rank head scores the 16 fused pairs and a cross-entropy takes the caption
as the target (the official `compute_irtr`). Unlike the official draw, a negative is never a caption of the same
image (the official one may even draw the positive itself).

ITM stays on as a second loss: the official recipe's loss names are `irtr: 1, itm: 0.5`, but its training step
sums the losses unweighted, so the 0.5 only switches ITM on; its weight here is `retrieval.itm` (default 1). The
official code freezes the ITM head (its parameters stop requiring gradients), so ITM trains the encoders and the
fusion through the pretrained head; a fresh ITM head (no pretrained one to start from) trains instead, as a frozen
random head would teach nothing. Mismatched ITM pairs are other images of the batch, as our pretraining draws them
(the official code draws a random image of the dataset). The rank head starts as the ITM head's match row.

Nothing trains the unimodal projections for a shortlist, so evaluation scores every pair with the fused model (the
official `compute_irtr_recall`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from meter.config import Config, RetrievalConfig
from meter.data.collate import Collate
from meter.data.datasets import CaptionPairs
from meter.data.formats.captions import CaptionRecord
from meter.data.formats.common import distinct
from meter.errors import ConfigError
from meter.models.folder import ModelFolder, read_model_folder
from meter.models.meter import Meter
from meter.objectives.itm import itm_loss, itm_pairing
from meter.objectives.randomness import SampleRandomness
from meter.objectives.ranking import random_negatives, ranking_loss
from meter.tasks.build import build_model, image_reader
from meter.tasks.downstream import Finetuning
from meter.tasks.rank_head import HEAD, ITM, rank_score, start_rank_head

log = logging.getLogger(__name__)
NEGATIVE_STREAM = "retrieval_negative_texts"


class CaptionPool:
    """The training captions grouped by image: each image's captions form one block that its negatives skip."""

    def __init__(self, records: list[CaptionRecord]) -> None:
        by_image: dict[int, list[str]] = {}
        for record in records:
            by_image.setdefault(record.image_id, []).extend(record.captions)
        self.texts: list[str] = []
        self.block: dict[int, tuple[int, int]] = {}  # image id -> (first caption, number of captions)
        for image_id, repeated in by_image.items():
            captions = distinct(repeated)  # as the training pairs (CaptionPairs)
            self.block[image_id] = (len(self.texts), len(captions))
            self.texts.extend(captions)

    def draw(self, image_ids: Tensor, random: SampleRandomness, k: int) -> Tensor:
        """(rows, k) indices into `texts`: each row's negatives, captions of other images."""
        first, count = torch.tensor([self.block[i] for i in image_ids.tolist()], dtype=torch.long).reshape(-1, 2).T
        return random_negatives(first, count, len(self.texts), random, k, NEGATIVE_STREAM)


def with_candidates(
    batch: dict[str, Any], texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int, k: int
) -> dict[str, Any]:
    """Adds `candidate_ids` / `candidate_mask` (rows * (1 + k), L): each row's caption, then its k negatives."""
    encoded = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    rows = batch["size"]
    length = max(batch["input_ids"].shape[1], encoded["input_ids"].shape[1])

    def padded(tensor: Tensor, value: int) -> Tensor:
        return F.pad(tensor, (0, length - tensor.shape[1]), value=value)

    pad = tokenizer.pad_token_id
    ids = torch.cat([padded(batch["input_ids"], pad)[:, None], padded(encoded["input_ids"], pad).view(rows, k, -1)], 1)
    mask = torch.cat(
        [padded(batch["attention_mask"], 0)[:, None], padded(encoded["attention_mask"], 0).view(rows, k, -1)], 1
    )
    batch["candidate_ids"], batch["candidate_mask"] = ids.flatten(0, 1), mask.flatten(0, 1)
    return batch


class OfficialRetrievalTask(nn.Module):
    def __init__(self, model: Meter, cfg: Config, pool: CaptionPool, collate: Collate) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.settings: RetrievalConfig = cfg.retrieval
        self.pool = pool
        self.collate = collate

    def describe(self) -> ModelFolder:
        frozen = [
            name for name, head in self.model.heads.items() if not any(p.requires_grad for p in head.parameters())
        ]
        return ModelFolder(self.cfg, official_heads(self.settings), frozen=frozen)

    def prepare(self, batch: dict[str, Any], random: SampleRandomness) -> dict[str, Any]:
        k = self.settings.negative_texts
        batch["negative_texts"] = self.pool.draw(batch["image_id"], random, k)
        texts = [self.pool.texts[i] for i in batch["negative_texts"].flatten().tolist()]
        with_candidates(batch, texts, self.collate.tokenizer, self.collate.max_length, k)
        if self.settings.itm > 0:
            group = self.cfg.objectives.itm_group_size
            batch["itm_image_index"], batch["itm_labels"] = itm_pairing(batch["image_id"], random, group)
        return batch

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        model = self.model
        rows, candidates = batch["size"], 1 + self.settings.negative_texts
        mask = batch["candidate_mask"]
        image = model.encode_image(batch["pixels"])  # once per image, shared by its 16 pairs
        text = model.encode_text(batch["candidate_ids"], mask)
        pairs = torch.arange(rows, device=image.device).repeat_interleave(candidates)
        scores = rank_score(model, text, mask, image[pairs]).view(rows, candidates)
        every = torch.ones_like(scores[:, 1:], dtype=torch.bool)
        loss, hit = ranking_loss(scores[:, 0], scores[:, 1:], every)
        losses = {"irtr_loss": loss}
        report = {"rank_accuracy": hit.float().mean()}  # tensors: no wait for the device
        if self.settings.itm > 0:
            positive = torch.arange(rows, device=image.device) * candidates  # each image's own caption
            fused = model.fuse(text[positive], mask[positive], image[batch["itm_image_index"]])
            logits = itm_logits(model, fused.joint)
            losses["itm_loss"] = self.settings.itm * itm_loss(logits, batch["itm_labels"])
            report["itm_accuracy"] = (logits.argmax(1) == batch["itm_labels"]).float().mean()
        return losses, report


def itm_logits(model: Meter, joint: Tensor) -> Tensor:
    """The ITM head's own logits; a frozen (pretrained) one keeps both rows as saved while the rank head trains. The
    official code makes the rank head a view of the ITM head's match row (meter_module.py:153-157), but the
    trainer's move of the model to the GPU gives each parameter a storage of its own: in the runs the paper
    reports, the rank head trains apart and the ITM loss reads the frozen rows."""
    return model.heads[ITM](joint)


def official_heads(settings: RetrievalConfig) -> dict[str, int]:
    return {HEAD: 1, ITM: 2} if settings.itm > 0 else {HEAD: 1}


def check_official(cfg: Config) -> None:
    settings = cfg.retrieval
    if settings.negative_texts < 1:
        raise ConfigError(f"retrieval.negative_texts = {settings.negative_texts} must be at least 1")
    if settings.itm > 0 and cfg.objectives.itm_group_size < 2:
        raise ConfigError(
            f"objectives.itm_group_size = {cfg.objectives.itm_group_size} must be at least 2 (the ITM loss of "
            "retrieval.objective=official draws its mismatched images from groups of that many samples)"
        )


def itm_stays_frozen(folder: ModelFolder) -> bool:
    """Whether the ITM head built from `folder` stays frozen: a pretrained one does (as the official code keeps it);
    a folder of an official retrieval run (the checkpoint a run resumes) says whether its run kept it so (one
    started from a model without an ITM head trained it from scratch)."""
    settings = folder.config.retrieval
    own = folder.config.task == "retrieval" and settings.objective == "official" and folder.frozen is not None
    return ITM in folder.frozen if own else ITM in folder.heads


def setup_official(cfg: Config, records: list[CaptionRecord], tokenizer: PreTrainedTokenizerBase) -> Finetuning:
    check_official(cfg)
    pool = CaptionPool(records)
    if len(pool.block) < 2:
        raise ConfigError(f"retrieval.train_splits: {len(pool.block)} image; the official objective draws its "
                          "negative captions from other images")  # fmt: skip
    model = build_model(cfg, tokenizer, official_heads(cfg.retrieval))
    source = cfg.train.init_from
    start_rank_head(model, source)
    if ITM in model.heads:
        if source and itm_stays_frozen(read_model_folder(source)):
            model.heads[ITM].requires_grad_(False)
            log.info("retrieval: the ITM head of %s stays frozen (as the official code keeps it)", source)
        else:
            log.info("retrieval: no pretrained ITM head to start from: the ITM head trains from scratch")
    dataset = CaptionPairs(records, image_reader(cfg, model))
    log.info("retrieval (official objective): %d training captions of %d images, %d negatives per image",
             len(dataset), len(records), cfg.retrieval.negative_texts)  # fmt: skip
    collate = Collate(tokenizer, cfg.model.text.max_length)
    return Finetuning(OfficialRetrievalTask(model, cfg, pool, collate), dataset, collate, tokenizer)
