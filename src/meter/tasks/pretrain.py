"""Pretraining: MLM, ITM and (encoder-decoder) span LM and PrefixLM, from one vision-encoder pass per step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from meter.config import Config, ObjectivesConfig
from meter.models.folder import ModelFolder
from meter.models.meter import Meter
from meter.objectives.itm import itm_loss, itm_pairing
from meter.objectives.mlm import IGNORE, mask_tokens, mlm_loss
from meter.objectives.prefix_lm import split_prefix
from meter.objectives.seq2seq import Seq2SeqBatch, Targets, captions_of
from meter.objectives.span import corrupt_spans, sentinel_ids

DECODER_OBJECTIVES = ("span", "prefix_lm")  # encoder-decoder only (validate.py checks)


def pretrain_heads(tokenizer: PreTrainedTokenizerBase, objectives: ObjectivesConfig) -> dict[str, int]:
    heads = {}
    if objectives.mlm > 0:
        heads["mlm"] = len(tokenizer)
    if objectives.itm > 0:
        heads["itm"] = 2
    return heads


class PretrainTask(nn.Module):
    def __init__(self, model: Meter, tokenizer: PreTrainedTokenizerBase, cfg: Config, heads: dict[str, int]) -> None:
        super().__init__()
        self.model = model
        self.heads = heads
        self.cfg = cfg
        self.objectives = cfg.objectives
        self.mask_token_id = tokenizer.mask_token_id
        special = set(tokenizer.all_special_ids)
        self.replacement_ids = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
        self.targets = Targets.of(tokenizer, cfg.model.decoder.max_length)
        self.sentinels = sentinel_ids(tokenizer) if self.objectives.span > 0 else []

    def describe(self) -> ModelFolder:
        return ModelFolder(self.cfg, dict(self.heads))

    def prepare(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        if self.objectives.mlm > 0:
            batch["mlm_input_ids"], batch["mlm_labels"] = mask_tokens(
                batch["input_ids"], batch["word_ids"], self.mask_token_id, self.replacement_ids,
                self.objectives.mlm_probability, generator, self.objectives.whole_word_masking,
            )  # fmt: skip
        if self.objectives.itm > 0:
            batch["itm_image_index"], batch["itm_labels"] = itm_pairing(batch["image_id"], generator)
        if self.objectives.span > 0 or self.objectives.prefix_lm > 0:
            captions = captions_of(batch["input_ids"], batch["word_ids"], batch["attention_mask"])
        if self.objectives.span > 0:
            corrupt_spans(captions, self.sentinels, self.objectives.span_probability,
                          self.objectives.span_mean_length, generator, self.targets).store(batch, "span")  # fmt: skip
        if self.objectives.prefix_lm > 0:
            split_prefix(captions, generator, self.targets).store(batch, "prefix_lm")
        return batch

    def _decoder_lm(self, seq: Seq2SeqBatch, image: Tensor) -> tuple[Tensor, float]:
        """The decoder writes `seq`'s targets from the fused image and encoder text; loss where labelled."""
        model = self.model
        fused = model.fuse(model.encode_text(seq.input_ids, seq.attention_mask), seq.attention_mask, image, pool=False)
        positions = seq.labels != IGNORE
        logits = model.decoder.logits(model.decode(fused, seq.decoder_input_ids)[positions])
        labels = seq.labels[positions]
        return mlm_loss(logits, labels), float((logits.argmax(-1) == labels).float().mean())

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        model = self.model
        mask = batch["attention_mask"]
        image = model.encode_image(batch["pixels"])  # one pass serves both objectives
        losses: dict[str, Tensor] = {}
        report: dict[str, float] = {}
        if self.objectives.mlm > 0:
            labels = batch["mlm_labels"]
            fused = model.fuse(model.encode_text(batch["mlm_input_ids"], mask), mask, image)
            positions = labels != IGNORE
            logits = model.heads["mlm"](fused.text[positions])  # the vocabulary only where it is needed
            losses["mlm_loss"] = self.objectives.mlm * mlm_loss(logits, labels[positions])
            report["mlm_accuracy"] = float((logits.argmax(-1) == labels[positions]).float().mean())
        if self.objectives.itm > 0:
            labels = batch["itm_labels"]
            fused = model.fuse(model.encode_text(batch["input_ids"], mask), mask, image[batch["itm_image_index"]])
            logits = model.heads["itm"](fused.joint)
            losses["itm_loss"] = self.objectives.itm * itm_loss(logits, labels)
            report["itm_accuracy"] = float((logits.argmax(-1) == labels).float().mean())
        for objective in DECODER_OBJECTIVES:
            weight = getattr(self.objectives, objective)
            if weight > 0:
                loss, accuracy = self._decoder_lm(Seq2SeqBatch.load(batch, objective), image)
                losses[f"{objective}_loss"] = weight * loss
                report[f"{objective}_accuracy"] = accuracy
        return losses, report
