"""Pretraining: MLM and ITM from one vision-encoder pass per step."""

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
        return batch

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
        return losses, report
