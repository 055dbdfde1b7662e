"""Masked image modelling: hide patches of the image, regress their normalised pixels from the fused image stream.

The patch is the image region one output token of the vision encoder covers (16 px for ViT-B/16, 32 px for the
last stage of Swin), so every fused image token predicts the pixels under it. Masked patches are set to 0 in the
encoder's normalised input space (the dataset's mean colour) before the vision encoder: that works with any timm
backbone, with no mask token inside it. A fixed number of patches, round(ratio * patches), is masked per image.

The target (MAE's "normalised pixels"): a masked patch's p * p * 3 input values, as the encoder sees them, minus
their mean and divided by their standard deviation, so the model learns shapes and edges rather than the mean colour
of a region. MAE adds 1e-6 to the variance; we add 1e-2 (a standard deviation of 0.1 in normalised units, about 7/255
of the pixel range): a flat patch (a plain background, a sky) is then regressed to its mean instead of to its
resampling noise blown up to unit variance, while textured patches keep MAE's target.
The loss is the squared error averaged over those values, and over the
masked patches only (the visible ones are copied, not predicted).

`in-batch` (objectives.mim_target; the paper's "masked patch classification with in-batch negatives", its Table 7):
the same prediction, read as a query over a vocabulary made of every patch of the batch (their normalised pixels,
masked or not): the score of each candidate is the scaled dot product of the two (divided by the square root of
their length, as attention scores are), and the loss is the cross-entropy of picking the masked patch's own. The
vocabulary is the micro-batch's (one process's, as the paper's per-GPU batch): unlike the other objectives, this loss
depends on how a step is split over micro-batches and processes (fewer candidates, an easier choice).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meter.errors import ConfigError
from meter.models.layers import LAYER_NORM_EPS, init_bert_weights
from meter.models.vision import VisionEncoder
from meter.objectives.randomness import SampleRandomness

VARIANCE_EPS = 1e-2


def mim_patch_size(vision: VisionEncoder, image_size: int) -> int:
    """The side in pixels of the region one output token covers (the encoder's total stride)."""
    info = getattr(vision.backbone, "feature_info", None)
    if not info or "reduction" not in info[-1]:
        raise ConfigError("objectives.mim needs a vision encoder whose timm model reports its stride (feature_info)")
    patch = int(info[-1]["reduction"])
    if image_size % patch:
        raise ConfigError(f"objectives.mim: model.vision.image_size = {image_size} is not a multiple of the "
                          f"encoder's patch of {patch} px")  # fmt: skip
    return patch


def patchify(pixels: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, patches, patch * patch * C), patches in row-major order (the encoder's token order)."""
    b, c, h, w = pixels.shape
    grid = pixels.reshape(b, c, h // patch, patch, w // patch, patch)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def draw_patch_mask(rows: int, patches: int, ratio: float, random: SampleRandomness) -> Tensor:
    """A (rows, patches) boolean mask with round(ratio * patches) patches (at least one) chosen in every row."""
    count = min(max(1, round(ratio * patches)), patches)
    order = random.uniform("mim_patches", patches).argsort(dim=1)
    return torch.zeros(rows, patches, dtype=torch.bool).scatter_(1, order[:, :count], True)


def hide_patches(pixels: Tensor, mask: Tensor, patch: int) -> Tensor:
    """Sets the masked patches to 0 (the mean colour, in the encoder's normalised input space)."""
    b, _, h, w = pixels.shape
    rows, cols = h // patch, w // patch
    hidden = mask.view(b, 1, rows, 1, cols, 1).expand(b, 1, rows, patch, cols, patch).reshape(b, 1, h, w)
    return pixels.masked_fill(hidden, 0.0)


def pixel_targets(pixels: Tensor, patch: int) -> Tensor:
    """Each patch's values standardised by the patch's own mean and variance: (B, patches, patch * patch * C)."""
    patches = patchify(pixels.float(), patch)
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + VARIANCE_EPS).sqrt()


def mim_loss(predictions: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """(M, D) predictions and targets of the M masked patches; the squared error is averaged over D."""
    per_patch = F.mse_loss(predictions.float(), targets, reduction="none").mean(dim=-1)
    return per_patch.sum() if reduction == "sum" else per_patch.mean()


MIM_TARGETS = ("pixels", "in-batch")


def in_batch_loss(predictions: Tensor, candidates: Tensor, answers: Tensor, reduction: str = "mean"
                  ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(M, D) predictions of the masked patches over (K, D) candidates (every patch of the batch); `answers`: each
    masked patch's row among the candidates. The cross-entropy and the number picked right."""
    with torch.autocast(predictions.device.type, enabled=False):  # bf16 logits would blur close candidates
        logits = predictions.float() @ candidates.float().T / candidates.shape[-1] ** 0.5
    loss = F.cross_entropy(logits, answers, reduction=reduction)
    return loss, (logits.argmax(-1) == answers).float().sum().detach()


class PixelDecoder(nn.Module):
    """Dense, GELU, LayerNorm, then a linear map to the patch's pixels (as the MLM head's transform + decoder).

    A pretraining-only part: it lives in the pretraining task, not in the model folder."""

    def __init__(self, width: int, patch: int, channels: int = 3, init_std: float = 0.02) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.decoder = nn.Linear(width, patch * patch * channels)
        self.apply(functools.partial(init_bert_weights, std=init_std))  # model.init_std, as the model's new parts

    def forward(self, tokens: Tensor) -> Tensor:
        return self.decoder(self.LayerNorm(F.gelu(self.dense(tokens))))
