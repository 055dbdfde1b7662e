"""What an official METER checkpoint holds, read from its tensor shapes (its saved config only where shapes are
silent: attention heads, dropout, text length), as our config.

The official code (zdou0830/METER) builds: a CLIP visual transformer with `layers - 1` residual blocks and
`width // 64` heads (or a Swin whose window is `image_size / 32`), a BERT/RoBERTa text encoder from a pretrained
folder, linear transforms to the fusion width, a 2-row token-type table (3 rows after NLVR2 fine-tuning),
co-attention layers in BERT's layout, two poolers and the task heads present in the file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from transformers import PretrainedConfig

from meter.config import Config, FusionConfig, ModelConfig, RetrievalConfig, TextConfig, VisionConfig
from meter.errors import DataError
from meter.models.text import TEXT

VISION = "vit_model."
CLIP_NAMES = {16: "clip-vit", 32: "clip-vit-b32"}  # our registered CLIP encoders by patch size
SWIN_NAME = "timm:swin_base_patch4_window12_384"  # the family; sizes come from the checkpoint
# official head -> (our head kind, the tensor whose rows are its output size)
WORD_EMBEDDINGS = "text_transformer.embeddings.word_embeddings.weight"
HEADS = {
    "mlm_score": ("mlm", "mlm_score.decoder.weight"),
    "itm_score": ("itm", "itm_score.fc.weight"),
    "vqa_classifier": ("vqa", "vqa_classifier.3.weight"),
    "nlvr2_classifier": ("nlvr2", "nlvr2_classifier.3.weight"),
    "snli_classifier": ("snli_ve", "snli_classifier.3.weight"),
    "rank_output": ("rank", "rank_output.weight"),
}
# head kinds -> the task a model with them is fine-tuned for
TASK_OF_HEAD = {"vqa": "vqa", "nlvr2": "nlvr2", "snli_ve": "snli_ve", "rank": "retrieval"}


@dataclass
class OfficialLayout:
    config: Config
    heads: dict[str, int]
    token_types: int
    trained_image_size: int  # the resolution the checkpoint's position tables were trained at


def _indices(weights: dict[str, Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for key in weights if (m := re.match(pattern, key))})


def _need(weights: dict[str, Tensor], key: str) -> Tensor:
    if key not in weights:
        raise DataError(f"not an official METER checkpoint: it has no {key!r}")
    return weights[key]


def _setting(hparams: dict[str, Any], key: str, default: float, kind: type[int] | type[float]) -> Any:
    """A number of the official config the checkpoint saved; a setting it left out, or saved as null (a config
    written by hand), is the official default."""
    value = hparams.get(key)
    if value is None:
        return default
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or (kind is int and value != int(value))):  # fmt: skip
        raise DataError(f"the checkpoint's hyper_parameters config has {key} = {value!r}, expected "
                        f"{'a whole number' if kind is int else 'a number'}")  # fmt: skip
    return kind(value)


def _check_image_size(image_size: int | None, multiple: int, why: str) -> None:
    """--image-size must tile the encoder's grid: the official code asserts it (a rest would be cut off unseen)."""
    if image_size is not None and (image_size <= 0 or image_size % multiple):
        fits = sorted({max(multiple, image_size // multiple * multiple), (image_size // multiple + 1) * multiple})
        raise DataError(
            f"--image-size {image_size} must be a multiple of {multiple} ({why}): e.g. {' or '.join(map(str, fits))}"
        )


def clip_vision(weights: dict[str, Tensor], name: str | None, image_size: int | None) -> tuple[VisionConfig, int]:
    width = _need(weights, "vit_model.visual.class_embedding").shape[0]
    patch = _need(weights, "vit_model.visual.conv1.weight").shape[-1]
    depth = len(_indices(weights, r"vit_model\.visual\.transformer\.resblocks\.(\d+)\."))
    grid = math.isqrt(_need(weights, "vit_model.visual.positional_embedding").shape[0] - 1)
    trained = grid * patch
    _check_image_size(image_size, patch, f"the side of CLIP's {patch}-pixel patches")
    kwargs = {"embed_dim": width, "depth": depth, "num_heads": width // 64, "patch_size": patch}
    vision = VisionConfig(
        name=name or CLIP_NAMES.get(patch, "clip-vit"), size="base", image_size=image_size or trained,
        timm_kwargs=kwargs,
    )  # fmt: skip
    return vision, trained


def swin_vision(
    weights: dict[str, Tensor], hparams: dict[str, Any], name: str | None, image_size: int | None
) -> tuple[VisionConfig, int]:
    embed = _need(weights, "vit_model.patch_embed.proj.weight")
    stages = _indices(weights, r"vit_model\.layers\.(\d+)\.blocks\.")
    depths = [len(_indices(weights, rf"vit_model\.layers\.{s}\.blocks\.(\d+)\.")) for s in stages]
    if not stages:  # a patch embedding alone: no Swin stage to size the model by
        raise DataError("not an official METER checkpoint: its Swin encoder has no vit_model.layers.N.blocks")
    tables = [_need(weights, f"vit_model.layers.{s}.blocks.0.attn.relative_position_bias_table") for s in stages]
    window = (math.isqrt(tables[0].shape[0]) + 1) // 2
    trained = _setting(hparams, "image_size", 0, int) or window * 32  # the official window is image_size / 32
    _check_image_size(image_size, 32, "Swin's window is image_size / 32")
    size = image_size or trained
    kwargs = {
        "embed_dim": embed.shape[0], "depths": depths, "num_heads": [t.shape[1] for t in tables],
        "window_size": size // 32, "patch_size": embed.shape[-1],
    }  # fmt: skip
    # the official Swin is built with drop_path_rate 0.1 for pretraining and fine-tuning (swin_transformer.py:436)
    vision = VisionConfig(name=name or SWIN_NAME, size="base", image_size=size, drop_path=0.1, timm_kwargs=kwargs)
    return vision, trained


def text_name(text_config: PretrainedConfig) -> str:
    """Our registered text encoder for a transformers model type."""
    for entry in TEXT.entries():
        if entry.target.model_type == text_config.model_type:
            return entry.name
    known = ", ".join(e.target.model_type for e in TEXT.entries())
    raise DataError(f"text encoder of model type {text_config.model_type!r} is not supported; known: {known}")


def read_layout(
    weights: dict[str, Tensor],
    hparams: dict[str, Any],
    text_config: PretrainedConfig,
    vision_name: str | None = None,
    image_size: int | None = None,
) -> OfficialLayout:
    if "vit_model.visual.class_embedding" in weights:
        vision, trained = clip_vision(weights, vision_name, image_size)
        image_pool = "first"
    elif "vit_model.patch_embed.proj.weight" in weights:
        vision, trained = swin_vision(weights, hparams, vision_name, image_size)
        image_pool = "mean"  # the official Swin model averages the fused image tokens
    elif any(k.startswith(VISION) for k in weights):
        sample = sorted(k for k in weights if k.startswith(VISION))[:3]
        raise DataError(f"unrecognised vision encoder in the checkpoint (neither CLIP nor Swin): {sample}")
    else:
        sample = sorted(weights)[:3]
        raise DataError(f"not an official METER checkpoint: no vision encoder under {VISION!r} (it has e.g. {sample})")
    width = _need(weights, "cross_modal_text_transform.weight").shape[0]
    layers = _indices(weights, r"cross_modal_text_layers\.(\d+)\.")
    if layers != _indices(weights, r"cross_modal_image_layers\.(\d+)\."):
        raise DataError("the checkpoint's text and image co-attention stacks differ in depth")
    inner = _need(weights, "cross_modal_text_layers.0.intermediate.dense.weight").shape[0]
    attention_heads = _setting(hparams, "num_heads", 0, int) or width // 64
    dropout = _setting(hparams, "drop_rate", 0.1, float)
    fusion = FusionConfig(name="co-attention", layers=len(layers), width=width, heads=attention_heads,
                          mlp_ratio=inner / width, dropout=dropout)  # fmt: skip
    name = text_name(text_config)
    offset = TEXT.get(name).position_offset
    max_length = min(_setting(hparams, "max_text_len", 40, int), text_config.max_position_embeddings - offset)
    text = TextConfig(name=name, size="base", max_length=max_length)
    heads = {kind: weights[rows].shape[0] for kind, rows in HEADS.values() if rows in weights}
    words = _need(weights, WORD_EMBEDDINGS).shape[0]
    if heads.get("mlm", words) != words:  # it would name other tokens than the encoder reads, or fail past its rows
        raise DataError(f"the checkpoint's MLM head predicts {heads['mlm']} tokens, its text encoder embeds {words} "
                        f"({WORD_EMBEDDINGS}): not one model (a head cut or grown apart from its encoder)")  # fmt: skip
    task = next((TASK_OF_HEAD[kind] for kind in heads if kind in TASK_OF_HEAD), "pretrain")
    model = ModelConfig(vision=vision, text=text, fusion=fusion, image_pool=image_pool)
    token_types = _need(weights, "token_type_embeddings.weight").shape[0]
    # official models were trained with the official retrieval objective: no contrastive first stage to shortlist
    retrieval = RetrievalConfig(objective="official")
    return OfficialLayout(Config(task=task, model=model, retrieval=retrieval), heads, token_types, trained)
