"""Predictions with a trained model folder: answer a question, score a match, judge a pair (NLVR2), write a
caption; for one input, or for a batch of them in one forward pass (`*_batch`, what a server runs).

Each kind needs the head its task trains; asking a model for one it lacks is an error naming the heads it has.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from meter.data.blank_text import is_blank
from meter.data.collate import Collate
from meter.data.formats.snli_ve import SNLI_VE_LABELS
from meter.data.images import check_pixel_limit
from meter.data.shared_rows import to_device
from meter.errors import ConfigError, DataError
from meter.models.finite_outputs import check_finite
from meter.models.folder import EXPORT, require_answers
from meter.setting_ranges import MAX_BEAM
from meter.tasks.best_checkpoint import BEST
from meter.tasks.build import load_for_eval
from meter.tasks.captioning import write_captions
from meter.tasks.nlvr2 import CLASSES as NLVR2_CLASSES
from meter.tasks.nlvr2 import Nlvr2Task
from meter.tasks.rank_head import HEAD as RANK_HEAD
from meter.tasks.rank_head import match_score, scoring_head
from meter.tasks.snli_ve import SnliVeTask
from meter.tasks.vqa import VqaTask
from meter.train.checkpoint import Checkpoints
from meter.train.run_folder import RECORD as RUN_RECORD
from meter.train.run_folder import read_record
from meter.train.runtime import Runtime, allow_tf32, pick_device, pick_dtype

ImageInput = str | Path | Image.Image  # a file, or an image already decoded
log = logging.getLogger(__name__)
PRECISION = "--precision fp32"  # the option that keeps an overflowing input in range


def resolve_checkpoint(path: str | Path) -> Path:
    """A model folder as given; of a run folder, the weights its evaluation scored once it finished (its best/ with
    train.best_on, else its exported model/), and while it trains its newest intact checkpoint (a damaged one is
    passed over with a warning)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such model folder or run folder")
    if (path / "config.json").is_file():
        return path
    finished = (path / RUN_RECORD).is_file() and read_record(path).get("finished")
    chosen = next((path / name for name in (BEST, EXPORT) if (path / name / "config.json").is_file()), None)
    if finished and chosen is not None:  # its checkpoints may be deleted since: not needed
        log.info("%s: a finished run: its %s", path, chosen.name)
        return chosen
    checkpoints = Checkpoints(path / "checkpoints")
    if not path.is_dir() or not checkpoints.steps():
        raise DataError(f"{path}: neither a model folder (config.json, model.safetensors) nor a run with checkpoints")
    latest = checkpoints.resolve("latest", parts=("model",))
    log.info("%s: a run folder: its newest checkpoint, %s", path, latest.name)
    return latest


def _text(value: str, option: str) -> str:
    if is_blank(value):
        raise ConfigError(f"{option} is empty; give the text to use")
    return value.strip()


def match_reading(scorer: str, score: float) -> dict[str, float]:
    """What a pair's score says: a rank head's is a score (higher is better, not a probability); the ITM head's (its
    two logits' difference) is P(match)."""
    if scorer == RANK_HEAD:
        return {"match_score": round(score, 4)}
    return {"match_probability": round(float(torch.sigmoid(torch.tensor(score))), 4)}


class Predictor:
    def __init__(
        self, checkpoint: str | Path, device: str = "auto", max_image_pixels: int | None = None,
        precision: str = "auto",
    ) -> None:  # fmt: skip
        """`max_image_pixels`: images with more pixels are refused undecoded; by default the model folder's
        data.max_image_pixels. `precision`: auto (bf16 autocast on a GPU, fp32 on the CPU, as training), bf16 or
        fp32; the heads score in fp32 either way."""
        if max_image_pixels is not None:
            check_pixel_limit(max_image_pixels, "max_image_pixels")
        pick_dtype(precision, torch.device("cpu"), "precision")  # a misspelt precision is named before the load
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.device = pick_device(device, "--device")
        loaded = load_for_eval(self.checkpoint, self.device, max_pixels=max_image_pixels)  # blind as it trained
        self.model, self.description, self.images = loaded.model, loaded.description, loaded.images
        if self.images.blind:
            log.warning("%s: a blind baseline (data.blind): it sees one constant image, whatever image it is given",
                        self.checkpoint)  # fmt: skip
        self.images.upright = True  # a phone photo taken sideways is answered about as its viewer shows it
        self.tokenizer = loaded.tokenizer
        # a server counts a request's tokens on a thread of its own while the model thread's batches truncate: a
        # tokenizer's truncation setting is state of the object (huggingface/tokenizers#537), so counting has its own
        self._counting, self._counting_lock = copy.deepcopy(loaded.tokenizer), threading.Lock()
        self.runtime = Runtime(self.device, pick_dtype(precision, self.device, "precision"))
        allow_tf32(self.device, self.runtime.dtype != torch.float32)  # fp32 asked for: convolutions too
        self.collate = Collate(loaded.tokenizer, self.description.config.model.text.max_length)

    @property
    def heads(self) -> list[str]:
        return list(self.description.heads)

    def require(self, head: str, needed_for: str, task: str) -> None:
        if head not in self.description.heads:
            raise ConfigError(
                f"{self.checkpoint}: {needed_for} needs a model with a {head} head (fine-tuned with task={task});"
                f" this one has: {', '.join(self.heads) or 'no heads'}"
            )
        if head == "vqa":  # the rows' answers too: an official checkpoint imported without them has the head only
            require_answers(self.description, self.checkpoint)

    def pixels(self, image: ImageInput) -> Tensor:
        """The model's input for an image file, or for an image already decoded (a server's upload) in any mode."""
        return self.images.decoded(image) if isinstance(image, Image.Image) else self.images(image)

    def text_length(self, text: str) -> int:
        """Tokens the text encodes to, before truncation to the model's `max_length` (the batch truncates)."""
        with self._counting_lock:
            return len(self._counting(text, truncation=False)["input_ids"])

    @property
    def max_length(self) -> int:
        return self.collate.max_length

    def length_note(self, text: str, field: str) -> str | None:
        """A note when the text is longer than the model reads (the batch keeps its first tokens); else None."""
        length = self.text_length(text)
        if length <= self.max_length:
            return None
        return (f"{field} has {length} tokens; the model reads the first {self.max_length} (its text.max_length):"
                " the rest was left out")  # fmt: skip

    def finite(self, scores: Tensor) -> Tensor:
        """`scores` if every one is a number; else a NonFiniteOutput (see `check_finite`)."""
        return check_finite(scores, self.model, self.checkpoint, PRECISION)

    def batch_of(self, images: list[list[ImageInput]], texts: list[str]) -> dict[str, Any]:
        """One sample per text, each with its images (one, or NLVR2's two), on the model's device."""
        if not texts or len(images) != len(texts):
            raise ConfigError(f"{len(images)} images and {len(texts)} texts: give one text per image, at least one")
        samples = []
        for sample_images, text in zip(images, texts, strict=True):
            pixels = [self.pixels(image) for image in sample_images]
            samples.append({"pixels": pixels[0] if len(pixels) == 1 else torch.stack(pixels), "text": text})
        return to_device(self.collate(samples), self.device)  # a blind baseline's one image copied (and encoded) once

    def answer(self, image: ImageInput, question: str, top: int = 5) -> list[dict[str, Any]]:
        """The `top` answers with their scores (sigmoid of the VQA logits: each is a soft accuracy estimate)."""
        return self.answer_batch([image], [question], top)[0]

    @torch.no_grad()
    def answer_batch(self, images: list[ImageInput], questions: list[str], top: int = 5) -> list[list[dict[str, Any]]]:
        """`answer` for each (image, question) pair, in one forward pass."""
        questions = [_text(q, "--question") for q in questions]
        if top < 1:
            raise ConfigError(f"--top {top} must be at least 1")
        self.require("vqa", "--question", "vqa")
        task = VqaTask(self.model, self.description.answers, self.description.config)
        with self.runtime.autocast():
            logits = task.logits(self.batch_of([[image] for image in images], questions)).float()
        scores = self.finite(logits).sigmoid()
        best = scores.topk(min(top, scores.shape[1]))
        return [
            [{"answer": task.answers[i], "score": round(float(s), 4)} for s, i in zip(values, indices, strict=True)]
            for values, indices in zip(best.values.tolist(), best.indices.tolist(), strict=True)
        ]

    def match(self, image: ImageInput, text: str) -> dict[str, Any]:
        """How well the text matches the image: a retrieval model's ranking score, or a pretrained model's ITM
        probability; and SNLI-VE's three probabilities when the model has that head."""
        return self.match_batch([image], [text])[0]

    @torch.no_grad()
    def match_batch(self, images: list[ImageInput], texts: list[str]) -> list[dict[str, Any]]:
        """`match` for each (image, text) pair, in one forward pass per head."""
        texts = [_text(t, "--text") for t in texts]
        scorer = scoring_head(self.model)
        if scorer is None and SnliVeTask.head not in self.description.heads:
            self.require(RANK_HEAD, "--text", "retrieval (or pretrain, or snli_ve)")
        batch = self.batch_of([[image] for image in images], texts)
        results: list[dict[str, Any]] = [{} for _ in texts]
        if scorer is not None:
            mask = batch["attention_mask"]
            with self.runtime.autocast():
                text_tokens = self.model.encode_text(batch["input_ids"], mask)
                scores = match_score(self.model, text_tokens, mask, self.model.encode_image(batch["pixels"]))
            scores = self.finite(scores.float()).tolist()
            for result, score in zip(results, scores, strict=True):
                result |= match_reading(scorer, score)
        if SnliVeTask.head in self.description.heads:
            task = SnliVeTask(self.model, self.description.config, len(SNLI_VE_LABELS))
            with self.runtime.autocast():
                logits = task.logits(batch).float()
            rows = self.finite(logits).softmax(-1).tolist()
            for result, row in zip(results, rows, strict=True):
                result["entailment"] = {name: round(p, 4) for name, p in zip(SNLI_VE_LABELS, row, strict=True)}
        return results

    def caption(self, image: ImageInput, beam_size: int | None = None) -> str:
        """A caption written by the model's decoder (greedy, or beam search with `beam_size` > 1; None: the beam
        size the model's own evaluation used, captioning.beam_size of its config)."""
        return self.caption_batch([image], beam_size)[0]

    @torch.no_grad()
    def caption_batch(self, images: list[ImageInput], beam_size: int | None = None) -> list[str]:
        """`caption` for each image, decoded together."""
        if beam_size is None:
            beam_size = self.description.config.captioning.beam_size
        if not 1 <= beam_size <= MAX_BEAM:
            raise ConfigError(f"--beam {beam_size} must be from 1 (greedy) to {MAX_BEAM}")
        if self.model.decoder is None:
            raise ConfigError(
                f"{self.checkpoint}: --caption needs a model with a decoder (fine-tuned with task=captioning);"
                f" this one is {self.description.config.model.architecture}-only"
            )
        settings = dataclasses.replace(self.description.config.captioning, beam_size=beam_size)
        pixels = torch.stack([self.pixels(image) for image in images])
        return write_captions(self.model, self.tokenizer, pixels, settings, self.runtime, self.checkpoint, PRECISION)

    def judge_pair(self, left: ImageInput, right: ImageInput, text: str) -> dict[str, Any]:
        """NLVR2: the probability that the sentence is true of the (left, right) pair."""
        return self.judge_pairs([(left, right)], [text])[0]

    @torch.no_grad()
    def judge_pairs(self, pairs: list[tuple[ImageInput, ImageInput]], texts: list[str]) -> list[dict[str, Any]]:
        """`judge_pair` for each ((left, right), sentence), in one forward pass."""
        texts = [_text(t, "--text") for t in texts]
        self.require(Nlvr2Task.head, "--images A B --text", "nlvr2")
        task = Nlvr2Task(self.model, self.description.config, len(NLVR2_CLASSES))
        with self.runtime.autocast():
            logits = task.logits(self.batch_of([list(pair) for pair in pairs], texts)).float()
        rows = self.finite(logits).softmax(-1).tolist()
        results = []
        for probabilities in rows:
            label = NLVR2_CLASSES[max(range(len(probabilities)), key=probabilities.__getitem__)]
            rounded = [round(p, 4) for p in probabilities]
            results.append({"label": label, "probabilities": dict(zip(NLVR2_CLASSES, rounded, strict=True))})
        return results
