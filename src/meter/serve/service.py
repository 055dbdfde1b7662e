"""The loaded model behind the API: what it can do, and how a batch of one kind of request runs on it.

Requests become jobs for the micro-batcher; each job's key names the work and the settings a batch must share.
This module turns HTTP-free values (decoded images, texts) into predictor calls; routes live in `app.py`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from PIL import Image

from meter.errors import MeterError
from meter.explain import DEFAULT_METHOD, METHODS, HeatMap, explain_batch, explainable_tasks, overlay
from meter.models.attention_maps import layer_count
from meter.models.finite_outputs import NonFiniteOutput
from meter.models.folder import names_its_answers
from meter.predictor import Predictor
from meter.serve.batcher import Done, MicroBatcher, Overloaded
from meter.serve.limits import ServeLimits
from meter.serve.uploads import ServeError
from meter.tasks.retrieval import scoring_head

log = logging.getLogger(__name__)

ENDPOINTS = {  # endpoint -> (what it does, what the model needs for it)
    "vqa": ("answer a question about an image: the top answers with their scores", "a vqa head (task=vqa)"),
    "match": (
        "how well a text matches an image (a rank head's score, or an ITM head's probability)",
        "a rank or itm head (task=retrieval, or a pretrained model)",
    ),
    "snli-ve": ("SNLI-VE: does the image entail the text (three probabilities)", "an snli_ve head (task=snli_ve)"),
    "nlvr2": ("NLVR2: is the statement true of the (left, right) image pair", "an nlvr2 head (task=nlvr2)"),
    "caption": ("write a caption (greedy, or beam search)", "a decoder (model.architecture=encoder-decoder)"),
    "explain": (
        "a heat map of where the answer came from, over the image, per fusion layer and averaged",
        "a vqa, rank, itm or snli_ve head",
    ),
}


def weights_id(folder: Path) -> str:
    """A short digest of the model's weights: which model answered, even after a folder is overwritten."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def model_name(folder: Path) -> str:
    """The folder and its parent ("vqa-model/model"), or the run and its checkpoint ("vqa/step_00000800")."""
    folder = folder.absolute()  # `.` has no name (a symlinked folder keeps its own)
    parent = folder.parent.parent if folder.parent.name == "checkpoints" else folder.parent
    return f"{parent.name}/{folder.name}" if parent.name else folder.name


class ModelService:
    def __init__(self, predictor: Predictor, limits: ServeLimits) -> None:
        self.predictor = predictor
        self.limits = limits
        self.model_name = model_name(predictor.checkpoint)
        self.model_id = weights_id(predictor.checkpoint)
        self.batcher = MicroBatcher(self.run_batch, limits.max_batch, limits.max_wait_ms / 1000, limits.max_pending)

    # what the model can do -------------------------------------------------------------------------------------
    def endpoints(self) -> list[str]:
        heads, model = self.predictor.description.heads, self.predictor.model
        found = {
            "vqa": names_its_answers(self.predictor.description),
            "match": scoring_head(model) is not None,
            "snli-ve": "snli_ve" in heads,
            "nlvr2": "nlvr2" in heads,
            "caption": model.decoder is not None,
            "explain": bool(explainable_tasks(self.predictor)),
        }
        return [name for name in ENDPOINTS if found[name]]

    def require(self, endpoint: str) -> None:
        if endpoint not in self.endpoints():
            served = ", ".join(f"/api/{name}" for name in self.endpoints()) or "nothing"
            raise ServeError(
                400,
                f"/api/{endpoint} needs {ENDPOINTS[endpoint][1]}; the model {self.model_name} has heads:"
                f" {', '.join(self.predictor.heads) or 'none'} (architecture {self.architecture}); it serves: {served}",
            )

    @property
    def architecture(self) -> str:
        return self.predictor.description.config.model.architecture

    def describe(self) -> dict[str, Any]:
        config = self.predictor.description.config.model
        explain = {}
        if "explain" in self.endpoints():
            explain = {
                "tasks": explainable_tasks(self.predictor),
                "methods": METHODS,
                "default_method": DEFAULT_METHOD,
                "layers": layer_count(self.predictor.model),
            }
        return {
            **self.identity(),
            "folder": str(self.predictor.checkpoint.absolute()),  # as given (`.`) it says nothing to a client
            "heads": self.predictor.heads,
            "architecture": self.architecture,
            "model": f"{config.vision.name} + {config.text.name} + {config.fusion.name}",
            "endpoints": {f"/api/{name}": ENDPOINTS[name][0] for name in self.endpoints()},
            "answers": len(self.predictor.description.answers or []),
            "text_max_length": self.predictor.max_length,
            "image_size": config.vision.image_size,
            "explain": explain,
            "limits": self.limits.to_dict(),
        }

    def identity(self) -> dict[str, str]:
        return {"model_name": self.model_name, "model_id": self.model_id}

    # requests --------------------------------------------------------------------------------------------------
    def text_notes(self, text: str, field: str) -> list[str]:
        """A note when the text is longer than the model reads (the batch keeps its first tokens)."""
        note = self.predictor.length_note(text, field)
        return [note] if note else []

    async def submit(self, key: Hashable, item: Any) -> Done:
        try:
            return await self.batcher.submit(key, item)
        except Overloaded as error:
            raise ServeError(503, f"the server is busy: {error}; try again shortly") from None
        except NonFiniteOutput as error:  # the model's fault, not the request's: 500, and said in the server's log
            log.error("%s", error.args[0])
            raise ServeError(500, error.args[0]) from None
        except MeterError as error:
            raise ServeError(422, str(error)) from None

    def answer(self, done: Done, started: float, notes: list[str], **result: Any) -> dict[str, Any]:
        return {
            **result,
            **self.identity(),
            "seconds": round(time.perf_counter() - started, 4),
            "batch": {"size": done.batch_size, "seconds": round(done.run_seconds, 4)},
            "notes": notes,
        }

    # batches on the model thread -------------------------------------------------------------------------------
    def run_batch(self, key: Hashable, items: list[Any]) -> list[Any]:
        kind, *settings = key
        predictor = self.predictor
        if kind == "vqa":
            images, questions, tops = zip(*items, strict=True)
            answers = predictor.answer_batch(list(images), list(questions), max(tops))
            return [rows[:top] for rows, top in zip(answers, tops, strict=True)]
        if kind in ("match", "snli-ve"):
            images, texts = zip(*items, strict=True)
            return predictor.match_batch(list(images), list(texts))
        if kind == "nlvr2":
            lefts, rights, texts = zip(*items, strict=True)
            return predictor.judge_pairs(list(zip(lefts, rights, strict=True)), list(texts))
        if kind == "caption":
            return predictor.caption_batch(list(items), beam_size=settings[0])
        if kind == "explain":
            task, method = settings
            images, texts, answers, tops = zip(*items, strict=True)
            maps = explain_batch(predictor, list(images), list(texts), task, method, list(answers), max(tops))
            for heat, top in zip(maps, tops, strict=True):  # the batch asked for its largest top; each its own
                if "answers" in heat.prediction:
                    heat.prediction["answers"] = heat.prediction["answers"][:top]
            return [(heat, _overlays(image, heat)) for image, heat in zip(images, maps, strict=True)]
        raise ValueError(f"unknown batch kind {kind!r}")


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _overlays(image: Image.Image, heat: HeatMap) -> dict[str, dict[str, str]]:
    """The heat map over the image as PNG data URLs: averaged ("mean"), and per layer (counted from 1)."""
    views = {"mean": heat.mean, **{str(k): layer for k, layer in enumerate(heat.layers, start=1)}}
    return {"overlays": {name: png_data_url(overlay(image, grid)) for name, grid in views.items()}}
