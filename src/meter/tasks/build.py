"""What every task needs before training: the tokenizer, the model (fresh or from a checkpoint), image reading."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoConfig, PreTrainedTokenizerBase

from meter.config import Config
from meter.data.datasets import ImageReader
from meter.data.images import image_transform
from meter.data.tokenizers import load_tokenizer
from meter.models.folder import TEXT_CONFIG, WEIGHTS, load_weights, read_model_folder
from meter.models.meter import Meter, build_meter
from meter.models.text import TEXT
from meter.objectives.span import add_sentinels

log = logging.getLogger(__name__)


def tokenizer_path(cfg: Config) -> Path:
    """model.text.tokenizer, else the pretrained text encoder's folder, else the data root's trained tokenizer."""
    text = cfg.model.text
    if text.tokenizer:
        return Path(text.tokenizer)
    if text.weights:
        return Path(text.weights)
    return Path(cfg.data.root) / "tokenizers" / TEXT.get(text.name, key="model.text").tokenizer_kind


def task_tokenizer(cfg: Config) -> PreTrainedTokenizerBase:
    """The tokenizer of train.init_from's model folder when fine-tuning, else the configured one (with the span
    sentinels added for an encoder-decoder)."""
    tokenizer = load_tokenizer(cfg.train.init_from or tokenizer_path(cfg))
    if not cfg.train.init_from and cfg.model.architecture == "encoder-decoder":
        add_sentinels(tokenizer)
    return tokenizer


def build_model(cfg: Config, tokenizer: PreTrainedTokenizerBase, heads: dict[str, int], token_types: int = 2) -> Meter:
    """A fresh model, or with train.init_from the architecture and weights of that model folder (heads it lacks
    start at random; heads it has that this task does not use are left behind). Updates cfg.model to match."""
    source = cfg.train.init_from
    if not source:
        return build_meter(cfg.model, len(tokenizer), tokenizer.pad_token_id, heads, token_types)
    folder = read_model_folder(source)
    if folder.config.model != cfg.model:
        log.info("train.init_from: using the model architecture of %s", source)
    cfg.model = folder.config.model
    cfg.model.vision.weights = cfg.model.text.weights = None
    text_config = AutoConfig.from_pretrained(str(Path(source) / TEXT_CONFIG), local_files_only=True)
    model = build_meter(cfg.model, len(tokenizer), tokenizer.pad_token_id, heads, token_types, text_config)
    not_loaded = load_weights(model, Path(source) / WEIGHTS)
    unexpected = [k for k in not_loaded if not k.startswith("heads.")]
    if unexpected:
        log.warning("train.init_from: %d weights not in %s, e.g. %s", len(unexpected), source, unexpected[:3])
    log.info(
        "initialised from %s (%d tensors start fresh: %s)",
        source,
        len(not_loaded),
        ", ".join(sorted({k.split(".")[1] for k in not_loaded if k.startswith("heads.")})) or "none",
    )
    return model


def image_reader(cfg: Config, model: Meter) -> ImageReader:
    size = cfg.model.vision.image_size
    return ImageReader(image_transform(size, model.vision.mean, model.vision.std), size, blind=cfg.data.blind)
