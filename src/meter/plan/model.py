"""The planned model, built on the meta device: parameters by part, the optimizer's groups, and the sizes the
memory estimate reads. No weight file is read: pretrained encoders are built from their sizes (a pretrained text
encoder's config.json is read when its folder is there), so even the full-size models take a second.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from meter.config import Config
from meter.errors import ConfigError, MeterError
from meter.models.folder import TEXT_CONFIG, read_model_folder
from meter.models.init_from import finetune_model_config
from meter.models.meter import Meter, build_meter, parameter_counts
from meter.models.text import TEXT, text_config
from meter.models.tokenizer_folder import has_tokenizer, load_tokenizer
from meter.objectives.mim import PixelDecoder, mim_patch_size
from meter.objectives.span import SENTINELS, add_sentinels
from meter.plan.memory import Layers, ModelShape
from meter.plan.tasks import Head, TaskPlan
from meter.tasks.build import tokenizer_path
from meter.tasks.rank_head import ITM
from meter.tasks.retrieval_official import itm_stays_frozen
from meter.train.optim import parameter_groups


@dataclass
class Vocabulary:
    size: int  # rows of the MLM head / the decoder's output
    pad_token_id: int
    known: bool  # read from a tokenizer (else assumed from a text config)
    source: str


@dataclass
class PlannedModel:
    task: nn.Module  # the model, and the task's own training-only parts (the MIM pixel decoder)
    model: Meter
    vocabulary: Vocabulary
    counts: dict[str, int]  # parameters by part (parameter_counts), plus the task's own parts, and the total
    groups: list[dict]  # the optimizer's parameter groups (train.optim.parameter_groups), meta parameters
    shape: ModelShape
    notes: list[str] = field(default_factory=list)


class PlannedTask(nn.Module):
    """What the optimizer sees: the model and the parts a task trains but does not keep."""

    def __init__(self, model: Meter, extras: dict[str, nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.extras = nn.ModuleDict(extras)


def _freeze_as_the_run(cfg: Config, model: Meter, notes: list[str]) -> None:
    """Official retrieval keeps a pretrained ITM head frozen (tasks.retrieval_official.setup_official): the plan's
    optimizer groups leave it out as the run's do."""
    official = cfg.task == "retrieval" and cfg.retrieval.objective == "official"
    if not (official and ITM in model.heads and cfg.train.init_from):
        return
    try:
        frozen = itm_stays_frozen(read_model_folder(cfg.train.init_from))
    except MeterError:  # noted where the folder is read for the architecture
        return
    if frozen:
        model.heads[ITM].requires_grad_(False)
        notes.append(f"retrieval: the ITM head of {cfg.train.init_from} stays frozen (not in the optimizer's groups)")


def _from_init_folder(cfg: Config, plan: TaskPlan, notes: list[str]) -> PretrainedConfig | None:
    """With a readable train.init_from, the run takes that folder's architecture (tasks.build.build_model): so does
    the plan, updating cfg.model as the run does. Returns the folder's text-encoder config."""
    source = cfg.train.init_from
    try:
        folder = read_model_folder(source)
    except MeterError as error:
        notes.append(f"train.init_from: {error}; the model is planned from the config's model section")
        return None
    if plan.with_decoder and folder.config.model.architecture != "encoder-decoder":
        folder.config.model.architecture = "encoder-decoder"
        folder.config.model.decoder = cfg.model.decoder
        notes.append(f"train.init_from: {source} has no decoder; the run adds a fresh one (model.decoder's sizes)")
    text = Path(source) / TEXT_CONFIG
    notes.append(f"train.init_from: the model architecture of {source} (its weights are not read)")
    if not (text / "config.json").is_file():
        cfg.model = folder.config.model
        cfg.model.vision.weights = cfg.model.text.weights = None
        notes.append(f"train.init_from: no {text}/config.json; the text encoder is planned from its preset")
        return None
    text_config = AutoConfig.from_pretrained(str(text), local_files_only=True)
    # as the run builds it: the folder's architecture at the run's resolution, dropout and text length
    cfg.model = finetune_model_config(folder.config.model, cfg.model, text_config, str(source))
    return text_config


def _pretrained_text_config(cfg: Config) -> PretrainedConfig | None:
    """The config.json of model.text.weights, checked as the run checks it (models.text._pretrained)."""
    text = cfg.model.text
    if not text.weights or not (Path(text.weights) / "config.json").is_file():
        return None
    spec = TEXT.get(text.name, key="model.text")
    config = AutoConfig.from_pretrained(text.weights, local_files_only=True)
    if config.model_type != spec.model_type and not spec.embedding_only:
        raise ConfigError(
            f"model.text = {text.name!r} but model.text.weights = {text.weights!r} holds a {config.model_type} model"
        )
    if spec.embedding_only:
        config.num_hidden_layers = 0
    return config


def _vocabulary(cfg: Config, text: PretrainedConfig | None, notes: list[str]) -> Vocabulary:
    """The tokenizer's size when its files are there (tokenizers are small: reading one takes a moment); else the
    pretrained text config's vocabulary, else transformers' default for the model type."""
    path = Path(cfg.train.init_from) if cfg.train.init_from else tokenizer_path(cfg)
    sentinels = not cfg.train.init_from and cfg.model.architecture == "encoder-decoder"
    if has_tokenizer(path):
        tokenizer = load_tokenizer(path)
        if sentinels:
            add_sentinels(tokenizer)
        return Vocabulary(len(tokenizer), tokenizer.pad_token_id or 0, True, f"the tokenizer at {path}")
    if text is None:
        text = AutoConfig.for_model(TEXT.get(cfg.model.text.name, key="model.text").model_type)
        where = f"transformers' default for {text.model_type}"
    else:
        where = "the text encoder's config.json"
    size = text.vocab_size + (SENTINELS if sentinels else 0)
    notes.append(
        f"no tokenizer at {path}: the vocabulary ({size:,}) is assumed from {where}"
        f"{f' plus {SENTINELS} span sentinels' if sentinels else ''}; its true size is known once the "
        "tokenizer is there"
    )
    return Vocabulary(size, text.pad_token_id or 0, False, where)


def _text_config(
    cfg: Config,
    text: PretrainedConfig | None,
    vocabulary: Vocabulary,
    notes: list[str],
) -> PretrainedConfig:
    if text is None:
        if cfg.model.text.weights:
            notes.append(
                f"model.text.weights: no config.json in {cfg.model.text.weights}; the text encoder is "
                f"planned from the {cfg.model.text.size!r} preset of {cfg.model.text.name}"
            )
        return text_config(cfg.model.text, vocabulary.size, vocabulary.pad_token_id)
    if cfg.train.init_from:  # a saved model is rebuilt exactly as its text config says
        return text
    text = copy.deepcopy(text)
    text.vocab_size = max(text.vocab_size, vocabulary.size)  # the run resizes pretrained embeddings to the tokenizer
    return text


def _vision_blocks(model: Meter, image_size: int) -> tuple[list[tuple[int, int, int]], int]:
    """Runs the vision encoder on a meta image (shapes only) to read, per transformer block (a timm module with
    `attn` and `mlp`), its tokens, width and feed-forward width; and the tokens the encoder returns."""
    blocks: list[tuple[int, int, int]] = []

    def record(module: nn.Module, args: tuple) -> None:
        fc1 = getattr(module.mlp, "fc1", None)
        width = fc1.in_features if fc1 is not None else args[0].shape[-1]
        inner = fc1.out_features if fc1 is not None else 4 * width
        blocks.append((args[0].numel() // width, width, inner))

    hooks = [
        m.register_forward_pre_hook(record) for m in model.vision.modules() if hasattr(m, "attn") and hasattr(m, "mlp")
    ]
    try:
        tokens = model.vision(torch.empty(1, 3, image_size, image_size, device="meta")).shape[1]
    finally:
        for hook in hooks:
            hook.remove()
    return blocks, tokens


def _matmul_weights(module: nn.Module) -> int:
    weights = {
        id(m.weight): m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
    }
    return sum(weights.values())


def _shape(
    cfg: Config, task: nn.Module, model: Meter, text: PretrainedConfig, mim_patches: int, notes: list[str]
) -> ModelShape:
    try:
        blocks, image_tokens = _vision_blocks(model, cfg.model.vision.image_size)
    except (RuntimeError, NotImplementedError, TypeError) as error:
        blocks, image_tokens = [], 0
        notes.append(f"memory: the vision encoder's tokens could not be worked out on the meta device ({error})")
    fusion, decoder = cfg.model.fusion, cfg.model.decoder
    width = fusion.width
    return ModelShape(
        vision_blocks=blocks,
        image_pixels=3 * cfg.model.vision.image_size**2,
        image_tokens=image_tokens,
        vision_width=model.vision.width,
        text=Layers(
            text.num_hidden_layers,
            text.hidden_size,
            getattr(text, "intermediate_size", 4 * text.hidden_size),
            getattr(text, "hidden_dropout_prob", 0.0) > 0,
        ),
        fusion=Layers(fusion.layers, width, int(width * fusion.mlp_ratio), fusion.dropout > 0),
        fusion_kind=fusion.name,
        decoder=Layers(decoder.layers, width, int(width * decoder.mlp_ratio), decoder.dropout > 0)
        if model.decoder is not None
        else None,
        matmul_weights=_matmul_weights(task),
        trainable=sum(p.numel() for p in task.parameters() if p.requires_grad),
        mim_patches=mim_patches,
    )


def plan_model(cfg: Config, plan: TaskPlan, heads_of: Callable[[int], list[Head]]) -> tuple[PlannedModel, list[Head]]:
    """Builds the model `cfg` describes on the meta device (updating cfg.model as the run would with
    train.init_from). `heads_of(vocabulary size)` gives the task's heads."""
    notes: list[str] = []
    text = _from_init_folder(cfg, plan, notes) if cfg.train.init_from else None
    text = text or _pretrained_text_config(cfg)
    vocabulary = _vocabulary(cfg, text, notes)
    text = _text_config(cfg, text, vocabulary, notes)
    heads: list[Head] = heads_of(vocabulary.size)
    model_cfg = copy.deepcopy(cfg.model)
    if not (model_cfg.vision.conv_stem and model_cfg.vision.weights):  # that pair is refused before any reading
        model_cfg.vision.weights = None
    model_cfg.text.weights = None
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # a head of unknown size: no rows
        model = build_meter(
            model_cfg,
            vocabulary.size,
            vocabulary.pad_token_id,
            {h.name: h.size or 0 for h in heads},
            plan.token_types,
            text,
        )
        extras, mim_patches = {}, 0
        if cfg.task == "pretrain" and cfg.objectives.mim > 0:  # PretrainTask's MIM pixel decoder
            patch = mim_patch_size(model.vision, model_cfg.vision.image_size)
            extras["mim_decoder"] = PixelDecoder(model.width, patch)
            mim_patches = (model_cfg.vision.image_size // patch) ** 2
    task = PlannedTask(model, extras)
    _freeze_as_the_run(cfg, model, notes)
    counts = parameter_counts(model)
    counts.pop("total")
    if extras:
        counts["task-only"] = sum(p.numel() for p in task.extras.parameters())
    counts["total"] = sum(p.numel() for p in task.parameters())
    groups = parameter_groups(task, cfg.train)
    shape = _shape(cfg, task, model, text, mim_patches, notes)
    return PlannedModel(task, model, vocabulary, counts, groups, shape, notes), heads
