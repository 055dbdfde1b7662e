"""What every task needs before training: the tokenizer, the model (fresh or from a checkpoint), image reading."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedTokenizerBase

from meter.config import Config
from meter.data.augment import build_augmentation
from meter.data.datasets import ImageReader
from meter.data.formats.captions import CaptionRecord, read_karpathy
from meter.data.images import image_transform
from meter.data.ordered_batches import EvalReading
from meter.errors import ConfigError, DataError
from meter.models.checksums import verify_checksums
from meter.models.class_rows import OUTPUT_LAYER, rows_by_answer
from meter.models.folder import (
    WEIGHTS,
    ModelFolder,
    load_model_folder,
    load_weights,
    read_model_folder,
    read_text_config,
)
from meter.models.init_from import Weights, finetune_model_config, vision_adapter
from meter.models.meter import Meter, build_meter
from meter.models.text import TEXT
from meter.models.tokenizer_folder import load_tokenizer
from meter.objectives.span import add_sentinels
from meter.train.runtime import Runtime

log = logging.getLogger(__name__)
TOKEN_TYPES = "token_type.weight"


def tokenizer_path(cfg: Config) -> Path:
    """model.text.tokenizer, else the pretrained text encoder's folder, else the data root's trained tokenizer."""
    return tokenizer_source(cfg)[0]


def tokenizer_source(cfg: Config) -> tuple[Path, str]:
    """The tokenizer's folder, and the setting that names it (for a message when it is not there)."""
    text = cfg.model.text
    if text.tokenizer:
        return Path(text.tokenizer), "model.text.tokenizer"
    if text.weights:
        return Path(text.weights), "model.text.weights (its tokenizer; or set model.text.tokenizer)"
    kind = TEXT.get(text.name, key="model.text").tokenizer_kind
    return Path(cfg.data.root) / "tokenizers" / kind, (
        f"data.root = {cfg.data.root}: the {kind} tokenizer `meter prepare shapes` trains there; for other data set "
        "model.text.tokenizer (or model.text.weights)"
    )


def task_tokenizer(cfg: Config) -> PreTrainedTokenizerBase:
    """The tokenizer of train.init_from's model folder when fine-tuning, else the configured one (with the span
    sentinels added for an encoder-decoder)."""
    if cfg.train.init_from:  # named as a model folder (and its files verified) before its tokenizer is read
        read_init_from(cfg.train.init_from)
    path, setting = (Path(cfg.train.init_from), "train.init_from") if cfg.train.init_from else tokenizer_source(cfg)
    if not path.is_dir():
        raise DataError(f"tokenizer folder not found: {path} ({setting})")
    tokenizer = load_tokenizer(path)
    if not cfg.train.init_from and cfg.model.architecture == "encoder-decoder":
        add_sentinels(tokenizer)
    return tokenizer


def build_model(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, heads: dict[str, int], token_types: int = 2,
    with_decoder: bool = False, answers: list[str] | None = None,
) -> Meter:  # fmt: skip
    """A fresh model, or with train.init_from the architecture and weights of that model folder (heads it lacks
    start at random; heads it has that this task does not use are left behind). The config's resolution, dropout
    and text length apply, with the folder's weights resampled to them (see `models/init_from.py`). Updates
    cfg.model to match, so that the run's model folders record them.
    `with_decoder`: the task needs a decoder; from an encoder-only folder it starts fresh (model.decoder's sizes).
    `answers`: the VQA head's answer of each row; a folder's VQA rows load by answer, not by position."""
    source = cfg.train.init_from
    if not source:
        model = build_meter(
            cfg.model, len(tokenizer), tokenizer.pad_token_id, heads, token_types, base_vocab=tokenizer.vocab_size
        )
        with torch.no_grad():  # NLVR2's second image row starts as the first's, as METER does with or without weights
            model.token_type.weight[2:] = model.token_type.weight[1]
        return model
    folder = read_init_from(source)
    fresh_parts = {"heads"}  # parts that may start at random without a warning
    if with_decoder and folder.config.model.architecture != "encoder-decoder":
        log.info("train.init_from: %s has no decoder; a fresh one is added on its encoder", source)
        folder.config.model.architecture = "encoder-decoder"
        folder.config.model.decoder = cfg.model.decoder
        fresh_parts |= {"decoder", "class_pooler"}
    text_config = read_text_config(source)
    cfg.model = finetune_model_config(folder.config.model, cfg.model, text_config, str(source))
    model = build_meter(cfg.model, len(tokenizer), tokenizer.pad_token_id, heads, token_types, text_config)
    adapt = vision_adapter(model, str(source))
    if answers is not None and "vqa" in heads:
        adapt = _with_answer_rows(adapt, model, folder.answers, answers, str(source))
    not_loaded = load_weights(model, Path(source) / WEIGHTS, adapt=adapt, classes=folder.classes)
    if TOKEN_TYPES in not_loaded and fit_token_types(model, Path(source) / WEIGHTS):
        not_loaded.remove(TOKEN_TYPES)
    unexpected = [k for k in not_loaded if k.split(".")[0] not in fresh_parts]
    if unexpected:
        log.warning("train.init_from: %d weights not in %s, e.g. %s", len(unexpected), source, unexpected[:3])
    parts = sorted({k.split(".")[1] if k.startswith("heads.") else k.split(".")[0] for k in not_loaded})
    log.info("initialised from %s (%d tensors start fresh: %s)", source, len(not_loaded), ", ".join(parts) or "none")
    return model


def _with_answer_rows(
    adapt: Callable[[Weights], Weights], model: Meter, saved: list[str], answers: list[str], source: str
) -> Callable[[Weights], Weights]:
    """`adapt`, then the folder's VQA rows moved to the run's answers (a row count that matches is no sign that the
    answers do: an import numbers them officially, meter by frequency)."""

    def adapt_with_rows(weights: Weights) -> Weights:
        weights = adapt(weights)
        if f"heads.vqa.{OUTPUT_LAYER}.weight" not in weights:
            return weights
        moved, kept = rows_by_answer(weights, saved, answers, model.state_dict())
        if not saved:
            log.warning("train.init_from: the VQA rows of %s name no answers (imported without --vqa-answers): the "
                        "head starts fresh", source)  # fmt: skip
        else:
            log.info("train.init_from: %d of the %d answers keep their VQA row from %s; %d start fresh", kept,
                     len(answers), source, len(answers) - kept)  # fmt: skip
        return moved

    return adapt_with_rows


def read_init_from(source: str | Path) -> ModelFolder:
    """train.init_from's description, its model files verified against their checksums (a DataError names the path
    of a folder that is missing, not a model folder, or damaged)."""
    folder = read_model_folder(source)
    verify_checksums(source, ("model",))
    return folder


def fit_token_types(model: Meter, weights: Path) -> bool:
    """Loads a checkpoint's token-type rows into a model with another number of them. More rows (NLVR2's second
    image, from a one-image model): the extra ones start as copies of the last (image) row, as METER does. Fewer (a
    one-image task from an NLVR2 model): the text and image rows are kept, the second image's is left behind.
    False when the checkpoint's rows do not fit."""
    with safe_open(str(weights), framework="pt") as f:
        if TOKEN_TYPES not in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            return False
        saved = f.get_tensor(TOKEN_TYPES)
    rows = model.token_type.weight
    if saved.ndim != 2 or saved.shape[1] != rows.shape[1] or len(saved) == len(rows):
        return False
    kept = min(len(saved), len(rows))
    with torch.no_grad():
        rows[:kept] = saved[:kept]
        rows[kept:] = saved[-1]
    if len(rows) > len(saved):
        log.info("token types: %d rows from the checkpoint, %d more start as its image row", len(saved),
                 len(rows) - len(saved))  # fmt: skip
    else:
        log.info("token types: the first %d of the checkpoint's %d rows", kept, len(saved))
    return True


@dataclass
class EvalModel:
    """A model folder loaded for evaluation or prediction, with the image reading its config asks for."""

    model: Meter
    tokenizer: PreTrainedTokenizerBase
    description: ModelFolder
    images: ImageReader


def load_for_eval(
    checkpoint: str | Path, device: torch.device, blind: bool | None = None, max_pixels: int | None = None
) -> EvalModel:
    """`blind`: every image the constant one (a blind baseline); by default as the folder's config records, as the
    model trained. `max_pixels`: the largest image to decode; by default the data.max_image_pixels the folder's
    config records."""
    model, tokenizer, description = load_model_folder(checkpoint)
    model.to(device).eval()
    size = description.config.model.vision.image_size
    limit = description.config.data.max_image_pixels if max_pixels is None else max_pixels
    blind = description.config.data.blind if blind is None else blind
    images = ImageReader(image_transform(size, model.vision.mean, model.vision.std), size, blind, max_pixels=limit)
    return EvalModel(model, tokenizer, description, images)


def eval_reading(cfg: Config, runtime: Runtime) -> EvalReading:
    """How an evaluation of `cfg` reads: its eval batch, decoded by the data workers training has (a VQAv2 test-dev
    split at 576 px on a GPU would wait on one CPU core), pinned for a GPU."""
    return EvalReading(cfg.train.eval_batch_size, cfg.data.num_workers, cfg.data.worker_timeout,
                       pin_memory=runtime.device.type == "cuda", progress=cfg.train.progress)  # fmt: skip


def image_reader(cfg: Config, model: Meter) -> ImageReader:
    size = cfg.model.vision.image_size
    transform = image_transform(size, model.vision.mean, model.vision.std)
    augment = build_augmentation(cfg.data.augment, cfg.train.seed)  # applied to training draws only
    return ImageReader(transform, size, blind=cfg.data.blind, cache_mb=cfg.data.image_cache_mb, augment=augment,
                       max_pixels=cfg.data.max_image_pixels)  # fmt: skip


def karpathy_split(section: str) -> Callable[[Config, str], list[CaptionRecord]]:
    """A reader of one split of config section `section`'s Karpathy file (a task's `read_split`)."""
    return lambda cfg, split: read_karpathy_splits(cfg, section, [split])


def read_karpathy_splits(
    cfg: Config, section: str, splits: list[str], keep_uncaptioned: bool = False
) -> list[CaptionRecord]:
    """The images of `splits` in the Karpathy file of config section `section` (its `karpathy` and `images`);
    `keep_uncaptioned` as `read_karpathy`'s."""
    settings = getattr(cfg, section)
    root = Path(cfg.data.root)
    records = read_karpathy(root / settings.karpathy, root / settings.images, tuple(splits), keep_uncaptioned)
    if not records:
        raise ConfigError(f"{section}.karpathy: {settings.karpathy} has no images in split(s) {', '.join(splits)}")
    return records
