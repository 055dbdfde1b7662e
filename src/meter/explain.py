"""Where a prediction came from: a heat map over the image's patches, from the fusion's text-to-image attention.

Two methods (see the README's "Serving and explaining" for how well each localises on the shapes world):
- "attention": the attention weights of the text [CLS] token (the token the pooler reads, so the one the answer is
  read from) over the image patches, averaged over heads;
- "gradcam": the gradient-weighted attention of ALBEF and BLIP: each weight times the positive part of the
  gradient of the explained score with respect to it, averaged over heads and summed over the text tokens.

Each fusion layer gives a map; `HeatMap.mean` averages them. Every map is normalised to sum to 1 over the patch grid.
The explained score is the chosen VQA answer's logit, the match score (rank or ITM head), or the predicted SNLI-VE
class's logit. The model is only read: recording happens through hooks that leave with the call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from meter.data.formats.snli_ve import SNLI_VE_LABELS
from meter.errors import ConfigError
from meter.models.attention_maps import image_grid, record_text_to_image_attention
from meter.models.folder import names_its_answers, require_answers
from meter.predictor import ImageInput, Predictor, match_reading
from meter.tasks.rank_head import match_score, scoring_head
from meter.tasks.snli_ve import SnliVeTask
from meter.tasks.vqa import VqaTask

METHODS = {
    "gradcam": "gradient-weighted attention (ALBEF, BLIP): weights x positive gradient of the score, all text tokens",
    "attention": "the text [CLS] token's attention over the image patches",
}
DEFAULT_METHOD = "gradcam"  # localises better on the shapes world: see benchmarks/explain_localisation.py
TASKS = ("vqa", "match", "snli_ve")  # what can be explained: one image and one text, a score from a head


@dataclass
class HeatMap:
    """Patch-grid maps (side x side, each summing to 1), one per fusion layer, and what they explain."""

    method: str
    layers: list[np.ndarray]
    prediction: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        return normalised(np.mean(self.layers, axis=0))

    def select(self, layer: str | int, option: str = "layer") -> np.ndarray:
        """`"mean"`, or a fusion layer counted from 1 (`option`: what gave it, named in the message)."""
        if layer == "mean":
            return self.mean
        index = int(layer)
        if not 1 <= index <= len(self.layers):
            raise ConfigError(f"{option} {layer!r}: choose mean or a layer from 1 to {len(self.layers)}")
        return self.layers[index - 1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "grid": np.round(self.mean, 5).tolist(),
            "layers": [np.round(layer, 5).tolist() for layer in self.layers],
        }


def normalised(values: np.ndarray) -> np.ndarray:
    total = float(values.sum())
    return values / total if total > 0 else np.full_like(values, 1 / values.size)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"method {method!r} is not a heat-map method; choose one of: {', '.join(METHODS)}")
    return method


def check_answer(predictor: Predictor, task: str, answer: str | None) -> None:
    """A VQA answer to explain (None: the model's best) is one of the model's answers."""
    if answer is None:
        return
    if task != "vqa":
        raise ConfigError(f"answer {answer!r} goes with task vqa, not {task}")
    if answer not in predictor.description.answers:
        raise ConfigError(f"answer {answer!r} is not in the model's answer vocabulary")


def explainable_tasks(predictor: Predictor) -> list[str]:
    heads = predictor.description.heads
    found = {"vqa": names_its_answers(predictor.description), "match": scoring_head(predictor.model) is not None,
             "snli_ve": "snli_ve" in heads}  # fmt: skip
    return [task for task in TASKS if found[task]]


def default_task(predictor: Predictor) -> str:
    tasks = explainable_tasks(predictor)
    if not tasks:
        raise ConfigError(
            f"{predictor.checkpoint}: nothing to explain: a heat map needs a vqa, rank, itm or snli_ve head;"
            f" this model has: {', '.join(predictor.heads) or 'no heads'}"
        )
    return tasks[0]


def _scores(predictor: Predictor, task: str, batch: dict[str, Any], answers: list[str | None], top: int,
            labels: list[str] | None = None):  # fmt: skip
    """(the score to explain per example (B,), the prediction per example); `labels`: the SNLI-VE label to explain
    per example (default: the best)."""
    model, description = predictor.model, predictor.description
    if task == "vqa":
        vqa = VqaTask(model, description.answers, description.config)
        logits = predictor.finite(vqa.logits(batch).float())  # a NaN ranks first: no answer to explain
        chosen = []
        for row, answer in zip(logits, answers, strict=True):
            check_answer(predictor, "vqa", answer)
            chosen.append(int(row.argmax()) if answer is None else vqa.answers.index(answer))
        probabilities = logits.detach().sigmoid()
        best = probabilities.topk(min(top, logits.shape[1]))
        predictions = [
            {
                "answers": [
                    {"answer": vqa.answers[i], "score": round(float(s), 4)} for s, i in zip(v, ix, strict=True)
                ],
                "explained": {"answer": vqa.answers[c], "score": round(float(probabilities[b, c]), 4)},
            }
            for b, (v, ix, c) in enumerate(zip(best.values.tolist(), best.indices.tolist(), chosen, strict=True))
        ]
        return logits[torch.arange(len(chosen)), torch.tensor(chosen)], predictions
    if task == "match":
        mask = batch["attention_mask"]
        text = model.encode_text(batch["input_ids"], mask)
        score = predictor.finite(match_score(model, text, mask, model.encode_image(batch["pixels"])))
        scorer = scoring_head(model)  # as /api/match and `meter predict --text` read it
        return score, [{"explained": match_reading(scorer, s)} for s in score.tolist()]
    logits = predictor.finite(SnliVeTask(model, description.config, len(SNLI_VE_LABELS)).logits(batch).float())
    probabilities = logits.detach().softmax(-1)
    chosen = logits.argmax(-1) if labels is None else torch.tensor([SNLI_VE_LABELS.index(label) for label in labels])
    predictions = [
        {
            "entailment": {name: round(float(p), 4) for name, p in zip(SNLI_VE_LABELS, row, strict=True)},
            "explained": {"label": SNLI_VE_LABELS[int(c)]},
        }
        for row, c in zip(probabilities.tolist(), chosen.tolist(), strict=True)
    ]
    return logits.gather(1, chosen[:, None])[:, 0], predictions


def _maps(weights: list[Tensor], grads: list[Tensor] | None, text_mask: Tensor, method: str) -> list[Tensor]:
    """(B, patches) per layer, from each layer's (B, heads, text, image patches) weights."""
    maps = []
    for k, w in enumerate(weights):
        if method == "attention":
            maps.append(w[:, :, 0].mean(1))
        else:
            weighted = (w * grads[k].clamp(min=0)).mean(1)  # (B, text, patches)
            maps.append((weighted * text_mask[:, :, None]).sum(1))
    return maps


def explain_batch(
    predictor: Predictor, images: list[ImageInput], texts: list[str], task: str | None = None,
    method: str = DEFAULT_METHOD, answers: list[str | None] | None = None, top: int = 5,
) -> list[HeatMap]:  # fmt: skip
    """A heat map for each (image, text): `task` is vqa, match or snli_ve (default: the first the model has);
    `answers` picks the VQA answer to explain per example (default: the best)."""
    check_method(method)
    task = task or default_task(predictor)
    if task == "vqa" and "vqa" in predictor.heads:
        require_answers(predictor.description, predictor.checkpoint)  # a head whose rows name no answer
    if task not in explainable_tasks(predictor):
        raise ConfigError(
            f"{predictor.checkpoint}: explaining {task} needs its head; this model can explain:"
            f" {', '.join(explainable_tasks(predictor)) or 'nothing'} (heads: {', '.join(predictor.heads)})"
        )
    answers = answers or [None] * len(texts)
    batch = predictor.batch_of([[image] for image in images], texts)
    predictions, labels = None, None
    if predictor.runtime.dtype != torch.float32:  # the recording below computes attention without SDPA, which
        with torch.no_grad(), predictor.runtime.autocast():  # rounds otherwise in bf16: answers and scores as /vqa's
            _, predictions = _scores(predictor, task, batch, answers, top)
        if task == "vqa":  # the answer explained is the one given
            answers = [prediction["explained"]["answer"] for prediction in predictions]
        if task == "snli_ve":
            labels = [prediction["explained"]["label"] for prediction in predictions]
    gradients = torch.enable_grad() if method == "gradcam" else torch.no_grad()  # raw attention needs no graph
    with gradients, record_text_to_image_attention(predictor.model) as record:
        with predictor.runtime.autocast():  # the precision the answers of /vqa are given in
            score, recorded = _scores(predictor, task, batch, answers, top, labels)
        predictions = predictions or recorded
        text_length = batch["input_ids"].shape[1]
        weights = record.text_to_image(text_length)
        if method == "gradcam":
            grads = record.text_to_image(text_length, of=torch.autograd.grad(score.sum(), record.weights))
        else:
            grads = None
    prefix, side = image_grid(weights[0].shape[-1])
    weights = [w.detach()[..., prefix:] for w in weights]
    grads = None if grads is None else [g[..., prefix:] for g in grads]
    maps = _maps(weights, grads, batch["attention_mask"].float(), method)
    return [
        HeatMap(method, [normalised(m[b].reshape(side, side).cpu().double().numpy()) for m in maps], predictions[b])
        for b in range(len(texts))
    ]


def model_view(image: Image.Image) -> Image.Image:
    """The centred square the model sees (its transform resizes the short side, then crops the centre)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.convert("RGB").crop((left, top, left + side, top + side))


def overlay(image: Image.Image, grid: np.ndarray, size: int = 384, opacity: float = 0.55) -> Image.Image:
    """The heat map over the model's view of `image`, in the turbo colour map: each patch as the square it is, its
    edges softened. A patch is fully coloured at 4 times its share under a uniform map, or at the map's peak if that
    is higher; a uniform map stays a faint tint, not a wall of colour."""
    from matplotlib import colormaps
    from torchvision.transforms.v2 import functional as TF

    grid = np.asarray(grid, dtype=np.float32)
    view = model_view(image).resize((size, size), Image.Resampling.BICUBIC)
    patch = size / len(grid)  # pixels per patch side
    heat = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=(size, size), mode="nearest")
    heat = TF.gaussian_blur(heat, kernel_size=2 * int(patch / 4) + 1, sigma=max(patch / 8, 0.1))[0, 0].numpy()
    heat = np.clip(heat / max(float(grid.max()), 4 / grid.size), 0, 1)
    colours = colormaps["turbo"](0.85 * heat)[..., :3]  # up to orange-red: turbo's darkest red hides the object
    alpha = opacity * heat[..., None]
    blended = (1 - alpha) * np.asarray(view, dtype=np.float64) / 255 + alpha * colours
    return Image.fromarray((blended * 255).round().astype(np.uint8))
