"""Pretraining: MLM, ITM and MIM, and (encoder-decoder) span LM and PrefixLM, with one vision-encoder pass shared by
every objective that reads the intact image.

Each loss is a sum over its items (masked tokens, pairs, masked patches, target tokens) divided by a denominator.
The training loop passes the average item count per micro-batch and process of the whole optimizer step
(`loss_denominators`), so that the gradient is the mean over every item of the step however it is split over
processes and micro-batches; alone (no denominators) a loss is the plain mean over its batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from meter.config import Config, ObjectivesConfig
from meter.errors import ConfigError
from meter.models.folder import ModelFolder
from meter.models.meter import Meter
from meter.objectives.itm import itm_loss, itm_pairing
from meter.objectives.mim import (
    MIM_TARGETS,
    PixelDecoder,
    draw_patch_mask,
    hide_patches,
    in_batch_loss,
    mim_loss,
    mim_patch_size,
    pixel_targets,
)
from meter.objectives.mlm import IGNORE, mask_tokens, mlm_loss
from meter.objectives.positions import at_positions, positions_of
from meter.objectives.prefix_lm import split_prefix
from meter.objectives.randomness import SampleRandomness
from meter.objectives.seq2seq import Seq2SeqBatch, Targets, captions_of
from meter.objectives.span import corrupt_spans, sentinel_ids
from meter.objectives.step_mean import step_mean
from meter.train.distributed import uses_cuda_graphs
from meter.train.loop import TEXT_LENGTH_MULTIPLE

DECODER_OBJECTIVES = ("span", "prefix_lm")  # encoder-decoder only (validate.py checks)
OBJECTIVES = ("mlm", "itm", "mim", *DECODER_OBJECTIVES)


def check_objectives(objectives: ObjectivesConfig) -> None:
    for name in OBJECTIVES:
        if getattr(objectives, name) < 0:
            raise ConfigError(f"objectives.{name} = {getattr(objectives, name)} is a loss weight: 0 (off) or more")
    if not any(getattr(objectives, name) > 0 for name in OBJECTIVES):
        raise ConfigError(f"every objective is off; give at least one of objectives.{{{','.join(OBJECTIVES)}}} a "
                          "weight above 0")  # fmt: skip
    if objectives.mim_target not in MIM_TARGETS:
        raise ConfigError(f"objectives.mim_target = {objectives.mim_target!r}; choose one of: {', '.join(MIM_TARGETS)}")
    for key in ("mlm_probability", "mim_mask_ratio"):
        if not 0 < getattr(objectives, key) < 1:
            raise ConfigError(f"objectives.{key} = {getattr(objectives, key)} must be between 0 and 1")
    if objectives.itm_group_size < 2:
        raise ConfigError(f"objectives.itm_group_size = {objectives.itm_group_size} must be at least 2")


def pretrain_heads(tokenizer: PreTrainedTokenizerBase, objectives: ObjectivesConfig) -> dict[str, int]:
    heads = {}
    if objectives.mlm > 0:
        heads["mlm"] = len(tokenizer)
    if objectives.itm > 0:
        heads["itm"] = 2
    return heads


class PretrainTask(nn.Module):
    """The model plus the pretraining-only parts it does not keep (the MIM pixel decoder)."""

    def __init__(self, model: Meter, tokenizer: PreTrainedTokenizerBase, cfg: Config, heads: dict[str, int]) -> None:
        super().__init__()
        check_objectives(cfg.objectives)
        self.model = model
        self.heads = heads
        self.cfg = cfg
        self.objectives = cfg.objectives
        self.max_length = cfg.model.text.max_length
        self.mask_token_id = tokenizer.mask_token_id
        special = set(tokenizer.all_special_ids)
        self.replacement_ids = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
        multiple = TEXT_LENGTH_MULTIPLE if uses_cuda_graphs(cfg.train) else 1
        self.targets = Targets.of(tokenizer, cfg.model.decoder.max_length, multiple, cfg.model.text.max_length)
        self.sentinels = sentinel_ids(tokenizer) if self.objectives.span > 0 else []
        if self.objectives.mim > 0:
            self.mim_patch = mim_patch_size(model.vision, cfg.model.vision.image_size)
            self.mim_decoder = PixelDecoder(model.width, self.mim_patch, init_std=cfg.model.init_std)

    def describe(self) -> ModelFolder:
        return ModelFolder(self.cfg, dict(self.heads))

    def prepare(self, batch: dict[str, Any], random: SampleRandomness) -> dict[str, Any]:
        """Draws the batch's masks, pairings and splits (on the CPU, before the batch moves to the device)."""
        objectives = self.objectives
        if objectives.mlm > 0:
            batch["mlm_input_ids"], batch["mlm_labels"] = mask_tokens(
                batch["input_ids"], batch["word_ids"], self.mask_token_id, self.replacement_ids,
                objectives.mlm_probability, random, self.max_length, objectives.whole_word_masking,
                objectives.mlm_at_least_one,
            )  # fmt: skip
            batch["mlm_positions"] = positions_of(batch["mlm_labels"] != IGNORE)
        if objectives.itm > 0:
            batch["itm_image_index"], batch["itm_labels"] = itm_pairing(
                batch["image_id"], random, objectives.itm_group_size
            )
        if objectives.mim > 0:
            patches = (self.cfg.model.vision.image_size // self.mim_patch) ** 2
            batch["mim_mask"] = draw_patch_mask(batch["size"], patches, objectives.mim_mask_ratio, random)
            batch["mim_positions"] = positions_of(batch["mim_mask"])
        if objectives.span > 0 or objectives.prefix_lm > 0:
            captions = captions_of(batch["input_ids"], batch["word_ids"], batch["attention_mask"])
        if objectives.span > 0:
            corrupt_spans(captions, self.sentinels, objectives.span_probability, objectives.span_mean_length,
                          random.generators("span"), self.targets).store(batch, "span")  # fmt: skip
        if objectives.prefix_lm > 0:
            split_prefix(captions, random.generators("prefix_lm"), self.targets).store(batch, "prefix_lm")
        return batch

    def loss_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        """How many items each loss averages over in this (prepared) batch."""
        counts = {}
        if self.objectives.mlm > 0:
            counts["mlm_loss"] = len(batch["mlm_positions"])
        if self.objectives.itm > 0:
            counts["itm_loss"] = batch["size"]
        if self.objectives.mim > 0:
            counts["mim_loss"] = len(batch["mim_positions"])
        for objective in DECODER_OBJECTIVES:
            if getattr(self.objectives, objective) > 0:
                counts[f"{objective}_loss"] = len(batch[f"{objective}_positions"])
        return counts

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The weighted losses and (detached) accuracies, averaged like the losses."""
        image = self.model.encode_image(batch["pixels"])  # one pass serves every objective but MIM
        losses: dict[str, Tensor] = {}
        report: dict[str, Tensor] = {}
        if self.objectives.mlm > 0:
            losses["mlm_loss"], report["mlm_accuracy"] = self._mlm(batch, image)
        if self.objectives.itm > 0:
            losses["itm_loss"], report["itm_accuracy"] = self._itm(batch, image)
        if self.objectives.mim > 0:
            losses["mim_loss"], mim_accuracy = self._mim(batch)
            if mim_accuracy is not None:
                report["mim_accuracy"] = mim_accuracy
        for objective in DECODER_OBJECTIVES:
            weight = getattr(self.objectives, objective)
            if weight > 0:
                loss, report[f"{objective}_accuracy"] = self._decoder_lm(batch, objective, image)
                losses[f"{objective}_loss"] = weight * loss
        return losses, report

    def _token_loss(self, logits: Tensor, labels: Tensor, name: str, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Cross-entropy and accuracy over the labelled tokens, averaged over the step's labelled tokens."""
        loss = step_mean(mlm_loss(logits, labels, reduction="sum"), name, len(labels), batch)
        correct = (logits.argmax(-1) == labels).float().sum().detach()
        return loss, step_mean(correct, name, len(labels), batch)

    def _mlm(self, batch: dict[str, Any], image: Tensor) -> tuple[Tensor, Tensor]:
        model, mask, positions = self.model, batch["attention_mask"], batch["mlm_positions"]
        fused = model.fuse(model.encode_text(batch["mlm_input_ids"], mask), mask, image, pool=False)
        logits = model.heads["mlm"](at_positions(fused.text, positions))  # the vocabulary only where it is needed
        loss, accuracy = self._token_loss(logits, at_positions(batch["mlm_labels"], positions), "mlm_loss", batch)
        return self.objectives.mlm * loss, accuracy

    def _itm(self, batch: dict[str, Any], image: Tensor) -> tuple[Tensor, Tensor]:
        model, mask, labels = self.model, batch["attention_mask"], batch["itm_labels"]
        fused = model.fuse(model.encode_text(batch["input_ids"], mask), mask, image[batch["itm_image_index"]])
        logits = model.heads["itm"](fused.joint)
        loss = step_mean(itm_loss(logits, labels, reduction="sum"), "itm_loss", len(labels), batch)
        correct = (logits.argmax(-1) == labels).float().sum().detach()
        return self.objectives.itm * loss, step_mean(correct, "itm_loss", len(labels), batch)

    def _mim(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """A second vision pass (the masked image), fused with the intact text; the loss, and for `in-batch` the
        share of masked patches picked right."""
        model, mask, hidden, pixels = self.model, batch["attention_mask"], batch["mim_mask"], batch["pixels"]
        image = model.encode_image(hide_patches(pixels, hidden, self.mim_patch))
        fused = model.fuse(model.encode_text(batch["input_ids"], mask), mask, image, pool=False)
        patches = fused.image[:, fused.image.shape[1] - hidden.shape[1] :]  # the grid tokens, after any summary
        positions = batch["mim_positions"]
        predictions = self.mim_decoder(at_positions(patches, positions))
        every_patch = pixel_targets(pixels, self.mim_patch)
        weight, count = self.objectives.mim, len(positions)
        if self.objectives.mim_target == "in-batch":  # each masked patch's row among all the batch's patches
            answers = positions[:, 0] * hidden.shape[1] + positions[:, 1]
            total, correct = in_batch_loss(predictions, every_patch.flatten(0, 1), answers, reduction="sum")
            return weight * step_mean(total, "mim_loss", count, batch), step_mean(correct, "mim_loss", count, batch)
        total = mim_loss(predictions, at_positions(every_patch, positions), reduction="sum")
        return weight * step_mean(total, "mim_loss", count, batch), None

    def _decoder_lm(self, batch: dict[str, Any], objective: str, image: Tensor) -> tuple[Tensor, Tensor]:
        """The decoder writes the objective's targets from the fused image and encoder text; loss where labelled."""
        model, seq = self.model, Seq2SeqBatch.load(batch, objective)
        fused = model.fuse(model.encode_text(seq.input_ids, seq.attention_mask), seq.attention_mask, image, pool=False)
        logits = model.decoder.logits(at_positions(model.decode(fused, seq.decoder_input_ids), seq.positions))
        return self._token_loss(logits, at_positions(seq.labels, seq.positions), f"{objective}_loss", batch)
