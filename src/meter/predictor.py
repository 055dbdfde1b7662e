"""Single-input predictions with a trained model folder: answer a question, score a match, judge a pair (NLVR2),
write a caption.

Each kind needs the head its task trains; asking a model for one it lacks is an error naming the heads it has.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from meter.data.collate import Collate
from meter.data.formats.snli_ve import SNLI_VE_LABELS
from meter.errors import ConfigError, DataError
from meter.tasks.build import load_for_eval
from meter.tasks.captioning import write_captions
from meter.tasks.nlvr2 import CLASSES as NLVR2_CLASSES
from meter.tasks.nlvr2 import Nlvr2Task
from meter.tasks.retrieval import HEAD as RANK_HEAD
from meter.tasks.retrieval import match_score, scoring_head
from meter.tasks.snli_ve import SnliVeTask
from meter.tasks.vqa import VqaTask
from meter.train.checkpoint import Checkpoints
from meter.train.runtime import Runtime, pick_device


def resolve_checkpoint(path: str | Path) -> Path:
    """A model folder as given, or the latest checkpoint of a run folder."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    latest = Checkpoints(path / "checkpoints").latest() if path.is_dir() else None
    if latest is None:
        raise DataError(f"{path}: neither a model folder (config.json, model.safetensors) nor a run with checkpoints")
    return latest


def _text(value: str, option: str) -> str:
    if not value or not value.strip():
        raise ConfigError(f"{option} is empty; give the text to use")
    return value.strip()


class Predictor:
    def __init__(self, checkpoint: str | Path, device: str = "auto") -> None:
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.device = pick_device(device)
        loaded = load_for_eval(self.checkpoint, self.device)
        self.model, self.description, self.images = loaded.model, loaded.description, loaded.images
        self.tokenizer = loaded.tokenizer
        self.runtime = Runtime(self.device, torch.float32)
        self.collate = Collate(loaded.tokenizer, self.description.config.model.text.max_length)

    @property
    def heads(self) -> list[str]:
        return list(self.description.heads)

    def _require(self, head: str, needed_for: str, task: str) -> None:
        if head not in self.description.heads:
            raise ConfigError(
                f"{self.checkpoint}: {needed_for} needs a model with a {head} head (fine-tuned with task={task});"
                f" this one has: {', '.join(self.heads) or 'no heads'}"
            )

    def _batch(self, images: list[str | Path], text: str) -> dict[str, Any]:
        pixels = [self.images(path) for path in images]
        sample = {"pixels": pixels[0] if len(pixels) == 1 else torch.stack(pixels), "text": text}
        batch = self.collate([sample])
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @torch.no_grad()
    def answer(self, image: str | Path, question: str, top: int = 5) -> list[dict[str, Any]]:
        """The `top` answers with their scores (sigmoid of the VQA logits: each is a soft accuracy estimate)."""
        question = _text(question, "--question")
        self._require("vqa", "--question", "vqa")
        task = VqaTask(self.model, self.description.answers, self.description.config)
        scores = task.logits(self._batch([image], question)).float().sigmoid()[0]
        best = scores.topk(min(top, len(scores)))
        return [{"answer": task.answers[i], "score": round(float(s), 4)}
                for s, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)]  # fmt: skip

    @torch.no_grad()
    def match(self, image: str | Path, text: str) -> dict[str, Any]:
        """How well the text matches the image: a retrieval model's ranking score, or a pretrained model's ITM
        probability; and SNLI-VE's three probabilities when the model has that head."""
        text = _text(text, "--text")
        scorer = scoring_head(self.model)
        if scorer is None and SnliVeTask.head not in self.description.heads:
            self._require(RANK_HEAD, "--text", "retrieval (or pretrain, or snli_ve)")
        batch = self._batch([image], text)
        result: dict[str, Any] = {}
        if scorer is not None:
            mask = batch["attention_mask"]
            text_tokens = self.model.encode_text(batch["input_ids"], mask)
            score = float(match_score(self.model, text_tokens, mask, self.model.encode_image(batch["pixels"]))[0])
            if scorer == RANK_HEAD:  # trained to rank candidates: a score, higher is better, not a probability
                result["match_score"] = round(score, 4)
            else:  # the ITM head's two logits: P(match)
                result["match_probability"] = round(float(torch.sigmoid(torch.tensor(score))), 4)
        if SnliVeTask.head in self.description.heads:
            task = SnliVeTask(self.model, self.description.config, len(SNLI_VE_LABELS))
            probabilities = task.logits(batch).float().softmax(-1)[0].tolist()
            result["entailment"] = {name: round(p, 4) for name, p in zip(SNLI_VE_LABELS, probabilities, strict=True)}
        return result

    @torch.no_grad()
    def caption(self, image: str | Path, beam_size: int = 1) -> str:
        """A caption written by the model's decoder (greedy, or beam search with `beam_size` > 1)."""
        if self.model.decoder is None:
            raise ConfigError(
                f"{self.checkpoint}: --caption needs a model with a decoder (fine-tuned with task=captioning);"
                f" this one is {self.description.config.model.architecture}-only"
            )
        if beam_size < 1:
            raise ConfigError(f"--beam {beam_size} must be at least 1")
        settings = dataclasses.replace(self.description.config.captioning, beam_size=beam_size)
        pixels = self.images(image)[None]
        return write_captions(self.model, self.tokenizer, pixels, settings, self.runtime)[0]

    @torch.no_grad()
    def judge_pair(self, left: str | Path, right: str | Path, text: str) -> dict[str, Any]:
        """NLVR2: the probability that the sentence is true of the (left, right) pair."""
        text = _text(text, "--text")
        self._require(Nlvr2Task.head, "--images A B --text", "nlvr2")
        task = Nlvr2Task(self.model, self.description.config, len(NLVR2_CLASSES))
        probabilities = task.logits(self._batch([left, right], text)).float().softmax(-1)[0].tolist()
        label = NLVR2_CLASSES[max(range(len(probabilities)), key=probabilities.__getitem__)]
        return {"label": label, "probabilities": dict(zip(NLVR2_CLASSES, [round(p, 4) for p in probabilities],
                                                          strict=True))}  # fmt: skip
