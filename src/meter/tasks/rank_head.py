"""The retrieval rank head (the official checkpoints' `rank_output`): how the fused model scores an image-text
pair, and the head's start from a pretrained ITM head's match row, as METER starts it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from meter.models.folder import WEIGHTS, read_model_folder
from meter.models.heads import in_fp32
from meter.models.meter import Meter

log = logging.getLogger(__name__)
HEAD = "rank"  # one score per pair
ITM = "itm"  # a model with only an ITM head (pretrained) ranks by its match logit


def scoring_head(model: Meter) -> str | None:
    """The head that scores pairs: rank, else ITM, else None."""
    return next((head for head in (HEAD, ITM) if head in model.heads), None)


def rank_score(model: Meter, text: Tensor, mask: Tensor, image: Tensor) -> Tensor:
    """What retrieval ranks each (text, image) row pair by: the rank head's output, or for a model with only an ITM
    head its match logit, the rank head METER starts from it. The official zero-shot retrieval ranks by that row too
    (its rank head is a view of it, meter_module.py:153-154, filled as the pretraining checkpoint loads)."""
    joint = model.fuse(text, mask, image).joint
    if HEAD in model.heads:
        return in_fp32(model.heads[HEAD], joint)[:, 0]
    return in_fp32(model.heads[ITM], joint)[:, 1]


def match_score(model: Meter, text: Tensor, mask: Tensor, image: Tensor) -> Tensor:
    """How well each (text, image) row pair matches, as `meter predict`, the server and `meter explain` read it: the
    rank head's output, or for a model with only an ITM head its match minus mismatch logit (the log-odds of a
    match: its sigmoid is the head's P(match))."""
    if HEAD in model.heads:
        return rank_score(model, text, mask, image)
    logits = in_fp32(model.heads[ITM], model.fuse(text, mask, image).joint)
    return logits[:, 1] - logits[:, 0]


def init_rank_from_itm(model: Meter, weights: Path) -> bool:
    """Starts the rank head as the ITM head's match row, as METER does; False when `weights` has no ITM head."""
    names = {f"heads.{ITM}.fc.weight": "weight", f"heads.{ITM}.fc.bias": "bias"}
    with safe_open(str(weights), framework="pt") as f:
        if not set(names) <= set(f.keys()):
            return False
        saved = {part: f.get_tensor(name) for name, part in names.items()}
    rank = model.heads[HEAD]
    if saved["weight"].shape[1:] != rank.weight.shape[1:]:
        return False
    with torch.no_grad():
        rank.weight.copy_(saved["weight"][1:])
        rank.bias.copy_(saved["bias"][1:])
    return True


def start_rank_head(model: Meter, source: str | None) -> None:
    """Fine-tuning from `source` (train.init_from) without a rank head: the rank head starts as its ITM match row."""
    if source and HEAD not in read_model_folder(source).heads and init_rank_from_itm(model, Path(source) / WEIGHTS):
        log.info("retrieval: the rank head starts from %s's ITM head (its match row)", source)
